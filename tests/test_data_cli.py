"""Own data through the real entry point (issue 13): misread files are one-line errors (exit 2),
and runs say what they evaluated on (history.json, the printed summary, the compare table)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import quick_profile
from fedquad.cli.main import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(n: int, labels=("neg", "pos"), prefix="review") -> str:
    return "".join(f"{prefix} number {i} is {labels[i % len(labels)]}ish,{labels[i % len(labels)]}\n"
                   for i in range(n))


def _fails(tmp_path, capsys, settings: list[str], needle: str) -> str:
    out = tmp_path / "run"
    assert main(["simulate", *[f"--set={s}" for s in settings], "--out", str(out), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0], err
    assert not (out / "checkpoint").exists()
    return err[0]


@pytest.mark.parametrize("name, content, settings, needle", [
    # an unrecognised header was read as an example, the columns swapped: exit 0 at 2% accuracy
    ("foo.csv", "foo,bar\n" + _rows(30), [], "no header naming a known column (first row: 'foo', 'bar')"),
    ("plain.csv", _rows(30), [], "first row: 'review number 0 is negish', 'neg'"),
    ("named.csv", "foo,bar\n" + _rows(30), ["text_column=review"], "no header naming 'review'"),
    ("hdr.csv", "sentence,label\n", [], "has a header (sentence, label) but no rows"),
    ("swap.csv", "label,text\n" + _rows(30), [], "holds 30 different values in 30 rows"),
    ("one.csv", "text,label\n" + _rows(30), ["eval_split=dev"], "single data set without splits"),
])
def test_misread_files_are_one_line_errors(tmp_path, capsys, name, content, settings, needle):
    data = tmp_path / name
    data.write_text(content)
    _fails(tmp_path, capsys, [f"task={data}", *settings], needle)


def test_folder_eval_split_and_labels_are_checked(tmp_path, capsys):
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + _rows(20))
    (folder / "test.csv").write_text("text,label\n" + _rows(4, labels=("pos", "meh")))
    _fails(tmp_path, capsys, [f"task={folder}", "eval_split=dev"], "no dev split (eval_split)")
    _fails(tmp_path, capsys, [f"task={folder}"], "test.csv:3: label 'meh' is not one of the labels of")
    _fails(tmp_path, capsys, [f"task={folder}", "eval_split=train"], "eval_split train is the training data")
    _fails(tmp_path, capsys, [f"task={folder}", "eval_fraction=1.5"], "eval_fraction")
    _fails(tmp_path, capsys, ["task=sst2", "label_column=stars"], "task sst2 is built in")


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    return quick_profile(tmp_path_factory.mktemp("profile"), "tiny-bert", 8, 24)


def _run_settings(task, profile) -> list[str]:
    return [f"--set={s}" for s in (f"task={task}", "model=tiny-bert", f"profile={profile}", "max_len=24",
                                   "batch_size=8", "scenario=jetson-headroom", "clients_per_round=2", "rounds=1",
                                   "local_steps=1", "train_examples=null", "eval_every=1")]


def test_example_folder_runs_with_a_test_split(tmp_path, capsys, tiny_profile):
    """examples/data/reviews: train.csv + test.csv, a header the rules do not guess (id,review,sentiment)."""
    task = os.path.join(REPO, "examples", "data", "reviews")
    out = tmp_path / "run"
    args = ["simulate", *_run_settings(task, tiny_profile), "--set=text_column=review",
            "--set=label_column=sentiment", "--set=eval_split=test", "--out", str(out), "--quiet"]
    assert main(args) == 0
    source = os.path.join(task, "test.csv") + " (test split)"
    assert f"evaluated on {source}" in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert history[0]["eval_source"] == source and history[0]["eval"]["examples"] == 16
    config = json.loads((out / "config.json").read_text())
    assert (config["text_column"], config["label_column"], config["eval_split"]) == ("review", "sentiment", "test")


def test_single_file_compare_says_it_holds_out(tmp_path, capsys, tiny_profile):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + _rows(60))
    out = tmp_path / "cmp"
    assert main(["compare", *_run_settings(data, tiny_profile), "--strategies", "fedquad,fedlora",
                 "--out", str(out), "--quiet"]) == 0
    source = f"20% of {data} held out (seed 0, 12 of 60 examples, not trained on)"
    report = json.loads((out / "comparison.json").read_text())
    assert report["eval_source"] == source and report["config"]["eval_fraction"] == 0.2
    assert f"Evaluated on: {source}." in (out / "comparison.md").read_text()
    assert json.loads((out / "fedlora" / "history.json").read_text())[0]["eval"]["examples"] == 12
