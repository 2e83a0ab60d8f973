"""Checkpoints survive a crash after every filesystem step of their write, and damaged ones are
refused in one line; a run killed at any of those points (or before its first checkpoint) resumes."""

from __future__ import annotations

import json
import os

import pytest
import torch

from _faults import Killed, kill_at
from fedquad.errors import FedquadError
from fedquad.sim import checkpoint as ckpt
from fedquad.sim.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from fedquad.sim.round import RoundState

STEPS = ["recover", "mkdir tmp", "adapter", "state", "rename old", "rename new", "remove old"]


def _state(round_index: int) -> RoundState:
    g = torch.Generator().manual_seed(round_index)
    return RoundState(round_index, 10.0 * round_index, {"a.lora_A": torch.randn(4, 3, generator=g),
                                                        "a.lora_B": torch.randn(3, 4, generator=g)},
                      {"round": round_index})


def _save(run_dir, round_index: int) -> None:
    save_checkpoint(str(run_dir), _state(round_index), {"rounds": 9}, [{"round": r} for r in range(round_index)])


def test_write_sequence_is_the_one_tested():
    seen = []
    original = ckpt._after_step
    ckpt._after_step = seen.append
    try:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            _save(d, 1)
            _save(d, 2)
    finally:
        ckpt._after_step = original
    assert seen == [s for s in STEPS if s != "rename old"] + STEPS


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_after_any_step_leaves_a_resumable_checkpoint(tmp_path, monkeypatch, step):
    _save(tmp_path, 1)
    kill_at(monkeypatch, step)
    with pytest.raises(Killed):
        _save(tmp_path, 2)
    monkeypatch.setattr(ckpt, "_after_step", lambda name: None)
    state, config, history = load_checkpoint(str(tmp_path))
    # the new checkpoint counts from the moment it has been renamed into place
    expected = 2 if STEPS.index(step) >= STEPS.index("rename new") else 1
    assert state.round_index == expected and len(history) == expected and config == {"rounds": 9}
    assert torch.equal(state.global_state["a.lora_B"], _state(expected).global_state["a.lora_B"])
    _save(tmp_path, 3)  # the next write recovers whatever the crash left
    assert load_checkpoint(str(tmp_path))[0].round_index == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]


@pytest.mark.parametrize("step", [s for s in STEPS if s != "rename old"])  # nothing to rename yet
def test_a_crash_in_the_first_write_leaves_nothing_or_the_new_checkpoint(tmp_path, monkeypatch, step):
    kill_at(monkeypatch, step)
    with pytest.raises(Killed):
        _save(tmp_path, 1)
    monkeypatch.setattr(ckpt, "_after_step", lambda name: None)
    if step in ("rename new", "remove old"):
        assert load_checkpoint(str(tmp_path))[0].round_index == 1
    else:
        with pytest.raises(FedquadError, match="no checkpoint"):
            load_checkpoint(str(tmp_path))
    _save(tmp_path, 2)
    assert load_checkpoint(str(tmp_path))[0].round_index == 2


def test_the_state_of_issue_13_resumes(tmp_path):
    """checkpoint, checkpoint.old and checkpoint.tmp at once (made every later write fail with
    `OSError: Directory not empty`)."""
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    os.makedirs(tmp_path / "checkpoint.old")
    os.makedirs(tmp_path / "checkpoint.tmp")
    (tmp_path / "checkpoint.old" / "state.json").write_text("{}")
    (tmp_path / "checkpoint.tmp" / "state.json").write_text("{")
    assert load_checkpoint(str(tmp_path))[0].round_index == 2
    _save(tmp_path, 3)
    assert load_checkpoint(str(tmp_path))[0].round_index == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]


def _damage(tmp_path, change) -> str:
    _save(tmp_path, 1)
    path = tmp_path / "checkpoint" / "state.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(change(meta)))
    with pytest.raises(FedquadError) as exc:
        read_checkpoint(str(tmp_path))
    return str(exc.value)


def test_damaged_state_json_is_a_one_line_error(tmp_path):
    assert "torch_rng" in _damage(tmp_path, lambda m: {k: v for k, v in m.items() if k != "torch_rng"})
    assert "no object" in _damage(tmp_path, lambda m: [m])
    assert "damaged" in _damage(tmp_path, lambda m: {**m, "torch_rng": "!!"})
    assert "lacks" in _damage(tmp_path, lambda m: {**m, "key_order": [*m["key_order"], "b.lora_A"]})
    assert "damaged" in _damage(tmp_path, lambda m: {**m, "round_index": "x"})
    assert "version" in _damage(tmp_path, lambda m: {**m, "version": 7})
    (tmp_path / "checkpoint" / "state.json").write_text("{")
    with pytest.raises(FedquadError, match="unreadable"):
        read_checkpoint(str(tmp_path))


