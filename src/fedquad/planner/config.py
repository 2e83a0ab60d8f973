"""Planner parameters and the utility it maximizes (docs/design.md, "Planner").

Everything a researcher may want to vary is a field of the frozen PlannerConfig; the utility is a
protocol, so another definition of "training value" can be passed without touching the greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from fedquad.errors import FedquadError
from fedquad.plan import PLACEMENTS, SUPPORTED_BITS, ClientPlan


@runtime_checkable
class Utility(Protocol):
    """What the greedy maximizes: round_utility(sum_i w_i * plan_value(plan_i), round_time_s).

    Contract (the greedy's early stop and its guarantee against uniform assignments rely on it):
    round_utility is non-decreasing in the weighted value and non-increasing in the round time.
    plan_value need not be monotone in depth; where it is not, the planner also evaluates the
    uniform assignments (see fedquad.planner.greedy).
    """

    def plan_value(self, plan: ClientPlan, num_blocks: int) -> float: ...

    def round_utility(self, weighted_value: float, round_time_s: float) -> float: ...


@dataclass(frozen=True)
class DepthUtility:
    """v(plan) = depth - penalty[bits] * quant_layers; U = sum_i w_i v_i / R (training value per second)."""

    int8_penalty: float = field(default=0.05, metadata={"help": "value lost per block with int8 saved activations"})
    int4_penalty: float = field(default=0.2, metadata={"help": "value lost per block with int4 saved activations"})

    def plan_value(self, plan: ClientPlan, num_blocks: int) -> float:
        penalty = self.int8_penalty if plan.bits == 8 else self.int4_penalty
        return plan.depth - penalty * plan.quant_layers

    def round_utility(self, weighted_value: float, round_time_s: float) -> float:
        return weighted_value / max(round_time_s, 1e-12)  # a zero-cost profile must not divide by zero


@dataclass(frozen=True)
class PlannerConfig:
    allow_quant: bool = field(default=True, metadata={
        "help": "consider plans with quantized saved activations (False = the depth-only baseline)"})
    bits: tuple[int, ...] = field(default=(8, 4), metadata={"help": "bit widths the planner may choose"})
    placement: str = field(default="bottom", metadata={"help": "which trainable blocks get quantized: bottom or top"})
    int8_penalty: float = field(default=0.05, metadata={
        "help": "default utility: value lost per int8-quantized block (depth units)"})
    int4_penalty: float = field(default=0.2, metadata={
        "help": "default utility: value lost per int4-quantized block (depth units); larger: int4 is noisier"})
    utility: Utility | None = field(default=None, metadata={
        "help": "utility object; None = DepthUtility(int8_penalty, int4_penalty)"})
    coverage_rounds: int | None = field(default=None, metadata={
        "help": "K: a block without a trainer for K rounds is given to the device that reaches it at least "
                "cost; None = off (needs a PlannerState)"})
    ema_alpha: float = field(default=0.3, metadata={
        "help": "weight of the newest measurement in the per-device measured/predicted EMA "
                "(PlannerState.for_config uses it)"})
    share_memory_ratio: bool = field(default=True, metadata={
        "help": "a device not yet measured starts from the measured/predicted memory ratio seen on all devices "
                "(False = it starts at 1.0, the cost model believed)"})
    memory_margin: float = field(default=0.0, metadata={
        "help": "plan memory at measured/predicted ratio + this many mean deviations of it (a safety margin "
                "against batches that need more than the average one; 0 = plan at the mean)"})
    prune_dominated: bool = field(default=True, metadata={
        "help": "the greedy skips depths whose efficient plan is worth no more than a shallower, faster one "
                "(False = walk every depth: the literal greedy of docs/design.md, \"Planner\")"})
    consider_uniform: bool = field(default=True, metadata={
        "help": "also evaluate uniform-depth assignments when the greedy alone cannot guarantee to beat them"})

    def __post_init__(self) -> None:
        if not self.bits or any(b not in SUPPORTED_BITS for b in self.bits) or len(set(self.bits)) != len(self.bits):
            raise FedquadError(f"bits must be a non-empty subset of {SUPPORTED_BITS}, got {self.bits!r}")
        if self.placement not in PLACEMENTS:
            raise FedquadError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.int8_penalty < 0 or self.int4_penalty < 0:
            raise FedquadError("quantization penalties must be >= 0")
        if self.coverage_rounds is not None and self.coverage_rounds < 1:
            raise FedquadError(f"coverage_rounds must be >= 1 or None, got {self.coverage_rounds}")
        if not 0 < self.ema_alpha <= 1:
            raise FedquadError(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if not self.memory_margin >= 0:
            raise FedquadError(f"memory_margin must be >= 0, got {self.memory_margin}")
        if self.utility is not None and not isinstance(self.utility, Utility):
            raise FedquadError("utility must provide plan_value(plan, num_blocks) and round_utility(value, time)")

    def resolved_utility(self) -> Utility:
        return self.utility if self.utility is not None else DepthUtility(self.int8_penalty, self.int4_penalty)
