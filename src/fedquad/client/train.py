"""Local training on one client: load the global adapter, train what the plan allows, return
only the trained tensors and measured metrics (time, exact saved-activation bytes).

No out-of-memory by construction (issue 10, item 4): with a `StepMemory` the client predicts,
before each step, the step's whole peak from the batch's actual shape (batch size x padded
length); a step that would not fit the budget runs as the fewest near-equal micro-batches that
do fit, their gradients accumulated, and the optimizer steps once. A step that fits runs whole
(no cost paid for nothing). Each micro-batch's loss is weighted by its share of the units the
model's loss averages over (`TaskKind.loss_units`: examples for classification, scored tokens
for causal LM), so the weighted losses sum to the whole batch's loss and the accumulated
gradient is the whole batch's up to float summation order (tests/test_microbatch.py).

What a split step does differently, by design: dropout masks and stochastic-rounding noise are
drawn per micro-batch (fresh draws of the same distributions, seeded and reproducible, not the
unsplit step's draws); quantization groups (`group_size` elements of a flattened saved tensor)
and per-tensor choices (square-root grid, outlier fallback) see one micro-batch's tensor, so a
quantized block's rounding can differ slightly where a group straddles two examples. A
micro-batch with no scored token (causal LM) contributes exactly nothing and is not run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import QuantSettings
from fedquad.errors import FedquadError
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan, TrainOptions


class ClientOutOfMemory(FedquadError):
    """The plan's measured saved activations exceed what the device has: it fails as if out of memory."""

    def __init__(self, saved_bytes: float, limit_bytes: float, fixed_bytes: float | None = None):
        self.saved_bytes, self.limit_bytes, self.fixed_bytes = saved_bytes, limit_bytes, fixed_bytes
        super().__init__(f"saved activations {saved_bytes / 2**20:.1f} MiB exceed the "
                         f"{max(limit_bytes, 0) / 2**20:.1f} MiB the device has left for them")

    def needed_bytes(self, fixed_bytes: float) -> float:
        """The memory the failed step needed in all: the predicted part beyond saved activations
        (at the failed micro-batch's shape where the client knew it, else `fixed_bytes`) plus the
        measured saved activations."""
        return (fixed_bytes if self.fixed_bytes is None else self.fixed_bytes) + self.saved_bytes


class StepDoesNotFit(ClientOutOfMemory):
    """Even a micro-batch of one example is predicted to exceed the step budget: the device
    cannot train this plan at this sequence length, so it fails before running the step."""

    def __init__(self, peak_bytes: float, budget_bytes: float, seq_len: int, whole_peak_bytes: float):
        self.saved_bytes, self.limit_bytes, self.peak_bytes = float("nan"), budget_bytes, peak_bytes
        self.fixed_bytes, self.whole_peak_bytes = None, whole_peak_bytes
        FedquadError.__init__(self, f"a step of one example at padded length {seq_len} needs "
                                    f"{peak_bytes / 2**20:.1f} MiB, the budget is {max(budget_bytes, 0) / 2**20:.1f} MiB")

    def needed_bytes(self, fixed_bytes: float) -> float:
        """The whole batch's predicted peak: what the plan needed at this batch (the planner compares
        it with its own prediction; one example's peak would read as an overestimate)."""
        return self.whole_peak_bytes


