"""What the planner decides: one DeviceDecision per device and the RoundPlan around them."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedquad.plan import ClientPlan


@dataclass(frozen=True)
class DeviceDecision:
    device_id: str = field(metadata={"help": "device the decision is for"})
    device_class: str = field(metadata={"help": "its catalog class"})
    budget_bytes: float = field(metadata={"help": "memory budget the plan was checked against"})
    plan: ClientPlan | None = field(metadata={"help": "chosen plan; None = cannot take part"})
    predicted_bytes: float | None = field(metadata={"help": "predicted memory of the plan (after EMA correction)"})
    predicted_time_s: float | None = field(metadata={"help": "predicted round time (after EMA correction)"})
    reason: str = field(metadata={"help": "why this plan, in words"})
    feasible_plans: int = field(default=0, metadata={"help": "number of feasible (d, q, bits) plans"})
    max_depth: int | None = field(default=None, metadata={"help": "deepest feasible depth; None = nothing fits"})
    time_ratio: float = field(default=1.0, metadata={"help": "measured/predicted time EMA applied"})
    memory_ratio: float = field(default=1.0, metadata={"help": "measured/predicted memory EMA applied"})

    def to_dict(self) -> dict:
        plan = None if self.plan is None else self.plan.to_dict()  # recompute_layers included
        return {"id": self.device_id, "device_class": self.device_class, "budget_bytes": self.budget_bytes,
                "plan": plan, "predicted_bytes": self.predicted_bytes, "predicted_time_s": self.predicted_time_s,
                "reason": self.reason, "feasible_plans": self.feasible_plans, "max_depth": self.max_depth,
                "time_ratio": self.time_ratio, "memory_ratio": self.memory_ratio}


@dataclass(frozen=True)
class RoundPlan:
    decisions: tuple[DeviceDecision, ...] = field(metadata={"help": "one per device, in input order"})
    round_time_s: float = field(metadata={"help": "predicted round time = the straggler's time"})
    straggler_id: str | None = field(metadata={"help": "device with the largest predicted time"})
    utility: float = field(metadata={"help": "utility of the chosen assignment"})
    num_blocks: int = field(default=0, metadata={"help": "blocks of the planned model"})
    method: str = field(default="greedy", metadata={"help": "greedy, uniform depth d, or + coverage"})
    greedy_steps: int = field(default=0, metadata={"help": "straggler moves the greedy made (incl. pruned tail)"})

    @property
    def participants(self) -> list[DeviceDecision]:
        return [d for d in self.decisions if d.plan is not None]

    def decision(self, device_id: str) -> DeviceDecision:
        for d in self.decisions:
            if d.device_id == device_id:
                return d
        raise KeyError(device_id)

    def trained_blocks(self, exclude: set[str] | frozenset = frozenset()) -> set[int]:
        """Blocks some (non-excluded) participant trains this round."""
        depth = max((d.plan.depth for d in self.participants if d.device_id not in exclude), default=0)
        return set(range(self.num_blocks - depth, self.num_blocks))

    def to_dict(self) -> dict:
        return {"round_time_s": self.round_time_s, "straggler": self.straggler_id, "utility": self.utility,
                "num_blocks": self.num_blocks, "method": self.method,
                "devices": [d.to_dict() for d in self.decisions]}
