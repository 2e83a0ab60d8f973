"""fedquad on Flower: real SuperLink and SuperNode processes on loopback, plus the server's round
logic against a stand-in grid.

One deployment (module fixture) plays the whole story once, because every Flower round costs a
fresh ClientApp process per node (~20 s on a busy 2-core box): a SuperLink and three SuperNodes
with different memory budgets; round 0 with all three; in round 1 the node with the `fault`
hook returns a NaN update and another node is killed while it trains; round 2 goes on with the
two left; the server is then stopped (`flwr stop`) and a second run resumes the checkpoint for
round 3. The tests below each check one part of what it recorded. Every process is stopped by
its PID in the fixture's `finally`. The SuperNode-authentication test runs its own SuperLink
(TLS, `--enable-supernode-auth`).
"""

from __future__ import annotations

import json
import os
import signal
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedquad.errors import FedquadError
from local_federation import LocalFederation, make_node_keys, write_app_dir  # tests/local_federation.py

# Tiers per test: the deployment and in-process round tests are `integration`; the settings,
# codec and import checks below are fast unit tests.
integration = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
# A small workload: tiny random-initialised BERT (4 blocks) on the generated task.
WORKLOAD = {"model": "tiny-bert", "task": "synthetic", "train-examples": 600, "eval-examples": 128, "max-len": 24,
            "batch-size": 8, "local-steps": 2, "eval-every": 1, "profile-repeats": 1, "save-every-round": True,
            "round-timeout": 300.0, "query-timeout": 120.0, "rounds": 4,
            # every node trains under its own plan here (a straggler sitting out is tested in
            # tests/test_planner_learned.py)
            "sit-out": False}
# Budgets as a fraction of the model's full-depth footprint (whole step peak, tiny-bert): 0.72
# affords the head and at most one int4 block (head-only training alone is ~0.71), 0.82 quantized
# blocks, 1.1 everything.
NODES = {
    "small": {"device-class": "jetson-tx2", "memory-budget-fraction": 0.72},
    "mid": {"device-class": "jetson-orin-nano", "memory-budget-fraction": 0.82},
    "large": {"device-class": "jetson-agx-orin", "memory-budget-fraction": 1.1, "fault": "nan", "fault-round": 1},
}
KILLED, FAULTY = "mid", "large"
ENV = {"FEDQUAD_QUANT_COMPILE": "0"}  # short-lived ClientApp processes: skip compiling the quantizer


