"""User mistakes through the real entry point: one line on stderr, exit status 2, nothing left
behind. The cases that need no training run in the fast tier; the ones that train (existing
runs, a budget nobody fits, failed runs) use tiny-bert on the generated task for a round or two."""

from __future__ import annotations

import json
import os

import pytest

from _profiles import minilm_like_profile, write_profile
from fedquad.cli.main import build_parser, main

LEAKS = ("Traceback", "not supported between", "not iterable", "['['", "KeyError", "object has no attribute")


def one_line_error(capsys, code, command: str, *needles: str) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith(f"fedquad {command}: error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    for leak in LEAKS:
        assert leak not in err, err
    return lines[0]


# -- --out that cannot be a run folder ---------------------------------------------------------
@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_out_that_is_a_file(tmp_path, capsys, command):
    target = tmp_path / "a-file"
    target.write_text("mine")
    one_line_error(capsys, main([command, "--out", str(target), "--quiet"]), command, "is a file")
    assert target.read_text() == "mine"
    one_line_error(capsys, main([command, "--out", str(target / "sub"), "--quiet"]), command, "is a file")


@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_out_under_proc(capsys, command):
    one_line_error(capsys, main([command, "--out", "/proc/fedquad-run", "--quiet"]), command, "/proc/fedquad-run")
    assert not os.path.exists("/proc/fedquad-run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_out_in_an_unwritable_folder(tmp_path, capsys, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(capsys, main([command, "--out", str(locked / "run"), "--quiet"]), command, "cannot")
    finally:
        locked.chmod(0o700)


def test_profile_out_checked_before_measuring(tmp_path, capsys):
    # a directory, a missing folder, /proc: refused at once (no model is loaded), no .tmp left
    one_line_error(capsys, main(["profile", "--model", "no-such-model", "--out", str(tmp_path)]), "profile",
                   "is a directory", "profile.json")
    one_line_error(capsys, main(["profile", "--model", "no-such-model", "--out", str(tmp_path / "no" / "p.json")]),
                   "profile", "does not exist")
    one_line_error(capsys, main(["profile", "--model", "no-such-model", "--out", "/proc/p.json"]), "profile",
                   "cannot write")
    assert os.listdir(tmp_path) == []


# -- config files and --set --------------------------------------------------------------------
@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_config_file_mistakes(tmp_path, capsys, command):
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    one_line_error(capsys, main([command, "--config", str(listed), "--out", str(tmp_path / "r")]), command,
                   "table of settings", "list")
    one_line_error(capsys, main([command, "--config", str(tmp_path), "--out", str(tmp_path / "r")]), command,
                   "is a directory")
    nested = tmp_path / "nested.toml"
    nested.write_text("simulation = 3\n")
    one_line_error(capsys, main([command, "--config", str(nested), "--out", str(tmp_path / "r")]), command, "table")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("item,needles", [
    ("rounds=abc", ["rounds", "'abc'", "an integer"]),
    ("rounds=2.5", ["rounds", "2.5", "an integer"]),
    ("quant_bits=8", ["quant_bits", "8", "list of integers"]),
    ("quant_bits=[8", ["quant_bits", "'[8'", "list of integers"]),
    ("target_accuracy=abc", ["target_accuracy", "'abc'", "a number"]),
    ("learning_rate=fast", ["learning_rate", "'fast'", "a number"]),
    ("partition_alpha=[1]", ["partition_alpha", "[1]", "a number or null"]),
    ("seed=-1", ["seed", "-1"]),
    ("rounds=0", ["rounds", "0", "positive integer"]),
    ("max_update_norm_ratio=0", ["max_update_norm_ratio", "0", "> 0"]),
    ("bogus=1", ["bogus", "unknown setting"]),
    ("rounds", ["KEY=VALUE"]),
])
def test_set_errors_name_the_setting_value_and_type(tmp_path, capsys, item, needles):
    config = tmp_path / "my.json"
    config.write_text(json.dumps({"rounds": 2}))
    line = one_line_error(capsys, main(["simulate", "--config", str(config), "--set", item, "--out",
                                        str(tmp_path / "r"), "--quiet"]), "simulate", "--set", *needles)
    assert str(config) not in line, "a --set mistake is not the config file's"


def test_config_file_values_are_checked_and_blamed_on_the_file(tmp_path, capsys):
    config = tmp_path / "my.toml"
    config.write_text('[simulation]\nquant_bits = 8\n')
    one_line_error(capsys, main(["simulate", "--config", str(config), "--out", str(tmp_path / "r")]), "simulate",
                   str(config), "quant_bits", "list of integers")


def test_set_takes_text_for_text_settings():
    from fedquad.sim.config import load_config
    assert load_config(None, ["data_root=2024", "profile=null"]).data_root == "2024"
    assert load_config(None, ["quant_bits=[8]"]).quant_bits == (8,)


# -- seeds -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["memory", "--model", "tiny-bert", "--seed", "-1"],
    ["profile", "--model", "tiny-bert", "--seed", "-1", "--out", "p.json"],
    ["simulate", "--set", "seed=-1"],
    ["compare", "--seeds", "-1,0", "--target-accuracy", "0.5"],
    ["compare", "--set", "seed=-3"],
])
def test_negative_seeds_are_refused_by_every_command(tmp_path, capsys, argv):
    command = argv[0]
    code = main([*argv, *(["--out", str(tmp_path / "r")] if command in ("simulate", "compare") else [])])
    one_line_error(capsys, code, command, "seed", "-")
    assert not (tmp_path / "r").exists()


