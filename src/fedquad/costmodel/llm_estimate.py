"""Cost-model profiles of LLaMA-architecture decoders from their config alone (no model built).

A 7B model cannot be instantiated on a 2-core, 24 GB machine, yet the Jetson feasibility question
("how deep can an 8/16/32/64 GB board train a 7B LLaMA, with int8 or int4 saved activations?")
needs its profile's byte fields. This module writes them from the config.

Method: an analytic *inventory of the tensors autograd saves*, per block and outside the blocks,
for a LoRA-adapted LLaMA/Mistral/Qwen2 block (pre-RMSNorm, rotary attention through PyTorch's fused
`scaled_dot_product_attention`, SwiGLU MLP) at batch B and sequence s. It is not a fit and not a
scaling of measured bytes: each entry is one tensor the pack hook sees, with its element count
and element size, and the kept bytes under int8/int4 follow the same skip rules and packed size as
`fedquad.client.saved_activations` (tensors under `min_numel` elements and LoRA bottleneck
outputs are kept raw; the rest cost ceil(n * bits / 8) + 8 * ceil(n / group) bytes). The
inventory was read off the pack hook (transformers 5.x, torch 2.x, CPU) and is checked against
measurement: it reproduces the measured bytes of tiny LLaMA/Qwen2 models exactly in the tests
(tests/test_llm_memory.py), and of the 1.1B `llama-1b` preset at 1 x 512 in bf16
(benchmarks/llm_memory.py, docs/llm_memory.md).

Per block, with h = hidden, m = MLP width, H/K = query/key-value heads, dh = head dim,
r = LoRA rank, e = bytes per element of the compute dtype, n = B * s tokens:

    input RMSNorm     n*h fp32 (the upcast input) + n fp32 (rsqrt)   -- not in the lowest block
    q, k, v LoRA      n*h*e (three views of one storage, the normed input: stored once)
                      + 3 * n*r*e (LoRA A outputs)
    rotary            2 * s*dh*e (cos, sin: batch-independent)
    attention, fused  n*H*dh*e (q) + 2 * n*K*dh*e (k, v) + n*H*dh*e (out, which is also o's input)
                      + n*H fp32 (logsumexp); in a quantized block out is packed twice, as SDPA's
                      head-layout view and as o's whole input (measured; raw counts it once)
    attention, math   3 * n*H*dh fp32 (q, k^T, v; k and v repeated to H heads) + n*H*s fp32
                      (the probabilities, saved by the softmax and, as a view, by the matmul: once)
    o LoRA            n*H*dh*e (math only; fused: the attention output above) + n*r*e
    post RMSNorm      n*h fp32 + n fp32
    gate, up LoRA     n*h*e (two views of the normed input: once) + 2 * n*r*e
    SwiGLU            4 * n*m*e (gate out, silu out, up out, their product = down's input)
    down LoRA         n*r*e

Outside the blocks (causal LM, depth >= 1): final RMSNorm n*h fp32 + n fp32; the fp32 log-softmax
of the logits n*V*4 (the largest single tensor at vocabulary 32000); the targets n int64 and a
scalar. At depth 0 nothing is trainable, nothing is saved. The step's transient beyond all that
(the profile's workspace; `step_transient_bytes`) is logits-sized too: 2 * n*V*4 at depth >= 1.

Attention comes in two kinds. "fused" is what LLaMA-family blocks run on CPU (SDPA's flash
kernel: no s x s probabilities). "math" is what fedquad's runtime forces for trainable blocks on
CUDA (client/runtime.py: the fused CUDA kernels' saved log-sum-exp ruins quantized gradients),
so it is the one for a Jetson; it saves the s x s probabilities. The math inventory was read on
CPU with SDPA's math backend forced (same composite code as on CUDA), where it computes in fp32;
whether CUDA keeps bf16 there instead has not been measured (no GPU in this session), and would
halve the attention terms. Other assumptions: no dropout, LoRA on all seven projections,
activations saved as PyTorch saves them today. A different attention kernel or a transformers release that
changes the RMSNorm upcast changes the inventory; the measured check catches that.

Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedquad.costmodel.profile import (ADAMW_STATE_FACTOR, PROFILE_BITS, BlockProfile, HeadProfile, Profile,
                                       profile_document, profile_from_dict)
from fedquad.errors import FedquadError
from fedquad.plan import DEFAULT_GROUP_SIZE

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
FAMILIES = ("llama", "mistral", "qwen2")
MIN_NUMEL = 1024  # QuantSettings.min_numel default: smaller tensors are kept raw
ATTENTION_KINDS = ("fused", "math")


@dataclass(frozen=True)
class DecoderShape:
    """The config numbers that set a LLaMA-family decoder's memory."""

    hidden: int = field(metadata={"help": "hidden size h"})
    intermediate: int = field(metadata={"help": "MLP width m"})
    layers: int = field(metadata={"help": "transformer blocks L"})
    heads: int = field(metadata={"help": "query heads H"})
    kv_heads: int = field(metadata={"help": "key/value heads K (grouped-query attention)"})
    vocab: int = field(metadata={"help": "vocabulary size V"})
    head_dim: int | None = field(default=None, metadata={"help": "per-head width; None = hidden / heads"})
    tie_embeddings: bool = field(default=False, metadata={"help": "LM head shares the input embedding"})
    attention_bias: bool = field(default=False, metadata={"help": "q/k/v projections carry biases (Qwen2)"})
    family: str = field(default="llama", metadata={"help": "llama, mistral or qwen2"})

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise FedquadError(f"config-only estimates cover {', '.join(FAMILIES)}, not {self.family!r}")
        for name in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab"):
            if getattr(self, name) <= 0:
                raise FedquadError(f"decoder config: {name} must be positive, got {getattr(self, name)}")
        if self.heads % self.kv_heads:
            raise FedquadError(f"decoder config: {self.heads} heads are not a multiple of {self.kv_heads} kv heads")

    @property
    def dh(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @classmethod
    def from_config(cls, config: dict, family: str | None = None) -> "DecoderShape":
        """From a transformers config dict (`config.to_dict()` or a preset's overrides)."""
        fam = family or config.get("model_type", "llama")
        try:
            return cls(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                       layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                       kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                       vocab=config["vocab_size"], head_dim=config.get("head_dim"),
                       tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                       attention_bias=bool(config.get("attention_bias", fam == "qwen2")), family=fam)
        except KeyError as exc:
            raise FedquadError(f"decoder config lacks {exc.args[0]!r}") from None

    def block_parameters(self) -> int:
        q, kv = self.heads * self.dh, self.kv_heads * self.dh
        params = self.hidden * q + 2 * self.hidden * kv + q * self.hidden + 3 * self.hidden * self.intermediate
        params += 2 * self.hidden  # the two RMSNorm weights
        if self.attention_bias:
            params += q + 2 * kv
        return params

    def parameters(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tie_embeddings else 2) + self.layers * self.block_parameters() + self.hidden

    def lora_parameters_per_block(self, rank: int) -> int:
        """LoRA A (r x in) + B (out x r) on q, k, v, o, gate, up, down."""
        q, kv, h, m = self.heads * self.dh, self.kv_heads * self.dh, self.hidden, self.intermediate
        shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, m), (h, m), (m, h)]
        return sum(rank * (i + o) for i, o in shapes)


