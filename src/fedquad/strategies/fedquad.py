"""FedQuad (Li, Liu, Xu, Huang, arXiv 2506.01001): per-device LoRA depth and activation-quantized
blocks chosen each round by the cost model and the greedy planner (docs/design.md: "The client", "Cost model",
"Planner").

The paper's abstract fixes the idea; the planner's details (efficient sets, utility, coverage,
EMA re-planning) are this project's design, see docs/design.md, "Planner". `fedquad` plans with a
utility it measures (each block's value is the signal in its merged update, folded into an EMA
every round) and lets a straggler sit out when the round gains more time than its data is worth;
`fedquad-paper` keeps the fixed utility (v = depth - penalty per quantized block, everyone who
fits trains). `depth-only` and `quant-only` ablations are the same planner with part of the menu
switched off.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from fedquad.devices import Device
from fedquad.planner import DeviceDecision, PlannerConfig, PlannerState, RoundPlan
from fedquad.planner.participation import plan_with_sit_out
from fedquad.strategies.base import Assignment, ClientOutcome, RoundContext, Strategy, sit_out_if_useless

if TYPE_CHECKING:
    from fedquad.aggregation import AggregationConfig

LEARNED = PlannerConfig(value="learned", sit_out=True)


class FedQuad(Strategy):
    name = "fedquad"
    paper = ("Li et al., FedQuad: Adaptive Layer-wise LoRA Deployment and Activation Quantization (arXiv 2506.01001), "
             "with a measured block value and sit-out")

    def __init__(self, planner: PlannerConfig = LEARNED, aggregation: AggregationConfig | None = None):
        super().__init__(aggregation)
        self.planner = planner

    def init_state(self, num_blocks: int) -> dict:
        return {"planner": PlannerState.for_config(num_blocks, self.planner).to_dict(), "last": {}}

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        planner_state = PlannerState.from_dict(state["planner"])
        plan = plan_with_sit_out(devices, ctx.profile, self.planner.for_state(planner_state), planner_state)
        state["last"] = {d.device_id: [d.time_ratio, d.memory_ratio] for d in plan.decisions}
        return [sit_out_if_useless(ctx, Assignment(d.device_id, d.plan, d.predicted_bytes, d.predicted_time_s,
                                                    d.reason)) for d in plan.decisions]

    def aggregate(self, ctx: RoundContext, global_state: Mapping[str, Any], outcomes: Sequence[ClientOutcome],
                  state: dict):
        """The base merge; with the learned value, also this round's measured gain per block (for observe)."""
        new_global, agg = super().aggregate(ctx, global_state, outcomes, state)
        if self.planner.value == "learned" and ctx.key_blocks:
            rejected = {r.index for r in agg.rejected}
            ok = [o for i, o in enumerate(o for o in outcomes if o.status == "ok") if i not in rejected]
            state["gains"] = block_gains(ctx, global_state, [o.update for o in ok])
        return new_global, agg

    def observe(self, ctx: RoundContext, outcomes: Sequence[ClientOutcome], state: dict) -> dict:
        """Fold measured time, memory, free memory and block gains into the planner's moving averages."""
        planner_state = PlannerState.from_dict(state["planner"])
        decisions, failed = [], set()
        for o in outcomes:
            a = o.assignment
            time_ratio, memory_ratio = state.get("last", {}).get(a.device_id, (1.0, 1.0))
            decision = DeviceDecision(a.device_id, "", o.budget_bytes or 0.0, a.plan, a.predicted_bytes,
                                      a.predicted_time_s, a.reason, time_ratio=time_ratio, memory_ratio=memory_ratio)
            decisions.append(decision)
            if o.status != "ok":
                failed.add(a.device_id)
            # A device that timed out ("failed" with the time it was given, a lower bound of its
            # real time; only real deployments produce these) is slowed down in the time EMA too.
            timed_out = o.status == "failed" and o.time_s is not None
            if a.plan is not None and (o.status in ("ok", "oom") or timed_out):
                planner_state.observe(decision, measured_time_s=o.time_s if o.status == "ok" or timed_out else None,
                                      measured_bytes=o.measured_bytes, free_bytes=o.budget_bytes)
        planner_state.record_round(RoundPlan(tuple(decisions), 0.0, None, 0.0, ctx.num_blocks), failed=failed)
        gains = state.pop("gains", None)
        if gains is not None:
            planner_state.observe_gains(gains["blocks"], gains["head"])
        return {**state, "planner": planner_state.to_dict()}


def block_gains(ctx: RoundContext, global_state: Mapping[str, Any], updates: Sequence[Mapping[str, Any]]) -> dict:
    """{"blocks": [gain or None per block], "head": gain or None}: the signal each block's training carried.

    Per tensor, the clients' deltas d_i = update_i - global estimate the expected update E[d] by
    their mean; ||mean||^2 overstates ||E d||^2 by the noise var/n, so the unbiased estimate
    ||mean||^2 - sum_i ||d_i - mean||^2 / (n (n-1)) is used (client drift and minibatch noise
    average out, a direction the clients agree on does not). Summed over a block's tensors, divided
    by its parameter count and square-rooted: the block's consistent step per parameter. A block
    with fewer than two contributors this round is not measured (None)."""
    L = ctx.num_blocks
    energy: dict[int | None, float] = {}
    params: dict[int | None, int] = {}
    for key, block in ctx.key_blocks.items():
        old = global_state.get(key)
        deltas = [u[key].double() - old.double() for u in updates if key in u] if old is not None else []
        n = len(deltas)
        if n < 2:
            continue
        mean = sum(deltas) / n
        noise = sum(float((d - mean).square().sum()) for d in deltas) / (n * (n - 1))
        energy[block] = energy.get(block, 0.0) + float(mean.square().sum()) - noise
        params[block] = params.get(block, 0) + old.numel()

    def gain(block):
        if block not in energy or not params[block]:
            return None
        return math.sqrt(max(energy[block], 0.0) / params[block])

    return {"blocks": [gain(b) for b in range(L)], "head": gain(None)}
