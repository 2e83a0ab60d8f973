"""Long steps say what they do on stderr (never on stdout), and are silent under --quiet/--json;
loading a model prints no transformers progress bar and no FutureWarning."""

from __future__ import annotations

import json
import warnings

import pytest

from fedquad.cli.main import main
from fedquad.sim.progress import StepProgress


def test_step_progress_off_a_terminal_prints_a_few_plain_lines_on_stderr(capsys):
    with StepProgress("measuring", total=100) as bar:
        for _ in range(100):
            bar()
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "measuring: 100 steps"
    assert lines[-1].startswith("measuring: 100/100 steps")
    assert 2 <= len(lines) <= 12  # one per tenth, not one per step


def test_step_progress_disabled_prints_nothing(capsys):
    with StepProgress("measuring", total=5, enabled=False) as bar:
        for _ in range(5):
            bar()
    assert capsys.readouterr() == ("", "")


PROFILE_ARGS = ["profile", "--model", "tiny-bert", "--batch-size", "2", "--seq-len", "8", "--repeats", "1",
                "--warmup", "0"]


@pytest.mark.integration  # two real profiles (tiny-bert): seconds, more on a busy machine
def test_profile_shows_progress_and_quiet_silences_it(tmp_path, capsys):
    assert main(PROFILE_ARGS + ["--out", str(tmp_path / "p.json")]) == 0
    out, err = capsys.readouterr()
    assert "profiling tiny-bert:" in err and "steps" in err
    assert "profiling" not in out
    assert main(PROFILE_ARGS + ["--out", str(tmp_path / "q.json"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""


def test_memory_sweep_shows_progress_but_not_with_json(capsys):
    # progress only: the step peaks (two more steps per plan) are tested in test_cli_memory.py
    args = ["memory", "--model", "tiny-bert", "--batch-size", "2", "--seq-len", "8", "--sweep", "--no-step-peak"]
    assert main(args) == 0
    assert "measuring every plan of tiny-bert" in capsys.readouterr().err
    assert main(args + ["--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out)["plans"]
    assert main(args + ["--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_a_run_without_a_profile_says_it_measures_one(tmp_path, capsys):
    from fedquad.models import load_model
    from fedquad.sim.config import SimConfig
    from fedquad.sim.workload import resolve_profile

    config = SimConfig(model="tiny-bert", profile=None, batch_size=2, max_len=8)
    adapted = load_model("tiny-bert", with_tokenizer=False)
    profile = resolve_profile(config, adapted, str(tmp_path), repeats=1, warmup=0)
    err = capsys.readouterr().err
    assert "no profile configured: measuring one for tiny-bert" in err
    assert "profiling tiny-bert:" in err
    assert (tmp_path / "profile.json").is_file() and profile.num_blocks == adapted.num_blocks
    resolve_profile(config, adapted, None, repeats=1, warmup=0, show_progress=False)
    assert capsys.readouterr().err == ""


def test_loading_a_model_prints_no_bar_and_no_future_warning(capfd):
    from fedquad.models import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model("minilm", with_tokenizer=False)  # real weights from disk: the case with a bar
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    assert "Loading weights" not in capfd.readouterr().err
