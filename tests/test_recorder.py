"""The run recorder (fedquad.sim.recorder): folder rules, the pinned profile, the evaluation
cadence, history and checkpoints, resume and finished-run detection, and a frozen `Workload`.

The fast tier uses the recorder on its own (tensors written by hand, no model); the integration
tests run tiny-bert for a round to check that `simulate`, `compare` and the Flower server use
the pinned profile and leave a shared workload as it was."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from fedquad.errors import FedquadError
from fedquad.sim.config import SimConfig
from fedquad.sim.recorder import RunRecorder, evaluation_due
from fedquad.sim.round import RoundState


def _state(round_index: int, clock_s: float = 0.0) -> RoundState:
    return RoundState(round_index, clock_s, {"a.lora_A": torch.full((2, 3), float(round_index + 1))}, {"n": round_index})


def _stray_profile(folder) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    data = b'{"made": "by an earlier run"}'
    (folder / "profile.json").write_bytes(data)
    return data


# -- the evaluation cadence ----------------------------------------------------------------------
def test_evaluation_every_k_rounds_and_after_the_last():
    config = SimConfig(rounds=7, eval_every=3)
    due = [r for r in range(7) if evaluation_due(config, r, RoundState(r + 1, 10.0 * (r + 1)))]
    assert due == [2, 5, 6]
    budget = config.replace(time_budget_s=15.0)  # round 1 ends at 20 s: past the budget, so the last one
    assert [r for r in range(2) if evaluation_due(budget, r, RoundState(r + 1, 10.0 * (r + 1)))] == [1]


# -- a stray profile.json is never taken for the run's own ---------------------------------------
def test_a_fresh_run_refuses_a_profile_json_it_did_not_measure(tmp_path):
    data = _stray_profile(tmp_path / "run")
    with pytest.raises(FedquadError, match=r"already holds a profile.json .*--set profile=.*--overwrite"):
        RunRecorder.open(str(tmp_path / "run"), SimConfig())
    assert (tmp_path / "run" / "profile.json").read_bytes() == data, "refused, and left as it was"
    RunRecorder.open(str(tmp_path / "run"), SimConfig(), overwrite=True)
    assert not (tmp_path / "run" / "profile.json").exists(), "--overwrite: measured again"


def test_a_run_that_names_the_file_uses_it(tmp_path):
    data = _stray_profile(tmp_path / "run")
    path = str(tmp_path / "run" / "profile.json")
    rec = RunRecorder.open(str(tmp_path / "run"), SimConfig(profile=path))
    assert rec.config.profile == path
    rec.start()
    rec.discard()  # failed before its first checkpoint: its config.json goes, the profile it names stays
    assert sorted(os.listdir(tmp_path / "run")) == ["profile.json"]
    assert (tmp_path / "run" / "profile.json").read_bytes() == data


def test_resolve_profile_never_reuses_a_folders_profile_silently(tmp_path):
    from fedquad.sim.workload import resolve_profile
    data = _stray_profile(tmp_path)
    with pytest.raises(FedquadError, match="already holds a profile.json"):
        resolve_profile(SimConfig(), None, str(tmp_path))
    assert (tmp_path / "profile.json").read_bytes() == data


def test_the_server_refuses_a_stray_profile_and_a_checkpoint(tmp_path):
    _stray_profile(tmp_path / "run")
    with pytest.raises(FedquadError, match="set profile=.* in the run config .*another run-dir"):
        RunRecorder.open_server(str(tmp_path / "run"), SimConfig(), resume=False)
    rec = RunRecorder.open_server(str(tmp_path / "other"), SimConfig(rounds=2), resume=False)
    rec.record_round(_state(1), {"round": 0})
    with pytest.raises(FedquadError, match="already holds a checkpoint: set resume=true"):
        RunRecorder.open_server(str(tmp_path / "other"), SimConfig(), resume=False)
    with pytest.raises(FedquadError, match="no checkpoint"):
        RunRecorder.open_server(str(tmp_path / "run"), SimConfig(), resume=True)


def test_the_server_started_again_before_its_first_checkpoint_uses_what_it_measured(tmp_path):
    run = tmp_path / "run"
    first = RunRecorder.open_server(str(run), SimConfig(), resume=False)
    (run / "profile.json").write_text("{}")  # what measuring writes
    first.pin_profile()
    first.start({"config": first.config.to_dict(), "server": {}})  # then no node connects in time
    again = RunRecorder.open_server(str(run), SimConfig(), resume=False)
    assert again.config.profile == os.path.abspath(run / "profile.json")
    with pytest.raises(FedquadError, match="already holds a profile.json"):  # another run's measurement
        RunRecorder.open_server(str(run), SimConfig(seed=1), resume=False)


# -- pinning, recording, resuming ----------------------------------------------------------------
def test_a_measured_profile_is_pinned_and_a_failed_run_removes_it(tmp_path):
    run = tmp_path / "new" / "run"
    rec = RunRecorder.open(str(run), SimConfig())
    (run / "profile.json").write_text("{}")  # what measuring writes
    rec.pin_profile()
    assert rec.config.profile == os.path.abspath(run / "profile.json")
    rec.start()
    assert json.loads((run / "config.json").read_text())["profile"] == rec.config.profile
    rec.discard()
    assert not (tmp_path / "new").exists(), "no folder left holding a profile and a config.json"


def test_rounds_are_recorded_resumed_and_a_finished_run_is_detected(tmp_path):
    run = str(tmp_path / "run")
    config = SimConfig(rounds=2, profile="minilm-b16-s64")
    rec = RunRecorder.open(run, config)
    rec.start()
    rec.history.append({"round": -1, "clock_s": 0.0})
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    assert rec.record_round(_state(1, 5.0), {"round": 0, "clock_s": 5.0}) >= 0.0  # RNG as of this checkpoint
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == rec.history

    again = RunRecorder.open(run, None, resume=True)
    assert again.finished() is None and again.config == config
    torch.manual_seed(0)
    state = again.resume_state()
    assert torch.equal(torch.rand(3), expected_draw), "the checkpoint's RNG state is restored"
    assert state.round_index == 1 and state.clock_s == 5.0 and state.strategy_state == {"n": 1}
    assert torch.equal(state.global_state["a.lora_A"], _state(1).global_state["a.lora_A"])
    assert [h["round"] for h in again.history] == [-1, 0]
    with pytest.raises(FedquadError, match="only rounds, time_budget_s, target_accuracy may change"):
        RunRecorder.open(run, None, resume=True, changes={"learning_rate": 0.1})

    again.record_round(_state(2, 9.0), {"round": 1, "clock_s": 9.0})
    done = RunRecorder.open(run, None, resume=True).finished()
    assert done is not None and done[1].round_index == 2 and len(done[0]) == 3
    assert RunRecorder.open(run, None, resume=True, changes={"rounds": 3}).finished() is None
    with pytest.raises(FedquadError, match="already holds a run"):
        RunRecorder.open(run, config)


def test_a_run_without_its_checkpoint_is_finished_or_cannot_continue(tmp_path):
    run = tmp_path / "run"
    rec = RunRecorder.open(str(run), SimConfig(rounds=2, profile="minilm-b16-s64"))
    rec.start()
    (run / "history.json").write_text(json.dumps([{"round": -1, "clock_s": 0.0}, {"round": 0, "clock_s": 4.0},
                                                  {"round": 1, "clock_s": 8.0}]))
    history, state = RunRecorder.open(str(run), None, resume=True).finished()
    assert state.round_index == 2 and state.clock_s == 8.0 and len(history) == 3
    with pytest.raises(FedquadError, match="no checkpoint .* 2 of 3 rounds"):
        RunRecorder.open(str(run), None, resume=True, changes={"rounds": 3}).finished()


def test_workload_is_frozen():
    from fedquad.sim.workload import Workload
    assert Workload.__dataclass_params__.frozen
    assert all(f.metadata.get("help") for f in dataclasses.fields(Workload))


# -- through the commands (tiny-bert) ------------------------------------------------------------
def _sets(**changes) -> list[str]:
    settings = {"model": "tiny-bert", "task": "synthetic", "train_examples": 120, "eval_examples": 16,
                "max_len": 16, "batch_size": 4, "rounds": 2, "clients_per_round": 2, "local_steps": 1,
                "eval_every": 1, "scenario": "jetson-headroom", **changes}
    return [f"--set={k}={v}" for k, v in settings.items()]


@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_the_commands_refuse_a_stray_profile_before_loading_anything(tmp_path, capsys, command):
    from fedquad.cli.main import main
    data = _stray_profile(tmp_path / "out")
    assert main([command, *_sets(), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fedquad {command}: error:") and "--set profile=" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["profile.json"]
    assert (tmp_path / "out" / "profile.json").read_bytes() == data


def test_compare_seeds_refuses_a_stray_profile_in_a_seed_folder(tmp_path, capsys):
    from fedquad.cli.main import main
    _stray_profile(tmp_path / "out" / "seed-4")
    argv = ["compare", *_sets(), "--strategies", "fedlora", "--seeds", "4", "--target-accuracy", "0.9",
            "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    assert "seed-4 already holds a profile.json" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "out")) == ["seed-4"], "refused before the plan is written"


@pytest.mark.integration
def test_a_measured_profile_is_what_resumes_and_joining_processes_use(tmp_path):
    from fedquad.cli.main import main
    run = tmp_path / "run"
    assert main(["simulate", *_sets(rounds=1), "--out", str(run), "--quiet"]) == 0
    measured = (run / "profile.json").read_bytes()
    pinned = os.path.abspath(run / "profile.json")
    assert json.loads((run / "config.json").read_text())["profile"] == pinned
    assert main(["simulate", "--resume", str(run), "--set", "rounds=2", "--quiet"]) == 0
    assert (run / "profile.json").read_bytes() == measured, "the resume planned with the pinned file"
    assert len(json.loads((run / "history.json").read_text())) == 3

    out = tmp_path / "cmp"  # two processes sharing one comparison folder, one after the other
    assert main(["compare", *_sets(rounds=1), "--strategies", "fedlora", "--out", str(out), "--quiet"]) == 0
    measured = (out / "profile.json").read_bytes()
    assert main(["compare", *_sets(rounds=1), "--strategies", "hetlora", "--out", str(out), "--quiet"]) == 0
    assert (out / "profile.json").read_bytes() == measured
    for name in ("fedlora", "hetlora"):
        assert json.loads((out / name / "config.json").read_text())["profile"] == os.path.abspath(out / "profile.json")


@pytest.mark.integration
def test_simulate_leaves_a_shared_workload_as_it_was(tmp_path):
    from conftest import quick_profile

    from fedquad.sim.runner import simulate
    from fedquad.sim.workload import build_workload
    config = SimConfig(model="tiny-bert", task="synthetic", train_examples=120, eval_examples=16, max_len=16,
                       batch_size=4, rounds=1, clients_per_round=2, local_steps=1, scenario="jetson-headroom",
                       strategy="fedlora", profile=quick_profile(tmp_path, "tiny-bert", 4, 16))
    workload = build_workload(config)
    before = workload.config
    result = simulate(config.replace(strategy="hetlora"), str(tmp_path / "h"), workload=workload,
                      show_progress=False, plots=False)
    assert result.config.strategy == "hetlora" and result.rounds_run == 1
    assert workload.config is before, "a run's config goes into a copy of the workload"
    with pytest.raises(dataclasses.FrozenInstanceError):
        workload.config = result.config