def test_plan_rejects_negative_seed_too(tmp_path, capsys):
    profile = write_profile(tmp_path, data=minilm_like_profile())
    one_line_error(capsys, main(["plan", "--scenario", "laptops", "--profile", profile, "--seed", "-1"]), "plan",
                   "--seed")


# -- resume arguments --------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_resume_argument_mistakes(tmp_path, capsys, command):
    one_line_error(capsys, main([command, "--resume", str(tmp_path), "--out", str(tmp_path / "x")]), command,
                   "drop --out")
    one_line_error(capsys, main([command, "--resume", str(tmp_path), "--overwrite"]), command, "--overwrite")
    one_line_error(capsys, main([command, "--resume", str(tmp_path), "--set", "learning_rate=0.1"]), command,
                   "learning_rate", "rounds")
    one_line_error(capsys, main([command, "--resume", str(tmp_path / "none")]), command, "does not exist")
    one_line_error(capsys, main([command, "--resume", str(tmp_path)]), command, "nothing to resume")
    assert os.listdir(tmp_path) == []


def test_resume_of_a_damaged_checkpoint(tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    import torch
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(folder / "adapter.safetensors"))
    (folder / "state.json").write_text(json.dumps({"version": 1, "round_index": 1}))
    one_line_error(capsys, main(["simulate", "--resume", str(tmp_path)]), "simulate", "damaged", "torch_rng")


# -- scenario files ----------------------------------------------------------------------------
@pytest.mark.parametrize("drop,needle", [("class", "devices[0].class' is missing"),
                                         ("count", "devices[0].count' is missing"),
                                         ("budget", "devices[0].budget' is missing")])
def test_scenario_missing_field_says_missing(tmp_path, capsys, drop, needle):
    profile = write_profile(tmp_path, data=minilm_like_profile())
    device = {"class": "jetson-tx2", "count": 2, "budget": [0.5, 0.9]}
    del device[drop]
    scenario = {"name": "x", "budget_mode": "fraction", "devices": [device],
                "bandwidth_Mbps": {"up": {"dist": "fixed", "Mbps": 10}, "down": {"dist": "fixed", "Mbps": 10}}}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(scenario))
    line = one_line_error(capsys, main(["plan", "--scenario", str(path), "--profile", profile]), "plan", needle)
    assert "None" not in line


# -- help --------------------------------------------------------------------------------------
def test_every_command_has_a_description(capsys):
    sub = next(a for a in build_parser()._actions if getattr(a, "choices", None))
    for name in ("simulate", "compare", "demo", "plan", "profile", "memory"):
        assert sub.choices[name].description, name
    assert main(["compare", "--help"]) == 0
    assert "resume" in capsys.readouterr().out.lower()


# -- runs that train (tiny-bert, generated task) -----------------------------------------------
@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> str:
    from conftest import quick_profile
    return quick_profile(tmp_path_factory.mktemp("profile"), "tiny-bert", 8, 24)


