"""`fedquad plan`: output, JSON fields, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from _profiles import minilm_like_profile, synthetic_profile, write_profile
from fedquad.cli.main import main


@pytest.fixture
def profile_path(tmp_path):
    return write_profile(tmp_path, data=minilm_like_profile())


def run(capsys, *argv):
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table(capsys, profile_path):
    code, out, err = run(capsys, "--scenario", "jetson-small", "--profile", profile_path)
    assert code == 0 and err == ""
    assert "jetson-tx2-0" in out and "round time" in out and "straggler" in out
    assert "full depth" in out


def test_json(capsys, profile_path):
    code, out, _ = run(capsys, "--scenario", "jetson-mixed", "--profile", profile_path, "--round", "4", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["round"] == 4 and data["scenario"] == "jetson-mixed"
    assert data["round_time_s"] > 0
    assert data["straggler"] in {d["id"] for d in data["devices"]}
    assert len(data["devices"]) >= 20
    for d in data["devices"]:
        assert {"id", "device_class", "budget_bytes", "plan", "predicted_bytes", "predicted_time_s", "reason"} <= set(d)
        if d["plan"] is not None:
            assert {"depth", "quant_layers", "bits"} <= set(d["plan"])
            assert d["predicted_bytes"] <= d["budget_bytes"]
            assert d["predicted_time_s"] <= data["round_time_s"]
    # same arguments, same plan
    assert json.loads(run(capsys, "--scenario", "jetson-mixed", "--profile", profile_path, "--round", "4",
                          "--json")[1]) == data


def test_no_quant_and_seed(capsys, profile_path):
    code, out, _ = run(capsys, "--scenario", "jetson-small", "--profile", profile_path, "--no-quant", "--json",
                       "--seed", "3")
    data = json.loads(out)
    assert code == 0 and data["seed"] == 3
    assert all(d["plan"] is None or d["plan"]["quant_layers"] == 0 for d in data["devices"])


def _one_line_error(code, out, err, *words):
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fedquad plan: error:")
    for w in words:
        assert w in err


def test_bad_profiles(capsys, tmp_path):
    bad = synthetic_profile()
    bad["schema_version"] = 99
    path = write_profile(tmp_path, "v99.json", data=bad)
    _one_line_error(*run(capsys, "--scenario", "jetson-small", "--profile", path), "schema_version", path)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    _one_line_error(*run(capsys, "--scenario", "jetson-small", "--profile", str(broken)), "not valid JSON")
    _one_line_error(*run(capsys, "--scenario", "jetson-small", "--profile", str(tmp_path / "none.json")),
                    "does not exist")


def test_bad_scenarios(capsys, tmp_path, profile_path):
    _one_line_error(*run(capsys, "--scenario", "mars", "--profile", profile_path), "unknown scenario", "mars")
    path = tmp_path / "s.json"
    scenario = {"name": "x", "budget_mode": "absolute", "local_steps": 1,
                "bandwidth_Mbps": {"up": {"dist": "fixed", "Mbps": 10}, "down": {"dist": "fixed", "Mbps": 10}},
                "devices": [{"class": "jetson-nano-9000", "count": 2, "budget": [1e9, 2e9]}]}
    path.write_text(json.dumps(scenario))
    _one_line_error(*run(capsys, "--scenario", str(path), "--profile", profile_path), "jetson-nano-9000")
    scenario["devices"] = [{"class": "jetson-tx2", "count": 2, "budget": [1000, 2000]}]
    path.write_text(json.dumps(scenario))
    _one_line_error(*run(capsys, "--scenario", str(path), "--profile", profile_path), "no device", "cannot take part",
                    "MiB")


def test_bad_arguments(capsys, profile_path):
    _one_line_error(*run(capsys, "--scenario", "laptops", "--profile", profile_path, "--bits", "3"), "bits")
    # argparse's own checks: the same one line and status 2, returned by main
    _one_line_error(*run(capsys, "--scenario", "laptops", "--profile", profile_path, "--round", "-1"), "--round")


@pytest.mark.parametrize("seed", ["-1", "x", str(2**63)])
def test_seed_outside_the_range_every_command_takes(capsys, profile_path, seed):
    _one_line_error(*run(capsys, "--scenario", "laptops", "--profile", profile_path, "--seed", seed), "--seed")
