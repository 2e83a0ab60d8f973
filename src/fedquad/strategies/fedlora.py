"""`fedlora`: FedAvg over the LoRA adapters of every block (McMahan et al., FedAvg, AISTATS 2017;
Hu et al., LoRA, ICLR 2022). All devices train all L blocks without quantization; a device that
cannot fit that runs out of memory and drops out of the round.
"""

from __future__ import annotations

from typing import Sequence

from fedquad.devices import Device
from fedquad.plan import ClientPlan
from fedquad.strategies.base import Assignment, RoundContext, Strategy, fixed_plan_assignments


class FedLoRA(Strategy):
    name = "fedlora"
    paper = "FedAvg on LoRA adapters (McMahan et al. 2017; Hu et al. 2022), every block, no quantization"

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        plan = ClientPlan(ctx.num_blocks)
        return fixed_plan_assignments(ctx, self, devices, lambda dev: plan, "full depth for everyone")
