"""The federated loop on a tiny model: every strategy, per-key aggregation, exact resume, OOM."""

from __future__ import annotations

import json

import pytest
import torch
from _faults import Killed, kill_at
from conftest import quick_profile

from fedquad.cli.main import main
from fedquad.sim.config import SimConfig, load_config
from fedquad.sim.runner import simulate
from fedquad.strategies import STRATEGIES

# Tiers per test: runs of the federated loop are `integration`; the input checks that fail
# before any model is loaded are fast unit tests.
integration = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> SimConfig:
    """A tiny BERT on the generated task over the 12-device headroom scenario; profile measured once."""
    base = SimConfig(model="tiny-bert", task="synthetic", train_examples=480, eval_examples=64, max_len=24,
                     batch_size=8, rounds=2, clients_per_round=6, local_steps=2, eval_every=1,
                     scenario="jetson-headroom", seed=3)
    return base.replace(profile=quick_profile(tmp_path_factory.mktemp("profile"), "tiny-bert", 8, 24))


@integration
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_two_rounds(tiny_config, tmp_path, name):
    result = simulate(tiny_config.replace(strategy=name), str(tmp_path), show_progress=False, plots=False)
    rounds = [h for h in result.history if h["round"] >= 0]
    assert len(rounds) == 2 and result.state.round_index == 2
    assert all(h.get("accuracy") is not None for h in rounds)
    assert any(d["status"] == "ok" for h in rounds for d in h["devices"]), "nobody trained"
    for h in rounds:
        slowest = max([d["time_s"] for d in h["devices"] if d["status"] == "ok"], default=0.0)
        assert h["round_time_s"] == max(slowest, h["failed_s"])
        assert (h["failed_s"] > 0) == any(d["status"] not in ("ok", "idle") for d in h["devices"])
    assert (tmp_path / "history.json").is_file() and (tmp_path / "checkpoint" / "adapter.safetensors").is_file()


@integration
def test_aggregation_touches_only_trained_keys(tiny_config, tmp_path):
    from fedquad.sim.round import FederatedAlgorithm
    from fedquad.sim.runner import make_strategy
    from fedquad.sim.workload import build_workload

    config = tiny_config.replace(strategy="fedquad")
    workload = build_workload(config)
    algo = FederatedAlgorithm(workload, make_strategy(config))
    state = algo.init()
    new_state, report = algo.apply(state, algo.sample_clients(0))
    adapted = workload.adapted
    trained_blocks = set()
    for d in report["devices"]:
        if d["status"] == "ok":
            L = adapted.num_blocks
            trained_blocks |= set(range(L - d["plan"]["depth"], L))
    assert report["participants"] > 0
    for key, old in state.global_state.items():
        block = adapted.key_block[key]
        if block is not None and block not in trained_blocks:
            assert new_state.global_state[key] is old or torch.equal(new_state.global_state[key], old), key
    changed = [k for k in state.global_state if not torch.equal(state.global_state[k], new_state.global_state[k])]
    assert changed and all(adapted.key_block[k] is None or adapted.key_block[k] in trained_blocks for k in changed)


@integration
def test_resume_is_bitwise_identical(tiny_config, tmp_path):
    config = tiny_config.replace(strategy="fedquad", rounds=3)
    straight = simulate(config, str(tmp_path / "a"), show_progress=False, plots=False)
    simulate(config, str(tmp_path / "b"), show_progress=False, plots=False, stop_after_rounds=1)
    resumed = simulate(None, str(tmp_path / "b"), resume=True, show_progress=False, plots=False)
    assert resumed.state.round_index == straight.state.round_index == 3
    assert resumed.state.clock_s == straight.state.clock_s
    for key, value in straight.state.global_state.items():
        assert torch.equal(value, resumed.state.global_state[key]), key
    drop_host = lambda hs: [{k: v for k, v in h.items() if k != "host"} for h in hs]  # noqa: E731
    assert json.loads(json.dumps(drop_host(straight.history))) == json.loads(json.dumps(drop_host(resumed.history)))