# Named configs. llama-1b is the preset of the same name (TinyLlama-1.1B shapes); llama-7b is
# LLaMA-2-7B (32 blocks, width 4096, 32 heads without grouped-query attention, MLP 11008).
SHAPES = {
    "llama-1b": DecoderShape(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, vocab=32000),
    "llama-7b": DecoderShape(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
}


@dataclass(frozen=True)
class SavedTensor:
    """One tensor autograd keeps for backward: element count, bytes per element, last dimension."""
    numel: int
    itemsize: int
    last_dim: int
    what: str
    kept_only: bool = False  # a second packed copy of a storage counted once raw (quantized blocks only)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


def block_inventory(shape: DecoderShape, batch: int, seq: int, dtype_bytes: int, rank: int,
                    lowest: bool = False, attention: str = "fused") -> list[SavedTensor]:
    """The tensors one trainable block saves (see the module docstring); `lowest`: the block's
    input needs no gradient (lowest trainable block), so its input RMSNorm saves nothing;
    `attention`: "fused" (SDPA's flash kernel, what LLaMA runs on CPU) or "math" (SDPA's math
    backend, which fedquad's runtime uses for trainable blocks on CUDA)."""
    if attention not in ATTENTION_KINDS:
        raise FedquadError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {attention!r}")
    n, h, m, e, r = batch * seq, shape.hidden, shape.intermediate, dtype_bytes, rank
    H, K, dh = shape.heads, shape.kv_heads, shape.dh
    t = SavedTensor
    out = []
    if not lowest:
        out += [t(n * h, 4, h, "input norm: fp32 input"),
                t(n, 4, 1, "input norm: rsqrt")]
    out += [t(n * h, e, h, "q/k/v_proj LoRA input (one storage)")]
    out += [t(n * r, e, r, f"{p}_proj LoRA A output") for p in "qkv"]
    out += [t(seq * dh, e, dh, "rotary cos"), t(seq * dh, e, dh, "rotary sin")]
    if attention == "fused":
        out += [t(n * H * dh, e, dh, "attention q"), t(n * K * dh, e, dh, "attention k"),
                t(n * K * dh, e, dh, "attention v"), t(n * H * dh, e, dh, "attention output = o_proj LoRA input"),
                t(n * H * dh, e, H * dh, "o_proj LoRA input, packed again in a quantized block", kept_only=True),
                t(n * H, 4, seq, "attention logsumexp")]
    else:  # math: computed in fp32 with k/v repeated to H heads; the probabilities are saved by the
        # softmax and, as a reshaped view of the same storage (stored once), by the matmul with v
        out += [t(n * H * dh, 4, seq, "attention k^T (fp32, H heads)"), t(n * H * dh, 4, dh, "attention q (fp32)"),
                t(n * H * seq, 4, seq, "attention probabilities (fp32)"), t(n * H * dh, 4, dh, "attention v (fp32)"),
                t(n * H * dh, e, H * dh, "o_proj LoRA input")]
    out += [t(n * r, e, r, "o_proj LoRA A output")]
    out += [t(n * h, 4, h, "post-attention norm: fp32 input"), t(n, 4, 1, "post-attention norm: rsqrt")]
    out += [t(n * h, e, h, "gate/up_proj LoRA input (one storage)")]
    out += [t(n * r, e, r, f"{p}_proj LoRA A output") for p in ("gate", "up")]
    out += [t(n * m, e, m, w) for w in ("gate output (silu input)", "silu output", "up output",
                                        "down_proj LoRA input")]
    out += [t(n * r, e, r, "down_proj LoRA A output")]
    return out


def outside_inventory(shape: DecoderShape, batch: int, seq: int) -> list[SavedTensor]:
    """Saved outside the blocks by a causal LM once any block trains (nothing at depth 0)."""
    n, t = batch * seq, SavedTensor
    return [t(n * shape.hidden, 4, shape.hidden, "final norm: fp32 input"), t(n, 4, 1, "final norm: rsqrt"),
            t(n * shape.vocab, 4, shape.vocab, "log-softmax of the fp32 logits"), t(n, 8, n, "targets (int64)"),
            t(1, 4, 1, "loss normaliser")]


def step_transient_bytes(shape: DecoderShape, batch: int, seq: int, dtype_bytes: int, depth0: bool = False) -> int:
    """The step's peak beyond saved activations, gradients and optimizer state (the profile's
    workspace), for a causal LM: logits-sized tensors. With any block trainable the peak comes as
    backward starts: two n x V fp32 tensors live besides the saved log-softmax (the loss's
    gradient through log-softmax and the upcast). At depth 0 nothing trains and the loss runs
    without a graph: the logits in the compute dtype, their fp32 upcast (none in fp32: `.float()`
    returns the tensor itself) and the log-softmax, plus a few hidden-size tensors (4 n x h fp32).
    Measured on tiny-llama-lm (fp32, 16 x 64) and llama-1b (bf16, 1 x 128 and wider;
    benchmarks/step_peak.py, docs/bench_step_peak.md)."""
    n, nv = batch * seq, batch * seq * shape.vocab
    if not depth0:
        return 2 * nv * 4
    return nv * dtype_bytes + (nv * 4 if dtype_bytes != 4 else 0) + nv * 4 + 4 * n * shape.hidden * 4


def packed_bytes(numel: int, bits: int, group_size: int) -> int:
    """What the pack hook keeps of `numel` elements with QuantSettings' defaults (torch-free mirror of
    `fedquad.quant.stored.stored_nbytes`): the codes, a scale and a minimum per group (float32 at int8,
    bfloat16 at int4), and at int4 one rotation flag bit per group (packed 8 to a byte) when the
    tensor splits into whole power-of-two groups."""
    groups = -(-numel // group_size)
    param_bytes = 4 if bits == 8 else 2
    rotated = bits == 4 and group_size > 1 and not group_size & (group_size - 1) and numel % group_size == 0
    return -(-numel * bits // 8) + 2 * param_bytes * groups + (-(-groups // 8) if rotated else 0)


def kept_bytes(tensors: list[SavedTensor], bits: int, group_size: int, rank: int, min_numel: int = MIN_NUMEL,
               head_dim: int | None = None) -> int:
    """Bytes kept when these tensors belong to a quantized block (the pack hook's skip rules; inside
    an int4 block, tensors whose last dimension is the head width are kept at int8)."""
    total = 0
    for x in tensors:
        keep_raw = x.numel < min_numel or x.last_dim == rank
        b = 8 if bits == 4 and head_dim is not None and x.last_dim == head_dim else bits
        total += x.nbytes if keep_raw else packed_bytes(x.numel, b, group_size)
    return total


def estimate_profile(shape: DecoderShape, *, batch_size: int, seq_len: int, dtype: str = "bfloat16",
                     lora_rank: int = 8, group_size: int = DEFAULT_GROUP_SIZE, model: str = "estimate",
                     timing_from: tuple[dict, DecoderShape] | None = None, attention: str = "fused") -> dict:
    """The profile document (costmodel.profile's format) of `shape`, its bytes from the inventory.

    Times are not measurable without the model. With `timing_from` = (a measured profile dict,
    the shape of the model it was measured on) every per-block time is the reference's mean
    scaled by the ratio of block FLOPs (2 x tokens x block parameters + 4 x tokens x seq x H x dh
    for attention), the head's by the ratio of LM-head FLOPs: a rough extrapolation, same
    machine. Without it all times are 0 and the profile answers memory questions only
    (`estimate.timing_source` says which).
    """
    if dtype not in DTYPE_BYTES:
        raise FedquadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    if batch_size < 1 or seq_len < 1 or lora_rank < 1 or group_size < 1:
        raise FedquadError("batch_size, seq_len, lora_rank and group_size must be positive")
    e = DTYPE_BYTES[dtype]
    mid = block_inventory(shape, batch_size, seq_len, e, lora_rank, attention=attention)
    low = block_inventory(shape, batch_size, seq_len, e, lora_rank, lowest=True, attention=attention)
    saved, saved_low = sum(x.nbytes for x in mid if not x.kept_only), sum(x.nbytes for x in low if not x.kept_only)
    kept = {b: kept_bytes(mid, b, group_size, lora_rank, head_dim=shape.dh) for b in PROFILE_BITS}
    kept_low = {b: kept_bytes(low, b, group_size, lora_rank, head_dim=shape.dh) for b in PROFILE_BITS}
    adapter_block = shape.lora_parameters_per_block(lora_rank) * e
    times = _scaled_times(shape, batch_size, seq_len, timing_from)
    blocks = tuple(BlockProfile(index=i, saved_bytes=saved, kept_bytes=kept, saved_bytes_lowest=saved_low,
                                kept_bytes_lowest=kept_low, adapter_bytes=adapter_block,
                                forward_s=times["forward_s"], backward_s=times["backward_s"],
                                quant_s=dict(times["quant_s"])) for i in range(shape.layers))
    dtype_name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)
    profile = Profile(
        model=model, family=shape.family, num_blocks=shape.layers, batch_size=batch_size, seq_len=seq_len,
        dtype=dtype_name, device=times["device"], group_size=group_size, machine_gflops=times["machine_gflops"],
        frozen_weight_bytes=shape.parameters() * e, adapter_bytes=adapter_block * shape.layers,
        head_adapter_bytes=0, optimizer_bytes_per_trainable_byte=ADAMW_STATE_FACTOR,
        workspace_bytes=step_transient_bytes(shape, batch_size, seq_len, e),
        workspace_bytes_depth0=step_transient_bytes(shape, batch_size, seq_len, e, depth0=True), embedding_forward_s=0.0,
        head=HeadProfile(saved_bytes=sum(x.nbytes for x in outside_inventory(shape, batch_size, seq_len)),
                         saved_bytes_depth0=0, forward_s=times["head_forward_s"], backward_s=0.0),
        blocks=blocks, kept_ratio={b: kept[b] / saved for b in PROFILE_BITS})
    return profile_document(profile, task="causal-lm", estimate={
        "method": "config-only saved-tensor inventory (fedquad.costmodel.llm_estimate)", "attention": attention,
        "timing_source": times["source"], "parameters": shape.parameters()})


def _block_flops(shape: DecoderShape, batch: int, seq: int) -> float:
    n = batch * seq
    return 2.0 * n * shape.block_parameters() + 4.0 * n * seq * shape.heads * shape.dh


def _scaled_times(shape: DecoderShape, batch: int, seq: int, timing_from) -> dict:
    if timing_from is None:
        return {"forward_s": 0.0, "backward_s": 0.0, "quant_s": {b: 0.0 for b in PROFILE_BITS},
                "head_forward_s": 0.0, "machine_gflops": 1.0, "device": "none", "source": "none (memory only)"}
    ref, ref_shape = timing_from
    blocks = ref["blocks"]

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    ratio = _block_flops(shape, batch, seq) / _block_flops(ref_shape, ref["batch_size"], ref["seq_len"])
    head_ratio = (batch * seq * shape.vocab * shape.hidden) / (
        ref["batch_size"] * ref["seq_len"] * ref_shape.vocab * ref_shape.hidden)
    return {"forward_s": mean(b["forward_s"] for b in blocks) * ratio,
            "backward_s": mean(b["backward_s"] for b in blocks) * ratio,
            "quant_s": {bits: mean(b["quant_s"][str(bits)] for b in blocks) * ratio for bits in PROFILE_BITS},
            "head_forward_s": ref["head"]["forward_s"] * head_ratio, "machine_gflops": ref["machine_gflops"],
            "device": ref.get("device", "cpu"),
            "source": f"scaled by FLOPs from the measured profile of {ref.get('model', '?')}"}


# ----------------------------------------------------------------------------- feasibility

def deepest_feasible(profile, budget_bytes: float, bits: int | None) -> tuple[int, int] | None:
    """CostModel.deepest_fitting of `profile` (a Profile or a profile dict)."""
    from fedquad.costmodel import cost_model
    if isinstance(profile, dict):
        profile = profile_from_dict(profile)
    return cost_model(profile).deepest_fitting(budget_bytes, bits)


def gib(nbytes: float) -> float:
    return nbytes / 2 ** 30