@dataclass(frozen=True)
class StepMemory:
    """What the client needs to keep every step within memory: a predictor of the whole step's
    peak for a (batch size, padded length) step under this client's plan, and the budget that
    peak must stay within (the same quantity: whole memory vs whole budget, or both above the
    resident model). With `fixed_bytes` (the predicted part beyond saved activations at a shape)
    the client also checks what it measures: a (micro-)step whose measured saved activations
    exceed `budget_bytes - fixed_bytes(shape)` fails as out of memory (the predictor was wrong)."""

    peak_bytes: Callable[[int, int], float] = field(metadata={
        "help": "predicted whole-step peak bytes of a step of (batch size, padded length) under the plan"})
    budget_bytes: float = field(metadata={"help": "bytes a step may peak at (compared with peak_bytes)"})
    fixed_bytes: Callable[[int, int], float] | None = field(default=None, metadata={
        "help": "predicted bytes beyond saved activations at (batch size, padded length); None: no measured check"})

    @classmethod
    def from_profile(cls, profile, plan: ClientPlan, budget_bytes: float) -> "StepMemory":
        """The cost model's whole-step peak of `plan` at each batch shape
        (`fedquad.costmodel.predict_step_peak_bytes`) against `budget_bytes`, and its part beyond
        saved activations for the measured check."""
        from fedquad.costmodel import cost_model_at, predict_step_peak_bytes

        def fixed(batch_size: int, seq_len: int) -> float:
            cm = cost_model_at(profile, batch_size, seq_len)
            return float(cm.memory_bytes(plan) - cm.saved_bytes(plan))

        return cls(lambda b, s: predict_step_peak_bytes(profile, plan, b, s), float(budget_bytes), fixed)

    def __post_init__(self) -> None:
        if not callable(self.peak_bytes) or not (self.fixed_bytes is None or callable(self.fixed_bytes)):
            raise FedquadError("StepMemory.peak_bytes (and fixed_bytes) must be callables (batch_size, seq_len) -> bytes")
        if not isinstance(self.budget_bytes, (int, float)) or math.isnan(self.budget_bytes):
            raise FedquadError(f"StepMemory.budget_bytes must be a number, got {self.budget_bytes!r}")

    def micro_batch_sizes(self, batch_size: int, seq_len: int) -> list[int]:
        """The fewest near-equal micro-batch sizes (summing to `batch_size`) whose predicted peak
        fits the budget; `[batch_size]` when the whole batch fits. The predictor is taken to grow
        with the batch size (a bisection finds the largest size that fits). Raises StepDoesNotFit
        when one example does not fit."""
        if batch_size < 1 or seq_len < 1:
            raise FedquadError(f"a step needs a batch size and length >= 1, got {batch_size} x {seq_len}")
        if self._fits(batch_size, seq_len):
            return [batch_size]
        if not self._fits(1, seq_len):
            raise StepDoesNotFit(float(self.peak_bytes(1, seq_len)), float(self.budget_bytes), seq_len,
                                 float(self.peak_bytes(batch_size, seq_len)))
        lo, hi = 1, batch_size  # invariant: lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._fits(mid, seq_len) else (lo, mid)
        count = -(-batch_size // lo)
        base, extra = divmod(batch_size, count)  # near-equal: sizes differ by at most one, each <= lo
        return [base + 1] * extra + [base] * (count - extra)

    def _fits(self, batch_size: int, seq_len: int) -> bool:
        peak = float(self.peak_bytes(batch_size, seq_len))
        if not math.isfinite(peak) or peak < 0:
            raise FedquadError(f"the step-peak predictor returned {peak!r} for {batch_size} x {seq_len}")
        return peak <= self.budget_bytes


@dataclass(frozen=True)
class LocalTrainConfig:
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate for LoRA and head"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping; 0 disables"})
    local_steps: int = field(default=10, metadata={"help": "optimizer steps per round (batches consumed)"})
    seed: int = field(default=0, metadata={"help": "seeds dropout and stochastic rounding"})
    quant: QuantSettings = field(default_factory=QuantSettings, metadata={"help": "activation quantization"})
    logit_offsets: tuple[float, ...] | None = field(default=None, metadata={
        "help": "per-class offsets added to the head's logits in the training loss only (logit adjustment: "
                "tau * log of this client's label shares), so a label-skewed client does not teach the global "
                "head its own label prior; None = the model's plain loss (`logit_adjustment_offsets`)"})

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.local_steps <= 0:
            raise FedquadError("learning_rate and local_steps must be positive")
        if self.logit_offsets is not None and not all(math.isfinite(x) for x in self.logit_offsets):
            raise FedquadError(f"logit_offsets must be finite numbers, got {self.logit_offsets!r}")


