"""One federated round as two pure halves around the clients' training (docs/design.md, "The round").

`begin_round(strategy, ctx, state, reported, actual) -> RoundPlan`: the strategy plans from what
each device last reported, and every assignment with a plan gets its cost-model predictions
(memory, the part of it beyond saved activations, round time at the device's actual state).
`finish_round(strategy, state, plan, outcomes) -> (state, report)`: idle outcomes for the devices
that sit out, the strategy's guarded per-key merge, rejected updates marked, `observe`, the next
`RoundState` and the round report. Between the two, somebody trains the clients: the simulator
(`FederatedAlgorithm.apply`, below) calls `train_assignment` in-process; the Flower server
(`fedquad.flower.server`) sends each plan in a message and turns the replies into outcomes. Both
runtimes therefore plan, merge, learn and report with the same code, and one report schema:

    round, round_time_s, clock_s, participants, dropped, sat_out, idle_s, slowest_train_s, failed_s,
    bytes_up, bytes_down, devices[...], aggregation{rejected, untouched_keys, trained_keys,
    unmerged_keys}

`round_time_s` is the round's length on the runtime's clock: the simulator's virtual clock (the
slowest client's cost-model time, a failed one's included: `failed_s`, its time to failure), the
server's wall time from sending to merging (which waits for failure replies too).
`dropped` counts every device that contributed nothing (sat out, out of memory, failed,
rejected); `sat_out` is the part the strategy chose. The simulator adds `train_s` (host seconds,
moved into the host timing by the runner); the server adds `left` and per-device node fields.

`FederatedAlgorithm` binds the heavy, immutable parts (model, data, profile, strategy); the state
(`RoundState`) holds everything that changes: round index, virtual clock, global adapter, strategy
memory. Given the same state and clients, `apply` gives the same result, which is what makes
checkpoints and resumes exact. Per simulated round the devices run in their actual state (power
mode, background load, free memory); a client whose measured memory exceeds what it actually has
fails as an out-of-memory device would (after its first step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from fedquad.client import LocalTrainConfig, QuantSettings, train_local
from fedquad.client.train import ClientOutOfMemory, StepMemory, logit_adjustment_offsets
from fedquad.datasets import BatchConfig, iterate_batches
from fedquad.devices import Device, devices_at_round
from fedquad.evaluation import evaluate
from fedquad.sim.workload import Workload
from fedquad.strategies import Assignment, ClientOutcome, RoundContext, Strategy


@dataclass
class RoundState:
    round_index: int = 0  # the next round to run
    clock_s: float = 0.0  # simulated time at the end of the last finished round
    global_state: dict = field(default_factory=dict)  # adapter key -> tensor
    strategy_state: dict = field(default_factory=dict)  # JSON-able


@dataclass(frozen=True)
class ClientWork:
    """One device's training job of a planned round, with what the cost model expects of it."""

    assignment: Assignment = field(metadata={"help": "what the device is told (its plan is not None)"})
    device: Device = field(metadata={"help": "the device as it actually is this round"})
    predicted_bytes: float = field(metadata={"help": "the plan's predicted memory on this device"})
    fixed_bytes: float = field(metadata={
        "help": "predicted memory beyond saved activations (weights, adapter, optimizer, workspace)"})
    time_s: float = field(metadata={"help": "cost-model round time at the device's actual speed and links"})


@dataclass(frozen=True)
class RoundPlan:
    """A round between planning and merging: what `finish_round` needs besides the outcomes."""

    ctx: RoundContext = field(metadata={"help": "the strategy's view of the round"})
    strategy_state: dict = field(metadata={"help": "strategy memory after `configure` (it may write to it)"})
    assignments: tuple[Assignment, ...] = field(metadata={"help": "one per device, in the strategy's order"})
    devices: Mapping[str, Device] = field(metadata={"help": "device id -> the device as it actually is"})
    work: tuple[ClientWork, ...] = field(metadata={"help": "the assignments with a plan: who trains"})

    @property
    def round_index(self) -> int:
        return self.ctx.round_index


def begin_round(strategy: Strategy, ctx: RoundContext, state: RoundState, reported: Sequence[Device],
                actual: Sequence[Device] | None = None) -> RoundPlan:
    """Plan round `state.round_index`: `reported` is what the strategy plans from (each device as it
    last reported), `actual` each device as it really is now (default: as reported); costs use the
    actual state. Pure: `state` is not changed."""
    if ctx.round_index != state.round_index:
        raise ValueError(f"context is for round {ctx.round_index}, the state is at round {state.round_index}")
    reported = list(reported)
    actual_by_id = {d.device_id: d for d in (reported if actual is None else actual)}
    strategy_state = _copy_json(state.strategy_state)
    assignments = tuple(strategy.configure(ctx, reported, strategy_state) if reported else ())
    work = []
    for a in assignments:
        if a.plan is None:
            continue
        device = actual_by_id[a.device_id]
        memory_bytes, round_time = strategy.costs(ctx, a, device)
        work.append(ClientWork(a, device, memory_bytes, memory_bytes - predicted_saved_bytes(ctx.profile_for(device), a),
                               round_time.total_s))
    return RoundPlan(ctx, strategy_state, assignments, {a.device_id: actual_by_id[a.device_id] for a in assignments},
                     tuple(work))


