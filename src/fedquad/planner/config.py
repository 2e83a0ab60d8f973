"""Planner parameters and the utility it maximizes (docs/design.md, "Planner").

Everything a researcher may want to vary is a field of the frozen PlannerConfig; the utility is a
protocol, so another definition of "training value" can be passed without touching the greedy.
"""

from __future__ import annotations

import dataclasses
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
    """v(plan) = depth - penalty[bits] * quant_layers; U = (sum_i w_i v_i) ** e / R (training value per
    second; e = value_exponent, 1 by default)."""

    int8_penalty: float = field(default=0.05, metadata={"help": "value lost per block with int8 saved activations"})
    int4_penalty: float = field(default=0.2, metadata={"help": "value lost per block with int4 saved activations"})
    value_exponent: float = field(default=1.0, metadata={"help": "U = (sum_i w_i v_i) ** this / R (see PlannerConfig)"})

    def plan_value(self, plan: ClientPlan, num_blocks: int) -> float:
        penalty = self.int8_penalty if plan.bits == 8 else self.int4_penalty
        return plan.depth - penalty * plan.quant_layers

    def round_utility(self, weighted_value: float, round_time_s: float) -> float:
        return _saturating(weighted_value, self.value_exponent) / max(round_time_s, 1e-12)  # zero-cost profile: no /0


@dataclass(frozen=True)
class LearnedUtility:
    """v(plan) = head + sum of the trained blocks' measured values - penalty[bits] x each quantized
    block's value; U = sum_i w_i v_i / R, as DepthUtility.

    The values are what the planner measured (PlannerState.block_values: an EMA per block of the
    signal in the merged update, see fedquad.strategies.fedquad), so a block whose training moved
    nothing is worth little and shallow plans win where they suffice. With every value 1.0 it is
    DepthUtility plus one for the head (which DepthUtility values at 0)."""

    block_values: tuple[float, ...] = field(metadata={"help": "measured value of training each block, input side first"})
    head_value: float = field(default=1.0, metadata={"help": "measured value of training the head"})
    int8_penalty: float = field(default=0.05, metadata={"help": "fraction of a block's value lost at int8"})
    int4_penalty: float = field(default=0.2, metadata={"help": "fraction of a block's value lost at int4"})
    value_exponent: float = field(default=1.0, metadata={"help": "U = (sum_i w_i v_i) ** this / R (see PlannerConfig)"})

    def __post_init__(self) -> None:
        if any(not v >= 0 for v in (*self.block_values, self.head_value)):
            raise FedquadError("learned block values must be >= 0")

    def plan_value(self, plan: ClientPlan, num_blocks: int) -> float:
        if num_blocks != len(self.block_values):
            raise FedquadError(f"learned utility has {len(self.block_values)} block values, the model {num_blocks}")
        values = self.block_values
        penalty = self.int8_penalty if plan.bits == 8 else self.int4_penalty
        lost = penalty * sum(values[b] for b in plan.quantized_blocks(num_blocks)) if plan.quant_layers else 0.0
        return self.head_value + sum(values[num_blocks - plan.depth:]) - lost

    def round_utility(self, weighted_value: float, round_time_s: float) -> float:
        return _saturating(weighted_value, self.value_exponent) / max(round_time_s, 1e-12)


def _saturating(weighted_value: float, exponent: float) -> float:
    return weighted_value if exponent == 1.0 else max(weighted_value, 0.0) ** exponent


VALUES = ("depth", "learned")


@dataclass(frozen=True)
class PlannerConfig:
    allow_quant: bool = field(default=True, metadata={
        "help": "consider plans with quantized saved activations (False = the depth-only baseline)"})
    bits: tuple[int, ...] = field(default=(8, 4), metadata={"help": "bit widths the planner may choose"})
    allow_recompute: bool = field(default=True, metadata={
        "help": "consider plans with recomputed (checkpointed) blocks, alone or with a quantized stored input; "
                "needs a profile with recompute bytes (otherwise none are offered)"})
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
    value: str = field(default="depth", metadata={
        "help": "what a trained block is worth: depth (fixed, the paper's: v = depth - penalties) or learned "
                "(measured every round, LearnedUtility; needs a PlannerState with measurements)"})
    sit_out: bool = field(default=False, metadata={
        "help": "let a device sit out when the round gets faster by more than its data is worth "
                "(fedquad.planner.participation.plan_with_sit_out)"})
    sit_out_max_fraction: float = field(default=0.5, metadata={
        "help": "at most this fraction of a round's participants may sit out (the utility counts data linearly; "
                "a merge of fewer clients is also noisier, which it does not see)"})
    value_exponent: float = field(default=1.0, metadata={
        "help": "round utility (sum_i w_i v_i) ** e / R: 1 counts value (data share x depth) linearly; below 1 a "
                "round's value saturates (a FedAvg merge gains less from each further client), so the planner "
                "gives up a straggler's value for a shorter round more readily; in (0, 1]"})
    sit_out_floor_rounds: int = field(default=2, metadata={
        "help": "a device that was sampled and did not train this many rounds in a row may not be sat out "
                "(no device starves)"})

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
        if self.value not in VALUES:
            raise FedquadError(f"value must be one of {VALUES}, got {self.value!r}")
        if not 0 <= self.sit_out_max_fraction < 1:
            raise FedquadError(f"sit_out_max_fraction must be in [0, 1), got {self.sit_out_max_fraction}")
        if not 0 < self.value_exponent <= 1:
            raise FedquadError(f"value_exponent must be in (0, 1], got {self.value_exponent}")
        if self.sit_out_floor_rounds < 0:
            raise FedquadError(f"sit_out_floor_rounds must be >= 0, got {self.sit_out_floor_rounds}")
        if self.utility is not None and not isinstance(self.utility, Utility):
            raise FedquadError("utility must provide plan_value(plan, num_blocks) and round_utility(value, time)")

    def resolved_utility(self) -> Utility:
        return self.utility if self.utility is not None else DepthUtility(self.int8_penalty, self.int4_penalty,
                                                                          self.value_exponent)

    def for_state(self, state) -> "PlannerConfig":
        """This config with the utility the state's measurements imply (value = learned; a
        PlannerState), or unchanged (value = depth, an explicit utility, nothing measured yet:
        then every block and the head are worth 1.0)."""
        if self.value != "learned" or self.utility is not None or state is None:
            return self
        found = state.block_values()
        blocks, head = found if found is not None else ((1.0,) * state.num_blocks, 1.0)
        # rounded to 4 significant digits: a value that moved by float noise must not rebuild the menu
        blocks = tuple(float(f"{v:.4g}") for v in blocks)
        return dataclasses.replace(self, utility=LearnedUtility(blocks, float(f"{head:.4g}"), self.int8_penalty,
                                                                self.int4_penalty, self.value_exponent))
