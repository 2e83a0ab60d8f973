"""`fedquad demo` (`make run`): a stated target, times to it, an unwrapped table, honest words."""

from __future__ import annotations

import json
import re

import pytest

from fedquad.cli import demo_cmd
from fedquad.cli.main import main


def _report(ours_best, ours_time, base_best, base_time):
    row = lambda best, t: {"best_accuracy": best, "time_to_target_s": t, "rounds": 4,  # noqa: E731
                           "accuracy_at_common_time": best, "dropped_device_rounds": 1, "device_rounds": 8}
    return {"target_accuracy": base_best, "common_time_s": 10.0,
            "strategies": {"fedquad": row(ours_best, ours_time), "fedlora": row(base_best, base_time),
                           "depth-only": row(base_best - 0.1, None)}}


def test_the_target_is_the_best_baseline_accuracy():
    assert demo_cmd.demo_target(_report(0.8, None, 0.7, None)) == (0.7, "fedlora")  # fedquad's 0.8 not counted


def test_the_summary_says_never_when_fedquad_never_gets_there():
    lines = demo_cmd.summary_lines(_report(0.65, None, 0.7, 12.0), "fedlora")
    assert lines[0].startswith("Target 70.0%: the best accuracy of fedlora")
    assert "FedQuad never reached it" in lines[1] and "65.0%" in lines[1] and "12 s" in lines[1]


def test_the_summary_never_divides_by_a_baseline_that_never_got_there():
    """`make run` once died here: a baseline without a time to target (None) in the ratio."""
    assert "fedlora never did" in demo_cmd.summary_lines(_report(0.7, 6.0, 0.7, None), "fedlora")[1]
    assert "fedlora never did" in demo_cmd.summary_lines(_report(0.6, None, 0.7, None), "fedlora")[1]


def test_the_summary_gives_the_ratio_either_way():
    assert "2.00x sooner than fedlora" in demo_cmd.summary_lines(_report(0.7, 6.0, 0.7, 12.0), "fedlora")[1]
    assert "1.50x later than fedlora" in demo_cmd.summary_lines(_report(0.7, 18.0, 0.7, 12.0), "fedlora")[1]


def test_demo_needs_fedquad_and_a_baseline(capsys):
    assert main(["demo", "--strategies", "fedlora,hetlora"]) == 2
    assert "fedquad and at least one baseline" in capsys.readouterr().err


def test_demo_refuses_a_comparison_it_did_not_write(tmp_path, capsys):
    (tmp_path / "comparison.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.integration  # real MiniLM training, kept to 2 rounds of 2 boards x 1 step
def test_demo_prints_a_target_and_times_to_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_cmd, "DEMO_SETTINGS", {**demo_cmd.DEMO_SETTINGS, "clients_per_round": 2,
                                                    "local_steps": 1, "train_examples": 200, "eval_examples": 64,
                                                    "eval_every": 1})
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--rounds", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    target = re.search(r"^Target accuracy: (\d+\.\d)%", out, flags=re.M)
    assert target, out
    header = next(line for line in out.splitlines() if line.startswith("| strategy |"))
    assert "| time to target (s) |" in header and header.endswith("| MB down |")  # one line: not wrapped
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()
            if line.startswith("| fed")}
    saved = json.loads((out_dir / "demo.json").read_text())
    assert f"{100 * saved['target_accuracy']:.1f}" == target.group(1)
    assert re.fullmatch(r"\d+", rows[saved["target_set_by"]])  # the baseline that set it reached it
    assert re.fullmatch(r"\d+|never", rows["fedquad"])
    assert "FedQuad" in out and "Device-rounds that contributed nothing" in out
    # make run twice: the demo replaces its own earlier output
    assert main(["demo", "--out", str(out_dir), "--rounds", "1", "--quiet"]) == 0
