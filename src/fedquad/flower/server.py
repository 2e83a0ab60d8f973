"""The fedquad server's state and round logic over Flower messages (what `serverapp.py` drives).

`FedquadServer` keeps the run: the workload's model and eval data, the connected nodes and their
reported profiles, the fedquad strategy and its state, the history and the checkpoints. Its
methods are the steps of one round -- `refresh_nodes` (the profile query), `configure_round`
(the simulator's `begin_round`, then one message per node with its own plan), `aggregate_round`
(replies -> outcomes -> the simulator's `finish_round`: merge, observe, report), `evaluate_fn`
(central evaluation, history, checkpoint) -- and `finish` (the PEFT adapter). `serverapp.py`
only connects them to Flower's strategy loop.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedquad.errors import FedquadError
from fedquad.flower.codec import _destinations, _replying_node
from fedquad.flower.replies import train_outcomes
from fedquad.flower.settings import ServerSettings
from fedquad.sim.files import write_json_atomic


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
    plan: object  # fedquad.sim.round.RoundPlan
    sent: dict = field(default_factory=dict)  # node id -> ClientWork (what it was asked to train)
    nodes: dict = field(default_factory=dict)  # device id -> node id
    started: float = 0.0
    left: list = field(default_factory=list)  # devices that disconnected since the last round
    messages: list = field(default_factory=list)  # what configure_train handed to the grid


class FedquadServer:
    """Everything the ServerApp keeps: model, eval data, profile, strategy, round state, history."""

    def __init__(self, config, settings: ServerSettings, run_dir: str):
        from fedquad.sim.recorder import RunRecorder
        from fedquad.sim.round import RoundState
        from fedquad.sim.runner import make_strategy
        from fedquad.sim.workload import load_model_and_data, resolve_profile

        self.settings, self.run_dir = settings, run_dir
        self.resumed = settings.resume
        # The run folder as the simulator keeps it (fedquad.sim.recorder): a checkpoint or a stray
        # profile.json is refused unless resuming, a measured profile is pinned, and the history,
        # checkpoints and evaluation cadence are the simulator's.
        self.recorder = RunRecorder.open_server(run_dir, config, resume=settings.resume)
        state = self.recorder.resume_state()
        if state is not None:
            log(f"resuming {run_dir} at round {state.round_index} of {self.config.rounds}")
        elif config.profile is None and self.config.profile is not None:
            log(f"using {self.config.profile}, measured when this run was started before")
        # The server's own evaluation data: run-config eval-data, else the task's evaluation split.
        server_data = self.config.replace(eval_file=settings.eval_data) if settings.eval_data else self.config
        self.adapted, _train_tokens, self.eval_tokens, self.labels = load_model_and_data(server_data)
        self._vocabulary: dict | None = None
        started = time.perf_counter()
        self.profile = resolve_profile(self.config, self.adapted, run_dir, repeats=settings.profile_repeats)
        if self.config.profile is None:  # measured now: pin it so a resume plans with the same profile
            log(f"measured the cost-model profile in {time.perf_counter() - started:.1f} s")
            self.recorder.pin_profile()
        if self.profile.num_blocks != self.adapted.num_blocks:
            raise FedquadError(f"profile is for {self.profile.num_blocks} blocks, {self.config.model} has "
                               f"{self.adapted.num_blocks}")
        self.strategy = make_strategy(self.config)
        if state is None:
            state = RoundState(0, 0.0, self.adapted.adapter_state(), self.strategy.init_state(self.adapted.num_blocks))
        self.state = state
        self.start_round = state.round_index
        self.nodes: dict[int, Node] = {}
        self.unusable: dict[int, str] = {}  # node id -> why it cannot take part
        self.inflight: RoundInFlight | None = None
        self.pending_report: dict | None = None
        self._eval_flight: tuple | None = None
        self._parts: dict[int, list] = {}
        self.recorder.start({"config": self.config.to_dict(), "server": settings.__dict__})

    @property
    def config(self):
        """The run's SimConfig, with the profile it plans with pinned (the recorder's)."""
        return self.recorder.config

    @property
    def history(self) -> list[dict]:
        return self.recorder.history

    @property
    def vocabulary(self) -> dict:
        """Model head, num_labels and label vocabulary of the run's task: how a node with its own
        data reads it (`fedquad.flower.localdata.server_vocabulary`)."""
        if self._vocabulary is None:
            from fedquad.flower.localdata import server_vocabulary
            self._vocabulary = server_vocabulary(self.config)
        return self._vocabulary

    def _run_record(self) -> ConfigRecord:
        from fedquad.flower.codec import data_to_config
        return data_to_config({"config": self.config.to_dict(), "vocabulary": self.vocabulary})

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
        if report.get("data-path") is not None:  # the node's own data: the count it reported
            return float(report.get("examples") or 0)
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
        run = self._run_record()
        messages = [Message(RecordDict({"query": ConfigRecord({"calibrate": True}), "run": run}), dst_node_id=n,
                            message_type="query.profile", group_id=f"profile-{round_index}") for n in new]
        replies = list(grid.send_and_receive(messages, timeout=self.settings.query_timeout))
        sent_to = _destinations(messages)
        answered = set()
        taken = {node.device.device_id for node in self.nodes.values()}
        for reply in replies:
            node_id = _replying_node(reply, sent_to)
            answered.add(node_id)
            if reply.has_error():  # e.g. its data file is missing or malformed: the rounds go on without it
                self.unusable[node_id] = f"profile query failed: {reply.error.reason}"
                log(f"node {node_id} cannot take part: profile query failed: {reply.error.reason}")
                continue
            try:
                report = self._with_run_config_defaults(config_to_data(reply.content["profile"]))
                if report.get("partition-id") is None and report.get("data-path") is None:
                    raise FedquadError("its node_config sets neither data-path (its own data) nor partition-id / "
                                       "num-partitions (a shard of the run's data)")
                device, sources = device_from_report(report, node_id=node_id, profile=self.profile,
                                                     local_steps=self.config.local_steps,
                                                     data_weight=self._data_weight(report))
            except (FedquadError, KeyError, ValueError, TypeError) as exc:
                self.unusable[node_id] = str(exc)  # not asked again in this run (a restarted node is)
                log(f"node {node_id} cannot take part: {exc}")
                continue
            if not self.config.plan_at_device_length:  # the run plans every node at the profile's length
                device = dataclasses.replace(device, seq_len_tokens=None)
            elif device.seq_len_tokens is not None:  # lengths are truncated to max_len
                device = dataclasses.replace(device, seq_len_tokens=min(device.seq_len_tokens, self.config.max_len))
            if report.get("budget-from-run-config"):
                sources["budget"] = "run config node-budgets"
            if device.device_id in taken:  # two nodes with the same name: keep both, distinguishably
                device = dataclasses.replace(device, device_id=f"{device.device_id}-n{node_id}")
            taken.add(device.device_id)
            self.nodes[node_id] = Node(node_id, report, device, sources)
            log(f"node {node_id} = {device.device_id}: budget {device.budget_bytes / 2**20:.1f} MiB "
                f"({sources['budget']}), speed {device.speed:.3f} ({sources['speed']}), "
                f"{device.data_weight:.0f} local examples" + (
                    f" (own data; token length p50/p90/max {report['length_p50_tokens']:.0f}/"
                    f"{report['length_p90_tokens']:.0f}/{report['length_max_tokens']}, label histogram "
                    f"{report.get('label_histogram')})" if report.get("data-path") is not None else ""))
        for node_id in new:
            if node_id not in answered:
                log(f"node {node_id}: no profile reply within {self.settings.query_timeout:.0f} s")
        return left

    # -- one round -------------------------------------------------------------------------------
    # The round itself is the simulator's: `begin_round` plans and predicts, `finish_round` merges,
    # learns and reports (fedquad.sim.round). What is Flower's is only in between: a message per
    # node out, replies back into outcomes.
    def configure_round(self, grid: Grid) -> list[Message]:
        return self.round_messages(self.refresh_nodes(grid, self.state.round_index))

    def round_messages(self, left: list[str] | None = None) -> list[Message]:
        """Plan the next round over the known nodes; one train message per node with a plan."""
        from fedquad.costmodel import cost_model, profile_to_dict
        from fedquad.flower.codec import data_to_config, state_to_record
        from fedquad.sim.round import begin_round
        from fedquad.strategies import RoundContext

        r = self.state.round_index
        devices = [node.device for node in self.nodes.values()]
        ctx = RoundContext(r, self.profile, self.config.seed, self.adapted.lora_rank,
                           {d.device_id: d.data_weight for d in devices}, self.adapted.key_block)
        plan = begin_round(self.strategy, ctx, self.state, devices)
        flight = RoundInFlight(plan, started=time.perf_counter(), left=list(left or []))
        flight.nodes = {node.device.device_id: node.node_id for node in self.nodes.values()}
        global_record = state_to_record(self.state.global_state)
        footprint = cost_model(self.profile).full_footprint_bytes()
        messages = []
        for work in plan.work:
            a = work.assignment
            node_id = flight.nodes[a.device_id]
            ins = {"round": r, "assignment": a.to_dict(), "config": self.config.to_dict(),
                   "fixed_bytes": work.fixed_bytes, "predicted_bytes": work.predicted_bytes,
                   "footprint_bytes": footprint, "predicted_time_s": work.time_s,
                   "profile": profile_to_dict(self.profile)}  # the node predicts each step's peak from it
            if self.nodes[node_id].report.get("data-path") is not None:  # it reads its own data as the server does
                ins["vocabulary"] = self.vocabulary
            if self.nodes[node_id].report.get("budget-from-run-config"):  # the node has no budget of its own
                ins["run_config_budget_bytes"] = work.device.budget_bytes
            content = RecordDict({"plan": data_to_config(ins, round=r, plan=a.plan.describe()),
                                  "global": global_record})
            messages.append(Message(content, dst_node_id=node_id, message_type="train", group_id=str(r)))
            flight.sent[node_id] = work
        flight.messages = messages  # the grid sets their message ids when it sends them
        self.inflight = flight
        log(f"round {r}: " + ("; ".join(
            f"{a.device_id} <- {a.plan.describe() if a.plan else 'sits out'}" for a in plan.assignments)
            or "no nodes"))
        return messages

    def aggregate_round(self, replies: Iterable[Message], round_time_s: float | None = None) -> dict:
        """Replies -> outcomes -> the shared `finish_round`; returns the new global adapter.

        `round_time_s`: the round's length; None = the wall time since the messages were made (a
        test that replays a simulated round passes the simulator's virtual time instead)."""
        from fedquad.sim.round import finish_round

        flight = self.inflight
        if flight is None:
            raise FedquadError("aggregate_train without configure_train")
        wall = time.perf_counter() - flight.started
        outcomes, extra = self._outcomes(flight, replies)
        for device_id, node_id in flight.nodes.items():
            extra.setdefault(device_id, {"node_id": node_id})
        self.state, report = finish_round(self.strategy, self.state, flight.plan, outcomes,
                                          round_time_s=wall if round_time_s is None else round_time_s,
                                          device_extra=extra)
        report["left"] = flight.left
        self.pending_report, self.inflight = report, None
        for d in report["devices"]:
            plan = "sits out" if d["plan"] is None else _describe(d["plan"])
            log(f"round {report['round']}: {d['device_id']} (node {d.get('node_id')}) {plan}: {d['status']}"
                + (f" ({d['failure']})" if d["failure"] else ""))
        return self.state.global_state

    def _outcomes(self, flight: RoundInFlight, replies: Iterable[Message]) -> tuple[dict, dict]:
        """(device id -> outcome, device id -> node fields): `fedquad.flower.replies.train_outcomes`."""
        return train_outcomes(flight, replies, self.nodes, self.settings.round_timeout)


    # -- evaluation, checkpoints, the end ---------------------------------------------------------
    def evaluate_messages(self) -> list[Message]:
        """Federated evaluation of the round just merged (`fedquad.flower.nodereport`)."""
        from fedquad.flower.nodereport import evaluation_messages
        messages, self._eval_flight = evaluation_messages(self)
        return messages

    def aggregate_evaluation(self, replies: Iterable[Message]) -> dict | None:
        """Node metrics -> the example-weighted federated evaluation, into the round report."""
        from fedquad.flower.nodereport import aggregate_evaluation
        flight, self._eval_flight = self._eval_flight, None
        out = aggregate_evaluation(self, flight, replies)
        if out is not None and out["accuracy"] is not None:
            log(f"round {self.pending_report['round']}: federated evaluation on "
                f"{sum('failure' not in n for n in out['nodes'])} nodes, {out['examples']} examples: "
                f"accuracy {out['accuracy']:.4f}")
        return out

    def evaluate(self) -> dict:
        from fedquad.evaluation import evaluate
        return evaluate(self.adapted, self.state.global_state, self.eval_tokens, batch_size=64,
                        max_examples=self.config.eval_examples, seed=self.config.seed)

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's central-evaluation hook: evaluate (on the recorder's cadence), record the round,
        checkpoint."""
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
        if self.recorder.evaluation_due(r, self.state):
            metrics = self.evaluate()
            report["accuracy"], report["eval"] = metrics["accuracy"], metrics
        self.recorder.record_round(self.state, report)  # history, checkpoint, history.json
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
        from fedquad.sim.checkpoint import save_tensors
        folder = os.path.join(self.run_dir, "rounds")
        os.makedirs(folder, exist_ok=True)
        save_tensors(os.path.join(folder, f"round-{r:03d}.safetensors" if r >= 0 else "initial.safetensors"),
                     self.state.global_state)

    def finish(self) -> str:
        """Save the final adapter (PEFT format) and a summary; returns the adapter folder."""
        folder = os.path.join(self.run_dir, "adapter")
        self.adapted.load_adapter_state(self.state.global_state)
        self.adapted.model.save_pretrained(folder)
        from fedquad.sim.checkpoint import honour_umask
        honour_umask(folder)  # PEFT writes its safetensors 0600; every other output is 0644
        last = next((h for h in reversed(self.history) if h.get("accuracy") is not None), None)
        write_json_atomic(os.path.join(self.run_dir, "final.json"), {
            "rounds_done": self.state.round_index, "rounds": self.config.rounds, "adapter": folder,
            "accuracy": None if last is None else last["accuracy"], "model": self.config.model,
            "task": self.config.task, "strategy": self.config.strategy})
        log(f"finished {self.state.round_index} rounds; adapter saved to {folder}")
        return folder


def _describe(plan: dict) -> str:
    from fedquad.plan import ClientPlan
    return ClientPlan.from_dict(plan).describe()
