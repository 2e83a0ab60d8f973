"""`fedlora-ckpt`: full-depth FedLoRA with activation checkpointing, the fewest checkpointed blocks
that fit each device: what a practitioner does without FedQuad when full-depth LoRA does not fit.

Where the behaviour comes from: HF transformers' `gradient_checkpointing_enable()` (non-reentrant
`torch.utils.checkpoint` per transformer layer: a layer stores its input and reruns its forward in
backward), and Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost" (arXiv:1604.06174),
which trades one extra forward per checkpointed segment for keeping only the segment inputs.
Gradients are exact (the recompute replays the dropout RNG), so no quantization is involved. Unlike
HF's switch, which checkpoints every layer, the count is per device: the lowest r trainable blocks
are checkpointed, r the smallest that fits the budget (r = 0 for devices that fit plain FedLoRA),
since each checkpointed block costs one more forward. A device that cannot fit even with every
block checkpointed sits out. Needs a profile with recompute bytes (`Profile.supports_recompute`).
"""

from __future__ import annotations

from typing import Sequence

from fedquad.devices import Device
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan
from fedquad.strategies.base import Assignment, RoundContext, Strategy, fixed_plan_assignments


class FedLoRACkpt(Strategy):
    name = "fedlora-ckpt"
    paper = ("FedLoRA with activation checkpointing (HF gradient checkpointing; Chen et al. 2016): full depth, "
             "the fewest recomputed blocks that fit")

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        L, cm = ctx.num_blocks, ctx.cost_model
        if not cm.supports_recompute:
            raise FedquadError(f"fedlora-ckpt needs a profile with recompute bytes (blocks[].input_bytes); "
                               f"{ctx.profile.source} has none: re-run `fedquad profile`")
        plans = [ClientPlan(L, 0, 8, "bottom", r) for r in range(L + 1)]

        def plan_for(dev: Device) -> ClientPlan | None:
            cm_dev = ctx.cost_model_for(dev)
            r = next((r for r in range(L + 1) if cm_dev.memory_bytes(plans[r]) <= dev.budget_bytes), None)
            return None if r is None else ClientPlan(L, 0, 8, "bottom", r)

        return fixed_plan_assignments(ctx, self, devices, plan_for, "full depth, fewest checkpointed blocks that fit")
