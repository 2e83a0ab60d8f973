"""`fedquad memory` end to end: JSON fields, the issue's done-when figures, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedquad.cli.main import main


def run_json(capsys, *args) -> dict:
    assert main(["memory", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_memory_json_fields_on_tiny_llama(capsys):
    out = run_json(capsys, "--model", "tiny-llama", "--depth", "3", "--quant-layers", "2", "--bits", "4",
                   "--batch-size", "4", "--seq-len", "32")
    for key in ("raw_bytes", "kept_bytes", "blocks", "step_s", "peak_rss_bytes", "grad_cosine_min", "grad_cosine_mean"):
        assert key in out
    assert [b["index"] for b in out["blocks"]] == [0, 1, 2, 3]
    assert [b["trainable"] for b in out["blocks"]] == [False, True, True, True]
    assert [b["quantized"] for b in out["blocks"]] == [False, True, True, False]
    assert out["raw_bytes"] == sum(b["raw_bytes"] for b in out["blocks"])
    assert out["blocks"][0]["raw_bytes"] == 0
    assert out["kept_bytes"] < out["raw_bytes"]
    # the whole step's peak, measured in this plan's own steps, next to the cost model's figure
    assert out["measured_step_peak_bytes"] > out["kept_bytes"] + out["outside_bytes"]
    assert out["predicted_step_peak_bytes"] > 0 and "estimate" in out["predicted_from"]


@pytest.mark.integration  # two tiny-llama-lm commands with their step-peak steps: ~20 s
def test_memory_step_peak_shows_the_plans_saving(capsys):
    """Each plan's own step: quantizing every block lowers the measured step peak (the process-wide
    peak RSS could not show it), and the prediction from the decoder estimate is within 5%."""
    common = ["--model", "tiny-llama-lm", "--task", "causal-lm", "--batch-size", "8", "--seq-len", "64",
              "--repeats", "1"]
    plain = run_json(capsys, *common, "--depth", "4")
    quantized = run_json(capsys, *common, "--depth", "4", "--quant-layers", "4", "--bits", "4")
    assert quantized["measured_step_peak_bytes"] < plain["measured_step_peak_bytes"]
    for out in (plain, quantized):
        assert out["predicted_step_peak_bytes"] == pytest.approx(out["measured_step_peak_bytes"], rel=0.05)


@pytest.mark.integration  # three real MiniLM steps with repeats: ~20 s
def test_memory_done_when_figures_on_minilm(capsys):
    common = ["--model", "minilm", "--bits", "8", "--batch-size", "16", "--seq-len", "64"]
    full = run_json(capsys, *common, "--depth", "6", "--quant-layers", "6")
    assert full["kept_bytes"] / full["raw_bytes"] <= 0.30
    assert full["grad_cosine_min"] >= 0.999
    plain = run_json(capsys, *common, "--depth", "6", "--quant-layers", "0")
    assert plain["kept_bytes"] == plain["raw_bytes"]
    assert plain["grad_cosine_min"] == 1.0
    one = run_json(capsys, *common, "--depth", "1", "--quant-layers", "0")
    assert plain["raw_bytes"] == pytest.approx(6 * one["raw_bytes"], rel=0.05)


def test_memory_sweep_lists_every_plan(capsys):
    assert main(["memory", "--model", "tiny-bert", "--sweep", "--batch-size", "2", "--seq-len", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    plans = {(p["plan"]["depth"], p["plan"]["quant_layers"]) for p in out["plans"]}
    assert plans == {(d, q) for d in range(5) for q in range(d + 1)}


def test_memory_table_output(capsys):
    assert main(["memory", "--model", "tiny-bert", "--depth", "2", "--quant-layers", "1",
                 "--batch-size", "2", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "gradient cosine" in out


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own checks
        return exc.code


@pytest.mark.parametrize("args,needle", [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "tiny-bert", "--depth", "9"], "outside 0..4"),
    (["--model", "tiny-bert", "--depth", "2", "--quant-layers", "3"], "cannot exceed depth"),
    (["--model", "tiny-bert", "--bits", "3"], "bits must be 4 or 8"),
    (["--model", "tiny-bert", "--batch-size", "0"], "positive integer"),
    (["--model", "tiny-bert", "--seq-len", "-4"], "positive integer"),
    (["--model", "tiny-bert", "--depth", "-1"], "non-negative"),
    (["--model", "tiny-bert", "--seq-len", "100000"], "exceeds the model's context"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    assert exit_code(["memory", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_unreadable_model_directory(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{ not json")
    assert main(["memory", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot read a model from directory" in err and "Traceback" not in err
    assert main(["memory", "--model", str(tmp_path / "missing")]) == 2


def test_console_script_exit_status():
    proc = subprocess.run([sys.executable, "-m", "fedquad.cli.main", "memory", "--model", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model" in proc.stderr