@integration
def test_client_over_budget_fails_and_round_completes(tiny_config, tmp_path, monkeypatch):
    """The literal FedAvg sends full depth to boards that cannot hold it: they fail as out of
    memory, and the round waits for their failure (download + first step at their speed)."""
    from fedquad.costmodel import cost_model, load_profile
    from fedquad.plan import ClientPlan
    from fedquad.strategies import FedLoRA

    monkeypatch.setattr("fedquad.sim.runner.make_strategy", lambda config: FedLoRA(fit_check=False))
    result = simulate(tiny_config.replace(strategy="fedlora"), str(tmp_path), show_progress=False, plots=False)
    rounds = [h for h in result.history if h["round"] >= 0]
    devices = [d for h in rounds for d in h["devices"]]
    oom = [d for d in devices if d["status"] == "oom"]
    assert oom, "expected weak boards to run out of memory under full depth"
    assert all(d["measured_bytes"] > d["budget_bytes"] and "out of memory" in d["failure"] for d in oom)
    assert result.state.round_index == 2 and any(d["status"] == "ok" for d in devices)
    t = cost_model(load_profile(tiny_config.profile)).round_time
    for h in rounds:
        expected = max((t(ClientPlan(**d["plan"]), d["speed"], 1.0, 1.0, 1).compute_s for d in h["devices"]
                        if d["status"] == "oom"), default=0.0)
        assert h["failed_s"] >= expected > 0 or not expected  # at least the first step at the device's speed
        assert h["round_time_s"] >= h["failed_s"]


