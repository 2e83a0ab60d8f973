"""One round, two runtimes: the simulator's `FederatedAlgorithm.apply` and the Flower server's
`round_messages` / `aggregate_round` (in process, no Flower processes) give the same report and
the same next state, bitwise, from the same inputs (the failed clients' time to failure included).

The stand-in node does what the ClientApp's train handler does with a message (decode the plan
and the global adapter, `train_assignment` on its own partition, reply with the result and the
trained tensors), with two differences that make the inputs the same as the simulator's: its
clock is the cost model (it replies the predicted time, where a real node measures), and it trains
whatever it is sent (a real node refuses a plan predicted over its budget before training; the
simulator lets it run out of memory after one step, and so does this node).

Three devices with absolute budgets: one that fits everything, one between the head-only and
the full-depth footprint, one with almost nothing. Under `fedlora` (full depth for everyone) the
two smaller ones run out of memory (the literal one, `fit_check=False`); under `fedquad` the smallest
sits out. Two rounds each, so
the strategy state `observe` wrote is carried into the next plan on both sides.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import quick_profile

from fedquad.sim.config import SimConfig

PER_DEVICE_SERVER_KEYS = {"node_id", "budget_source", "total_time_s", "pid"}


@pytest.fixture(scope="module")
def parity_config(tmp_path_factory) -> SimConfig:
    from fedquad.costmodel import cost_model, load_profile

    folder = tmp_path_factory.mktemp("parity")
    profile_path = quick_profile(folder, "tiny-bert", 8, 24)
    cm = cost_model(load_profile(profile_path))
    full, head_only = cm.full_footprint_bytes(), cm.head_only_bytes()
    fixed = {"dist": "fixed", "Mbps": 50}
    scenario = {"name": "parity", "seed": 0, "local_steps": 3, "budget_mode": "absolute",
                "bandwidth_Mbps": {"up": fixed, "down": fixed},
                "devices": [{"class": "jetson-agx-orin", "count": 1, "budget": [2 * full, 2 * full]},
                            {"class": "jetson-orin-nano", "count": 1,
                             "budget": [(head_only + full) / 2, (head_only + full) / 2]},
                            {"class": "jetson-tx2", "count": 1, "budget": [1000, 1000]}]}
    (folder / "parity.json").write_text(json.dumps(scenario))
    return SimConfig(model="tiny-bert", task="synthetic", train_examples=96, eval_examples=16, max_len=24,
                     batch_size=8, rounds=2, clients_per_round=3, local_steps=3, scenario=str(folder / "parity.json"),
                     seed=3, profile=profile_path)


def _node_replies(messages, config, actual):
    """The nodes' side of a round: train each message's plan, reply as the ClientApp does."""
    from flwr.app import Message, RecordDict

    from fedquad.client import QuantSettings
    from fedquad.flower.nodework import _assignment, local_indices, model_and_data
    from fedquad.flower.codec import config_to_data, data_to_config, record_to_state, state_to_record
    from fedquad.flower.nodework import node_step_memory
    from fedquad.sim.config import from_dict
    from fedquad.sim.round import train_assignment

    replies = []
    for msg in messages:
        ins = config_to_data(msg.content["plan"])
        node_config = from_dict(ins["config"], "plan message")
        a = _assignment(ins["assignment"])
        adapted, train_tokens, labels = model_and_data(node_config)
        partition = [d.device_id for d in actual].index(a.device_id)
        indices = local_indices(node_config, labels, partition, len(actual))
        global_state, problems = record_to_state(msg.content["global"])
        assert problems == []
        budget = {d.device_id: d for d in actual}[a.device_id].budget_bytes
        outcome = train_assignment(adapted, train_tokens, indices, node_config,
                                   QuantSettings(group_size=node_config.group_size), int(ins["round"]), global_state, a,
                                   fixed_bytes=float(ins["fixed_bytes"]), budget_bytes=budget,
                                   time_s=float(ins["predicted_time_s"]),
                                   step_memory=node_step_memory(ins, a.plan, budget))
        result = {"status": outcome.status, "reason": outcome.reason, "budget_bytes": budget,
                  "examples": outcome.examples, "loss": outcome.loss, "measured_bytes": outcome.measured_bytes,
                  "time_s": outcome.time_s, "micro_batches": outcome.micro_batches}
        content = RecordDict({"result": data_to_config(result, status=outcome.status)})
        if outcome.status == "ok":
            content["update"] = state_to_record(dict(outcome.update))
        replies.append(Message(content, reply_to=msg))
    return replies


def _plain(report: dict) -> dict:
    return json.loads(json.dumps(report))  # tuples -> lists, as history.json holds them


@pytest.mark.parametrize("strategy, expected", [("fedlora", {"ok", "oom"}), ("fedquad", {"ok", "idle"})])
def test_simulator_and_server_rounds_agree_bitwise(parity_config, tmp_path, monkeypatch, strategy, expected):
    from flwr.supercore.task_identity import TaskIdentity

    from fedquad.devices import devices_at_round
    from fedquad.flower.server import FedquadServer, Node
    from fedquad.flower.settings import ServerSettings
    from fedquad.sim.round import FederatedAlgorithm
    from fedquad.sim.runner import make_strategy
    from fedquad.sim.workload import build_workload

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):  # what a ServerApp process has
        monkeypatch.setattr(TaskIdentity, name, value)
    from fedquad.strategies import FedLoRA

    config = parity_config.replace(strategy=strategy)
    workload = build_workload(config, show_progress=False)
    # the literal FedAvg (everyone is sent full depth): the out-of-memory path on both sides
    chosen = FedLoRA(fit_check=False) if strategy == "fedlora" else make_strategy(config)
    algo = FederatedAlgorithm(workload, chosen)
    server = FedquadServer(config, ServerSettings(), str(tmp_path / "server"))
    server.strategy = chosen
    sim_state = algo.init()
    assert list(server.state.global_state) == list(sim_state.global_state)
    assert all(torch.equal(server.state.global_state[k], v) for k, v in sim_state.global_state.items())
    for node_id, device in enumerate(devices_at_round(workload.devices, workload.scenario, 0, seed=config.seed), 1):
        server.nodes[node_id] = Node(node_id, {}, device, {})

    statuses = set()
    for r in range(config.rounds):
        clients = algo.sample_clients(r)
        assert [d.device_id for d in clients] == [d.device_id for d in workload.devices]  # every device, in order
        sim_state, sim_report = algo.apply(sim_state, clients)
        sim_report.pop("train_s")

        messages = server.round_messages()
        actual = devices_at_round(clients, workload.scenario, r, seed=config.seed)
        server.aggregate_round(_node_replies(messages, config, actual), round_time_s=sim_report["round_time_s"])
        report = server.pending_report
        assert report.pop("left") == []
        node_fields = [{k: d.pop(k) for k in PER_DEVICE_SERVER_KEYS if k in d} for d in report["devices"]]
        assert all("node_id" in f for f in node_fields)

        assert _plain(report) == _plain(sim_report), r
        # the simulator's virtual clock: the slowest client, a failed one's time to failure included
        assert sim_report["round_time_s"] == max(sim_report["slowest_train_s"], sim_report["failed_s"])
        assert (sim_report["failed_s"] > 0) == any(d["status"] == "oom" for d in sim_report["devices"])
        statuses |= {d["status"] for d in sim_report["devices"]}
        assert sim_report["dropped"] == sum(d["status"] != "ok" for d in sim_report["devices"])
        assert sim_report["sat_out"] == sum(d["status"] == "idle" for d in sim_report["devices"])
        s = server.state
        assert (s.round_index, s.clock_s, s.strategy_state) == (
            sim_state.round_index, sim_state.clock_s, sim_state.strategy_state)
        assert list(s.global_state) == list(sim_state.global_state)
        for key, value in sim_state.global_state.items():
            assert s.global_state[key].dtype == value.dtype and torch.equal(s.global_state[key], value), key
    assert expected <= statuses, statuses
    assert sim_state.global_state != {} and any(
        not torch.equal(v, workload.initial_state[k]) for k, v in sim_state.global_state.items())


def test_no_local_pass_repeats_another_rounds_order(parity_config):
    """A device with fewer batches than local steps passes over its examples again; no pass of any
    round may draw the order of another (round 0's second pass used to be round 1's first)."""
    from itertools import islice

    from fedquad.sim.round import local_batches
    from fedquad.sim.workload import load_model_and_data

    _adapted, train_tokens, _eval, _labels = load_model_and_data(parity_config)
    config = parity_config.replace(batch_size=4)
    indices, per_pass = list(range(16)), 4  # 16 examples, 4 batches of 4 per pass

    def passes(round_index):
        batches = [b["input_ids"].numpy().tobytes() for b in
                   islice(local_batches(train_tokens, indices, config, "dev", round_index), 3 * per_pass)]
        return [tuple(batches[i:i + per_pass]) for i in range(0, len(batches), per_pass)]

    orders = {(r, p): order for r in range(3) for p, order in enumerate(passes(r))}
    assert len(orders) == 9
    repeated = [key for key, order in orders.items() if list(orders.values()).count(order) > 1]
    assert repeated == [], "(round, pass) drawing the same order"
    assert list(local_batches(train_tokens, [], config, "dev", 0)) == []  # nothing to cycle: ends
