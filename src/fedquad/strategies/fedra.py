"""`fedra`: FedRA (Su, Li, Xue, Yang, "FedRA: A Random Allocation Strategy for Federated Tuning to
Unleash the Power of Heterogeneous Clients", ECCV 2024).

Each round every device gets a fresh random subset of blocks, as many as its memory allows
(the deepest unquantized depth that fits its budget), and trains the LoRA of those blocks as a
sub-model: the unallocated blocks are bypassed (identity), so they cost no activation memory and
no compute. Aggregation is layer-wise: each block's tensors are averaged over the devices that
trained that block this round, which is exactly the per-key mean of the base class.
"""

from __future__ import annotations

from typing import Sequence

from fedquad.plan import ClientPlan, TrainOptions, plan_depth_for_blocks
from fedquad.costmodel import RoundTimeBreakdown
from fedquad.devices import Device
from fedquad.strategies.base import Assignment, RoundContext, Strategy, deepest_fitting_depth, sit_out_if_useless


class FedRA(Strategy):
    name = "fedra"
    paper = "Su et al., FedRA: A Random Allocation Strategy for Federated Tuning (ECCV 2024)"

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        L = ctx.num_blocks
        out = []
        for dev in devices:
            n = deepest_fitting_depth(ctx, dev)
            if n is None:
                out.append(Assignment(dev.device_id, None, reason="cannot take part: not even the head fits"))
                continue
            if n == 0:
                a = sit_out_if_useless(ctx, Assignment(dev.device_id, ClientPlan(0), reason="head only: no block fits"))
                if a.plan is None:
                    out.append(a)
                    continue
            else:
                blocks = tuple(sorted(ctx.rng("fedra", dev.device_id).sample(range(L), n)))
                a = Assignment(dev.device_id, ClientPlan(plan_depth_for_blocks(blocks, L)),
                               reason=f"random {n} of {L} blocks {list(blocks)}", options=TrainOptions(lora_blocks=blocks))
            memory, time = self.costs(ctx, a, dev)
            out.append(Assignment(a.device_id, a.plan, memory, time.total_s, a.reason, a.options))
        return out

    def costs(self, ctx: RoundContext, assignment: Assignment, device: Device):
        """A sub-model of n blocks: memory of training n blocks, forward only through those n."""
        blocks = assignment.options.lora_blocks
        if blocks is None:
            return super().costs(ctx, assignment, device)
        n = len(blocks)
        sub = Assignment(assignment.device_id, ClientPlan(n))
        memory, time = super().costs(ctx, sub, device)
        skipped_forward_s = sum(b.forward_s for i, b in enumerate(ctx.profile_for(device).blocks)
                                if i not in set(blocks))
        compute_s = max(0.0, time.compute_s - device.local_steps * skipped_forward_s / device.speed)
        return memory, RoundTimeBreakdown(compute_s, time.download_s, time.upload_s)