@dataclass
class LocalMetrics:
    examples: int = 0
    steps: int = 0
    loss: float = float("nan")                                    # mean training loss over steps
    step_times_s: list[float] = field(default_factory=list)
    block_raw_bytes: list[int] = field(default_factory=list)      # per block, max over steps
    block_kept_bytes: list[int] = field(default_factory=list)
    outside_bytes: int = 0                                        # embeddings/head, max over steps
    micro_batches: list[int] = field(default_factory=list)        # per step: 1 = ran whole
    # Byte counts above are per step: a split step's are summed over its micro-batches (what the
    # whole batch saves, which the planner compares with its prediction). This one is what memory
    # held at once: the largest micro-batch's saved activations, max over steps.
    held_saved_kept_bytes: int = 0
    predicted_peak_bytes: float | None = None                     # StepMemory's prediction, max over steps

    @property
    def max_micro_batches(self) -> int:
        return max(self.micro_batches, default=1)

    @property
    def saved_raw_bytes(self) -> int:
        return sum(self.block_raw_bytes) + self.outside_bytes

    @property
    def saved_kept_bytes(self) -> int:
        return sum(self.block_kept_bytes) + self.outside_bytes

    def to_dict(self) -> dict:
        return {"examples": self.examples, "steps": self.steps, "loss": self.loss,
                "step_times_s": self.step_times_s, "block_raw_bytes": self.block_raw_bytes,
                "block_kept_bytes": self.block_kept_bytes, "outside_bytes": self.outside_bytes,
                "saved_raw_bytes": self.saved_raw_bytes, "saved_kept_bytes": self.saved_kept_bytes,
                "micro_batches": self.micro_batches, "max_micro_batches": self.max_micro_batches,
                "held_saved_kept_bytes": self.held_saved_kept_bytes,
                "predicted_peak_bytes": self.predicted_peak_bytes}


@dataclass
class LocalResult:
    update: dict[str, torch.Tensor]   # only the tensors this client trained (CPU copies)
    metrics: LocalMetrics


def forward_backward(adapted: AdaptedModel, runtime: PlanRuntime, batch: dict[str, torch.Tensor],
                     loss_weight: float = 1.0) -> torch.Tensor:
    """One forward and backward under the plan; returns the (detached, unweighted) loss.

    `loss_weight` scales what backward sees (a micro-batch's share of its step); gradients
    accumulate into `.grad`, so a step's micro-batches add up to the whole step's gradient."""
    batch = {k: v.to(adapted.device) for k, v in batch.items()}
    with runtime.step():
        loss = adapted.model(**batch).loss
        if loss.requires_grad:  # a causal LM at depth 0 has nothing to train
            (loss if loss_weight == 1.0 else loss * loss_weight).backward()
    return loss.detach()


def split_batch(batch: dict[str, torch.Tensor], sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    """`batch` cut along its first (example) dimension into consecutive parts of `sizes` (views)."""
    total = sum(sizes)
    for k, v in batch.items():
        if v.shape[0] != total:
            raise FedquadError(f"batch tensor {k!r} has {v.shape[0]} rows, the batch has {total} examples")
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds, bounds[1:])]


def accumulated_step(adapted: AdaptedModel, runtime: PlanRuntime, batch: dict[str, torch.Tensor], sizes: list[int],
                     after_part: Callable[[], None] | None = None) -> torch.Tensor:
    """Forward and backward of `batch` as micro-batches of `sizes`, gradients accumulated; returns
    the whole batch's loss. Each part's loss weighs its share of the loss units, so the weighted
    sum is the whole batch's loss; `[batch size]` is exactly `forward_backward`. `after_part`
    runs after each part's backward (byte accounting while its counts are current)."""
    if len(sizes) == 1:
        loss = forward_backward(adapted, runtime, batch)
        if after_part is not None:
            after_part()
        return loss
    parts = split_batch(batch, sizes)
    units = [adapted.kind.loss_units(p) for p in parts]
    total = sum(units)
    if total == 0:  # nothing scored anywhere: weigh by examples (the loss is undefined either way)
        units, total = list(sizes), sum(sizes)
    loss = None
    for part, n in zip(parts, units):
        if n == 0:  # contributes exactly nothing to the loss or the gradient
            continue
        part_loss = forward_backward(adapted, runtime, part, loss_weight=n / total)
        if after_part is not None:
            after_part()
        weighted = part_loss.float() * (n / total)
        loss = weighted if loss is None else loss + weighted
    return loss


