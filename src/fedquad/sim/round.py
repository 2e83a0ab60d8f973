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
        # the workload's initial adapter, not the model's current one: a shared model (compare, the
        # Flower server) holds whatever the last client trained
        state = {k: v.clone() for k, v in self.w.initial_state.items()}
        return RoundState(0, 0.0, state, self.strategy.init_state(self.w.adapted.num_blocks))

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
        outcomes = mark_rejected(outcomes, agg)
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
            "devices": [outcome_dict(o, actual[o.device_id]) for o in outcomes],
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
        memory_bytes, time = self.strategy.costs(ctx, a, device)
        fixed_bytes = memory_bytes - predicted_saved_bytes(self.w.profile, a)
        return train_assignment(self.w.adapted, self.w.train_tokens, self.w.parts[a.device_id], self.w.config,
                                self.quant, ctx.round_index, global_state, a, fixed_bytes=fixed_bytes,
                                budget_bytes=device.budget_bytes, time_s=time.total_s)


def train_assignment(adapted, train_tokens, indices, config, quant: QuantSettings, round_index: int,
                     global_state: dict, a, *, fixed_bytes: float, budget_bytes: float,
                     time_s: float | None) -> ClientOutcome:
    """Train one device's assignment on its own examples (`indices` into `train_tokens`): the client
    half of a round, shared by the simulator and the Flower ClientApp so both train identically.

    `fixed_bytes`: the predicted memory of the plan beyond saved activations (weights, adapter,
    optimizer, workspace); the device has `budget_bytes - fixed_bytes` left for saved activations,
    and a plan whose measured saved activations exceed that fails as out of memory. `time_s` is
    the outcome's round time (the simulator's virtual time; a real node passes what it measured)."""
    c = config
    saved_limit = budget_bytes - fixed_bytes  # what the device has left for activations
    batches = iterate_batches(train_tokens, BatchConfig(c.batch_size, seed=derive_seed(
        "batches", c.seed, a.device_id)), indices=indices, epoch=round_index)
    train_config = LocalTrainConfig(learning_rate=c.learning_rate, local_steps=c.local_steps, quant=dataclasses.replace(
        quant, bits=a.plan.bits), seed=derive_seed("train", c.seed, round_index, a.device_id) % 2**31)
    try:
        result = train_local(adapted, global_state, a.plan,
                             _cycle(batches, train_tokens, indices, c, a.device_id, round_index), train_config,
                             a.options, saved_limit_bytes=saved_limit)
    except ClientOutOfMemory as exc:
        return ClientOutcome(a, "oom", f"out of memory: {exc}", measured_bytes=fixed_bytes + exc.saved_bytes,
                             budget_bytes=budget_bytes)
    m = result.metrics
    measured = fixed_bytes + m.saved_kept_bytes
    return ClientOutcome(a, "ok", "", result.update, m.examples, m.loss, measured, time_s, budget_bytes)


def _cycle(first, train_tokens, indices, c, device_id: str, round_index: int):
    """Local batches, wrapping into the next epoch when a device has fewer than local_steps batches."""
    yield from first
    for epoch in range(1, 1000):
        yield from iterate_batches(train_tokens, BatchConfig(c.batch_size, seed=derive_seed(
            "batches", c.seed, device_id)), indices=indices, epoch=round_index * 1000 + epoch)


def predicted_saved_bytes(profile, assignment) -> float:
    """The cost model's saved-activation bytes for the assignment: the part of its memory that the
    client measures exactly (the rest -- weights, adapter, optimizer, workspace -- is taken as predicted).

    A FedRA sub-model saves what its allocated blocks save (bypassed blocks save nothing), its
    lowest allocated block as the lowest trainable one."""
    from fedquad.costmodel import cost_model
    blocks = assignment.options.lora_blocks
    if blocks is None:
        return float(cost_model(profile).saved_bytes(assignment.plan))
    lowest = min(blocks)
    total = sum(profile.blocks[i].saved_bytes_lowest if i == lowest else profile.blocks[i].saved_bytes for i in blocks)
    return float(total + profile.head.saved_bytes)


def _copy_json(data: dict) -> dict:
    import json
    return json.loads(json.dumps(data))


def mark_rejected(outcomes: list[ClientOutcome], agg) -> list[ClientOutcome]:
    """Outcomes with the updates the aggregation rejected marked `rejected`, with the reasons."""
    ok_index = [i for i, o in enumerate(outcomes) if o.status == "ok"]
    out = list(outcomes)
    for rej in agg.rejected:
        i = ok_index[rej.index]
        out[i] = dataclasses.replace(out[i], status="rejected", reason="; ".join(rej.reasons), update=None)
    return out


def outcome_dict(o: ClientOutcome, device: Device) -> dict:
    """One device's line of a round report (JSON-able)."""
    return {**o.assignment.to_dict(), "status": o.status, "failure": o.reason or None, "examples": o.examples,
            "loss": o.loss, "measured_bytes": o.measured_bytes, "time_s": o.time_s,
            "budget_bytes": device.budget_bytes, "device_class": device.device_class,
            "power_mode": device.power_mode, "speed": device.speed, "upload_bytes": o.update_bytes}
