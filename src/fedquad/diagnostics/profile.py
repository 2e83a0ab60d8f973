"""`fedquad profile`: measure everything the cost model needs on the machine at hand.

Bytes are exact (pack-hook accounting) and come from one step of each plan below. The lowest
trainable block saves less than the same block would with trainable blocks beneath it when its
input needs no gradient (LLaMA's RMSNorm, for one, then saves nothing for its input's grad), so
every block is recorded both ways: `saved_bytes` / `kept_bytes` as a block with a trainable block
below it, `saved_bytes_lowest` / `kept_bytes_lowest` as the lowest trainable block. With both,
the cost model reproduces the measured bytes of every (depth, quant_layers, bits) exactly.

Times: a set of plans (every depth unquantized; full depth with 1..L bottom blocks quantized and
every depth fully quantized, at 8 and 4 bits) is stepped round-robin, in a shuffled order each
round, so slow phases of a busy machine spread over all plans instead of biasing a few. The
median step of each plan is then fitted (costmodel/fit.py) by non-negative least squares
(relative error) to
    step = base + sum_trainable backward_l + sum_quantized quant_l[bits]
which gives per-block times that are never negative and that add back up to the measured steps;
the residuals are stored in the profile (`timing`) so the fit can be judged. Forward time per
block comes from hooks around each block at depth 0; the rest of `base` (embeddings, head,
loss, optimizer step) is charged to the head.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from dataclasses import dataclass

import torch

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import QuantSettings
from fedquad.client.train import forward_backward
from fedquad.costmodel.fit import fit_step_times
from fedquad.costmodel.profile import (ADAMW_STATE_FACTOR, PROFILE_BITS, BlockProfile, HeadProfile, LengthPoint,
                                       Profile, kept_ratio_of, profile_document)
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan
from fedquad.quant import warm_up



def _sync(adapted: AdaptedModel) -> None:
    if adapted.device.type == "cuda":
        torch.cuda.synchronize()


def machine_gflops(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """Sustained fp32 matmul throughput: the yardstick device speeds are expressed against."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def profile_plans(num_blocks: int) -> list[ClientPlan]:
    """The plans `profile_model` steps: enough to identify every per-block byte count and time."""
    L = num_blocks
    plans = [ClientPlan(d) for d in range(L + 1)]
    for bits in PROFILE_BITS:
        plans += [ClientPlan(L, q, bits) for q in range(1, L + 1)]
        plans += [ClientPlan(d, d, bits) for d in range(1, L)]
    return plans


def recompute_profile_plans(num_blocks: int) -> list[ClientPlan]:
    """Recompute: full depth with every block checkpointed, with full-precision and quantized
    inputs; they give each block's `input_bytes` / `input_kept_bytes` (exact). Their times are
    recorded (`timing.recompute_plans`) but not fitted: the cost model prices recompute as one extra
    forward of the block."""
    L = num_blocks
    return [ClientPlan(L, 0, 8, "bottom", L)] + [ClientPlan(L, L, bits, "bottom", L) for bits in PROFILE_BITS]


def profile_steps(num_blocks: int, repeats: int, warmup: int) -> int:
    """Training steps `profile_model` runs (for a progress bar)."""
    return (len(profile_plans(num_blocks)) + len(recompute_profile_plans(num_blocks))) * (repeats + warmup)


class _PlanStepper:
    """One plan's runtime and optimizer, kept across the interleaved rounds."""

    def __init__(self, adapted: AdaptedModel, plan: ClientPlan, quant: QuantSettings):
        self.adapted, self.plan = adapted, plan
        self.runtime = PlanRuntime(adapted, plan, dataclasses.replace(quant, bits=plan.bits))
        self.optimizer = None
        self.times: list[float] = []
        self.block_forward: list[list[float]] = [[] for _ in range(adapted.num_blocks)]
        self.block_bytes = None
        self.outside_bytes = None

    def step(self, batch, record: bool, fwd_hooks) -> None:
        adapted = self.adapted
        with self.runtime as runtime:
            if self.optimizer is None:
                params = runtime.trainable_parameters()
                self.optimizer = torch.optim.AdamW(params, lr=1e-6) if params else False
            fwd_hooks.target = self.block_forward if record else None
            _sync(adapted)
            start = time.perf_counter()
            forward_backward(adapted, runtime, batch)
            if self.optimizer:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            _sync(adapted)
            elapsed = time.perf_counter() - start
            fwd_hooks.target = None
            self.block_bytes = runtime.block_bytes()
            self.outside_bytes = runtime.outside_bytes()
        if record:
            self.times.append(elapsed)


