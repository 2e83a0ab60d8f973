"""`hetlora`: HetLoRA (Cho, Manoel, Joshi, Sim, Dimitriadis, "Heterogeneous LoRA for Federated
Fine-tuning of On-Device Foundation Models", EMNLP 2024).

Every device trains all L blocks at full depth, with a LoRA rank sized to its capacity (its
memory budget relative to the largest in the round, between `min_rank` and the global rank).
Rank self-pruning: after a round, a device whose trained tail components (the last `prune_step`
of its rank) carry less than `prune_threshold` of its update's norm drops those components from
then on. Aggregation is sparsity-weighted: each client's weight is its example count times the
Frobenius norm of its update, and every rank component is averaged over the clients that trained
it (zero-padded components do not pull the mean towards zero). Rank changes LoRA memory, not the
activations of a full-depth backward: a device whose reported memory cannot hold full depth at its
rank sits out, as a practitioner would not send it a plan it cannot run (`fit_check=False`: it is
sent the plan and runs out of memory after its first step).
How the capacity maps to a rank and the pruning constants are ours; the paper leaves them open.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from fedquad.costmodel import RoundTimeBreakdown
from fedquad.devices import Device
from fedquad.plan import ClientPlan, TrainOptions
from fedquad.strategies.base import Assignment, ClientOutcome, RoundContext, Strategy

if TYPE_CHECKING:
    from fedquad.aggregation import AggregationConfig


class HetLoRA(Strategy):
    name = "hetlora"
    paper = "Cho et al., Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models (EMNLP 2024)"

    def __init__(self, min_rank: int = 2, prune_step: int = 1, prune_threshold: float = 0.05,
                 fit_check: bool = True, aggregation: AggregationConfig | None = None):
        super().__init__(aggregation)
        self.min_rank, self.prune_step, self.prune_threshold = min_rank, prune_step, prune_threshold
        self.fit_check = fit_check

    def init_state(self, num_blocks: int) -> dict:
        return {"ranks": {}}

    def _rank(self, ctx: RoundContext, dev: Device, largest_budget: float, state: dict) -> int:
        r_max = ctx.lora_rank
        by_capacity = max(self.min_rank, min(r_max, round(r_max * dev.budget_bytes / max(largest_budget, 1.0))))
        return min(by_capacity, state["ranks"].get(dev.device_id, r_max))

    def configure(self, ctx: RoundContext, devices: Sequence[Device], state: dict) -> list[Assignment]:
        largest = max((d.budget_bytes for d in devices), default=1.0)
        plan = ClientPlan(ctx.num_blocks)
        out = []
        for dev in devices:
            rank = self._rank(ctx, dev, largest, state)
            a = Assignment(dev.device_id, plan, reason=f"full depth, rank {rank} of {ctx.lora_rank} by capacity",
                           options=TrainOptions(rank=rank))
            memory, time = self.costs(ctx, a, dev)
            if self.fit_check and memory > dev.budget_bytes:
                out.append(Assignment(dev.device_id, None, reason=f"sits out: full depth at rank {rank} does not fit "
                                                                  f"its memory budget"))
                continue
            out.append(Assignment(dev.device_id, plan, memory, time.total_s, a.reason, a.options))
        return out

    def costs(self, ctx: RoundContext, assignment: Assignment, device: Device):
        """LoRA bytes (optimizer state and upload) scale with rank / global rank; activations do not."""
        memory, time = super().costs(ctx, assignment, device)
        share = (assignment.options.rank or ctx.lora_rank) / ctx.lora_rank
        p = ctx.profile
        block_adapter = p.adapter_bytes - p.head_adapter_bytes
        memory -= (1 - share) * p.optimizer_bytes_per_trainable_byte * block_adapter
        upload_bytes = p.head_adapter_bytes + share * block_adapter
        return memory, RoundTimeBreakdown(time.compute_s, time.download_s, upload_bytes / device.up_Bps)

    def aggregate(self, ctx: RoundContext, global_state: Mapping[str, Any], outcomes: Sequence[ClientOutcome],
                  state: dict):
        """Sparsity-weighted, per rank component, behind the same guards as the per-key mean."""
        from fedquad.aggregation import aggregate_ranked  # torch only on the aggregation side
        ok = [o for o in outcomes if o.status == "ok"]
        return aggregate_ranked(global_state, [(o.update, o.examples, o.assignment.options.rank or ctx.lora_rank)
                                               for o in ok], client_ids=[o.device_id for o in ok],
                                config=self.aggregation_config())

    def observe(self, ctx: RoundContext, outcomes: Sequence[ClientOutcome], state: dict) -> dict:
        from fedquad.aggregation import tail_energy_share
        ranks = dict(state["ranks"])
        for o in outcomes:
            if o.status != "ok":
                continue
            rank = o.assignment.options.rank or ctx.lora_rank
            if rank - self.prune_step < self.min_rank:
                continue
            share = tail_energy_share(o.update, rank, self.prune_step)
            if math.isfinite(share) and share < self.prune_threshold:
                ranks[o.device_id] = rank - self.prune_step
        return {**state, "ranks": ranks}
