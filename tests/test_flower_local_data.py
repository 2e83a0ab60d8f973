"""A SuperNode's own data (node_config data-path): settings, reading with the server's vocabulary,
the summary it reports, the token cache, the round report's node fields, and the worker socket.

Fast tier: no Flower processes (the loopback federation with local data is in
tests/test_deploy_parity.py, marked integration)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedquad.errors import FedquadError
from fedquad.sim.config import SimConfig

CONFIG = SimConfig(model="tiny-bert", task="synthetic", max_len=24, seed=3)


def write_csv(path, rows, header=("sentence", "label")) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def vocabulary():
    from fedquad.flower.localdata import server_vocabulary
    return server_vocabulary(CONFIG)


def test_node_config_data_keys_are_checked():
    from fedquad.flower.node import node_settings
    s = node_settings({"data-path": "/data/own.csv", "eval-fraction": "0.25", "worker-socket": "/tmp/w.sock"})
    assert s["data-path"] == "/data/own.csv" and s["eval-fraction"] == 0.25 and s["worker-socket"] == "/tmp/w.sock"
    assert s["partition-id"] is None
    for bad, match in (({"data-path": "a.csv", "partition-id": 0, "num-partitions": 2}, "not both"),
                       ({"data-path": "a.csv", "eval-fraction": 1.5}, "between 0 and 1"),
                       ({"data-path": "a.csv", "eval-fraction": 0.2, "eval-path": "b.csv"}, "choose one"),
                       ({"eval-path": "b.csv"}, "need data-path")):
        with pytest.raises(FedquadError, match=match):
            node_settings(bad)


def test_server_vocabulary_names_the_head_and_every_class(vocabulary):
    assert vocabulary == {"head": "seq-cls", "num_labels": 2, "label_names": ["negative", "positive"],
                          "label_values": None}


def test_a_node_with_one_class_numbers_it_as_the_server_does(tmp_path, vocabulary):
    """A node whose file only holds 'positive' still calls it class 1 and reports both classes."""
    from fedquad.flower.localdata import LENGTH_FIELDS, evaluates, read_train, summary
    from fedquad.flower.nodework import local_model, local_tokens
    texts = ["a fine film .", "truly lovely work , a joy to watch from start to end .", "great ."]
    path = write_csv(tmp_path / "own.csv", [(t, "positive") for t in texts])
    settings = {"data-path": path, "cache-dir": str(tmp_path / "cache")}
    data = read_train(CONFIG, settings, vocabulary)
    assert list(data.labels) == [1, 1, 1] and data.label_names == ("negative", "positive")
    adapted = local_model(CONFIG, vocabulary)
    data, tokens = local_tokens(CONFIG, settings, vocabulary, adapted)
    report = summary(data, tokens, vocabulary)
    lengths = np.diff(tokens.offsets)
    assert report["examples"] == 3 and report["label_histogram"] == [0, 3] and report["labels_present"] == 1
    assert set(LENGTH_FIELDS) <= set(report)
    assert report["length_max_tokens"] == int(lengths.max()) <= CONFIG.max_len
    assert report["length_p50_tokens"] == float(np.percentile(lengths, 50))
    assert report["length_p50_tokens"] <= report["length_p90_tokens"] <= report["length_max_tokens"]
    assert not evaluates(settings, CONFIG)


def test_tokens_are_cached_on_disk_by_content(tmp_path, vocabulary):
    from fedquad.datasets import clear_token_cache
    from fedquad.flower.nodework import local_model, local_tokens
    rows = [(f"example number {i} is {'good' if i % 2 else 'bad'} .", ["negative", "positive"][i % 2])
            for i in range(20)]
    settings = {"data-path": write_csv(tmp_path / "own.csv", rows), "cache-dir": str(tmp_path / "cache")}
    adapted = local_model(CONFIG, vocabulary)
    clear_token_cache()
    _data, first = local_tokens(CONFIG, settings, vocabulary, adapted)
    cached = sorted(os.listdir(tmp_path / "cache"))
    assert len(cached) == 1 and cached[0].startswith("tokens-")
    clear_token_cache()  # a new ClientApp process: only the disk cache is left
    _data, again = local_tokens(CONFIG, settings, vocabulary, adapted)
    assert sorted(os.listdir(tmp_path / "cache")) == cached
    assert np.array_equal(first.ids, again.ids) and np.array_equal(first.offsets, again.offsets)
    write_csv(tmp_path / "own.csv", rows[:-1])  # new content, same path: a new cache entry
    clear_token_cache()
    local_tokens(CONFIG, settings, vocabulary, adapted)
    assert len(os.listdir(tmp_path / "cache")) == 2


def test_local_evaluation_splits(tmp_path, vocabulary):
    from fedquad.flower.localdata import evaluates, read_eval, read_train
    rows = [(f"sentence {i} .", ["negative", "positive"][i % 2]) for i in range(20)]
    path = write_csv(tmp_path / "own.csv", rows)
    held = {"data-path": path, "eval-fraction": 0.25}
    train, evaluation = read_train(CONFIG, held, vocabulary), read_eval(CONFIG, held, vocabulary)
    assert evaluates(held, CONFIG) and len(train) == 15 and len(evaluation) == 5
    assert not set(train.texts) & set(evaluation.texts)  # never trained on
    folder = tmp_path / "folder"
    write_csv(folder / "train.csv", rows[:12])
    write_csv(folder / "dev.csv", rows[12:])
    settings = {"data-path": str(folder)}
    assert evaluates(settings, CONFIG) and len(read_train(CONFIG, settings, vocabulary)) == 12
    assert len(read_eval(CONFIG, settings, vocabulary)) == 8
    with pytest.raises(FedquadError, match="no local evaluation split"):
        read_eval(CONFIG, {"data-path": path}, vocabulary)


def test_missing_or_malformed_data_is_a_clear_error(tmp_path, vocabulary):
    from fedquad.flower.localdata import read_train
    with pytest.raises(FedquadError, match="no such file or folder"):
        read_train(CONFIG, {"data-path": str(tmp_path / "nope.csv")}, vocabulary)
    bad_label = write_csv(tmp_path / "bad.csv", [("fine .", "positive"), ("hmm .", "maybe")])
    with pytest.raises(FedquadError, match="bad.csv"):
        read_train(CONFIG, {"data-path": bad_label}, vocabulary)
    no_columns = write_csv(tmp_path / "cols.csv", [("x", "y")], header=("what", "ever"))
    with pytest.raises(FedquadError, match="cols.csv"):
        read_train(CONFIG, {"data-path": no_columns}, vocabulary)


def test_node_fields_keep_only_finite_timings():
    from fedquad.flower.nodereport import node_fields
    timing = {"clientapp_start_s": 1.0, "model_load_s": 0.5, "train_s": 2.0, "round_s": 4.0, "non_training_s": 2.0,
              "worker": "relayed"}
    out = node_fields({"timing": timing}, {"data-path": "x.csv", "examples": 7, "length_p90_tokens": 11.0})
    assert out["round_overhead_s"] == 2.0 and out["node_timing"]["worker"] == "relayed"
    assert out["local_examples"] == 7 and out["length_p90_tokens"] == 11.0
    assert node_fields({"timing": {**timing, "round_s": float("nan")}}, {}) == {}
    assert node_fields({"timing": "fast"}, {}) == {} and node_fields({}, {}) == {}


def test_worker_answers_on_its_socket_and_cleans_up(tmp_path):
    from fedquad.flower.worker import ask
    sock = tmp_path / "w.sock"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fedquad.flower.worker", "--socket", str(sock)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (sock.exists() and (tmp_path / "w.sock.key").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.1)
        assert oct((tmp_path / "w.sock.key").stat().st_mode & 0o777) == "0o600"
        reply, problem = ask(str(sock), {"kind": "ping"})
        assert problem == "" and reply["result"]["pid"] == proc.pid
        reply, _ = ask(str(sock), {"kind": "bogus", "node_config": {}, "global": []})
        assert "unknown request kind" in reply["error"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0 and not sock.exists() and not (tmp_path / "w.sock.key").exists()
    reply, problem = ask(str(sock), {"kind": "ping"})
    assert reply is None and problem.startswith("unreachable")