@integration
def test_compare_cli_writes_outputs(tiny_config, tmp_path, capsys):
    out = tmp_path / "cmp"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in tiny_config.to_dict().items() if v is not None]
    code = main(["compare", *sets, "--strategies", "fedquad,fedlora", "--target-accuracy", "0.5",
                 "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["target_accuracy"] == 0.5
    for name in ("fedquad", "fedlora"):
        s = report["strategies"][name]
        assert {"time_to_target_s", "final_accuracy", "rounds", "mean_round_time_s",
                "dropped_device_rounds", "failed_device_rounds", "sat_out_device_rounds"} <= set(s)
        assert s["failed_device_rounds"] + s["sat_out_device_rounds"] == s["dropped_device_rounds"]
    for f in ("comparison.md", "accuracy_vs_time.png", "memory.png"):
        assert (out / f).stat().st_size > 0
    # re-report the same runs at another target without training again
    assert main(["compare", "--strategies", "fedquad,fedlora", "--target-accuracy", "0.99", "--out", str(out),
                 "--report-only", "--quiet"]) == 0
    again = json.loads((out / "comparison.json").read_text())
    assert again["target_accuracy"] == 0.99
    assert again["strategies"]["fedquad"]["final_accuracy"] == report["strategies"]["fedquad"]["final_accuracy"]


@integration
def test_profile_group_size_must_match(tiny_config, tmp_path):
    from fedquad.errors import FedquadError
    with pytest.raises(FedquadError, match="group size"):
        simulate(tiny_config.replace(group_size=32), str(tmp_path), show_progress=False, plots=False)


def test_bad_config_is_one_line_error(tmp_path, capsys):
    from fedquad.errors import FedquadError
    assert main(["simulate", "--set", "rounds=0", "--out", str(tmp_path)]) == 2
    assert "rounds" in capsys.readouterr().err
    assert main(["simulate", "--set", "bogus=1", "--out", str(tmp_path)]) == 2
    assert main(["compare", "--strategies", "fedquad,nope", "--out", str(tmp_path)]) == 2
    with pytest.raises(FedquadError, match="does not exist"):
        load_config(str(tmp_path / "missing.json"))


def test_sit_out_cap_reaches_the_planner_and_is_checked():
    from fedquad.errors import FedquadError
    from fedquad.sim.runner import planner_config
    assert planner_config(SimConfig(sit_out_max_fraction=0.8)).sit_out_max_fraction == 0.8
    assert planner_config(SimConfig()).sit_out_max_fraction == 0.5  # the planner's own default
    for bad in (1.0, -0.1, True, "half"):
        with pytest.raises(FedquadError, match="sit_out_max_fraction"):
            SimConfig(sit_out_max_fraction=bad)


@integration
def test_causal_lm_task_runs_through_simulate_and_compare(tmp_path):
    """Decoders are first-class: a tiny LLaMA on the generated causal-LM task, two strategies."""
    config = SimConfig(model="tiny-llama-lm", task="synthetic-lm", train_examples=240, eval_examples=32, max_len=24,
                       batch_size=8, rounds=2, clients_per_round=4, local_steps=2, eval_every=1,
                       scenario="jetson-headroom", seed=1)
    config = config.replace(profile=quick_profile(tmp_path, "tiny-llama-lm", 8, 24))
    from fedquad.sim.compare import compare
    report = compare(config, ["fedquad", "fedlora-uniform"], str(tmp_path), target_accuracy=0.5, show_progress=False)
    for name in ("fedquad", "fedlora-uniform"):
        history = json.loads((tmp_path / name / "history.json").read_text())
        last = history[-1]
        assert {"loss", "perplexity", "accuracy"} <= set(last["eval"])
        assert any(d["status"] == "ok" for h in history[1:] for d in h["devices"])
        assert report["strategies"][name]["rounds"] == 2
    first = [json.loads((tmp_path / n / "history.json").read_text())[0]["eval"] for n in ("fedquad", "fedlora-uniform")]
    assert first[0] == first[1], "every strategy must start from the same initial adapter"


@pytest.mark.parametrize("overrides,needle", [
    (["task=/no/such/file.tsv"], "no such file"),
    (["train_examples=5", "model=minilm", "profile=minilm-b16-s64"], "devices"),
    (["target_accuracy=1.5"], "target_accuracy"),
    (["strategy=fedavg"], "unknown strategy"),
])
def test_bad_input_fails_in_one_line_before_any_checkpoint(tmp_path, capsys, overrides, needle):
    out = tmp_path / "run"
    assert main(["simulate", *[f"--set={o}" for o in overrides], "--out", str(out), "--quiet"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not progress bars
    assert len(errors) == 1 and needle in errors[0].lower(), errors
    assert not out.exists(), "a failed run leaves no folder (issue 13 item 10)"


def test_data_file_without_label_column_is_refused(tmp_path, capsys):
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tscore\nhello there\t1\n")
    assert main(["simulate", f"--set=task={data}", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "label" in capsys.readouterr().err.lower()


def _results(out) -> dict:
    """A comparison's figures without the host timings (those differ run to run)."""
    report = json.loads((out / "comparison.json").read_text())
    return {name: {k: v for k, v in s.items() if not k.startswith("host")} for name, s in report["strategies"].items()}


@integration
def test_compare_resumes_keeping_finished_runs(tiny_config, tmp_path, monkeypatch, capsys):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in tiny_config.to_dict().items() if v is not None]
    argv = ["compare", *sets, "--strategies", "fedquad,fedlora", "--target-accuracy", "0.5", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "cmp"
    kill_at(monkeypatch, "state", 3)  # fedquad's two rounds done, fedlora killed in its first checkpoint
    with pytest.raises(Killed):
        main([*argv, "--out", str(out)])
    monkeypatch.undo()
    assert (out / "fedquad" / "history.json").is_file() and not (out / "comparison.json").exists()
    kept = (out / "fedquad" / "checkpoint" / "state.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["compare", "--resume", str(out), "--quiet"]) == 0
    assert (out / "fedquad" / "checkpoint" / "state.json").stat().st_mtime_ns == kept, "a finished run is kept"
    assert _results(out) == _results(tmp_path / "straight")
    # --report-only without --strategies reports the strategies that ran (saved plan, or the run folders)
    assert main(["compare", "--report-only", "--out", str(out), "--target-accuracy", "0.99", "--quiet"]) == 0
    assert list(json.loads((out / "comparison.json").read_text())["strategies"]) == ["fedquad", "fedlora"]
    (out / "compare.json").rename(tmp_path / "plan.json")
    assert main(["compare", "--report-only", "--out", str(out), "--quiet"]) == 0
    assert list(json.loads((out / "comparison.json").read_text())["strategies"]) == ["fedquad", "fedlora"]
    (tmp_path / "plan.json").rename(out / "compare.json")
    # a resume may extend every run, nothing else
    assert main(["compare", "--resume", str(out), "--set", "rounds=3", "--quiet"]) == 0
    assert all(s["rounds"] == 3 for s in _results(out).values())