def train_local(adapted: AdaptedModel, global_state: dict[str, torch.Tensor], plan: ClientPlan,
                batches: Iterable[dict[str, torch.Tensor]], config: LocalTrainConfig = LocalTrainConfig(),
                options: TrainOptions = TrainOptions(), saved_limit_bytes: float | None = None,
                step_memory: StepMemory | None = None) -> LocalResult:
    """Train `config.local_steps` batches with `plan`; returns trained tensors and metrics.

    `options` carries what a baseline changes beyond the plan (FedRA block subsets, HetLoRA ranks).
    With `saved_limit_bytes`, the first step (micro-batch) whose exactly measured saved activations
    exceed it raises ClientOutOfMemory: the simulator's stand-in for a device running out of memory.
    With `step_memory`, a step predicted to peak above its budget runs as micro-batches that fit
    (module docstring); one that cannot fit even at one example raises StepDoesNotFit. Its
    `fixed_bytes`, where given, replaces `saved_limit_bytes` by the budget less the fixed part
    at each step's own (micro-batch) shape."""
    adapted.load_adapter_state(global_state)
    _clear_grads(adapted)  # whatever an earlier call left must not enter this client's first step
    adapted.model.train()
    torch.manual_seed(config.seed)
    metrics = LocalMetrics(block_raw_bytes=[0] * adapted.num_blocks, block_kept_bytes=[0] * adapted.num_blocks)
    losses = []
    quant = dataclasses.replace(config.quant, bits=plan.bits)  # the plan decides the bit width
    with PlanRuntime(adapted, plan, quant, seed=config.seed, options=options) as runtime, \
            _rank_limited(adapted, runtime.trainable_keys, options.rank), \
            _logit_adjusted(adapted, config.logit_offsets):
        params = runtime.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay) if params else None
        try:
            update = _train_steps(adapted, runtime, params, optimizer, batches, config, metrics, losses,
                                  saved_limit_bytes, step_memory)
        finally:
            # A failed client (out of memory, bad batch) must not leave gradients on the shared
            # model: the next client's first backward would add its own on top of them.
            _clear_grads(adapted)
    if metrics.steps == 0:
        raise FedquadError("local training received no batches")
    metrics.loss = sum(losses) / len(losses)
    return LocalResult(update=update, metrics=metrics)


def _clear_grads(adapted: AdaptedModel) -> None:
    for p in adapted.model.parameters():
        p.grad = None


def _train_steps(adapted: AdaptedModel, runtime: PlanRuntime, params: list, optimizer, batches,
                 config: LocalTrainConfig, metrics: LocalMetrics, losses: list[float],
                 saved_limit_bytes: float | None, step_memory: StepMemory | None) -> dict[str, torch.Tensor]:
    """The step loop of `train_local`; returns CPU copies of the trained tensors."""
    plans: dict[tuple[int, int], list[int]] = {}  # (batch size, padded length) -> micro-batch sizes
    limit = [saved_limit_bytes, None]  # this step's limit on measured saved bytes, and the fixed part behind it

    L = adapted.num_blocks
    step_bytes = [[0] * L, [0] * L, 0]  # this step's raw and kept bytes per block, outside: summed over parts

    def account() -> None:  # after each micro-batch's backward, while its byte counts are current
        blocks, outside = runtime.block_bytes(), runtime.outside_bytes()
        saved = sum(b.kept_bytes for b in blocks) + outside.kept_bytes
        if limit[0] is not None and saved > limit[0]:
            raise ClientOutOfMemory(saved, limit[0], limit[1])
        metrics.held_saved_kept_bytes = max(metrics.held_saved_kept_bytes, saved)
        for i, b in enumerate(blocks):
            step_bytes[0][i] += b.raw_bytes
            step_bytes[1][i] += b.kept_bytes
        step_bytes[2] += outside.kept_bytes

    for batch in batches:
        if metrics.steps >= config.local_steps:
            break
        start = time.perf_counter()
        size, length = _batch_shape(batch)
        sizes = [size]
        if step_memory is not None:
            if (size, length) not in plans:
                plans[(size, length)] = step_memory.micro_batch_sizes(size, length)
            sizes = plans[(size, length)]
            peak = float(step_memory.peak_bytes(sizes[0], length))  # sizes[0] is the largest part
            metrics.predicted_peak_bytes = max(metrics.predicted_peak_bytes or 0.0, peak)
            if step_memory.fixed_bytes is not None:  # the fixed part at this step's own shape
                fixed = float(step_memory.fixed_bytes(sizes[0], length))
                limit[:] = [step_memory.budget_bytes - fixed, fixed]
        step_bytes[:] = [[0] * L, [0] * L, 0]
        loss = accumulated_step(adapted, runtime, batch, sizes, account)
        for i in range(L):
            metrics.block_raw_bytes[i] = max(metrics.block_raw_bytes[i], step_bytes[0][i])
            metrics.block_kept_bytes[i] = max(metrics.block_kept_bytes[i], step_bytes[1][i])
        metrics.outside_bytes = max(metrics.outside_bytes, step_bytes[2])
        if optimizer is not None:
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        metrics.step_times_s.append(time.perf_counter() - start)
        losses.append(float(loss))
        metrics.steps += 1
        metrics.examples += int(batch["labels"].shape[0])
        metrics.micro_batches.append(len(sizes))
    return {k: adapted.parameter(k).detach().to("cpu", copy=True) for k in runtime.trainable_keys}