def _rounds_done(run_dir: Path) -> int:
    try:
        history = json.loads((run_dir / "history.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    return sum(1 for h in history if h["round"] >= 0)


def _wait(fed: LocalFederation, run_id: int, condition, what: str, timeout: float) -> None:
    """Poll `condition` (cheap) often and the run's status (a `flwr` call) now and then."""
    deadline = time.monotonic() + timeout
    last_status = 0.0
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        if time.monotonic() - last_status > 10:
            last_status = time.monotonic()
            status = fed.run_status(run_id)
            if status.startswith("finished"):
                raise RuntimeError(f"run {run_id} ended ({status}) before {what}")
        time.sleep(0.25)


def _clientapps(proc) -> set[int]:
    """PIDs of the ClientApp processes the SuperNode `proc` runs now (one per message it handles)."""
    import psutil
    try:
        return {c.pid for c in psutil.Process(proc.pid).children(recursive=True)
                if "flwr-clientapp" in " ".join(c.cmdline())}
    except psutil.Error:
        return set()


def _train_messages_received(proc) -> int:
    """How many train messages the SuperNode `proc` has pulled, from its own log. (Counting
    ClientApp PIDs instead was flaky: a ClientApp's short-lived forks carry its command line.)"""
    return proc.log_tail(10**7).count("Receiving: train message")


def _wait_for_training(fed, run_id: int, proc, nth: int, what: str, timeout: float) -> None:
    """Wait until `proc` has pulled its `nth` train message (1: round 0, 2: round 1, ...) and runs
    a ClientApp for it, so a kill lands while the node trains."""
    _wait(fed, run_id, lambda: _train_messages_received(proc) >= nth, what, timeout)
    _wait(fed, run_id, lambda: bool(_clientapps(proc)), f"{what} (ClientApp start)", 120)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    work = tmp_path_factory.mktemp("flower")
    run_dir = work / "run"
    out = SimpleNamespace(run_dir=run_dir, procs={}, leftover=None)
    fed = LocalFederation(work, extra_env=ENV)
    run_ids: list[int] = []
    started = time.perf_counter()
    try:
        fed.start_superlink()
        for i, (name, node) in enumerate(NODES.items()):
            config = {"partition-id": i, "num-partitions": len(NODES), "device-id": name, **node}
            out.procs[name] = fed.start_supernode(name, config)
        app_dir = write_app_dir(work / "app")
        config = {**WORKLOAD, "run-dir": str(run_dir), "min-nodes": len(NODES)}
        run1 = fed.run_app(app_dir, config)
        run_ids.append(run1)
        _wait_for_training(fed, run1, out.procs[KILLED], 2, f"{KILLED} training round 1", 420)
        assert _rounds_done(run_dir) == 1
        fed.kill(out.procs[KILLED])  # `kill <pid>` (SIGTERM) the SuperNode and its ClientApp, mid-round
        _wait(fed, run1, lambda: _rounds_done(run_dir) >= 3, "round 2", 420)
        fed.stop_run(run1)  # the server stops after round 2's checkpoint
        out.status1 = fed.wait_run(run1, timeout=120)
        out.log1 = fed.run_log(run1)
        run2 = fed.run_app(app_dir, {**config, "resume": True, "min-nodes": len(NODES) - 1})
        run_ids.append(run2)
        out.status2 = fed.wait_run(run2, timeout=420)
        out.log2 = fed.run_log(run2)
        out.history = json.loads((run_dir / "history.json").read_text())
        out.final = json.loads((run_dir / "final.json").read_text())
    except Exception as exc:
        logs = "\n".join(f"--- run {r}:\n{fed.run_log(r)[-4000:]}" for r in run_ids)
        nodes = "\n".join(f"--- {p.name}:\n{p.log_tail(1500)}" for p in fed.procs)
        raise RuntimeError(f"deployment failed: {exc}\n{logs}\n{nodes}") from exc
    finally:
        fed.stop()
        out.leftover = fed.leftover_pids()
        out.all_procs = list(fed.procs)
        out.wall_s = time.perf_counter() - started
        print(f"\nFlower deployment scenario: {out.wall_s:.1f} s")
    return out


def _by_device(report: dict) -> dict:
    return {d["device_id"]: d for d in report["devices"]}


def _rounds(history: list[dict]) -> dict[int, dict]:
    return {h["round"]: h for h in history if h["round"] >= 0}


def _snapshot(run_dir: Path, r: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    name = "initial.safetensors" if r < 0 else f"round-{r:03d}.safetensors"
    return load_file(str(run_dir / "rounds" / name))


@pytest.fixture(scope="module")
def key_block():
    from fedquad.models import load_model
    return load_model("tiny-bert", with_tokenizer=False).key_block


def _trained_keys(device: dict, key_block: dict) -> set[str]:
    from fedquad.plan import ClientPlan
    L = 1 + max(b for b in key_block.values() if b is not None)
    plan = ClientPlan.from_dict(device["plan"])
    blocks = set(device["options"]["lora_blocks"] or plan.trainable_blocks(L))
    return {k for k, b in key_block.items() if b is None or b in blocks}


@integration
def test_three_supernodes_complete_rounds_with_their_own_plans(deployment):
    r0 = _by_device(_rounds(deployment.history)[0])
    assert set(r0) == set(NODES)
    assert all(d["status"] == "ok" for d in r0.values()), r0
    plans = {name: (d["plan"]["depth"], d["plan"]["quant_layers"], d["plan"]["bits"]) for name, d in r0.items()}
    assert len(set(plans.values())) >= 2, f"every node got the same plan: {plans}"
    assert plans["small"][0] < plans["large"][0], plans  # the smallest budget trains the fewest blocks
    for d in r0.values():  # each stayed within its own budget
        assert d["measured_bytes"] <= d["budget_bytes"], d
    assert _rounds(deployment.history)[1]["participants"] >= 1


@integration
def test_global_adapter_changes_only_in_trained_keys(deployment, key_block):
    rounds = _rounds(deployment.history)
    assert sorted(rounds) == [0, 1, 2, 3]
    for r, report in rounds.items():
        before, after = _snapshot(deployment.run_dir, r - 1), _snapshot(deployment.run_dir, r)
        assert set(before) == set(after) == set(key_block)
        changed = {k for k in after if not torch.equal(before[k], after[k])}
        trained = set().union(*[_trained_keys(d, key_block) for d in report["devices"] if d["status"] == "ok"])
        assert changed, f"round {r} changed nothing"
        assert changed <= trained, f"round {r} changed untrained keys {sorted(changed - trained)[:3]}"
        assert all(torch.isfinite(v).all() for v in after.values())


@integration
def test_malformed_update_is_rejected_and_leaves_global_adapter_unaffected(deployment, key_block):
    r1 = _rounds(deployment.history)[1]
    faulty = _by_device(r1)[FAULTY]
    assert faulty["status"] == "rejected"
    assert "non-finite" in faulty["failure"], faulty["failure"]
    assert any("non-finite" in reason for reasons in r1["aggregation"]["rejected"] for reason in reasons)
    before, after = _snapshot(deployment.run_dir, 0), _snapshot(deployment.run_dir, 1)
    accepted = set().union(*[_trained_keys(d, key_block) for d in r1["devices"] if d["status"] == "ok"])
    returned = _trained_keys(faulty, key_block)
    poisoned = sorted(returned)[0]  # the tensor the fault hook set a NaN in (its first key)
    assert torch.isfinite(after[poisoned]).all()  # merged, it would have made the global tensor NaN
    if poisoned not in accepted:
        assert torch.equal(before[poisoned], after[poisoned])
    for k in returned - accepted:  # what only the rejected node trained is untouched
        assert torch.equal(before[k], after[k]), k
    assert _by_device(_rounds(deployment.history)[2])[FAULTY]["status"] == "ok"  # the hook was for round 1 only


@integration
def test_killed_supernode_is_recorded_failed_and_the_run_goes_on(deployment):
    rounds = _rounds(deployment.history)
    killed = _by_device(rounds[1])[KILLED]
    assert killed["status"] == "failed" and "unavailable" in killed["failure"].lower(), killed
    assert _by_device(rounds[1])["small"]["status"] == "ok"  # the round completed with the others
    assert KILLED in rounds[2]["left"] and KILLED not in _by_device(rounds[2])
    for r in (rounds[2], rounds[3]):  # both remaining nodes were asked and answered (a plan may still OOM)
        remaining = _by_device(r)
        assert len(remaining) == 2 and all(d["status"] in ("ok", "oom") for d in remaining.values()), remaining
        assert r["participants"] >= 1
    assert deployment.procs[KILLED].popen.returncode is not None


@integration
def test_server_stopped_and_resumed_continues_from_the_next_round(deployment):
    assert deployment.status1 == "finished:stopped", deployment.status1
    assert deployment.status2 == "finished:completed", deployment.status2
    assert [h["round"] for h in deployment.history] == [-1, 0, 1, 2, 3]  # nothing lost, nothing redone
    assert "resuming" in deployment.log2 and "at round 3" in deployment.log2
    assert deployment.final["rounds_done"] == 4
    assert all(h.get("accuracy") is not None for h in deployment.history)


@integration
def test_final_adapter_loads_with_peft(deployment):
    import transformers
    from peft import PeftModel
    from safetensors.torch import load_file

    from fedquad.models import load_model

    base = transformers.AutoModelForSequenceClassification.from_config(
        load_model("tiny-bert", with_tokenizer=False).model.config)
    model = PeftModel.from_pretrained(base, deployment.final["adapter"])
    final = load_file(str(deployment.run_dir / "checkpoint" / "adapter.safetensors"))
    params = dict(model.named_parameters())
    for key, value in final.items():
        assert torch.equal(params[key].detach(), value), key


@integration
def test_every_process_is_stopped_by_pid(deployment):
    assert deployment.leftover == []
    assert len(deployment.all_procs) == 1 + len(NODES)
    assert all(p.popen.returncode is not None for p in deployment.all_procs)


@pytest.mark.slow
@integration
def test_crashed_supernode_is_detected_by_flower_heartbeat(tmp_path):
    """SIGKILL (power loss): the SuperNode cannot say goodbye; Flower's SuperLink declares it
    unavailable once its heartbeats stop (within ~60 s), the round completes, the next one runs."""
    run_dir = tmp_path / "run"
    fed = LocalFederation(tmp_path, extra_env=ENV)
    try:
        fed.start_superlink()
        procs = [fed.start_supernode(f"n{i}", {"partition-id": i, "num-partitions": 2, "device-id": f"n{i}",
                                               "memory-budget-fraction": 1.1}) for i in range(2)]
        run = fed.run_app(write_app_dir(tmp_path / "app"), {**WORKLOAD, "rounds": 2, "run-dir": str(run_dir),
                                                             "min-nodes": 2, "save-every-round": False})
        _wait_for_training(fed, run, procs[1], 1, "n1 training round 0", 420)
        fed.kill(procs[1], signal.SIGKILL)
        assert fed.wait_run(run, timeout=420) == "finished:completed"
        rounds = _rounds(json.loads((run_dir / "history.json").read_text()))
    finally:
        fed.stop()
    assert _by_device(rounds[0])["n1"]["status"] == "failed"
    assert "unavailable" in _by_device(rounds[0])["n1"]["failure"].lower()
    assert _by_device(rounds[0])["n0"]["status"] == "ok" and rounds[1]["participants"] == 1
    assert fed.leftover_pids() == []


@integration
def test_supernode_authentication_rejects_unregistered_nodes(tmp_path):
    fed = LocalFederation(tmp_path, tls=True, auth=True, extra_env=ENV)
    try:
        fed.start_superlink()
        registered_key, registered_pub = make_node_keys(tmp_path / "keys", "registered")
        stranger_key, _ = make_node_keys(tmp_path / "keys", "stranger")
        fed.register_node(registered_pub)
        member = fed.start_supernode("registered", {"partition-id": 0, "num-partitions": 1},
                                     private_key=registered_key)
        stranger = fed.start_supernode("stranger", {"partition-id": 0, "num-partitions": 1}, private_key=stranger_key)
        keyless = fed.start_supernode("keyless", {"partition-id": 0, "num-partitions": 1})
        deadline = time.monotonic() + 90
        while (stranger.alive() or keyless.alive() or not fed.online_nodes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not stranger.alive() and stranger.popen.returncode != 0, stranger.log_tail()
        assert not keyless.alive() and keyless.popen.returncode != 0, keyless.log_tail()
        assert "Failed to activate SuperNode" in stranger.log_tail(5000)
        assert "must be registered" in keyless.log_tail(5000)
        assert member.alive() and len(fed.online_nodes()) == 1, member.log_tail()
    finally:
        fed.stop()
    assert fed.leftover_pids() == []


# -- the server's round logic against a stand-in grid (no processes) ------------------------------

def test_run_config_maps_onto_the_simulator_settings():
    from fedquad.flower.settings import parse_run_config
    defaults = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config, settings = parse_run_config(defaults)
    assert config.model == defaults["model"] and config.batch_size == defaults["batch-size"]
    assert config.profile is None and config.data_root is None  # "" means none
    assert settings.resume is False and settings.round_timeout > 0
    with pytest.raises(FedquadError, match="unknown key"):
        parse_run_config({**defaults, "bogus-key": 1})
    with pytest.raises(FedquadError, match="batch_size"):
        parse_run_config({**defaults, "batch-size": 0})


def test_node_config_keys_are_checked():
    from fedquad.flower.node import budget_bytes, node_settings
    s = node_settings({"partition-id": 1, "num-partitions": 3, "memory-budget-mb": "512", "device-class": "jetson-tx2"})
    assert s["memory-budget-mb"] == 512.0 and budget_bytes(s, None, 0.0) == (512 * 2**20, "memory-budget-mb")
    for bad in ({"partition-id": 3, "num-partitions": 3}, {"partition-id": 0}, {"memory-budget-mb": -1},
                {"device-class": "no-such-board"}, {"fault": "gremlins"}):
        with pytest.raises(FedquadError):
            node_settings(bad)


def test_codec_round_trips_and_reports_undecodable_arrays():
    from flwr.app import Array

    from fedquad.flower.codec import record_to_state, state_to_record
    state = {"a.lora_A.weight": torch.randn(4, 3), "b": torch.arange(5, dtype=torch.int64)}
    back, problems = record_to_state(state_to_record(state))
    assert problems == [] and list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)
    record = state_to_record(state)
    record["broken"] = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"not an npy payload")
    _, problems = record_to_state(record)
    assert len(problems) == 1 and problems[0].startswith("broken: cannot decode")


def _push(messages) -> None:
    """What Grid.push_messages does to the messages it sends: give each its id."""
    import uuid
    for m in messages:
        m.metadata.__dict__["_message_id"] = uuid.uuid4().hex


class _Grid:
    """Stand-in for Flower's Grid: nodes answer the profile query from their node_config."""

    def __init__(self, node_configs: dict[int, dict]):
        self.node_configs = node_configs

    def get_node_ids(self):
        return list(self.node_configs)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Message, RecordDict

        from fedquad.flower.codec import data_to_config
        from fedquad.flower.node import describe_node
        _push(messages)
        return [Message(RecordDict({"profile": data_to_config(
            describe_node(self.node_configs[m.metadata.dst_node_id], calibrate=False))}), reply_to=m)
            for m in messages]


@integration
def test_server_round_records_timeouts_refusals_and_rejects(tmp_path, monkeypatch):
    from flwr.app import Error, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from _profiles import synthetic_profile, write_profile
    from fedquad.flower.codec import config_to_data, data_to_config, state_to_record
    from fedquad.flower.serverapp import FedquadServer
    from fedquad.flower.settings import ServerSettings
    from fedquad.sim.config import SimConfig

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):  # what a ServerApp process has
        monkeypatch.setattr(TaskIdentity, name, value)
    profile_path = write_profile(tmp_path, data=synthetic_profile(num_blocks=4))
    config = SimConfig(model="tiny-bert", task="synthetic", train_examples=120, eval_examples=32, max_len=16,
                       batch_size=4, local_steps=1, rounds=3, profile=profile_path)
    server = FedquadServer(config, ServerSettings(round_timeout=30.0, node_budgets="0.9,1.3"), str(tmp_path / "run"))
    full = 1.2 * server.profile.frozen_weight_bytes / 2**20 + 200  # generous budgets (MiB)
    nodes = {11: {"partition-id": 0, "num-partitions": 5, "memory-budget-mb": full, "speed": 1.0, "device-id": "ok"},
             12: {"partition-id": 1, "num-partitions": 5, "memory-budget-mb": full, "speed": 1.0, "device-id": "slow"},
             13: {"partition-id": 2, "num-partitions": 5, "memory-budget-mb": full, "speed": 1.0, "device-id": "shy"},
             14: {"partition-id": 3, "num-partitions": 5, "memory-budget-mb": full, "speed": 1.0, "device-id": "bad"},
             15: {"partition-id": 4, "num-partitions": 5, "memory-budget-mb": full, "speed": 1.0, "device-id": "gone"},
             16: {"partition-id": 1, "num-partitions": 2, "speed": 1.0, "device-id": "simulated"}}
    sent = server.configure_round(_Grid(nodes))
    _push(sent)
    messages = {m.metadata.dst_node_id: m for m in sent}
    assert set(messages) == set(nodes)
    # a node without a budget of its own gets the run config's node-budgets entry for its partition
    from fedquad.costmodel import cost_model
    simulated = server.nodes[16].device
    assert simulated.budget_bytes == int(1.3 * cost_model(server.profile).full_footprint_bytes())
    assert config_to_data(messages[16].content["plan"])["run_config_budget_bytes"] == simulated.budget_bytes

    def reply(node_id, result, update=None):
        content = RecordDict({"result": data_to_config(result)})
        if update is not None:
            content["update"] = state_to_record(update)
        return Message(content, reply_to=messages[node_id])

    def trained(node_id):
        ins = config_to_data(messages[node_id].content["plan"])
        from fedquad.plan import ClientPlan
        keys = server.adapted.keys_for_plan(ClientPlan.from_dict(ins["assignment"]["plan"]))
        return {k: server.state.global_state[k] + 0.01 for k in keys}

    ok = {"status": "ok", "examples": 8, "loss": 0.5, "measured_bytes": 1e6, "time_s": 0.2, "budget_bytes": 4e9}
    bad_update = trained(14)
    first = sorted(bad_update)[0]
    bad_update[first] = bad_update[first].reshape(-1)[:-1].clone()
    gone = Message(Error(code=3, reason="node unavailable"), reply_to=messages[15])
    gone.metadata.__dict__["_src_node_id"] = 1  # the SuperLink answers for a node that went away
    replies = [reply(11, ok, trained(11)),
               reply(13, {"status": "refused", "reason": "refused plan: needs more", "budget_bytes": 1e6}),
               reply(14, ok, bad_update), gone]  # node 12 never answers
    before = dict(server.state.global_state)
    new_global = server.aggregate_round(replies)
    devices = {d["device_id"]: d for d in server.pending_report["devices"]}
    assert devices["ok"]["status"] == "ok"
    assert devices["slow"]["status"] == "failed" and "round timeout" in devices["slow"]["failure"]
    assert devices["shy"]["status"] == "oom" and "refused" in devices["shy"]["failure"]
    assert devices["bad"]["status"] == "rejected" and "shape" in devices["bad"]["failure"]
    assert devices["gone"]["status"] == "failed" and "node unavailable" in devices["gone"]["failure"]
    planner = server.state.strategy_state["planner"]["devices"]
    assert planner["slow"]["time_ratio"] > 1.0  # a node that missed the round is planned slower next time
    assert planner["shy"]["free_bytes"] == 1e6  # a refusal reports the memory the node really has
    changed = {k for k in before if not torch.equal(before[k], new_global[k])}
    assert changed == set(trained(11))  # only the accepted update moved the global adapter
    assert server.state.round_index == 1
    server.evaluate_fn(1, None)
    assert (tmp_path / "run" / "checkpoint" / "state.json").is_file()
    assert os.path.isfile(server.finish() + "/adapter_config.json")


def test_only_the_flower_package_imports_flower():
    import re
    src = REPO / "src" / "fedquad"
    pattern = re.compile(r"^\s*(from|import)\s+flwr\b", re.M)
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if p.parent.name != "flower" and pattern.search(p.read_text())]
    assert offenders == []


