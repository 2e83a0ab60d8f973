"""The protocol every strategy follows (docs/design.md, "Strategies"), in the spirit of Flower's strategies.

A strategy decides, each round, what every selected device trains (`configure`), and how the
returned updates are merged (`aggregate`); it may learn from what the clients measured
(`observe`) and price its own assignments (`costs`). Defaults: per-key weighted mean
(docs/design.md, "Aggregation") and the cost model's memory and time for the plan. Each baseline overrides one or two
hooks. A strategy keeps its memory between rounds in a JSON-able dict (`init_state`), so the
simulator and the Flower server can checkpoint it; strategies hold no other mutable state.

No torch in the planning hooks: `configure` and `costs` see plain data (devices, the profile).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from fedquad.costmodel import CostModel, Profile, RoundTimeBreakdown, cost_model, profile_for_length
from fedquad.devices import Device
from fedquad.plan import ClientPlan, TrainOptions

if TYPE_CHECKING:  # torch-free at run time: the planning layers must not import torch
    from fedquad.aggregation import AggregationConfig


@dataclass(frozen=True)
class Assignment:
    """What one device is told to do this round (plan None: it sits the round out)."""

    device_id: str = field(metadata={"help": "the device"})
    plan: ClientPlan | None = field(metadata={"help": "depth / quantized blocks / bits; None = not taking part"})
    predicted_bytes: float | None = field(default=None, metadata={"help": "memory the strategy expects"})
    predicted_time_s: float | None = field(default=None, metadata={"help": "round time the strategy expects"})
    reason: str = field(default="", metadata={"help": "why, in words"})
    options: TrainOptions = field(default=TrainOptions(), metadata={"help": "baseline-specific client options"})

    def to_dict(self) -> dict:
        return {"device_id": self.device_id, "plan": None if self.plan is None else self.plan.to_dict(),
                "predicted_bytes": self.predicted_bytes, "predicted_time_s": self.predicted_time_s,
                "reason": self.reason, "options": self.options.to_dict()}


@dataclass(frozen=True)
class ClientOutcome:
    """What came back from one device (or why nothing did)."""

    assignment: Assignment
    status: str = field(metadata={"help": "ok | oom | rejected | failed | idle"})
    reason: str = field(default="", metadata={"help": "why it is not ok"})
    update: Mapping[str, Any] | None = field(default=None, metadata={"help": "trained tensors (ok only)"})
    examples: int = field(default=0, metadata={"help": "local examples trained on"})
    loss: float | None = field(default=None, metadata={"help": "mean local training loss"})
    measured_bytes: float | None = field(default=None, metadata={"help": "memory measured for the plan"})
    time_s: float | None = field(default=None, metadata={"help": "device round time (virtual or measured)"})
    budget_bytes: float | None = field(default=None, metadata={"help": "memory the device actually had"})
    micro_batches: int = field(default=1, metadata={
        "help": "most micro-batches one local step was split into to fit memory (1: no step was split)"})

    @property
    def device_id(self) -> str:
        return self.assignment.device_id

    @property
    def update_bytes(self) -> int:
        """Bytes uploaded: the trained tensors as sent."""
        return sum(v.numel() * v.element_size() for v in (self.update or {}).values())


@dataclass(frozen=True)
class RoundContext:
    """Plain facts a strategy may use; no model, no tensors."""

    round_index: int
    profile: Profile
    seed: int
    lora_rank: int
    data_weights: Mapping[str, float] = field(default_factory=dict)  # device id -> local examples
    # adapter key -> block index (None: the head); lets a strategy measure per-block updates (fedquad)
    key_blocks: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return self.profile.num_blocks

    @property
    def head_trains(self) -> bool:
        """False when depth 0 trains nothing (a causal LM's tied LM head stays frozen)."""
        return self.profile.head_adapter_bytes > 0

    @property
    def cost_model(self) -> CostModel:
        return cost_model(self.profile)

    def profile_for(self, device: Device) -> Profile:
        """The profile at the device's own length (`Device.seq_len_tokens`; None: as profiled):
        every strategy plans and charges a device for the batches its data makes."""
        return profile_for_length(self.profile, device.seq_len_tokens)

    def cost_model_for(self, device: Device) -> CostModel:
        return cost_model(self.profile_for(device))

    def rng(self, *parts) -> random.Random:
        """A random stream fixed by (seed, round, parts): reproducible, and identical after a resume."""
        return random.Random(":".join(map(str, ("fedquad-strategy", self.seed, self.round_index, *parts))))


class Strategy:
    """Base class; subclasses set `name`, `paper` and override `configure` (and maybe more)."""

    name = "base"
    paper = ""

    def __init__(self, aggregation: AggregationConfig | None = None):
        self.aggregation = aggregation  # None: the guards' defaults (built lazily: torch lives there)

    def aggregation_config(self) -> AggregationConfig:
        from fedquad.aggregation import AggregationConfig
        return self.aggregation or AggregationConfig()

    def init_state(self, num_blocks: int) -> dict:
        return {}

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        raise NotImplementedError

    def costs(self, ctx: RoundContext, assignment: Assignment, device: Device) -> tuple[float, RoundTimeBreakdown]:
        """(memory_bytes, round time) of `assignment` on `device` as it is this round."""
        cm = ctx.cost_model_for(device)
        plan = assignment.plan
        return cm.memory_bytes(plan), cm.round_time(plan, device.speed, device.up_Bps, device.down_Bps,
                                                    device.local_steps)

    def aggregate(self, ctx: RoundContext, global_state: Mapping[str, Any], outcomes: Sequence[ClientOutcome],
                  state: dict):
        """Per-key weighted mean over the clients that returned each key (docs/design.md, "Aggregation"), behind
        the guards of `fedquad.aggregation` (one update per device, bounded norms and weights)."""
        from fedquad.aggregation import aggregate_per_key  # torch lives there, not in planning
        ok = [o for o in outcomes if o.status == "ok"]
        return aggregate_per_key(global_state, [(o.update, o.examples) for o in ok],
                                 client_ids=[o.device_id for o in ok], config=self.aggregation_config())

    def observe(self, ctx: RoundContext, outcomes: Sequence[ClientOutcome], state: dict) -> dict:
        return state


def fixed_plan_assignments(ctx: RoundContext, strategy: Strategy, devices: Sequence[Device], plan_for,
                           reason: str) -> list[Assignment]:
    """Assign `plan_for(device)` to everyone, with the cost model's predictions; None -> sits out."""
    out = []
    for dev in devices:
        plan = plan_for(dev)
        if plan is None:
            out.append(Assignment(dev.device_id, None, reason="sits out: its memory budget does not fit the plan"))
            continue
        a = Assignment(dev.device_id, plan, reason=reason)
        memory, time = strategy.costs(ctx, a, dev)
        out.append(Assignment(dev.device_id, plan, memory, time.total_s, reason))
    return out


def deepest_fitting_depth(ctx: RoundContext, device: Device) -> int | None:
    """Largest d with the unquantized plan of depth d within the device's budget (None: not even d = 0)."""
    found = ctx.cost_model_for(device).deepest_fitting(device.budget_bytes)
    return None if found is None else found[0]


def sit_out_if_useless(ctx: RoundContext, a: Assignment) -> Assignment:
    """A depth-0 plan on a model whose head does not train would only cost the round its download."""
    if a.plan is not None and a.plan.depth == 0 and not a.options.lora_blocks and not ctx.head_trains:
        return Assignment(a.device_id, None, reason="sits out: only depth 0 fits, and depth 0 trains nothing "
                                                    "here (the LM head is frozen)")
    return a
