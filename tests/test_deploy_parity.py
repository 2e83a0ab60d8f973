"""A loopback federation whose SuperNodes hold their own data files (integration tier).

One SuperLink and four SuperNodes on 127.0.0.1, two rounds of fedquad on the tiny BERT:

* `a` trains on its own CSV (mostly negative) through its long-lived worker (the ClientApp relays);
* `b` trains on its own CSV (mostly positive) in the ClientApp process and holds out a quarter of
  it for Flower's federated evaluation;
* `missing` names a data file that does not exist, `malformed` one with a label the run does not
  know: both answer the profile query with a clear error and the rounds go on without them.

Parity: round 0 is replayed in process with the simulator's round functions (`begin_round`,
`train_assignment`, `finish_round`, as tests/test_round_parity.py does for the in-process half):
planned from the devices as the server recorded them, the plans are the server's; trained on the
same files from the same initial adapter, the merged adapter is the server's round-0 adapter (up
to float summation order).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from local_federation import LocalFederation, write_app_dir  # tests/local_federation.py

pytestmark = pytest.mark.integration

RUN = {"strategy": "fedquad", "model": "tiny-bert", "task": "synthetic", "train-examples": 100, "eval-examples": 64,
       "max-len": 24, "batch-size": 8, "local-steps": 2, "rounds": 2, "eval-every": 1, "profile-repeats": 1,
       "save-every-round": True, "federated-eval": True, "round-timeout": 300.0, "query-timeout": 240.0,
       "node-wait-timeout": 120.0, "seed": 5,
       # both good nodes must train every round (sit-out is tested in tests/test_planner_learned.py)
       "sit-out": False}
GOOD = {"a": {"memory-budget-fraction": 0.8, "device-class": "jetson-orin-nano"},
        "b": {"memory-budget-fraction": 1.1, "device-class": "jetson-agx-orin", "eval-fraction": 0.25}}
EXAMPLES = 60


def _write(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows(rows)
    return str(path)


def _skewed(data, positive_share: float, rng) -> list[tuple[str, str]]:
    pos = rng.permutation(np.flatnonzero(data.labels == 1))[: int(positive_share * EXAMPLES)]
    neg = rng.permutation(np.flatnonzero(data.labels == 0))[: EXAMPLES - len(pos)]
    return [(data.texts[i], data.label_names[int(data.labels[i])]) for i in sorted([*pos, *neg])]


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    from fedquad.datasets import load_task

    work = tmp_path_factory.mktemp("deploy")
    data, rng = load_task("synthetic", "train"), np.random.default_rng(1)
    paths = {"a": _write(work / "a" / "train.csv", _skewed(data, 0.2, rng)),
             "b": _write(work / "b" / "train.csv", _skewed(data, 0.8, rng)),
             "missing": str(work / "missing" / "train.csv"),
             "malformed": _write(work / "malformed" / "train.csv", [("fine .", "positive"), ("hmm .", "maybe")])}
    configs = {name: {"data-path": path, "cache-dir": str(work / name / "cache"), "device-id": name,
                      **GOOD.get(name, {"memory-budget-fraction": 1.1})} for name, path in paths.items()}
    configs["a"]["worker-socket"] = str(work / "a" / "worker.sock")
    run_dir = work / "run"
    out = SimpleNamespace(run_dir=run_dir, configs=configs)
    fed = LocalFederation(work, extra_env={"FEDQUAD_QUANT_COMPILE": "0"})
    try:
        fed.start_superlink()
        fed.start_worker("a", configs["a"]["worker-socket"])
        out.procs = {name: fed.start_supernode(name, c) for name, c in configs.items()}
        run_id = fed.run_app(write_app_dir(work / "app"), {**RUN, "run-dir": str(run_dir), "min-nodes": len(configs)})
        out.status = fed.wait_run(run_id, timeout=900)
        out.log = fed.run_log(run_id)
        out.history = json.loads((run_dir / "history.json").read_text())
    except Exception as exc:
        nodes = "\n".join(f"--- {p.name}:\n{p.log_tail(1500)}" for p in fed.procs)
        raise RuntimeError(f"loopback federation failed: {exc}\n{nodes}") from exc
    finally:
        fed.stop()
        out.leftover = fed.leftover_pids()
    return out


def _rounds(history):
    return [h for h in history if h["round"] >= 0]


def test_nodes_with_missing_or_malformed_data_are_left_out_with_a_clear_error(loopback):
    assert loopback.status == "finished:completed" and loopback.leftover == []
    rounds = _rounds(loopback.history)
    assert [h["round"] for h in rounds] == [0, 1]
    for h in rounds:
        assert {d["device_id"] for d in h["devices"]} == {"a", "b"}
        assert all(d["status"] == "ok" for d in h["devices"]), h["devices"]
    log = loopback.log
    assert "cannot take part: profile query failed" in log
    assert f"node_config data-path {loopback.configs['missing']['data-path']}: no such file or folder" in log
    assert "malformed/train.csv" in log and "maybe" in log


def test_nodes_report_their_data_and_the_node_side_time_split(loopback):
    for h in _rounds(loopback.history):
        by = {d["device_id"]: d for d in h["devices"]}
        assert by["a"]["local_examples"] == EXAMPLES and by["b"]["local_examples"] == EXAMPLES - EXAMPLES // 4
        assert by["a"]["examples"] == RUN["local-steps"] * RUN["batch-size"]
        for d in by.values():
            assert 0 < d["length_p50_tokens"] <= d["length_p90_tokens"] <= d["length_max_tokens"] <= RUN["max-len"]
            assert d["labels_present"] == 2
            t = d["node_timing"]
            assert {"clientapp_start_s", "model_load_s", "data_load_s", "train_s", "upload_s"} <= set(t)
            assert t["train_s"] == pytest.approx(d["time_s"]) and t["round_s"] >= t["train_s"]
            assert d["round_overhead_s"] == pytest.approx(t["round_s"] - t["train_s"])
        assert by["a"]["node_timing"]["worker"] == "relayed" and "worker" not in by["b"]["node_timing"]
    # the worker keeps the model: after the profile query it never loads it again
    assert all(d["node_timing"]["model_load_s"] < 0.05 for h in _rounds(loopback.history)
               for d in h["devices"] if d["device_id"] == "a")


def test_central_and_federated_evaluation_are_both_reported(loopback):
    for h in _rounds(loopback.history):
        assert h["accuracy"] is not None and h["eval"]["examples"] == RUN["eval-examples"]
        fed = h["federated_eval"]
        assert [n["device_id"] for n in fed["nodes"]] == ["b"]  # the only node with a local evaluation split
        assert fed["examples"] == EXAMPLES // 4 and fed["accuracy"] == fed["nodes"][0]["accuracy"]


def test_loopback_round_zero_matches_the_in_process_replay(loopback, monkeypatch):
    from safetensors.torch import load_file

    import fedquad.quant.fast as fast
    from fedquad.client import QuantSettings
    from fedquad.costmodel import load_profile
    from fedquad.devices import Device
    from fedquad.flower.localdata import server_vocabulary
    from fedquad.flower.node import node_settings
    from fedquad.flower.nodework import local_model, node_workload
    from fedquad.sim.config import from_dict
    from fedquad.sim.round import RoundState, begin_round, finish_round, train_assignment
    from fedquad.sim.runner import make_strategy
    from fedquad.strategies import RoundContext

    monkeypatch.setattr(fast, "_compile_enabled", False)  # as the nodes ran (FEDQUAD_QUANT_COMPILE=0)
    run_dir = loopback.run_dir
    config = from_dict(json.loads((run_dir / "config.json").read_text())["config"], "run config").replace(
        profile=str(run_dir / "profile.json"))
    vocabulary = server_vocabulary(config)
    adapted = local_model(config, vocabulary)
    initial = load_file(str(run_dir / "rounds" / "initial.safetensors"))
    assert list(initial) == list(adapted.adapter_state())
    assert all(torch.equal(initial[k], v) for k, v in adapted.adapter_state().items())  # same seed, same model

    r0 = _rounds(loopback.history)[0]
    devices = [Device(device_id=d["device_id"], device_class=d["device_class"], budget_bytes=int(d["budget_bytes"]),
                      speed=d["speed"], up_Bps=100e6 / 8, down_Bps=100e6 / 8, local_steps=config.local_steps,
                      data_weight=float(d["local_examples"]), power_mode=d["power_mode"],
                      base_budget_bytes=int(d["budget_bytes"]), base_speed=d["speed"],
                      initial_power_mode=d["power_mode"]) for d in r0["devices"]]
    strategy, profile = make_strategy(config), load_profile(config.profile)
    state = RoundState(0, 0.0, dict(initial), strategy.init_state(adapted.num_blocks))
    ctx = RoundContext(0, profile, config.seed, adapted.lora_rank, {d.device_id: d.data_weight for d in devices})
    plan = begin_round(strategy, ctx, state, devices)
    recorded = {d["device_id"]: d for d in r0["devices"]}
    for a in plan.assignments:  # the same plans for the same reported devices
        expected = json.loads(json.dumps(a.to_dict()))
        assert {k: recorded[a.device_id][k] for k in expected} == expected, a.device_id

    outcomes = {}
    for work in plan.work:  # the same updates: each node's file, trained as the node trains it
        settings = node_settings(loopback.configs[work.assignment.device_id])
        model, tokens, indices = node_workload(config, settings, vocabulary, {})
        outcome = train_assignment(model, tokens, indices, config, QuantSettings(group_size=config.group_size), 0,
                                   state.global_state, work.assignment, fixed_bytes=work.fixed_bytes,
                                   budget_bytes=work.device.budget_bytes, time_s=1.0)
        assert outcome.status == "ok" and outcome.loss == pytest.approx(recorded[work.assignment.device_id]["loss"],
                                                                      rel=1e-4)
        outcomes[work.assignment.device_id] = outcome
    new_state, _report = finish_round(strategy, state, plan, outcomes, round_time_s=1.0)
    merged = load_file(str(run_dir / "rounds" / "round-000.safetensors"))
    assert list(merged) == list(new_state.global_state)
    changed = 0
    for key, value in new_state.global_state.items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(value, initial[key])
    assert changed > 0