class _ForwardHooks:
    """Per-block forward timers; record into `target` (a list per block) while it is set."""

    def __init__(self, adapted: AdaptedModel):
        self.adapted = adapted
        self.target = None
        self._starts: dict[int, float] = {}
        self._handles = []
        for i, block in enumerate(adapted.blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre(i)))
            self._handles.append(block.register_forward_hook(self._post(i)))

    def _pre(self, i):
        def hook(module, args):
            if self.target is not None:
                _sync(self.adapted)
                self._starts[i] = time.perf_counter()
        return hook

    def _post(self, i):
        def hook(module, args, out):
            if self.target is not None and i in self._starts:
                _sync(self.adapted)
                self.target[i].append(time.perf_counter() - self._starts.pop(i))
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class PlanMeasurement:
    """What `measure_plans` saw for one plan."""
    plan: ClientPlan
    times_s: list[float]                 # timed steps (forward + backward + AdamW step)
    block_forward_s: list[list[float]]   # per block, forward times of the timed steps
    block_bytes: list                    # BlockBytes per block, last step (exact)
    outside_bytes: object                # BlockBytes outside the blocks, last step

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def statistic_s(self, statistic: str) -> float:
        return min(self.times_s) if statistic == "min" else self.median_s


def measure_plans(adapted: AdaptedModel, batch: dict[str, torch.Tensor], plans: list[ClientPlan], *,
                  quant: QuantSettings = QuantSettings(), repeats: int = 7, warmup: int = 1, seed: int = 0,
                  progress=None) -> dict[ClientPlan, PlanMeasurement]:
    """Step every plan `warmup + repeats` times, round-robin in a shuffled order per round, so
    that a slow phase of a shared machine spreads over all plans. Leaves the adapters as found."""
    global_state = adapted.adapter_state()
    adapted.model.train()
    warm_up_quantizers(adapted, plans, quant)  # no kernel compilation inside a timed step
    steppers = {plan: _PlanStepper(adapted, plan, quant) for plan in plans}
    hooks = _ForwardHooks(adapted)
    order = random.Random(seed)
    try:
        for r in range(warmup + repeats):
            ordered = list(plans)
            order.shuffle(ordered)
            for plan in ordered:
                steppers[plan].step(batch, r >= warmup, hooks)
                if progress:
                    progress()
    finally:
        hooks.remove()
        adapted.load_adapter_state(global_state)
    return {plan: PlanMeasurement(plan, s.times, s.block_forward, s.block_bytes, s.outside_bytes)
            for plan, s in steppers.items()}


def warm_up_quantizers(adapted: AdaptedModel, plans: list[ClientPlan], quant: QuantSettings) -> float:
    """Build/compile the quantizer kernels every quantized plan needs; seconds (cached after)."""
    bits = sorted({p.bits for p in plans if p.quant_layers})
    return sum(warm_up(quant.quantizer, b, quant.group_size, quant.stochastic, adapted.device) for b in bits)


STATISTICS = ("median", "min")


