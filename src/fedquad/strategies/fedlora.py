"""`fedlora`: FedAvg over the LoRA adapters of every block (McMahan et al., FedAvg, AISTATS 2017;
Hu et al., LoRA, ICLR 2022). All devices train all L blocks without quantization.

As a practitioner runs it: a device whose reported memory cannot hold full-depth training (by the
same cost model every strategy plans with) is not sent the plan and sits out, instead of being
sent it and failing after its first step, which costs the round its time to failure
(`fit_check=False`: everyone is sent the plan, the literal FedAvg).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from fedquad.devices import Device
from fedquad.plan import ClientPlan
from fedquad.strategies.base import Assignment, RoundContext, Strategy, fixed_plan_assignments

if TYPE_CHECKING:
    from fedquad.aggregation import AggregationConfig


class FedLoRA(Strategy):
    name = "fedlora"
    paper = "FedAvg on LoRA adapters (McMahan et al. 2017; Hu et al. 2022), every block, no quantization"

    def __init__(self, fit_check: bool = True, aggregation: AggregationConfig | None = None):
        super().__init__(aggregation)
        self.fit_check = fit_check

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        plan = ClientPlan(ctx.num_blocks)

        def plan_for(dev: Device) -> ClientPlan | None:
            fits = ctx.cost_model_for(dev).memory_bytes(plan) <= dev.budget_bytes
            return plan if not self.fit_check or fits else None

        return fixed_plan_assignments(ctx, self, devices, plan_for, "full depth for everyone who fits it")
