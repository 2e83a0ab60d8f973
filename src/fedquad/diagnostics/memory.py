"""`fedquad memory`: one real training step with a plan on generated input.

Reports per block the raw and kept saved-activation bytes (exact, from the pack hooks), the
step time, the whole step's peak memory above the resident model measured in the plan's own
steps (diagnostics/step_peak.py) next to the cost model's prediction of it, the process peak RSS
(a process-lifetime maximum, kept for reference only), and the cosine similarity of every trained
gradient against an unquantized step on the same batch (same dropout masks).
"""

from __future__ import annotations

import dataclasses

import resource
import statistics
import sys
import time
import weakref
from dataclasses import dataclass, field

import torch

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import QuantSettings
from fedquad.client.train import forward_backward
from fedquad.errors import FedquadError
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan
from fedquad.quant import warm_up


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise FedquadError(f"--device {requested} asked for, but CUDA is not available here")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise FedquadError(f"unknown device {requested!r}; use auto, cpu or cuda") from None


def generated_batch(adapted: AdaptedModel, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (no padding) and labels; the shapes, not the content, set the memory."""
    if batch_size <= 0 or seq_len <= 0:
        raise FedquadError(f"batch size and sequence length must be positive, got {batch_size} and {seq_len}")
    config = adapted.model.config
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_pos and seq_len > max_pos:
        raise FedquadError(f"--seq-len {seq_len} exceeds the model's context of {max_pos} tokens")
    g = torch.Generator().manual_seed(seed)
    vocab = config.vocab_size
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = adapted.kind.generated_labels(ids, config.num_labels, g)
    return batch


@torch.no_grad()
def perturb_adapters(adapted: AdaptedModel, std: float = 0.02, seed: int = 0) -> None:
    """LoRA B starts at zero, which makes every LoRA A gradient zero and a cosine meaningless;
    a small random B stands in for an adapter that has trained a few rounds."""
    g = torch.Generator().manual_seed(seed)
    for key in adapted.adapter_keys:
        if "lora_B" in key:
            p = adapted.parameter(key)
            p.copy_(torch.randn(p.shape, generator=g).to(p) * std)


@dataclass
class MemoryReport:
    model: str
    plan: ClientPlan
    batch_size: int
    seq_len: int
    device: str
    dtype: str
    blocks: list[dict] = field(default_factory=list)
    outside_bytes: int = 0
    step_s: float = 0.0
    reference_step_s: float = 0.0
    grad_cosines: dict[str, float] = field(default_factory=dict)
    warmup_s: float = 0.0  # quantizer build/compile before the timed steps (not in step_s)
    peak_rss_bytes: int = 0
    cuda_max_memory_allocated_bytes: int | None = None
    measured_step_peak_bytes: int | None = None   # the plan's own steps, above the resident model
    predicted_step_peak_bytes: int | None = None  # the cost model's figure for the same quantity
    predicted_from: str | None = None             # which profile made the prediction

    @property
    def raw_bytes(self) -> int:
        return sum(b["raw_bytes"] for b in self.blocks)

    @property
    def kept_bytes(self) -> int:
        return sum(b["kept_bytes"] for b in self.blocks)

    def to_dict(self) -> dict:
        cos = list(self.grad_cosines.values())
        out = {
            "model": self.model, "plan": self.plan.to_dict(), "batch_size": self.batch_size,
            "seq_len": self.seq_len, "device": self.device, "dtype": self.dtype,
            "raw_bytes": self.raw_bytes, "kept_bytes": self.kept_bytes,
            "kept_ratio": self.kept_bytes / self.raw_bytes if self.raw_bytes else 1.0,
            "outside_bytes": self.outside_bytes, "blocks": self.blocks,
            # recompute: the largest set of activations one checkpointed block rebuilt in backward
            "recompute_peak_bytes": max((b.get("recompute_bytes", 0) for b in self.blocks), default=0),
            "step_s": self.step_s, "reference_step_s": self.reference_step_s, "warmup_s": self.warmup_s,
            "peak_rss_bytes": self.peak_rss_bytes,
            "measured_step_peak_bytes": self.measured_step_peak_bytes,
            "predicted_step_peak_bytes": self.predicted_step_peak_bytes,
            "predicted_from": self.predicted_from,
            "grad_cosine_min": min(cos) if cos else None,
            "grad_cosine_mean": sum(cos) / len(cos) if cos else None,
            "trained_tensors": len(cos),
        }
        if self.cuda_max_memory_allocated_bytes is not None:
            out["cuda_max_memory_allocated_bytes"] = self.cuda_max_memory_allocated_bytes
        return out


def default_profile(adapted: AdaptedModel, batch_size: int, seq_len: int, quant: QuantSettings):
    """The profile `fedquad memory` predicts with when none is given: a shipped profile of the same
    model, dtype and group size at the current schema if there is one, else for a LLaMA-family decoder the config-only estimate
    (costmodel/llm_estimate.py) at this shape; None otherwise."""
    from fedquad.costmodel import list_profiles, load_profile
    dtype = str(next(adapted.model.parameters()).dtype).replace("torch.", "")
    for name in list_profiles():
        p = load_profile(name)
        if (p.model == adapted.name and p.dtype == dtype and p.num_blocks == adapted.num_blocks
                and p.group_size == quant.group_size and not p.upgraded):  # an old profile's workspace is a guess
            return p
    if adapted.family in ("llama", "mistral", "qwen2") and adapted.task == "causal-lm":
        from fedquad.costmodel.llm_estimate import DecoderShape, estimate_profile
        from fedquad.costmodel.profile import profile_from_dict
        shape = DecoderShape.from_config(adapted.model.config.to_dict(), adapted.family)
        doc = estimate_profile(shape, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                               lora_rank=adapted.lora_rank, group_size=quant.group_size, model=adapted.name)
        return profile_from_dict(doc, source=f"config-only estimate of {adapted.name}")
    return None


def _peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024  # Linux reports KiB, macOS bytes


def _grads(runtime: PlanRuntime) -> dict[str, torch.Tensor]:
    out = {}
    for key in runtime.trainable_keys:
        p = runtime.adapted.parameter(key)
        out[key] = p.grad.detach().float().clone() if p.grad is not None else torch.zeros(p.shape)
        p.grad = None
    return out


def _timed_step(adapted, runtime, batch, seed) -> float:
    torch.manual_seed(seed)  # identical dropout masks in the reference and the measured step
    if adapted.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    forward_backward(adapted, runtime, batch)
    if adapted.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _cosine(g: torch.Tensor, r: torch.Tensor) -> float:
    """Cosine in float64; identical tensors give exactly 1.0 (float32 rounding would not)."""
    if torch.equal(g, r):
        return 1.0
    g, r = g.double(), r.double()
    denom = float(g.norm() * r.norm())
    return float((g * r).sum()) / denom if denom > 0 else 0.0


def probe_memory(adapted: AdaptedModel, plan: ClientPlan, batch: dict[str, torch.Tensor],
                 quant: QuantSettings = QuantSettings(), seed: int = 0,
                 reference: tuple[float, dict[str, torch.Tensor]] | None = None, repeats: int = 1,
                 profile=None, step_peak: bool = False) -> MemoryReport:
    """Measure one step of `plan` against the same step unquantized. `reference` may pass in an
    earlier unquantized result for the same depth (the sweep reuses it). With `repeats` > 1 the
    step times are medians of that many steps, the plan's and the reference's interleaved so that
    a busy machine slows both alike; bytes and gradients come from the last step (all identical).
    Kernel compilation and a cold first step are kept out of the times (`warmup_s`).
    With `step_peak` the plan's whole step peak is measured in its own two steps; with `profile`
    (a costmodel Profile) the cost model's prediction of it at this batch's shape is reported too."""
    plan.validate_for(adapted.num_blocks)
    if repeats < 1:
        raise FedquadError(f"repeats must be at least 1, got {repeats}")
    quant = dataclasses.replace(quant, bits=plan.bits)
    adapted.model.train()
    warmup_s = warm_up_quantizer(adapted, plan, quant) if plan.quant_layers else 0.0
    own_reference = reference is None
    if adapted.model not in _STEPPED:  # a model's first step is cold (allocator, thread pools)
        warm_step(adapted, plan, batch, quant, seed)
    ref_times, times = [], []
    for _ in range(repeats - 1):
        if own_reference:
            ref_times.append(reference_step(adapted, plan, batch, quant, seed)[0])
        with PlanRuntime(adapted, plan, quant, seed=seed) as runtime:
            times.append(_timed_step(adapted, runtime, batch, seed))
            _grads(runtime)
    if own_reference:
        reference = reference_step(adapted, plan, batch, quant, seed)
    ref_s, ref_grads = reference
    ref_s = statistics.median(ref_times + [ref_s])
    if adapted.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PlanRuntime(adapted, plan, quant, seed=seed) as runtime:
        step_s = statistics.median(times + [_timed_step(adapted, runtime, batch, seed)])
        grads = _grads(runtime)
        recomputed = runtime.recompute_bytes()  # recompute: the transient of each block's backward
        blocks = [{"index": i, "trainable": i in runtime.trainable, "quantized": i in runtime.quantized,
                   "recomputed": i in runtime.recomputed, "recompute_bytes": recomputed[i],
                   "raw_bytes": b.raw_bytes, "kept_bytes": b.kept_bytes, "tensors": b.tensors,
                   "quantized_tensors": b.quantized_tensors, "skipped": dict(b.skipped)}
                  for i, b in enumerate(runtime.block_bytes())]
        outside = runtime.outside_bytes().kept_bytes
    report = MemoryReport(model=adapted.name, plan=plan, batch_size=int(batch["input_ids"].shape[0]),
                          seq_len=int(batch["input_ids"].shape[1]), device=str(adapted.device),
                          dtype=str(next(adapted.model.parameters()).dtype).replace("torch.", ""),
                          blocks=blocks, outside_bytes=outside, step_s=step_s, reference_step_s=ref_s,
                          warmup_s=warmup_s)
    for key, g in grads.items():
        r = ref_grads[key]
        report.grad_cosines[key] = _cosine(g, r)
    if step_peak:
        from fedquad.diagnostics.step_peak import measure_step_peak_bytes
        report.measured_step_peak_bytes = measure_step_peak_bytes(adapted, plan, batch, quant, seed)
    if profile is not None and plan.recompute_layers:
        report.predicted_from = "none: the cost model does not model recomputed blocks"
    elif profile is not None:
        from fedquad.costmodel import cost_model_at
        cm = cost_model_at(profile, report.batch_size, report.seq_len)
        report.predicted_step_peak_bytes = int(round(cm.step_peak_bytes(plan)))
        report.predicted_from = profile.source
    report.peak_rss_bytes = _peak_rss_bytes()
    if adapted.device.type == "cuda":
        report.cuda_max_memory_allocated_bytes = int(torch.cuda.max_memory_allocated())
    return report


def warm_up_quantizer(adapted: AdaptedModel, plan: ClientPlan, quant: QuantSettings) -> float:
    """Build/compile the quantizer's kernels for this setting before any timed step; seconds.
    The first quantized step of a process would otherwise include it (~10 s for torch.compile)."""
    return warm_up(quant.quantizer, plan.bits, quant.group_size, quant.stochastic, adapted.device)


_STEPPED: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()  # models that have had their cold step


def warm_step(adapted: AdaptedModel, plan: ClientPlan, batch, quant: QuantSettings, seed: int = 0) -> None:
    """One untimed step of ``plan``; its gradients are dropped."""
    with PlanRuntime(adapted, plan, quant, seed=seed) as runtime:
        _timed_step(adapted, runtime, batch, seed)
        _grads(runtime)
    _STEPPED.add(adapted.model)


def reference_step(adapted: AdaptedModel, plan: ClientPlan, batch, quant: QuantSettings, seed: int = 0):
    """(step seconds, gradients) of the same depth with no quantized and no recomputed block."""
    unquantized = ClientPlan(plan.depth, 0, plan.bits, plan.placement)
    adapted.model.train()  # dropout as in the measured step (a freshly loaded model is in eval mode)
    with PlanRuntime(adapted, unquantized, quant, seed=seed) as runtime:
        seconds = _timed_step(adapted, runtime, batch, seed)
        return seconds, _grads(runtime)


def sweep(adapted: AdaptedModel, bits: int, batch, quant: QuantSettings = QuantSettings(), seed: int = 0,
          placement: str = "bottom", progress=None, recompute: bool = False, profile=None,
          step_peak: bool = False) -> list[MemoryReport]:
    """Every (depth, quant_layers) at `bits`; with `recompute` also, per depth, every number r of
    recomputed blocks with full-precision inputs (q = 0) and with quantized inputs (q = r)."""
    reports = []
    full = ClientPlan(adapted.num_blocks, adapted.num_blocks, bits, placement)
    warm_up_quantizer(adapted, full, dataclasses.replace(quant, bits=bits))
    if adapted.model not in _STEPPED:  # so that the first row is not a cold step
        warm_step(adapted, full, batch, dataclasses.replace(quant, bits=bits), seed)
    for depth in range(adapted.num_blocks + 1):
        ref = reference_step(adapted, ClientPlan(depth, 0, bits, placement), batch, quant, seed)
        for q in range(depth + 1):
            reports.append(probe_memory(adapted, ClientPlan(depth, q, bits, placement), batch, quant, seed, ref,
                                        profile=profile, step_peak=step_peak))
            if progress:
                progress()
        for r in range(1, depth + 1) if recompute else ():
            for q in (0, r):
                reports.append(probe_memory(adapted, ClientPlan(depth, q, bits, placement, r), batch, quant, seed, ref,
                                            profile=profile, step_peak=step_peak))
                if progress:
                    progress()
    return reports
