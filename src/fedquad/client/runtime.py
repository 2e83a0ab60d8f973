"""Apply a ClientPlan to an AdaptedModel: which LoRA tensors train, which blocks run under
no_grad, which keep int8/int4 saved activations.

Per block a forward pre-hook and an always-called forward hook bracket the block's forward:
blocks below the trainable segment run with grad disabled (so autograd records and saves
nothing there: the saving is real, not bookkeeping), trainable blocks run inside their own
saved-tensor policy. Everything outside the blocks (embeddings, final norm, pooler, head) runs
inside an accounting-only policy so the total is exact too.

Recomputed blocks (ClientPlan.recompute_layers) have their forward replaced, for the duration of
the `with` block, by non-reentrant activation checkpointing (torch.utils.checkpoint with
use_reentrant=False: the reentrant form needs an input that requires grad, which the frozen
prefix never gives; this is what HF's gradient_checkpointing_enable does per layer, Chen et al.
2016). The block's policy is still the innermost saved-tensor hook when the checkpoint saves the
block's inputs, so the policy sees exactly what the block stores (and quantizes it when the block
is also quantized); what the block saves inside its forward goes to the checkpoint's own hooks
and is dropped. In backward the checkpoint reruns the forward (same RNG state: same dropout
masks) and keeps the recomputed tensors until their nodes have run: those are counted, per block,
as `recompute_bytes` (distinct storages), a transient peak reported apart from the stored bytes.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.utils.checkpoint import checkpoint

from fedquad.client.saved_activations import BlockBytes, QuantSettings, SavedTensorPolicy, parameter_storages
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan, TrainOptions


class PlanRuntime:
    """Installed on a model for the duration of a `with` block; `step()` brackets one forward."""

    def __init__(self, adapted: AdaptedModel, plan: ClientPlan, quant: QuantSettings = QuantSettings(),
                 seed: int = 0, options: TrainOptions = TrainOptions()):
        self.adapted, self.plan, self.quant_settings = adapted, plan, quant
        L = adapted.num_blocks
        plan.validate_for(L)
        self.skipped = options.skip_blocks(L)  # bypassed blocks (FedRA sub-models): no compute kept
        self.trainable = set(plan.trainable_blocks(L)) - self.skipped
        self.quantized = set(plan.quantized_blocks(L)) - self.skipped
        self.recomputed = set(plan.recomputed_blocks(L)) - self.skipped
        self.trainable_keys = [k for k in adapted.keys_for_plan(plan) if adapted.key_block[k] not in self.skipped]
        storages = parameter_storages(adapted.model)
        generator = None
        if quant.stochastic:  # its own generator: stochastic rounding must not shift dropout's RNG
            generator = torch.Generator(device=adapted.device).manual_seed(seed)
        keep = frozenset({adapted.lora_rank})
        heads = frozenset(d for d in (_head_dim(adapted.model.config),) if d)  # int4 keeps these at int8
        self.policies = [SavedTensorPolicy(storages, quant if i in self.quantized else None, generator, keep, heads)
                         for i in range(L)]
        self.outside = SavedTensorPolicy(storages, None)
        self._storages = storages
        self._recompute_bytes = [0] * L
        self._handles: list = []
        self._stack: list = []

    # -- install / remove ---------------------------------------------------------------------
    def __enter__(self) -> "PlanRuntime":
        keys = set(self.trainable_keys)
        for key in self.adapted.adapter_keys:
            self.adapted.parameter(key).requires_grad_(key in keys)
        for i, block in enumerate(self.adapted.blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_pre(i), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._make_post(i), always_call=True))
        for i in sorted(self.recomputed):  # an instance attribute shadows the class's forward
            block = self.adapted.blocks[i]
            block.forward = self._checkpointed(i, block.forward)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for i in self.recomputed:
            self.adapted.blocks[i].__dict__.pop("forward", None)
        while self._stack:  # only after an exception inside a block's forward
            self._stack.pop().__exit__(None, None, None)

    def _make_pre(self, index: int):
        def pre(module, args, kwargs):
            if index in self.skipped:  # remember the input: the block's output is replaced by it
                self._bypass_input = args[0] if args else kwargs["hidden_states"]
            if index in self.trainable:
                ctx = self.policies[index].hooks()
                if self.adapted.device.type == "cuda":
                    ctx = _with_math_attention(ctx)
            else:
                ctx = torch.no_grad()
            ctx.__enter__()
            self._stack.append(ctx)
        return pre

    def _make_post(self, index: int):
        def post(module, args, output):
            self._stack.pop().__exit__(None, None, None)
            if index in self.skipped:  # identity block: same output structure, hidden states passed through
                hidden, self._bypass_input = self._bypass_input, None
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            return None
        return post

    # -- recompute -----------------------------------------------------------------------------
    def _checkpointed(self, index: int, forward):
        def run(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            # Like HF's GradientCheckpointingLayer: a KV cache would be appended to twice (forward
            # and recompute), so a checkpointed block runs without one (training never reads it).
            for key in _CACHE_KWARGS:
                if kwargs.get(key) is not None:
                    kwargs[key] = None
            if kwargs.get("use_cache"):
                kwargs["use_cache"] = False
            return checkpoint(forward, *args, use_reentrant=False,
                              context_fn=functools.partial(self._contexts, index), **kwargs)
        return run

    def _contexts(self, index: int):
        """(forward context, recompute context) for torch.utils.checkpoint: the recompute runs in
        backward, outside the block's pre-hook, so it re-enters the math attention (same saved
        tensors as the forward, which the checkpoint checks) and counts what it recomputes."""
        recompute = _count_recomputed(self, index)
        if self.adapted.device.type == "cuda":
            recompute = _with_math_attention(recompute)
        return contextlib.nullcontext(), recompute

    def recompute_bytes(self) -> list[int]:
        """Per block, bytes of the activations its recompute held during this step's backward
        (distinct storages, parameters excluded); 0 for blocks that are not recomputed."""
        return list(self._recompute_bytes)

    # -- per step ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self):
        """Bracket one forward (+ backward): resets the byte counts, accounts non-block tensors."""
        self._recompute_bytes = [0] * self.adapted.num_blocks
        for p in self.policies:
            p.reset()
        self.outside.reset()
        with self.outside.hooks():
            yield self

    def block_bytes(self) -> list[BlockBytes]:
        return [p.settle() for p in self.policies]  # settle: CUDA keep-raw decisions still in flight

    def outside_bytes(self) -> BlockBytes:
        return self.outside.settle()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.adapted.parameter(k) for k in self.trainable_keys]


# transformers 5 renamed a decoder layer's `past_key_values` to `cache` (the old name stays a
# deprecated alias); both are cleared, or the recompute appends the keys a second time.
_CACHE_KWARGS = ("past_key_value", "past_key_values", "cache", "layer_past")


@contextlib.contextmanager
def _count_recomputed(runtime: PlanRuntime, index: int):
    """Inside a checkpoint's recompute, wrap its pack hook (the top of the saved-tensor hook stack)
    with one that adds each new storage's bytes to the block's count, then hands the tensor on.
    torch has no public accessor for the top hook; without it nothing is counted and the block
    reports -1 (unknown) rather than a wrong 0."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    hooks = top(False) if top is not None else None
    if hooks is None:
        runtime._recompute_bytes[index] = -1
        yield
        return
    pack, unpack = hooks
    seen: set[int] = set()
    total = [0]

    def counting_pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in runtime._storages:
            seen.add(ptr)
            total[0] += storage.nbytes()
        return pack(t)

    try:
        with torch.autograd.graph.saved_tensors_hooks(counting_pack, unpack):
            yield
    finally:  # the largest of this step's recomputes of the block (micro-batches recompute it again)
        runtime._recompute_bytes[index] = max(runtime._recompute_bytes[index], total[0])


def _head_dim(config) -> int | None:
    """Per-head attention width (transformers configs map hidden_size / num_attention_heads for
    every family); None when the config does not say."""
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


@contextlib.contextmanager
def _with_math_attention(hooks):
    """A trainable block on CUDA runs attention on SDPA's math backend.

    The fused CUDA kernels (flash, memory-efficient) save q, k, v and the softmax log-sum-exp and
    recompute the probabilities in backward; a quantization error in the log-sum-exp or in q/k
    becomes a multiplicative error on every probability of the row. Measured on an H200, MiniLM
    with all blocks int4 had a worst LoRA-gradient cosine of 0.05 that way. The math backend saves
    the probabilities themselves, which the square-root grid keeps accurately (as on CPU). Every
    trainable block uses it, quantized or not, so that a plan and its unquantized reference draw
    identical dropout masks and the saved tensors are the same kind on CPU and CUDA; frozen
    blocks (no_grad, nothing saved) keep the fused kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH), hooks:
        yield
