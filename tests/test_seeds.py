"""Cross-seed summaries of comparisons (pure), and `compare --seeds` end to end on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
from conftest import quick_profile

from fedquad.errors import FedquadError
from fedquad.sim.seeds import _json_safe, seeds_markdown, summarize_seeds


def _report(target, **times_and_acc):
    return {"target_accuracy": target, "strategies": {
        name: {"time_to_target_s": t, "final_accuracy": acc, "accuracy_at_common_time": acc,
               "dropped_device_rounds": 1, "failed_device_rounds": 1, "device_rounds": 10}
        for name, (t, acc) in times_and_acc.items()}}


def test_medians_count_never_as_infinitely_slow_and_speedup_is_per_seed():
    reports = {
        0: _report(0.7, fedquad=(10.0, 0.8), fedlora=(30.0, 0.75), quant=(20.0, 0.74)),
        1: _report(0.7, fedquad=(12.0, 0.8), fedlora=(None, 0.6), quant=(None, 0.65)),
        2: _report(0.7, fedquad=(None, 0.6), fedlora=(15.0, 0.72), quant=(None, 0.6)),
    }
    s = summarize_seeds(reports)
    assert s["seeds"] == [0, 1, 2]
    assert s["strategies"]["fedquad"]["median_time_to_target_s"] == 12.0
    assert s["strategies"]["fedquad"]["seeds_reaching_target"] == 2
    assert s["strategies"]["quant"]["median_time_to_target_s"] is None  # 2 of 3 seeds never: median is never
    assert s["strategies"]["fedlora"]["median_time_to_target_s"] == 30.0  # 15, 30, inf
    assert s["strategies"]["fedquad"]["median_final_accuracy"] == 0.8
    assert s["strategies"]["fedquad"]["dropped_device_rounds"] == 3
    assert s["strategies"]["fedquad"]["failed_device_rounds"] == 3
    assert "3/30 (3)" in seeds_markdown(s)
    old = {k: {**r, "strategies": {n: {f: v for f, v in st.items() if f != "failed_device_rounds"}
                                   for n, st in r["strategies"].items()}} for k, r in reports.items()}
    assert summarize_seeds(old)["strategies"]["fedquad"]["failed_device_rounds"] is None  # unknown, not 0
    speed = s["fedquad_speedup_vs_best_baseline"]
    assert speed["0"] == pytest.approx(2.0)  # fastest baseline 20 s vs 10 s
    assert speed["1"] == math.inf  # only FedQuad got there
    assert speed["2"] == 0.0  # a baseline got there, FedQuad did not
    assert s["median_fedquad_speedup"] == pytest.approx(2.0)
    text = seeds_markdown(s)
    assert "| fedquad | 10 / 12 / never | 2/3 | 12 [10, never] |" in text
    assert "seed 1: inf" in text and "median 2.00x" in text
    # the headline: against the strongest baseline (lowest median: fedlora 30 s; quant's is never),
    # paired per seed: 30/10, inf (fedlora never), 0 (FedQuad never)
    sp = s["speedup_vs_strongest_baseline"]
    assert sp["strongest"] == "fedlora" and sp["per_seed"] == {"0": 3.0, "1": math.inf, "2": 0.0}
    assert sp["median"] == 3.0 and sp["ci95"][0] <= 3.0 <= sp["ci95"][1]
    assert "strongest baseline (fedlora" in text and "median paired speedup 3.00x" in text
    lo, hi = s["strategies"]["fedquad"]["median_time_to_target_ci95"]
    assert lo == 10.0 and hi == math.inf  # 1 of 3 seeds never: resamples with two nevers are never


def test_first_touch_and_held_are_summarized_side_by_side_with_intervals():
    def row(held, touch):
        return {"time_to_target_s": held, "time_to_target_interval_s": None if held is None else [held - 4, held],
                "first_touch_s": touch, "first_touch_interval_s": None if touch is None else [touch - 4, touch],
                "final_accuracy": 0.8, "accuracy_at_common_time": 0.8, "dropped_device_rounds": 0,
                "device_rounds": 4}
    reports = {s: {"target_accuracy": 0.7, "target_hold_evals": 2, "strategies": {
        "fedquad": row(20.0 + s, 8.0), "fedlora": row(None, 12.0)}} for s in range(3)}
    summary = summarize_seeds(reports)
    fq = summary["strategies"]["fedquad"]
    assert fq["median_time_to_target_s"] == 21.0 and fq["median_first_touch_s"] == 8.0
    assert summary["speedup_vs_strongest_baseline"]["median"] == math.inf  # fedlora never holds it
    assert summary["speedup_vs_strongest_baseline_first_touch"]["median"] == 1.5  # 12 / 8
    text = seeds_markdown(summary)
    assert "(16, 20] / (17, 21] / (18, 22]" in text and "held at 2 evaluations" in text
    with pytest.raises(FedquadError, match="one target hold"):
        summarize_seeds({0: reports[0], 1: {**reports[1], "target_hold_evals": 1}})
    as_json = json.loads(json.dumps(_json_safe(summary)))
    assert as_json["speedup_vs_strongest_baseline"]["ci95"][1] == "inf"


def test_seeds_must_share_one_target():
    with pytest.raises(FedquadError, match="one target"):
        summarize_seeds({0: _report(0.7, fedquad=(1.0, 0.8)), 1: _report(0.8, fedquad=(1.0, 0.8))})
    with pytest.raises(FedquadError, match="one target"):
        summarize_seeds({0: _report(None, fedquad=(None, 0.8))})


@pytest.mark.integration
def test_compare_seeds_cli_runs_each_seed_and_reports_medians(tmp_path, capsys):
    from fedquad.cli.main import main
    profile = quick_profile(tmp_path, "tiny-bert", 8, 24)
    out = tmp_path / "cmp"
    common = ["--set", "model=tiny-bert", "--set", "task=synthetic", "--set", "train_examples=240",
              "--set", "eval_examples=32", "--set", "max_len=24", "--set", "batch_size=8", "--set", "rounds=1",
              "--set", "clients_per_round=3", "--set", "local_steps=1", "--set", "eval_every=1",
              "--set", "scenario=jetson-headroom", "--set", f"profile={profile}",
              "--strategies", "fedquad,fedlora", "--out", str(out), "--quiet"]
    assert main(["compare", *common, "--seeds", "0,1", "--target-accuracy", "0.01"]) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["strategies"]) == {"fedquad", "fedlora"}
    for seed in (0, 1):
        report = json.loads((out / f"seed-{seed}" / "comparison.json").read_text())
        assert report["config"]["seed"] == seed
        assert summary["strategies"]["fedquad"]["time_to_target_s"][str(seed)] == \
            report["strategies"]["fedquad"]["time_to_target_s"]
    assert (out / "seeds.md").stat().st_size > 0 and (out / "time_to_target.png").stat().st_size > 0
    assert (out / "accuracy_over_seeds.png").stat().st_size > 0
    sp = summary["speedup_vs_strongest_baseline"]
    assert sp["strongest"] == "fedlora" and len(sp["ci95"]) == 2 and summary["target_hold_evals"] == 2
    # the two seeds drew different devices and data: their simulated clocks differ
    clocks = [json.loads((out / f"seed-{s}" / "comparison.json").read_text())["strategies"]["fedlora"]
              ["simulated_time_s"] for s in (0, 1)]
    assert clocks[0] != clocks[1]
    # re-report at an unreachable target without training
    assert main(["compare", "--strategies", "fedquad,fedlora", "--out", str(out), "--seeds", "0,1",
                 "--target-accuracy", "1.0", "--report-only", "--quiet"]) == 0
    again = json.loads((out / "seeds.json").read_text())
    assert again["target_accuracy"] == 1.0
    # bad input: one line, exit 2
    capsys.readouterr()
    assert main(["compare", *common, "--seeds", "0,x", "--target-accuracy", "0.5"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["compare", *common, "--seeds", "0,1"]) == 2
    assert "target accuracy" in capsys.readouterr().err


class _Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` cleanup of the code under test runs."""


