"""`fedlora-uniform`: FedAvg on LoRA with one depth for every device that takes part this round
(no quantization), as a practitioner with a heterogeneous fleet would run it.

The depth is chosen per round to maximise the expected progress per second, U(d) = (share of
the sampled devices' data on devices that fit d) x (layers trained: d blocks plus the head, when
it trains) / (round time of those devices at d). Devices that cannot fit the chosen depth sit
out. (Sizing the depth to the weakest sampled device instead -- `weakest=True` -- trains the head
alone whenever one sampled board fits only the head: a strawman.)
"""

from __future__ import annotations

from typing import Sequence

from fedquad.devices import Device
from fedquad.plan import ClientPlan
from fedquad.strategies.base import Assignment, RoundContext, Strategy, deepest_fitting_depth, fixed_plan_assignments


class FedLoRAUniform(Strategy):
    name = "fedlora-uniform"
    paper = "FedAvg on LoRA with one depth per round, chosen for progress per second; devices that cannot fit it sit out"

    def __init__(self, weakest: bool = False, aggregation=None):
        super().__init__(aggregation)
        self.weakest = weakest

    def choose_depth(self, ctx: RoundContext, devices: Sequence[Device]) -> tuple[int, str]:
        """(depth, why) for this round."""
        fits = {dev.device_id: deepest_fitting_depth(ctx, dev) for dev in devices}
        usable = [d for d in fits.values() if d is not None]
        if self.weakest or not usable:
            depth = min(usable) if usable else 0
            return depth, f"uniform depth {depth}: the deepest the weakest selected device fits"
        total_w = sum(dev.data_weight for dev in devices) or 1.0
        head = 1 if ctx.head_trains else 0
        best = None
        for depth in range(max(usable) + 1):
            if depth + head == 0:
                continue
            takers = [dev for dev in devices if fits[dev.device_id] is not None and fits[dev.device_id] >= depth]
            plan = ClientPlan(depth)
            round_s = max(self.costs(ctx, Assignment(dev.device_id, plan), dev)[1].total_s for dev in takers)
            share = (sum(dev.data_weight for dev in takers) / total_w if total_w else len(takers) / len(devices))
            u = share * (depth + head) / max(round_s, 1e-12)
            if best is None or u > best[0]:
                best = (u, depth, len(takers))
        if best is None:
            return 0, "uniform depth 0"
        _, depth, n = best
        return depth, (f"uniform depth {depth}: most layers x data per second this round ({n} of {len(devices)} "
                       f"devices fit it)")

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        depth, why = self.choose_depth(ctx, devices)
        plan = ClientPlan(depth)

        def plan_for(dev: Device):
            d = deepest_fitting_depth(ctx, dev)
            return plan if d is not None and d >= depth else None

        return fixed_plan_assignments(ctx, self, devices, plan_for, why)