def profile_model(adapted: AdaptedModel, batch: dict[str, torch.Tensor], *, quant: QuantSettings = QuantSettings(),
                  repeats: int = 7, warmup: int = 1, seed: int = 0, statistic: str = "median",
                  progress=None, extra_seq_lens: tuple[int, ...] = (), step_peaks: bool = True) -> dict:
    """The profile document (costmodel.profile's format) for `adapted` at this batch's shape.

    `statistic` summarises each plan's timed steps: "median" (docs/design.md, "Cost model"), or
    "min", the better estimate on a machine whose other load only ever slows a step down (when other jobs
    hold the cores for more than half of the steps, every median is a contended one).
    `extra_seq_lens`: the same measurements again at these lengths (same batch size, generated
    input), stored as the profile's `lengths` so the cost model fits per-block terms linear and
    quadratic in the length (costmodel/shape.py). `step_peaks`: measure every plan's whole step
    peak (diagnostics/step_peak.py) and take the workspace from it; False keeps the old estimate
    (one block's saved activations) and skips two extra steps per plan."""
    from fedquad.diagnostics.memory import generated_batch

    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    profile, info = _measure_at(adapted, batch, quant, repeats, warmup, seed, statistic, progress, step_peaks)
    batch_size, seq_len = int(batch["input_ids"].shape[0]), int(batch["input_ids"].shape[1])
    points, peaks = [], {seq_len: info.pop("step_peak")}
    for s in sorted(set(extra_seq_lens) - {seq_len}):
        other, other_info = _measure_at(adapted, generated_batch(adapted, batch_size, s, seed), quant, repeats,
                                        warmup, seed, statistic, progress, step_peaks)
        peaks[s] = other_info["step_peak"]
        points.append(LengthPoint(seq_len=s, workspace_bytes=other.workspace_bytes,
                                  workspace_bytes_depth0=other.workspace_bytes_depth0,
                                  workspace_bytes_quantized=other.workspace_bytes_quantized,
                                  embedding_forward_s=other.embedding_forward_s, head=other.head, blocks=other.blocks))
    profile = dataclasses.replace(profile, lengths=tuple(points))
    step_peak = None
    if step_peaks:
        from fedquad.costmodel import cost_model_at
        step_peak = {"method": "torch profiler CPU allocator totals (CUDA: max_memory_allocated); "
                               "2 local steps per plan, peak above the resident model",
                     "by_length": {str(s): [dict(row, predicted_bytes=int(cost_model_at(profile, batch_size, s)
                                                                           .step_peak_bytes(ClientPlan.from_dict(row["plan"]))))
                                            for row in rows] for s, rows in peaks.items()}}
    return profile_document(profile, step_peak=step_peak, **info)


def profile_lengths_steps(num_blocks: int, repeats: int, warmup: int, extra_seq_lens: int) -> int:
    """Training steps of `profile_model` with that many extra lengths (for a progress bar)."""
    return profile_steps(num_blocks, repeats, warmup) * (1 + extra_seq_lens)