def finish_round(strategy: Strategy, state: RoundState, plan: RoundPlan, outcomes: Mapping[str, ClientOutcome], *,
                 round_time_s: float | None = None,
                 device_extra: Mapping[str, dict] | None = None) -> tuple[RoundState, dict]:
    """Merge, learn and report: `outcomes` holds one outcome per `plan.work` device (by id).

    `round_time_s`: the round's length on the runtime's clock; None = the slowest successful
    client's time (the simulator's virtual clock). `device_extra`: runtime-specific fields added
    to a device's report line (the server's node id, budget source, ...). Pure: `state` is not changed."""
    expected = {w.assignment.device_id for w in plan.work}
    if set(outcomes) != expected:
        raise ValueError(f"outcomes for {sorted(outcomes)}, the round planned {sorted(expected)}")
    full = [outcomes[a.device_id] if a.plan is not None else
            ClientOutcome(a, "idle", a.reason, budget_bytes=plan.devices[a.device_id].budget_bytes)
            for a in plan.assignments]
    ctx, strategy_state = plan.ctx, _copy_json(plan.strategy_state)
    new_global, agg = strategy.aggregate(ctx, state.global_state, full, strategy_state)
    full = mark_rejected(full, agg)
    strategy_state = strategy.observe(ctx, full, strategy_state)

    ok_times = [o.time_s for o in full if o.status == "ok" and o.time_s is not None]
    slowest_s = max(ok_times, default=0.0)
    failed_s = max((failure_time_s(strategy, ctx, o, plan.devices[o.device_id]) for o in full
                    if o.status not in ("ok", "idle")), default=0.0)
    round_s = max(slowest_s, failed_s) if round_time_s is None else round_time_s
    extra = device_extra or {}
    report = {
        "round": ctx.round_index, "round_time_s": round_s, "clock_s": state.clock_s + round_s,
        "participants": sum(o.status == "ok" for o in full),
        "dropped": sum(o.status != "ok" for o in full),
        "sat_out": sum(o.status == "idle" for o in full),
        "idle_s": sum(round_s - t for t in ok_times) / max(len(ok_times), 1),
        "slowest_train_s": slowest_s, "failed_s": failed_s,
        "bytes_up": sum(o.update_bytes for o in full),
        "bytes_down": sum(ctx.profile.adapter_bytes for o in full if o.assignment.plan is not None),
        "devices": [{**outcome_dict(o, plan.devices[o.device_id]), **extra.get(o.device_id, {})} for o in full],
        "aggregation": {"rejected": [list(r_.reasons) for r_ in agg.rejected],
                        "untouched_keys": len(agg.untouched_keys),
                        "trained_keys": sum(1 for n in agg.contributors.values() if n),
                        "unmerged_keys": list(agg.unmerged_keys)},
    }
    return RoundState(ctx.round_index + 1, state.clock_s + round_s, dict(new_global), strategy_state), report


def failure_time_s(strategy: Strategy, ctx: RoundContext, o: ClientOutcome, device: Device) -> float:
    """How long the server waits for a client that contributed nothing: an update it returned but
    the merge rejected, or a time it reported (a timeout), costs that time; an out-of-memory client
    costs its download plus the first step at its speed (where it fails), by the cost model."""
    if o.time_s is not None:
        return o.time_s
    if o.assignment.plan is None:
        return 0.0
    _, t = strategy.costs(ctx, o.assignment, device)
    return t.download_s + t.compute_s / max(device.local_steps, 1)


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
                            {d.device_id: d.data_weight for d in self.w.devices}, self.w.adapted.key_block)

    def apply(self, state: RoundState, clients: Sequence[Device], progress=None) -> tuple[RoundState, dict]:
        """One simulated round: plan from each device's previous-round state, train the assigned
        clients in their actual state this round, merge and report (see the module docstring)."""
        c, r = self.w.config, state.round_index
        reported = devices_at_round(list(clients), self.w.scenario, max(r - 1, 0), seed=c.seed)
        actual = devices_at_round(list(clients), self.w.scenario, r, seed=c.seed)
        plan = begin_round(self.strategy, self.context(r), state, reported, actual)
        work = {w.assignment.device_id: w for w in plan.work}
        outcomes: dict[str, ClientOutcome] = {}
        train_s = 0.0
        for a in plan.assignments:  # progress counts every client, the ones that sit out too
            if a.device_id in work:
                start = time.perf_counter()
                outcomes[a.device_id] = self.train(state.global_state, r, work[a.device_id])
                train_s += time.perf_counter() - start
            if progress:
                progress()
        new_state, report = finish_round(self.strategy, state, plan, outcomes)
        report["train_s"] = train_s  # host seconds in client training (popped into the host timing by the runner)
        return new_state, report

    def evaluate(self, state: RoundState) -> dict:
        c = self.w.config
        return evaluate(self.w.adapted, state.global_state, self.w.eval_tokens, batch_size=64,
                        max_examples=c.eval_examples, seed=c.seed)

    def train(self, global_state: dict, round_index: int, work: ClientWork) -> ClientOutcome:
        """One client of a simulated round, on its own examples, timed by the cost model."""
        a = work.assignment
        return train_assignment(self.w.adapted, self.w.train_tokens, self.w.parts[a.device_id], self.w.config,
                                self.quant, round_index, global_state, a, fixed_bytes=work.fixed_bytes,
                                budget_bytes=work.device.budget_bytes, time_s=work.time_s,
                                step_memory=StepMemory.from_profile(self.w.profile, a.plan, work.device.budget_bytes))