def _batch_shape(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(batch size, padded length) of a batch: what the step's memory scales with."""
    ids = batch.get("input_ids")
    if ids is None or ids.dim() != 2:
        raise FedquadError("a training batch needs 2-D input_ids [batch, padded length]")
    return int(ids.shape[0]), int(ids.shape[1])


def logit_adjustment_offsets(labels, num_labels: int, tau: float = 1.0, floor: float = 1e-3) -> tuple[float, ...]:
    """`tau * log(share of each class among labels)` (shares floored at `floor`): the offsets of
    logit adjustment (Menon et al. 2021; FedLC, Zhang et al. 2022, for label-skewed clients).

    Why: with Dirichlet label skew a client's cheapest loss decrease is to shift its logits
    towards its own majority class; averaged over a round's few clients that shift is the
    round's label majority, and the global model predicts one class for everything (measured:
    benchmarks/learning_probe.py). Training on `logits + offsets` lets the prior be explained
    by the offsets, so the gradient carries what separates the classes instead."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.int64).reshape(-1), minlength=num_labels)
    shares = counts[:num_labels].double() / max(int(counts.sum()), 1)
    return tuple(float(tau * math.log(max(float(x), floor))) for x in shares)


@contextlib.contextmanager
def _logit_adjusted(adapted: AdaptedModel, offsets: tuple[float, ...] | None):
    """Add `offsets` to the classification head's output while training (a forward hook, removed after)."""
    if offsets is None:
        yield
        return
    from fedquad.models.presets import FAMILY_HEAD_MODULES
    head = FAMILY_HEAD_MODULES[adapted.family][-1]  # the module whose output is the logits
    named = [(n, m) for n, m in adapted.model.named_modules() if n == head or n.endswith("." + head)]
    if not named:
        raise FedquadError(f"logit adjustment: no {head!r} head module in {adapted.name}")
    module = min(named, key=lambda nm: len(nm[0]))[1]  # the outermost (PEFT's wrapper around the trained copy)
    shift = torch.tensor(offsets, dtype=torch.float32)

    def hook(_module, _inputs, output):
        if output.shape[-1] != len(offsets):
            raise FedquadError(f"logit adjustment has {len(offsets)} offsets, the head gives {output.shape[-1]} logits")
        return output + shift.to(device=output.device, dtype=output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _rank_limited(adapted: AdaptedModel, keys: list[str], rank: int | None):
    """HetLoRA: zero LoRA components >= rank (rows of A, columns of B) and keep their gradients zero."""
    if rank is None or rank >= adapted.lora_rank:
        yield
        return
    handles = []
    with torch.no_grad():
        for key in keys:
            p = adapted.parameter(key)
            if "lora_A" in key:
                mask = torch.zeros_like(p)
                mask[:rank] = 1
            elif "lora_B" in key:
                mask = torch.zeros_like(p)
                mask[:, :rank] = 1
            else:
                continue
            p.mul_(mask)
            handles.append(p.register_hook(lambda g, m=mask: g * m))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