def tiny_sets(profile: str, **changes) -> list[str]:
    settings = {"model": "tiny-bert", "task": "synthetic", "train_examples": 240, "eval_examples": 32, "max_len": 24,
                "batch_size": 8, "rounds": 1, "clients_per_round": 3, "local_steps": 1, "eval_every": 1,
                "scenario": "jetson-headroom", "profile": profile, **changes}
    return [f"--set={k}={v}" for k, v in settings.items()]


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.integration
def test_simulate_onto_an_existing_run_is_refused_unless_overwrite(tmp_path, capsys, tiny_profile):
    out = tmp_path / "run"
    assert main(["simulate", *tiny_sets(tiny_profile), "--out", str(out), "--quiet"]) == 0
    before = _snapshot(out)
    line = one_line_error(capsys, main(["simulate", *tiny_sets(tiny_profile, seed=1), "--out", str(out), "--quiet"]),
                          "simulate", "already holds a run", "--resume", "--overwrite")
    assert str(out) in line and _snapshot(out) == before, "the earlier run must be untouched"
    assert main(["simulate", *tiny_sets(tiny_profile, seed=1), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1


@pytest.mark.integration
def test_compare_onto_existing_runs_is_refused_unless_overwrite(tmp_path, capsys, tiny_profile):
    out = tmp_path / "cmp"
    argv = ["compare", *tiny_sets(tiny_profile), "--out", str(out), "--quiet"]
    assert main([*argv, "--strategies", "fedquad"]) == 0
    before = _snapshot(out / "fedquad")
    one_line_error(capsys, main([*argv, "--strategies", "fedlora,fedquad"]), "compare", "already holds runs of fedquad",
                   "--resume", "--overwrite")
    assert _snapshot(out / "fedquad") == before and not (out / "fedlora").exists()
    # another process's strategies, same settings, same folder: fine (how the reference runs were made)
    assert main([*argv, "--strategies", "fedlora"]) == 0
    assert _snapshot(out / "fedquad") == before
    # runs made with other settings are never mixed into one comparison
    other = ["compare", *tiny_sets(tiny_profile, learning_rate=0.01), "--out", str(out), "--quiet"]
    one_line_error(capsys, main([*other, "--strategies", "hetlora"]), "compare", "other settings", "learning_rate")
    assert main([*argv, "--strategies", "fedquad", "--overwrite"]) == 0
    assert (out / "fedlora" / "history.json").is_file(), "--overwrite replaces only the runs it makes again"
    assert json.loads((out / "compare.json").read_text())["strategies"] == ["fedquad", "fedlora"]
    assert main(["compare", "--report-only", "--out", str(out), "--quiet"]) == 0
    assert set(json.loads((out / "comparison.json").read_text())["strategies"]) == {"fedquad", "fedlora"}


def _nobody_fits(tmp_path) -> str:
    scenario = {"name": "tiny-budgets", "budget_mode": "absolute", "local_steps": 1,
                "bandwidth_Mbps": {"up": {"dist": "fixed", "Mbps": 10}, "down": {"dist": "fixed", "Mbps": 10}},
                "devices": [{"class": "jetson-tx2", "count": 4, "budget": [1000, 2000]}]}
    path = tmp_path / "tiny-budgets.json"
    path.write_text(json.dumps(scenario))
    return str(path)


@pytest.mark.integration
@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_a_budget_nobody_fits_is_refused_like_plan_does(tmp_path, capsys, tiny_profile, command):
    out = tmp_path / "run"
    sets = tiny_sets(tiny_profile, scenario=_nobody_fits(tmp_path))
    one_line_error(capsys, main([command, *sets, "--out", str(out), "--quiet"]), command, "no device of scenario",
                   "cannot take part", "MiB")
    assert not out.exists(), "a failed run leaves no folder"


@pytest.mark.integration
@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_failed_runs_leave_no_folder_holding_only_config_json(tmp_path, capsys, tiny_profile, command):
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    for out in (tmp_path / "new" / "deeper", existing):
        # fails after the model and data are loaded: more clients per round than devices
        code = main([command, *tiny_sets(tiny_profile, clients_per_round=99), "--out", str(out), "--quiet"])
        one_line_error(capsys, code, command, "clients_per_round")
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(existing)) == ["notes.txt"]


@pytest.mark.integration
def test_profile_accepts_warmup_0(tmp_path):
    out = tmp_path / "p.json"
    assert main(["profile", "--model", "tiny-bert", "--batch-size", "2", "--seq-len", "8", "--repeats", "1",
                 "--warmup", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["timing"]["warmup"] == 0
    assert sorted(os.listdir(tmp_path)) == ["p.json"]


@pytest.mark.integration
def test_a_run_failing_in_its_first_round_removes_its_config_json(tmp_path, capsys, tiny_profile, monkeypatch):
    from fedquad.errors import FedquadError
    from fedquad.sim.round import FederatedAlgorithm

    def fail(self, state, clients, progress=None):
        raise FedquadError("injected failure in round 0")
    monkeypatch.setattr(FederatedAlgorithm, "apply", fail)
    out = tmp_path / "run"
    one_line_error(capsys, main(["simulate", *tiny_sets(tiny_profile), "--out", str(out), "--quiet"]), "simulate",
                   "injected")
    assert not out.exists()


def test_a_directory_is_called_a_directory(tmp_path, capsys):
    profile = write_profile(tmp_path, data=minilm_like_profile())
    one_line_error(capsys, main(["plan", "--scenario", str(tmp_path), "--profile", profile]), "plan",
                   "is a directory")
    one_line_error(capsys, main(["plan", "--scenario", "laptops", "--profile", str(tmp_path)]), "plan",
                   "is a directory")
    one_line_error(capsys, main(["simulate", "--config", str(tmp_path), "--out", str(tmp_path / "r")]), "simulate",
                   "is a directory")