def train_assignment(adapted, train_tokens, indices, config, quant: QuantSettings, round_index: int,
                     global_state: dict, a, *, fixed_bytes: float, budget_bytes: float,
                     time_s: float | None, step_memory: StepMemory | None = None) -> ClientOutcome:
    """Train one device's assignment on its own examples (`indices` into `train_tokens`): the client
    half of a round, shared by the simulator and the Flower ClientApp so both train identically.

    `fixed_bytes`: the predicted memory of the plan beyond saved activations (weights, adapter,
    optimizer, workspace); the device has `budget_bytes - fixed_bytes` left for saved activations,
    and a plan whose measured saved activations exceed that fails as out of memory. `time_s` is
    the outcome's round time (the simulator's virtual time; a real node passes what it measured).
    `step_memory` (the cost model's whole-step peak at each batch shape against the budget the
    device has now): a step predicted not to fit runs as micro-batches that do, and the measured
    check uses the fixed part at each micro-batch's shape (`fedquad.client.train`); the device then
    fails only where even one example does not fit or the measurement exceeds its memory."""
    c = config
    saved_limit = budget_bytes - fixed_bytes  # what the device has left for activations
    offsets = None  # logit adjustment by this client's own label shares (classification only)
    if getattr(c, "logit_adjustment", 0) > 0 and adapted.kind.has_classes and len(indices):
        offsets = logit_adjustment_offsets(train_tokens.labels[np.asarray(indices)],
                                           int(adapted.model.config.num_labels),
                                           c.logit_adjustment)
    train_config = LocalTrainConfig(learning_rate=c.learning_rate, local_steps=c.local_steps, quant=dataclasses.replace(
        quant, bits=a.plan.bits), seed=derive_seed("train", c.seed, round_index, a.device_id) % 2**31,
        logit_offsets=offsets)
    try:
        result = train_local(adapted, global_state, a.plan,
                             local_batches(train_tokens, indices, c, a.device_id, round_index), train_config,
                             a.options, saved_limit_bytes=saved_limit, step_memory=step_memory)
    except ClientOutOfMemory as exc:
        return ClientOutcome(a, "oom", f"out of memory: {exc}", measured_bytes=exc.needed_bytes(fixed_bytes),
                             budget_bytes=budget_bytes)
    m = result.metrics
    measured = fixed_bytes + m.saved_kept_bytes
    return ClientOutcome(a, "ok", "", result.update, m.examples, m.loss, measured, time_s, budget_bytes,
                         micro_batches=m.max_micro_batches)


def local_batches(train_tokens, indices, c, device_id: str, round_index: int):
    """A device's batches in round `round_index`: the round's own epoch (epoch = round index), then,
    for a device with fewer than local_steps batches, further passes until training stops.

    Every further pass draws its order from a stream of its own (a seed derived from the device and
    the round, the pass number as the epoch), so no pass repeats another round's. (Numbering them as
    epochs `round * 1000 + pass` made round 0's second pass draw round 1's first epoch, and so on.)"""
    yield from iterate_batches(train_tokens, BatchConfig(c.batch_size, seed=derive_seed(
        "batches", c.seed, device_id)), indices=indices, epoch=round_index)
    wrap = BatchConfig(c.batch_size, seed=derive_seed("batches-wrap", c.seed, device_id, round_index))
    for epoch in itertools.count(1):
        empty = True
        for batch in iterate_batches(train_tokens, wrap, indices=indices, epoch=epoch):
            empty = False
            yield batch
        if empty:  # a device without examples: nothing to cycle through
            return


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
    """One device's line of a round report (JSON-able). The budget is the one the device had when it
    trained (a Flower node reports its own) where known, else the one it was planned with."""
    budget_bytes = device.budget_bytes if o.budget_bytes is None else o.budget_bytes
    return {**o.assignment.to_dict(), "status": o.status, "failure": o.reason or None, "examples": o.examples,
            "loss": o.loss, "measured_bytes": o.measured_bytes, "time_s": o.time_s,
            "budget_bytes": budget_bytes, "device_class": device.device_class,
            "power_mode": device.power_mode, "speed": device.speed, "upload_bytes": o.update_bytes,
            "micro_batches": o.micro_batches}
