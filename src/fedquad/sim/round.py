"""One federated round as a pure step: `apply(state, clients) -> (state, report)` (DESIGN section 10).

`FederatedAlgorithm` binds the heavy, immutable parts (model, data, profile, strategy); the state
(`RoundState`) holds everything that changes: round index, virtual clock, global adapter, strategy
memory. Given the same state and clients, `apply` gives the same result, which is what makes
checkpoints and resumes exact.

Per round: the strategy plans from what each device last reported (its previous-round state),
the devices then run in their actual state this round (power mode, background load, free memory,
DESIGN section 8). Each assigned client trains for real; one whose measured memory exceeds what
it actually has fails as an out-of-memory device would (after its first step), the others'
updates are validated and merged per key. The round lasts as long as its slowest successful
client (virtual clock from the cost model at the device's actual speed and bandwidth).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from fedquad.client import LocalTrainConfig, QuantSettings, train_local
from fedquad.client.train import ClientOutOfMemory
from fedquad.datasets import BatchConfig, iterate_batches
from fedquad.devices import Device, devices_at_round
from fedquad.evaluation import evaluate
from fedquad.sim.workload import Workload
from fedquad.strategies import ClientOutcome, RoundContext, Strategy


@dataclass
class RoundState:
    round_index: int = 0  # the next round to run
    clock_s: float = 0.0  # simulated time at the end of the last finished round
    global_state: dict = field(default_factory=dict)  # adapter key -> tensor
    strategy_state: dict = field(default_factory=dict)  # JSON-able


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts, stable across processes (no Python hash randomisation)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class FederatedAlgorithm:
    def __init__(self, workload: Workload, strategy: Strategy):
        self.w, self.strategy = workload, strategy
        c = workload.config
        self.quant = QuantSettings(group_size=c.group_size)
        self.by_id = {d.device_id: d for d in workload.devices}

    # -- FedJAX-style API ----------------------------------------------------------------------
    def init(self) -> RoundState:
        return RoundState(0, 0.0, self.w.adapted.adapter_state(), self.strategy.init_state(self.w.adapted.num_blocks))

    def sample_clients(self, round_index: int) -> list[Device]:
        """The devices taking part in `round_index` (same for every strategy: seeded by round only)."""
        c = self.w.config
        rng = torch.Generator().manual_seed(derive_seed("sample", c.seed, round_index))
        pick = torch.randperm(len(self.w.devices), generator=rng)[: c.clients_per_round].tolist()
        return [self.w.devices[i] for i in sorted(pick)]

    def context(self, round_index: int) -> RoundContext:
        return RoundContext(round_index, self.w.profile, self.w.config.seed, self.w.adapted.lora_rank,
                            {d.device_id: d.data_weight for d in self.w.devices})

    def apply(self, state: RoundState, clients: Sequence[Device], progress=None) -> tuple[RoundState, dict]:
        c, r = self.w.config, state.round_index
        ctx = self.context(r)
        reported = devices_at_round(list(clients), self.w.scenario, max(r - 1, 0), seed=c.seed)
        actual = {d.device_id: d for d in devices_at_round(list(clients), self.w.scenario, r, seed=c.seed)}
        strategy_state = _copy_json(state.strategy_state)
        assignments = self.strategy.configure(ctx, reported, strategy_state)

        outcomes: list[ClientOutcome] = []
        train_s = 0.0
        for a in assignments:
            start = time.perf_counter()
            outcomes.append(self._run_client(ctx, state.global_state, a, actual[a.device_id]))
            train_s += time.perf_counter() - start
            if progress:
                progress()
        new_global, agg = self.strategy.aggregate(ctx, state.global_state, outcomes, strategy_state)
        outcomes = _mark_rejected(outcomes, agg)
        strategy_state = self.strategy.observe(ctx, outcomes, strategy_state)

        ok_times = [o.time_s for o in outcomes if o.status == "ok"]
        round_s = max(ok_times, default=0.0)
        report = {
            "round": r, "round_time_s": round_s, "clock_s": state.clock_s + round_s,
            "participants": sum(o.status == "ok" for o in outcomes),
            "dropped": sum(o.status != "ok" for o in outcomes),
            "idle_s": sum(round_s - t for t in ok_times) / max(len(ok_times), 1),
            "bytes_up": sum(o.update_bytes for o in outcomes),
            "bytes_down": sum(self.w.profile.adapter_bytes for o in outcomes if o.assignment.plan is not None),
            "devices": [_outcome_dict(o, actual[o.device_id]) for o in outcomes],
            "train_s": train_s,  # host seconds in client training (popped into the host timing by the runner)
            "aggregation": {"rejected": [r_.reasons for r_ in agg.rejected], "untouched_keys": len(agg.untouched_keys)},
        }
        new_state = RoundState(r + 1, state.clock_s + round_s, dict(new_global), strategy_state)
        return new_state, report

    def evaluate(self, state: RoundState) -> dict:
        c = self.w.config
        return evaluate(self.w.adapted, state.global_state, self.w.eval_tokens, batch_size=64,
                        max_examples=c.eval_examples, seed=c.seed)

    # -- one client ----------------------------------------------------------------------------
    def _run_client(self, ctx: RoundContext, global_state: dict, a, device: Device) -> ClientOutcome:
        if a.plan is None:
            return ClientOutcome(a, "idle", a.reason, budget_bytes=device.budget_bytes)
        c = self.w.config
        memory_bytes, time = self.strategy.costs(ctx, a, device)
        predicted_saved = predicted_saved_bytes(self.w.profile, a)
        fixed_bytes = memory_bytes - predicted_saved
        saved_limit = device.budget_bytes - fixed_bytes  # what the device has left for activations
        batches = iterate_batches(self.w.train_tokens, BatchConfig(c.batch_size, seed=derive_seed(
            "batches", c.seed, a.device_id)), indices=self.w.parts[a.device_id], epoch=ctx.round_index)
        config = LocalTrainConfig(learning_rate=c.learning_rate, local_steps=c.local_steps, quant=dataclasses.replace(
            self.quant, bits=a.plan.bits), seed=derive_seed("train", c.seed, ctx.round_index, a.device_id) % 2**31)
        try:
            result = train_local(self.w.adapted, global_state, a.plan, _cycle(batches, self, a, ctx), config,
                                 a.options, saved_limit_bytes=saved_limit)
        except ClientOutOfMemory as exc:
            return ClientOutcome(a, "oom", f"out of memory: {exc}", measured_bytes=fixed_bytes + exc.saved_bytes,
                                 budget_bytes=device.budget_bytes)
        m = result.metrics
        measured = fixed_bytes + m.saved_kept_bytes
        return ClientOutcome(a, "ok", "", result.update, m.examples, m.loss, measured, time.total_s,
                             device.budget_bytes)


def _cycle(first, algo: FederatedAlgorithm, a, ctx: RoundContext):
    """Local batches, wrapping into the next epoch when a device has fewer than local_steps batches."""
    yield from first
    c = algo.w.config
    for epoch in range(1, 1000):
        yield from iterate_batches(algo.w.train_tokens, BatchConfig(c.batch_size, seed=derive_seed(
            "batches", c.seed, a.device_id)), indices=algo.w.parts[a.device_id], epoch=ctx.round_index * 1000 + epoch)


def predicted_saved_bytes(profile, assignment) -> float:
    """The cost model's saved-activation bytes for the assignment: the part of its memory that the
    client measures exactly (the rest -- weights, adapter, optimizer, workspace -- is taken as predicted)."""
    L, plan = profile.num_blocks, assignment.plan
    blocks = assignment.options.lora_blocks
    trainable = sorted(blocks) if blocks is not None else list(plan.trainable_blocks(L))
    quantized = set() if blocks is not None else set(plan.quantized_blocks(L))
    total = sum(profile.blocks[i].kept_bytes[plan.bits] if i in quantized else profile.blocks[i].saved_bytes
                for i in trainable)
    head = profile.head
    depth0 = head.saved_bytes if head.saved_bytes_depth0 is None else head.saved_bytes_depth0
    return float(total + (head.saved_bytes if trainable else depth0))


def _copy_json(data: dict) -> dict:
    import json
    return json.loads(json.dumps(data))


def _mark_rejected(outcomes: list[ClientOutcome], agg) -> list[ClientOutcome]:
    ok_index = [i for i, o in enumerate(outcomes) if o.status == "ok"]
    out = list(outcomes)
    for rej in agg.rejected:
        i = ok_index[rej.index]
        out[i] = dataclasses.replace(out[i], status="rejected", reason="; ".join(rej.reasons), update=None)
    return out


def _outcome_dict(o: ClientOutcome, device: Device) -> dict:
    return {**o.assignment.to_dict(), "status": o.status, "failure": o.reason or None, "examples": o.examples,
            "loss": o.loss, "measured_bytes": o.measured_bytes, "time_s": o.time_s,
            "budget_bytes": device.budget_bytes, "device_class": device.device_class,
            "power_mode": device.power_mode, "speed": device.speed, "upload_bytes": o.update_bytes}
