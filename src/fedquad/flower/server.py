"""The fedquad server's state and round logic over Flower messages (what `serverapp.py` drives).

`FedquadServer` keeps the run: the workload's model and eval data, the connected nodes and their
reported profiles, the fedquad strategy and its state, the history and the checkpoints. Its
methods are the steps of one round -- `refresh_nodes` (the profile query), `configure_round`
(one message per node with its own plan), `aggregate_round` (replies -> outcomes -> the
strategy's merge and observe), `evaluate_fn` (central evaluation, history, checkpoint) -- and
`finish` (the PEFT adapter). `serverapp.py` only connects them to Flower's strategy loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedquad.errors import FedquadError
from fedquad.flower.settings import ServerSettings
from fedquad.sim.checkpoint import write_json_atomic


def log(text: str) -> None:
    print(f"[fedquad server {time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Node:
    node_id: int
    report: dict
    device: object  # fedquad.devices.Device
    sources: dict


@dataclass
class RoundInFlight:
    round_index: int
    ctx: object
    strategy_state: dict
    assignments: list
    sent: dict = field(default_factory=dict)  # node id -> (assignment, device)
    idle: list = field(default_factory=list)  # outcomes of devices that sit the round out
    devices: dict = field(default_factory=dict)  # device id -> (node id, device)
    started: float = 0.0
    left: list = field(default_factory=list)  # devices that disconnected since the last round
    messages: list = field(default_factory=list)  # what configure_train handed to the grid


class FedquadServer:
    """Everything the ServerApp keeps: model, eval data, profile, strategy, round state, history."""

    def __init__(self, config, settings: ServerSettings, run_dir: str):
        from fedquad.sim.checkpoint import load_checkpoint
        from fedquad.sim.config import from_dict
        from fedquad.sim.round import RoundState
        from fedquad.sim.runner import make_strategy
        from fedquad.sim.workload import load_model_and_data, resolve_profile

        self.settings, self.run_dir = settings, run_dir
        self.history: list[dict] = []
        has_checkpoint = os.path.isfile(os.path.join(run_dir, "checkpoint", "state.json")) or os.path.isfile(
            os.path.join(run_dir, "checkpoint.old", "state.json"))
        self.resumed = settings.resume
        if settings.resume:
            state, saved_config, self.history = load_checkpoint(run_dir)
            config = from_dict(saved_config, f"{run_dir}/checkpoint")
            log(f"resuming {run_dir} at round {state.round_index} of {config.rounds}")
        elif has_checkpoint:
            raise FedquadError(f"{run_dir} already holds a checkpoint: set resume=true to continue it, "
                               "or choose another run-dir")
        os.makedirs(run_dir, exist_ok=True)
        self.adapted, _train_tokens, self.eval_tokens, self.labels = load_model_and_data(config)
        started = time.perf_counter()
        self.profile = resolve_profile(config, self.adapted, run_dir, repeats=settings.profile_repeats)
        if config.profile is None:  # measured now: pin it so a resume plans with the same profile
            log(f"measured the cost-model profile in {time.perf_counter() - started:.1f} s")
            config = config.replace(profile=os.path.join(run_dir, "profile.json"))
        if self.profile.num_blocks != self.adapted.num_blocks:
            raise FedquadError(f"profile is for {self.profile.num_blocks} blocks, {config.model} has "
                               f"{self.adapted.num_blocks}")
        self.config = config
        self.strategy = make_strategy(config)
        if not settings.resume:
            state = RoundState(0, 0.0, self.adapted.adapter_state(), self.strategy.init_state(self.adapted.num_blocks))
        self.state = state
        self.start_round = state.round_index
        self.nodes: dict[int, Node] = {}
        self.unusable: dict[int, str] = {}  # node id -> why it cannot take part
        self.inflight: RoundInFlight | None = None
        self.pending_report: dict | None = None
        self._parts: dict[int, list] = {}
        write_json_atomic(os.path.join(run_dir, "config.json"), {"config": config.to_dict(), "server": settings.__dict__})

    # -- nodes -----------------------------------------------------------------------------------
    def wait_for_nodes(self, grid: Grid) -> None:
        deadline = time.monotonic() + self.settings.node_wait_timeout
        while True:
            count = len(list(grid.get_node_ids()))
            if count >= self.settings.min_nodes:
                return
            if time.monotonic() > deadline:
                if count == 0:
                    raise FedquadError(f"no SuperNode connected within {self.settings.node_wait_timeout:.0f} s")
                log(f"only {count} of {self.settings.min_nodes} nodes after {self.settings.node_wait_timeout:.0f} s; "
                    "starting with them")
                return
            time.sleep(1.0)

    def _data_weight(self, report: dict) -> float:
        from fedquad.sim.workload import partition_examples
        n, p = report.get("num-partitions"), report.get("partition-id")
        if n is None or p is None:
            return 0.0
        if n not in self._parts:
            self._parts[n] = partition_examples(self.config, self.labels, n)
        return float(len(self._parts[n][p]))

    def _with_run_config_defaults(self, report: dict) -> dict:
        """A node that sets no budget (or class) gets the run config's node-budgets (node-classes)
        entry for its partition-id: how the simulation engine's nodes become different devices."""
        report = dict(report)
        p = report.get("partition-id")
        budgets, classes = self.settings.budget_fractions(), self.settings.classes()
        if p is None:
            return report
        if budgets and report.get("memory-budget-mb") is None and report.get("memory-budget-fraction") is None:
            report["memory-budget-fraction"] = budgets[p % len(budgets)]
            report["budget-from-run-config"] = True
        if classes and report.get("device-class") is None and report.get("speed") is None:
            report["device-class"] = classes[p % len(classes)]
        return report

    def refresh_nodes(self, grid: Grid, round_index: int) -> list[str]:
        """Query nodes seen for the first time; forget nodes that left. Returns the device ids that left."""
        from fedquad.flower.codec import config_to_data
        from fedquad.flower.node import device_from_report

        connected = set(grid.get_node_ids())
        left = [self.nodes.pop(n).device.device_id for n in list(self.nodes) if n not in connected]
        new = sorted(connected - set(self.nodes) - set(self.unusable))
        if not new:
            return left
        messages = [Message(RecordDict({"query": ConfigRecord({"calibrate": True})}), dst_node_id=n,
                            message_type="query.profile", group_id=f"profile-{round_index}") for n in new]
        replies = list(grid.send_and_receive(messages, timeout=self.settings.query_timeout))
        sent_to = _destinations(messages)
        answered = set()
        taken = {node.device.device_id for node in self.nodes.values()}
        for reply in replies:
            node_id = _replying_node(reply, sent_to)
            answered.add(node_id)
            if reply.has_error():
                log(f"node {node_id}: profile query failed: {reply.error.reason}")
                continue
            try:
                report = self._with_run_config_defaults(config_to_data(reply.content["profile"]))
                if report.get("partition-id") is None:
                    raise FedquadError("its node_config sets no partition-id / num-partitions (which data to train on)")
                device, sources = device_from_report(report, node_id=node_id, profile=self.profile,
                                                     local_steps=self.config.local_steps,
                                                     data_weight=self._data_weight(report))
            except (FedquadError, KeyError, ValueError, TypeError) as exc:
                self.unusable[node_id] = str(exc)  # not asked again in this run (a restarted node is)
                log(f"node {node_id} cannot take part: {exc}")
                continue
            if report.get("budget-from-run-config"):
                sources["budget"] = "run config node-budgets"
            if device.device_id in taken:  # two nodes with the same name: keep both, distinguishably
                device = dataclasses.replace(device, device_id=f"{device.device_id}-n{node_id}")
            taken.add(device.device_id)
            self.nodes[node_id] = Node(node_id, report, device, sources)
            log(f"node {node_id} = {device.device_id}: budget {device.budget_bytes / 2**20:.1f} MiB "
                f"({sources['budget']}), speed {device.speed:.3f} ({sources['speed']}), "
                f"{device.data_weight:.0f} local examples")
        for node_id in new:
            if node_id not in answered:
                log(f"node {node_id}: no profile reply within {self.settings.query_timeout:.0f} s")
        return left

    # -- one round -------------------------------------------------------------------------------
    def configure_round(self, grid: Grid) -> list[Message]:
        from fedquad.costmodel import cost_model
        from fedquad.flower.codec import data_to_config, state_to_record
        from fedquad.sim.round import predicted_saved_bytes
        from fedquad.strategies import ClientOutcome, RoundContext

        r = self.state.round_index
        left = self.refresh_nodes(grid, r)
        devices = [node.device for node in self.nodes.values()]
        ctx = RoundContext(r, self.profile, self.config.seed, self.adapted.lora_rank,
                           {d.device_id: d.data_weight for d in devices})
        strategy_state = json.loads(json.dumps(self.state.strategy_state))  # configure may write to it
        assignments = self.strategy.configure(ctx, devices, strategy_state) if devices else []
        flight = RoundInFlight(r, ctx, strategy_state, assignments, started=time.perf_counter(), left=left)
        flight.devices = {node.device.device_id: (node.node_id, node.device) for node in self.nodes.values()}
        global_record = state_to_record(self.state.global_state)
        footprint = cost_model(self.profile).full_footprint_bytes()
        messages = []
        for a in assignments:
            node_id, device = flight.devices[a.device_id]
            if a.plan is None:
                flight.idle.append(ClientOutcome(a, "idle", a.reason, budget_bytes=device.budget_bytes))
                continue
            memory, time_ = self.strategy.costs(ctx, a, device)
            fixed = memory - predicted_saved_bytes(self.profile, a)
            ins = {"round": r, "assignment": a.to_dict(), "config": self.config.to_dict(), "fixed_bytes": fixed,
                   "predicted_bytes": memory, "footprint_bytes": footprint, "predicted_time_s": time_.total_s}
            if self.nodes[node_id].report.get("budget-from-run-config"):  # the node has no budget of its own
                ins["run_config_budget_bytes"] = device.budget_bytes
            content = RecordDict({"plan": data_to_config(ins, round=r, plan=a.plan.describe()),
                                  "global": global_record})
            messages.append(Message(content, dst_node_id=node_id, message_type="train", group_id=str(r)))
            flight.sent[node_id] = (a, device)
        flight.messages = messages  # the grid sets their message ids when it sends them
        self.inflight = flight
        log(f"round {r}: " + ("; ".join(
            f"{a.device_id} <- {a.plan.describe() if a.plan else 'sits out'}" for a in assignments) or "no nodes"))
        return messages

    def aggregate_round(self, replies: Iterable[Message]) -> tuple[dict, object]:
        from fedquad.flower.codec import config_to_data, record_to_state
        from fedquad.flower.node import with_budget
        from fedquad.sim.round import RoundState, mark_rejected, outcome_dict
        from fedquad.strategies import ClientOutcome

        flight = self.inflight
        if flight is None:
            raise FedquadError("aggregate_train without configure_train")
        wall = time.perf_counter() - flight.started
        by_node: dict[int, ClientOutcome] = {}
        extra: dict[str, dict] = {}
        sent_to = _destinations(flight.messages)
        for reply in replies:
            node_id = _replying_node(reply, sent_to)
            if node_id not in flight.sent or node_id in by_node:
                continue  # a late reply to an earlier round or run
            a, device = flight.sent[node_id]
            if reply.has_error():
                by_node[node_id] = ClientOutcome(a, "failed", f"node error {reply.error.code}: {reply.error.reason}",
                                                 budget_bytes=device.budget_bytes)
                continue
            try:
                result = config_to_data(reply.content["result"])
            except (KeyError, ValueError) as exc:
                by_node[node_id] = ClientOutcome(a, "rejected", f"malformed reply: {exc}",
                                                 budget_bytes=device.budget_bytes)
                continue
            budget = float(result.get("budget_bytes") or device.budget_bytes)
            node = self.nodes.get(node_id)
            if node is not None:  # the node's memory as it reported it now plans the next round
                node.device = with_budget(node.device, budget)
            extra[a.device_id] = {"node_id": node_id, "budget_source": result.get("budget_source"),
                                  "total_time_s": result.get("total_time_s"), "pid": result.get("pid")}
            status = result.get("status")
            if status == "refused":
                by_node[node_id] = ClientOutcome(a, "oom", result.get("reason", "refused"), budget_bytes=budget)
            elif status == "oom":
                by_node[node_id] = ClientOutcome(a, "oom", result.get("reason", "out of memory"),
                                                 measured_bytes=result.get("measured_bytes"), budget_bytes=budget)
            elif status != "ok":
                by_node[node_id] = ClientOutcome(a, "failed", f"node reported {status!r}: {result.get('reason')}",
                                                 budget_bytes=budget)
            elif "update" not in reply.content:
                by_node[node_id] = ClientOutcome(a, "rejected", "reply carries no update", budget_bytes=budget)
            else:
                update, problems = record_to_state(reply.content["update"])
                if problems:
                    by_node[node_id] = ClientOutcome(a, "rejected", "; ".join(problems), budget_bytes=budget)
                else:
                    by_node[node_id] = ClientOutcome(a, "ok", "", update, int(result.get("examples") or 0),
                                                     result.get("loss"), result.get("measured_bytes"),
                                                     result.get("time_s"), budget)
        timeout = self.settings.round_timeout
        for node_id, (a, device) in flight.sent.items():
            if node_id not in by_node:  # missed the round: a lower bound of its time is what it was given
                by_node[node_id] = ClientOutcome(a, "failed", f"no reply within the round timeout ({timeout:.0f} s)",
                                                 time_s=timeout, budget_bytes=device.budget_bytes)
        sent_outcomes = {o.device_id: o for o in by_node.values()}
        outcomes = [sent_outcomes.get(a.device_id) for a in flight.assignments]
        idle = {o.device_id: o for o in flight.idle}
        outcomes = [o if o is not None else idle[a.device_id] for o, a in zip(outcomes, flight.assignments)]

        ctx, strategy_state = flight.ctx, flight.strategy_state
        new_global, agg = self.strategy.aggregate(ctx, self.state.global_state, outcomes, strategy_state)
        outcomes = mark_rejected(outcomes, agg)
        strategy_state = self.strategy.observe(ctx, outcomes, strategy_state)

        ok_times = [o.time_s for o in outcomes if o.status == "ok" and o.time_s is not None]
        devices = []
        for o in outcomes:
            _node_id, device = flight.devices[o.device_id]
            devices.append({**outcome_dict(o, device), **extra.get(o.device_id, {"node_id": _node_id})})
        report = {
            "round": flight.round_index, "round_time_s": wall, "clock_s": self.state.clock_s + wall,
            "participants": sum(o.status == "ok" for o in outcomes),
            "dropped": sum(o.status not in ("ok", "idle") for o in outcomes),
            "slowest_train_s": max(ok_times, default=0.0),
            "bytes_up": sum(o.update_bytes for o in outcomes),
            "bytes_down": sum(self.profile.adapter_bytes for o in outcomes if o.assignment.plan is not None),
            "devices": devices, "left": flight.left,
            "aggregation": {"rejected": [list(r_.reasons) for r_ in agg.rejected],
                            "untouched_keys": len(agg.untouched_keys),
                            "trained_keys": sum(1 for n in agg.contributors.values() if n)},
        }
        self.state = RoundState(flight.round_index + 1, self.state.clock_s + wall, dict(new_global), strategy_state)
        self.pending_report, self.inflight = report, None
        for d in devices:
            plan = "sits out" if d["plan"] is None else _describe(d["plan"])
            log(f"round {flight.round_index}: {d['device_id']} (node {d.get('node_id')}) {plan}: {d['status']}"
                + (f" ({d['failure']})" if d["failure"] else ""))
        return new_global, agg

    # -- evaluation, checkpoints, the end ---------------------------------------------------------
    def evaluate(self) -> dict:
        from fedquad.evaluation import evaluate
        return evaluate(self.adapted, self.state.global_state, self.eval_tokens, batch_size=64,
                        max_examples=self.config.eval_examples, seed=self.config.seed)

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's central-evaluation hook: evaluate, record the round, checkpoint."""
        from fedquad.sim.checkpoint import save_checkpoint

        if server_round == 0:
            if self.resumed:
                return None
            metrics = self.evaluate()
            self.history.append({"round": -1, "clock_s": 0.0, "accuracy": metrics["accuracy"], "eval": metrics})
            self._save_round_adapter(-1)
            log(f"initial accuracy {metrics['accuracy']:.4f}")
            return MetricRecord({"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])})
        report, self.pending_report = self.pending_report, None
        if report is None:
            return None
        r = report["round"]
        metrics = None
        if (r + 1) % self.config.eval_every == 0 or self.state.round_index >= self.config.rounds:
            metrics = self.evaluate()
            report["accuracy"], report["eval"] = metrics["accuracy"], metrics
        self.history.append(report)
        save_checkpoint(self.run_dir, self.state, self.config.to_dict(), self.history)
        write_json_atomic(os.path.join(self.run_dir, "history.json"), self.history)
        self._save_round_adapter(r)
        log(f"round {r} done in {report['round_time_s']:.1f} s: {report['participants']} trained, "
            f"{report['dropped']} dropped" + (f", accuracy {metrics['accuracy']:.4f}" if metrics else "")
            + "; checkpoint written")
        if metrics is None:
            return None
        return MetricRecord({"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])})

    def _save_round_adapter(self, r: int) -> None:
        if not self.settings.save_every_round:
            return
        from safetensors.torch import save_file
        folder = os.path.join(self.run_dir, "rounds")
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state.global_state.items()},
                  os.path.join(folder, f"round-{r:03d}.safetensors" if r >= 0 else "initial.safetensors"))

    def finish(self) -> str:
        """Save the final adapter (PEFT format) and a summary; returns the adapter folder."""
        folder = os.path.join(self.run_dir, "adapter")
        self.adapted.load_adapter_state(self.state.global_state)
        self.adapted.model.save_pretrained(folder)
        last = next((h for h in reversed(self.history) if h.get("accuracy") is not None), None)
        write_json_atomic(os.path.join(self.run_dir, "final.json"), {
            "rounds_done": self.state.round_index, "rounds": self.config.rounds, "adapter": folder,
            "accuracy": None if last is None else last["accuracy"], "model": self.config.model,
            "task": self.config.task, "strategy": self.config.strategy})
        log(f"finished {self.state.round_index} rounds; adapter saved to {folder}")
        return folder


def _destinations(messages: list[Message]) -> dict[str, int]:
    """Message id -> destination node, for messages the grid has sent (it sets their ids)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}


def _replying_node(reply: Message, sent_to: dict[str, int]) -> int:
    """The node a reply answers for. Errors the SuperLink makes itself (e.g. 'node unavailable'
    for a node that went away) come from the SuperLink's own id: match them by the message they
    reply to."""
    return sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def _describe(plan: dict) -> str:
    from fedquad.plan import ClientPlan
    return ClientPlan.from_dict(plan).describe()
