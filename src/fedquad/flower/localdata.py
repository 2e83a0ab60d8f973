"""A SuperNode's own data: read, tokenised (cached on disk), summarised -- never sent.

In a deployment every device trains on data it holds (node_config `data-path`); the server
cannot name or shard it. The node reads it with the run's column settings and the server's
label vocabulary (sent with every message, so a node whose file lacks some classes still numbers
every class as the server does and builds the same head), and reports only a summary in the
profile query: example count, label histogram, and the token-length distribution
(`length_p50_tokens`, `length_p90_tokens`, `length_max_tokens`: per example, after truncation to
`max-len`; the cost model uses them for shape-dependent memory and time).

The local evaluation split (for Flower's federated evaluation) is, in this order: `eval-path`
(a file), a seeded held-out share `eval-fraction` of the training file (never trained on), or
the `dev` / `validation` / `test` split of a data folder; a node without one does not evaluate
and never loads evaluation data. Tokens are cached under the node's `cache-dir` by content hash
(`fedquad.datasets.batching.cached_tokens`), so a round's ClientApp process reads them instead
of tokenising again.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from fedquad.errors import FedquadError

CACHE_ENV = "FEDQUAD_NODE_CACHE"
LENGTH_FIELDS = ("length_p50_tokens", "length_p90_tokens", "length_max_tokens")


def cache_dir(settings: Mapping[str, Any]) -> str:
    """The node's cache folder: `cache-dir`, else $FEDQUAD_NODE_CACHE, else ~/.cache/fedquad/node."""
    folder = settings.get("cache-dir") or os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "fedquad", "node")
    return os.path.abspath(os.path.expanduser(folder))


def server_vocabulary(config) -> dict:
    """What a node needs to read its data as the server does: the model head, `num_labels` and
    (classification) the label vocabulary of the run's task. JSON-able; sent in every message."""
    from fedquad.datasets import load_task_data
    from fedquad.sim.workload import data_settings
    from fedquad.tasks import task_kind

    train = load_task_data(config.task, data_settings(config), data_root=config.data_root).train
    kind = task_kind(train)
    out = {"head": kind.head, "num_labels": int(kind.model_num_labels(train)), "label_names": None,
           "label_values": None}
    if kind.has_classes:
        out["label_names"] = list(train.label_names)
        out["label_values"] = None if train.label_values is None else list(train.label_values)
    return out


def _columns(config, vocabulary: Mapping[str, Any]):
    from fedquad.datasets import Columns
    if vocabulary.get("label_names") is None:  # causal LM: its own format rules, no columns
        return None
    return Columns(text=config.text_column, text_pair=config.text_pair_column, label=config.label_column,
                   label_names=tuple(vocabulary["label_names"]),
                   label_values=None if vocabulary.get("label_values") is None else tuple(vocabulary["label_values"]),
                   label_source="the server's training data")


def _path(settings: Mapping[str, Any], key: str) -> str:
    path = os.path.abspath(os.path.expanduser(str(settings[key])))
    if not os.path.exists(path):
        raise FedquadError(f"node_config {key} {path}: no such file or folder")
    return path


def _folder_eval_file(path: str, config) -> str | None:
    from fedquad.datasets import DEFAULT_EVAL_SPLITS
    from fedquad.datasets.tasks import split_file
    if not os.path.isdir(path):
        return None
    for split in ([config.eval_split] if config.eval_split else DEFAULT_EVAL_SPLITS):
        found = split_file(path, split)
        if found is not None:
            return found
    return None


def evaluates(settings: Mapping[str, Any], config) -> bool:
    """Whether this node has a local evaluation split."""
    if settings.get("eval-path") or settings.get("eval-fraction"):
        return True
    return settings.get("data-path") is not None and _folder_eval_file(_path(settings, "data-path"), config) is not None


def read_train(config, settings: Mapping[str, Any], vocabulary: Mapping[str, Any]):
    """The node's training data (the held-out share removed when `eval-fraction` is set)."""
    from fedquad.datasets import holdout_split, load_task
    data = load_task(_path(settings, "data-path"), "train", columns=_columns(config, vocabulary))
    if len(data) == 0:
        raise FedquadError(f"node_config data-path {settings['data-path']}: no examples")
    if settings.get("eval-fraction"):
        keep, _held = holdout_split(data.labels, float(settings["eval-fraction"]), config.seed)
        data = data.subset(keep.tolist())
    return data


def read_eval(config, settings: Mapping[str, Any], vocabulary: Mapping[str, Any]):
    """The node's local evaluation data (FedquadError when it has none)."""
    from fedquad.datasets import holdout_split, load_task
    cols = _columns(config, vocabulary)
    if settings.get("eval-path"):
        return load_task(_path(settings, "eval-path"), "dev", columns=cols)
    if settings.get("eval-fraction"):
        data = load_task(_path(settings, "data-path"), "train", columns=cols)
        _keep, held = holdout_split(data.labels, float(settings["eval-fraction"]), config.seed)
        return data.subset(held.tolist())
    found = _folder_eval_file(_path(settings, "data-path"), config) if settings.get("data-path") else None
    if found is None:
        raise FedquadError("this node has no local evaluation split (node_config eval-path or eval-fraction)")
    return load_task(found, "dev", columns=cols)


def summary(data, tokens, vocabulary: Mapping[str, Any]) -> dict:
    """What the node tells the server about its data: counts and token lengths, no examples."""
    lengths = np.asarray(tokens.lengths)
    out = {"examples": int(len(tokens)), "label_histogram": None, "labels_present": None,
           **{k: 0 for k in LENGTH_FIELDS}}
    if len(lengths):
        out.update(length_p50_tokens=float(np.percentile(lengths, 50)),
                   length_p90_tokens=float(np.percentile(lengths, 90)), length_max_tokens=int(lengths.max()))
    if vocabulary.get("label_names") is not None:
        histogram = np.bincount(np.asarray(data.labels), minlength=int(vocabulary["num_labels"]))
        out["label_histogram"] = [int(x) for x in histogram]
        out["labels_present"] = int((histogram > 0).sum())
    return out