@pytest.mark.integration
def test_compare_seeds_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    from fedquad.cli.main import main
    from fedquad.sim import checkpoint
    profile = quick_profile(tmp_path, "tiny-bert", 8, 24)
    common = ["--set", "model=tiny-bert", "--set", "train_examples=240", "--set", "eval_examples=32",
              "--set", "max_len=24", "--set", "batch_size=8", "--set", "rounds=1", "--set", "clients_per_round=3",
              "--set", "local_steps=1", "--set", "scenario=jetson-headroom", "--set", f"profile={profile}",
              "--strategies", "fedquad,fedlora", "--seeds", "0,1", "--target-accuracy", "0.01", "--quiet"]
    assert main(["compare", *common, "--out", str(tmp_path / "straight")]) == 0
    seen = []

    def after(name):  # killed in seed 1's first checkpoint (seed 0's two runs are done)
        if name == "adapter":
            seen.append(name)
            if len(seen) == 3:
                raise _Killed()
    monkeypatch.setattr(checkpoint, "_after_step", after)
    out = tmp_path / "cmp"
    with pytest.raises(_Killed):
        main(["compare", *common, "--out", str(out)])
    monkeypatch.undo()
    kept = (out / "seed-0" / "fedlora" / "checkpoint" / "state.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["compare", *common, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["compare", "--resume", str(out), "--quiet"]) == 0
    assert (out / "seed-0" / "fedlora" / "checkpoint" / "state.json").stat().st_mtime_ns == kept
    strip = lambda s: {n: {k: v for k, v in r.items() if k != "host"} for n, r in s["strategies"].items()}  # noqa
    assert strip(json.loads((out / "seeds.json").read_text())) == strip(
        json.loads((tmp_path / "straight" / "seeds.json").read_text()))


@pytest.mark.integration
def test_one_process_per_seed_into_one_folder(tmp_path, capsys):
    """How the reference seeds were made: `--seeds N` per process, then one --report-only."""
    from fedquad.cli.main import main
    profile = quick_profile(tmp_path, "tiny-bert", 8, 24)
    common = ["--set", "model=tiny-bert", "--set", "train_examples=240", "--set", "eval_examples=32",
              "--set", "max_len=24", "--set", "batch_size=8", "--set", "rounds=1", "--set", "clients_per_round=3",
              "--set", "local_steps=1", "--set", "scenario=jetson-headroom", "--set", f"profile={profile}",
              "--strategies", "fedquad", "--target-accuracy", "0.01", "--out", str(tmp_path / "cmp"), "--quiet"]
    assert main(["compare", *common, "--seeds", "0"]) == 0
    assert main(["compare", *common, "--seeds", "1"]) == 0
    assert main(["compare", *common, "--seeds", "1,2"]) == 2
    assert "seed-1/fedquad" in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "seed-2").exists()
    plan = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert plan["seeds"] == [0, 1] and plan["strategies"] == ["fedquad"]
    assert main(["compare", "--report-only", "--seeds", "0,1", "--target-accuracy", "0.01",
                 "--out", str(tmp_path / "cmp"), "--quiet"]) == 0
    assert json.loads((tmp_path / "cmp" / "seeds.json").read_text())["seeds"] == [0, 1]
    assert main(["compare", "--resume", str(tmp_path / "cmp"), "--quiet"]) == 0  # both finished: kept