def _measure_at(adapted: AdaptedModel, batch, quant: QuantSettings, repeats: int, warmup: int, seed: int,
                statistic: str, progress, step_peaks: bool):
    """(Profile, information sections) of one batch shape."""
    from fedquad.diagnostics.step_peak import measure_step_peaks

    L = adapted.num_blocks
    plans = profile_plans(L)
    recompute_plans = recompute_profile_plans(L)  # bytes only (and times for the record), not fitted
    warmup_s = warm_up_quantizers(adapted, plans, quant)  # reported apart from the step times
    measured = measure_plans(adapted, batch, plans + recompute_plans, quant=quant, repeats=repeats, warmup=warmup,
                             seed=seed, progress=progress)

    # -- bytes (exact) -------------------------------------------------------------------------
    def block(plan, i):
        return measured[plan].block_bytes[i]

    full = ClientPlan(L)
    saved_lowest = [block(ClientPlan(L - i), i).raw_bytes for i in range(L)]
    saved = [saved_lowest[0]] + [block(full, i).raw_bytes for i in range(1, L)]
    kept_lowest = {bits: [block(ClientPlan(L - i, L - i, bits), i).kept_bytes for i in range(L)] for bits in PROFILE_BITS}
    kept = {bits: [kept_lowest[bits][0]] + [block(ClientPlan(L, L, bits), i).kept_bytes for i in range(1, L)]
            for bits in PROFILE_BITS}
    # recompute: what a checkpointed block stores (its inputs), raw and with the input quantized
    input_raw = [block(recompute_plans[0], i).raw_bytes for i in range(L)]
    input_kept = {bits: [block(p, i).kept_bytes for i in range(L)] for bits, p in zip(PROFILE_BITS, recompute_plans[1:])}
    head_depth0 = measured[ClientPlan(0)].outside_bytes.kept_bytes
    # Outside bytes do not depend on the depth once a block trains; take the largest to be safe.
    head_saved = max(s.outside_bytes.kept_bytes for p, s in measured.items() if p.depth > 0)

    # -- times (fitted) ------------------------------------------------------------------------
    medians = [measured[p].statistic_s(statistic) for p in plans]
    base, backward, quant_s, fitted = fit_step_times(plans, medians, L)
    forward = [statistics.median(t) if t else 0.0 for t in measured[ClientPlan(0)].block_forward_s]
    if sum(forward) > base > 0:  # the fit says the fixed part is smaller than the hooks saw
        forward = [f * base / sum(forward) for f in forward]
    head_forward = max(0.0, base - sum(forward))
    residuals = [(f - m) / m for f, m in zip(fitted, medians)]

    per_block_adapter, head_adapter = adapted.block_adapter_bytes()
    frozen = sum(p.numel() * p.element_size() for p in adapted.model.parameters())
    frozen -= sum(per_block_adapter) + head_adapter

    # -- the whole step's peak (exact) -----------------------------------------------------------
    # workspace = peak - saved activations - gradients and AdamW state, largest over the plans
    # (the planner must not under-state any plan); depth 0 apart (nothing but the head trains).
    opt = ADAMW_STATE_FACTOR
    peak_rows, workspace, workspace0, workspace_q = [], max(saved) if saved else 0, None, None
    if step_peaks:
        rest = {}
        for plan, peak in zip(plans, measure_step_peaks(adapted, plans, batch, quant, seed)):
            m = measured[plan]
            activations = sum(b.kept_bytes for b in m.block_bytes) + m.outside_bytes.kept_bytes
            trained = head_adapter + sum(per_block_adapter[i] for i in plan.trainable_blocks(L))
            rest[plan] = peak - activations - opt * trained
            peak_rows.append({"plan": plan.to_dict(), "measured_bytes": int(peak), "saved_bytes": int(activations)})
        workspace = int(max(0, max(v for p, v in rest.items() if p.depth > 0 and not p.quant_layers)))
        workspace_q = int(max(0, max(v for p, v in rest.items() if p.quant_layers)))
        workspace0 = int(max(0, rest[ClientPlan(0)]))

    blocks = tuple(BlockProfile(
        index=i, saved_bytes=saved[i], kept_bytes={bits: kept[bits][i] for bits in PROFILE_BITS},
        saved_bytes_lowest=saved_lowest[i], kept_bytes_lowest={bits: kept_lowest[bits][i] for bits in PROFILE_BITS},
        adapter_bytes=per_block_adapter[i], forward_s=forward[i], backward_s=backward[i],
        quant_s={bits: quant_s[bits][i] for bits in PROFILE_BITS},
        input_bytes=input_raw[i], input_kept_bytes={bits: input_kept[bits][i] for bits in PROFILE_BITS})
        for i in range(L))
    input_ids = batch["input_ids"]
    profile = Profile(
        model=adapted.name, family=adapted.family, num_blocks=L,
        batch_size=int(input_ids.shape[0]), seq_len=int(input_ids.shape[1]),
        dtype=str(next(adapted.model.parameters()).dtype).replace("torch.", ""), device=adapted.device.type,
        group_size=quant.group_size, machine_gflops=machine_gflops(adapted.device),
        frozen_weight_bytes=frozen, adapter_bytes=sum(per_block_adapter) + head_adapter,
        head_adapter_bytes=head_adapter, optimizer_bytes_per_trainable_byte=opt,
        workspace_bytes=workspace, workspace_bytes_depth0=workspace0, workspace_bytes_quantized=workspace_q,
        # Everything outside the blocks (embeddings, head forward and backward, loss, optimizer
        # step) is in the head's forward time: the fitted fixed part minus the blocks' forward.
        embedding_forward_s=0.0,
        head=HeadProfile(saved_bytes=head_saved, saved_bytes_depth0=head_depth0, forward_s=head_forward,
                         backward_s=0.0),
        blocks=blocks, kept_ratio=kept_ratio_of(blocks))
    info = dict(
        task=adapted.task,
        measured_step_s={"by_depth": [medians[d] for d in range(L + 1)]},
        timing={
            "method": f"non-negative least squares on the {statistic} step time of each plan (relative error)",
            "statistic": statistic, "repeats": repeats, "warmup": warmup, "threads": torch.get_num_threads(),
            "quantizer_warmup_s": warmup_s,
            "plans": [{"plan": p.describe(), "depth": p.depth, "quant_layers": p.quant_layers, "bits": p.bits,
                       "measured_s": m, "fitted_s": f} for p, m, f in zip(plans, medians, fitted)],
            "recompute_plans": [{"plan": p.describe(), "measured_s": measured[p].statistic_s(statistic)}
                                for p in recompute_plans],
            "max_abs_rel_residual": max(abs(x) for x in residuals),
            "mean_abs_rel_residual": sum(abs(x) for x in residuals) / len(residuals),
        },
        step_peak=peak_rows)
    return profile, info
