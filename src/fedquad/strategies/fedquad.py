"""FedQuad (Li, Liu, Xu, Huang, arXiv 2506.01001): per-device LoRA depth and activation-quantized
blocks chosen each round by the cost model and the greedy planner (docs/design.md: "The client", "Cost model",
"Planner").

The paper's abstract fixes the idea; the planner's details (efficient sets, utility, coverage,
EMA re-planning) are this project's design, see docs/design.md, "Planner". `depth-only` and
`quant-only` ablations are the same planner with part of the menu switched off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from fedquad.devices import Device
from fedquad.planner import DeviceDecision, PlannerConfig, PlannerState, RoundPlan, plan_round
from fedquad.strategies.base import Assignment, ClientOutcome, RoundContext, Strategy, sit_out_if_useless

if TYPE_CHECKING:
    from fedquad.aggregation import AggregationConfig


class FedQuad(Strategy):
    name = "fedquad"
    paper = "Li et al., FedQuad: Adaptive Layer-wise LoRA Deployment and Activation Quantization (arXiv 2506.01001)"

    def __init__(self, planner: PlannerConfig = PlannerConfig(), aggregation: AggregationConfig | None = None):
        super().__init__(aggregation)
        self.planner = planner

    def init_state(self, num_blocks: int) -> dict:
        return {"planner": PlannerState.for_config(num_blocks, self.planner).to_dict(), "last": {}}

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        planner_state = PlannerState.from_dict(state["planner"])
        plan = plan_round(devices, ctx.profile, self.planner, planner_state)
        state["last"] = {d.device_id: [d.time_ratio, d.memory_ratio] for d in plan.decisions}
        return [sit_out_if_useless(ctx, Assignment(d.device_id, d.plan, d.predicted_bytes, d.predicted_time_s,
                                                    d.reason)) for d in plan.decisions]

    def observe(self, ctx: RoundContext, outcomes: Sequence[ClientOutcome], state: dict) -> dict:
        """Fold measured time, memory and free memory into the planner's moving averages."""
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
        return {**state, "planner": planner_state.to_dict()}