def test_read_leaves_torch_rng_alone_and_load_restores_it(tmp_path):
    torch.manual_seed(5)
    _save(tmp_path, 1)
    expected = torch.rand(3)
    torch.manual_seed(6)
    before = torch.get_rng_state()
    read_checkpoint(str(tmp_path))
    assert torch.equal(torch.get_rng_state(), before)
    load_checkpoint(str(tmp_path))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_checkpoint_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _save(tmp_path, 1)
    finally:
        os.umask(old)
    for name in ("adapter.safetensors", "state.json"):
        assert os.stat(tmp_path / "checkpoint" / name).st_mode & 0o777 == mode, name


# -- whole runs killed at those points, resumed through the CLI --------------------------------
@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    from conftest import quick_profile
    profile = quick_profile(tmp_path_factory.mktemp("profile"), "tiny-bert", 8, 24)

    def sets(**changes) -> list[str]:
        settings = {"model": "tiny-bert", "task": "synthetic", "train_examples": 240, "eval_examples": 32,
                    "max_len": 24, "batch_size": 8, "rounds": 3, "clients_per_round": 3, "local_steps": 1,
                    "eval_every": 1, "scenario": "jetson-headroom", "profile": profile, "strategy": "fedquad",
                    **changes}
        return [f"--set={k}={v}" for k, v in settings.items()]
    return sets


@pytest.fixture(scope="module")
def straight(tiny_sets, tmp_path_factory):
    """The uninterrupted 3-round run every resumed one must end equal to."""
    from fedquad.cli.main import main
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(["simulate", *tiny_sets(), "--out", str(out), "--quiet"]) == 0
    return out


def _same_run(a, b) -> None:
    sa, sb = read_checkpoint(str(a)), read_checkpoint(str(b))
    assert sa.state.round_index == sb.state.round_index and sa.state.clock_s == sb.state.clock_s
    for key, value in sa.state.global_state.items():
        assert torch.equal(value, sb.state.global_state[key]), key
    strip = lambda hs: [{k: v for k, v in h.items() if k != "host"} for h in hs]  # noqa: E731
    ha, hb = (json.loads((x / "history.json").read_text()) for x in (a, b))
    assert strip(ha) == strip(hb)


@pytest.mark.integration
@pytest.mark.parametrize("step", ["state", "rename old", "rename new"])
def test_a_run_killed_in_its_second_checkpoint_resumes_to_the_same_result(tmp_path, monkeypatch, tiny_sets,
                                                                          straight, step):
    from fedquad.cli.main import main
    out = tmp_path / "run"
    kill_at(monkeypatch, step, 2)
    with pytest.raises(Killed):
        main(["simulate", *tiny_sets(), "--out", str(out), "--quiet"])
    monkeypatch.setattr(ckpt, "_after_step", lambda name: None)
    assert main(["simulate", "--resume", str(out), "--quiet"]) == 0
    _same_run(out, straight)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


@pytest.mark.integration
def test_a_run_killed_before_its_first_checkpoint_resumes_from_round_0(tmp_path, monkeypatch, tiny_sets, straight):
    from fedquad.cli.main import main
    out = tmp_path / "run"
    kill_at(monkeypatch, "adapter", 1)
    with pytest.raises(Killed):
        main(["simulate", *tiny_sets(), "--out", str(out), "--quiet"])
    monkeypatch.setattr(ckpt, "_after_step", lambda name: None)
    assert (out / "config.json").is_file() and not (out / "checkpoint").exists()
    assert main(["simulate", "--resume", str(out), "--quiet"]) == 0
    _same_run(out, straight)


@pytest.mark.integration
def test_resume_of_a_finished_run_says_so_and_set_rounds_extends_it(tmp_path, capsys, tiny_sets, straight):
    from fedquad.cli.main import main
    out = tmp_path / "run"
    assert main(["simulate", *tiny_sets(rounds=2), "--out", str(out), "--quiet"]) == 0
    before = (out / "checkpoint" / "state.json").read_bytes()
    capsys.readouterr()
    assert main(["simulate", "--resume", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "already finished" in said and "2 of 2 rounds" in said and "rounds=N" in said
    assert (out / "checkpoint" / "state.json").read_bytes() == before, "nothing ran"
    assert main(["simulate", "--resume", str(out), "--set", "rounds=3", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["rounds"] == 3
    _same_run(out, straight)


def test_other_tensor_outputs_honour_the_umask_too(tmp_path):
    from safetensors.torch import save_file

    from fedquad.sim.checkpoint import honour_umask, save_tensors
    old = os.umask(0o022)
    try:
        save_tensors(str(tmp_path / "round-000.safetensors"), _state(1).global_state)
        save_file({"x": torch.zeros(1)}, str(tmp_path / "peft.safetensors"))  # safetensors itself: 0600
        honour_umask(str(tmp_path))
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "round-000.safetensors": 0o644, "peft.safetensors": 0o644}
