"""`quant-only`: full-depth LoRA with the fewest quantized blocks that fit (int8 before int4): the
quantization half of FedQuad alone. A device that cannot fit even all blocks at int4 sits out.
"""

from __future__ import annotations

from typing import Sequence

from fedquad.devices import Device
from fedquad.plan import ClientPlan
from fedquad.strategies.base import Assignment, RoundContext, Strategy, fixed_plan_assignments


class QuantOnly(Strategy):
    name = "quant-only"
    paper = "Full-depth LoRA with quantized saved activations only (FedQuad's quantization half)"

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        L = ctx.num_blocks
        menu = [ClientPlan(L, q, bits) for q in range(L + 1) for bits in (8, 4) if q or bits == 8]

        def plan_for(dev: Device) -> ClientPlan | None:
            cm = ctx.cost_model_for(dev)
            return next((p for p in menu if cm.memory_bytes(p) <= dev.budget_bytes), None)

        return fixed_plan_assignments(ctx, self, devices, plan_for, "full depth, fewest quantized blocks that fit")