@integration
def test_causal_lm_round_through_server_and_client_handlers(tmp_path, monkeypatch):
    """Decoders on the Flower app: the ServerApp's round and the ClientApp's train handler, in process."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedquad.flower.clientapp import train
    from fedquad.flower.serverapp import FedquadServer
    from fedquad.flower.settings import ServerSettings
    from fedquad.sim.config import SimConfig

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    profile = str(tmp_path / "profile.json")
    from fedquad.cli.main import main
    assert main(["profile", "--model", "tiny-llama-lm", "--batch-size", "4", "--seq-len", "24", "--repeats", "1",
                 "--warmup", "1", "--out", profile]) == 0
    config = SimConfig(model="tiny-llama-lm", task="synthetic-lm", train_examples=120, eval_examples=16, max_len=24,
                       batch_size=4, local_steps=1, rounds=1, profile=profile)
    server = FedquadServer(config, ServerSettings(round_timeout=30.0), str(tmp_path / "run"))
    full = 2 * server.profile.frozen_weight_bytes / 2**20 + 400
    nodes = {21: {"partition-id": 0, "num-partitions": 2, "memory-budget-mb": full, "speed": 1.0, "device-id": "a"},
             22: {"partition-id": 1, "num-partitions": 2, "memory-budget-mb": full, "speed": 2.0, "device-id": "b"}}
    sent = server.configure_round(_Grid(nodes))
    _push(sent)
    replies = [train(m, Context(7, m.metadata.dst_node_id, nodes[m.metadata.dst_node_id], RecordDict(), {}))
               for m in sent]
    for r in replies:
        r.metadata.__dict__["_src_node_id"] = [m for m in sent if m.metadata.message_id == r.metadata.reply_to_message_id][0].metadata.dst_node_id
    before = dict(server.state.global_state)
    new_global = server.aggregate_round(replies)
    devices = {d["device_id"]: d for d in server.pending_report["devices"]}
    # the planner may lower the slow node to depth 0, which trains nothing on a causal LM, or let it
    # sit out as the straggler (the profile's times are one noisy repeat): either way it is idle
    assert all(d["status"] == "ok" or (d["status"] == "idle" and ("trains nothing" in d["failure"]
                                                                   or "sits out" in d["failure"]))
               for d in devices.values()), devices
    assert any(d["status"] == "ok" for d in devices.values())
    assert any(not torch.equal(before[k], new_global[k]) for k in before)
    server.evaluate_fn(1, None)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert {"loss", "perplexity"} <= set(history[-1]["eval"])
