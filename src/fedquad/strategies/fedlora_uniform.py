"""`fedlora-uniform`: FedAvg on LoRA with one depth for every device, the deepest that fits the
weakest selected device (no quantization). Devices that cannot fit even the head sit out.
"""

from __future__ import annotations

from typing import Sequence

from fedquad.devices import Device
from fedquad.plan import ClientPlan
from fedquad.strategies.base import Assignment, RoundContext, Strategy, deepest_fitting_depth, fixed_plan_assignments


class FedLoRAUniform(Strategy):
    name = "fedlora-uniform"
    paper = "FedAvg on LoRA with one depth sized to the weakest selected device"

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        depths = [deepest_fitting_depth(ctx, dev.budget_bytes) for dev in devices]
        usable = [d for d in depths if d is not None]
        depth = min(usable) if usable else 0
        plan = ClientPlan(depth)
        return fixed_plan_assignments(
            ctx, self, devices, lambda dev: plan if deepest_fitting_depth(ctx, dev.budget_bytes) is not None else None,
            f"uniform depth {depth}: the deepest the weakest selected device fits")
