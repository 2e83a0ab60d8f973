"""Data for federated fine-tuning: loaders, a generated task, device partitions and batches.

`load_task(name_or_path, split)` is the one entry point the simulator and CLI use:

* `sst2`, `mrpc`, `rte`, `ag_news`: the benchmark folders under a data root (`shared/data`);
  see each folder's PROVENANCE.md for the file formats handled here;
* `synthetic`: the generated task of `fedquad.datasets.synthetic` (no files needed);
* `synthetic-lm`: the generated causal-LM task of `fedquad.datasets.causal` (no files needed);
* a directory holding `<split>.tsv|.csv|.jsonl`, or a single data file (split ignored).
  A JSON Lines file whose first object has `prompt`/`response`, or `text` without a label, is
  causal-LM data (`CausalLMData`); everything else is classification (`TextClassificationData`).

Each task names its evaluation split (`TASKS[name].eval_split`): AG News has no dev split, its
official test split is used instead.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from fedquad.datasets.batching import (BatchConfig, TokenizedData, clear_token_cache, count_batches,
                                       iterate_batches, tokenize)
from fedquad.datasets.causal import (CausalLMData, CausalTokenizedData, SyntheticLMConfig, constant_answer_accuracy,
                                     generate_lm_split, load_causal_jsonl, looks_causal_jsonl)
from fedquad.datasets.loaders import (Columns, TextClassificationData, load_csv, load_file, load_jsonl,
                                      load_table, load_tsv)
from fedquad.datasets.partition import PartitionConfig, label_histograms, partition
from fedquad.datasets.synthetic import SyntheticConfig, bayes_accuracy, generate_split, make_synthetic_task
from fedquad.errors import FedquadError

DATA_ROOT_ENV = "FEDQUAD_DATA_ROOT"


@dataclass(frozen=True)
class TaskSpec:
    folder: str = field(metadata={"help": "folder under the data root"})
    splits: dict = field(metadata={"help": "split name -> (file, loader options)"})
    eval_split: str = field(default="dev", metadata={"help": "split used for central evaluation"})
    columns: Columns = field(default=Columns(), metadata={"help": "column/label spec shared by the splits"})


AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")  # classes.txt, in index order
TASKS = {
    "sst2": TaskSpec("sst2", {"train": ("train.tsv", {}), "dev": ("dev.tsv", {})},
                     columns=Columns(label_names=("negative", "positive"))),
    # HF glue/rte convention: 0 = entailment, 1 = not_entailment.
    "rte": TaskSpec("rte", {"train": ("train.tsv", {}), "dev": ("dev.tsv", {})},
                    columns=Columns(label_names=("entailment", "not_entailment"))),
    # MRPC train is rebuilt from the original MSRP file (see _load_mrpc_train); test has labels.
    "mrpc": TaskSpec("mrpc", {"train": ("msr_paraphrase_train.txt", {}), "dev": ("dev.tsv", {}),
                              "test": ("msr_paraphrase_test.txt", {})},
                     columns=Columns(label_names=("not_equivalent", "equivalent"))),
    # The train file is ALPS's description-only subset; test.csv is cut to its description column to match.
    "ag_news": TaskSpec("ag_news", {
        "train": ("train_subset_alps_dev.tsv", {"has_header": False, "quoted": True,
                                               "columns": Columns(text=0, label=1, label_names=AG_NEWS_CLASSES)}),
        "test": ("test.csv", {"columns": Columns(text=2, label=0, label_names=AG_NEWS_CLASSES,
                                                 label_values=("1", "2", "3", "4"))})},
        eval_split="test"),
}
ALIASES = {"sst-2": "sst2", "sst_2": "sst2", "ag-news": "ag_news", "agnews": "ag_news"}


def resolve_data_root(data_root: str | os.PathLike | None = None) -> str:
    """`data_root`, else $FEDQUAD_DATA_ROOT, else ./shared/data or ../shared/data (repo checkouts)."""
    candidates = [os.fspath(data_root)] if data_root is not None else (
        [os.environ[DATA_ROOT_ENV]] if os.environ.get(DATA_ROOT_ENV) else
        [os.path.join("shared", "data"), os.path.join("..", "shared", "data")])
    for c in candidates:
        if os.path.isdir(c):
            return c
    raise FedquadError(f"data root not found (tried {', '.join(candidates)}); pass a data root or set {DATA_ROOT_ENV}")


def load_task(name_or_path: str | os.PathLike, split: str = "train", *,
              data_root: str | os.PathLike | None = None,
              synthetic: SyntheticConfig | SyntheticLMConfig | None = None) -> TextClassificationData | CausalLMData:
    """`synthetic` configures the generated task: a SyntheticConfig for `synthetic`, a
    SyntheticLMConfig for `synthetic-lm`."""
    name = ALIASES.get(str(name_or_path).lower(), str(name_or_path).lower())
    if name in ("synthetic", "synthetic-lm"):
        want = SyntheticConfig if name == "synthetic" else SyntheticLMConfig
        if synthetic is not None and not isinstance(synthetic, want):
            raise FedquadError(f"task {name} is configured by a {want.__name__}, got a {type(synthetic).__name__}")
        if name == "synthetic-lm":
            return generate_lm_split(synthetic or SyntheticLMConfig(), split)
        return generate_split(synthetic or SyntheticConfig(), split)[0]
    if name in TASKS:
        spec = TASKS[name]
        if split not in spec.splits:
            raise FedquadError(f"task {name} has no split {split!r}; splits: {', '.join(spec.splits)}")
        path = os.path.join(resolve_data_root(data_root), spec.folder, spec.splits[split][0])
        options = dict(spec.splits[split][1])
        cols = options.pop("columns", spec.columns)
        if name == "mrpc" and split == "train":
            return _load_mrpc_train(path, cols)
        return load_file(path, cols, **options)
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        for ext in (".tsv", ".csv", ".jsonl"):
            if os.path.isfile(os.path.join(path, split + ext)):
                return _load_any(os.path.join(path, split + ext))
        raise FedquadError(f"{path}: no {split}.tsv, {split}.csv or {split}.jsonl in this folder")
    if os.path.exists(path):
        return _load_any(path)
    raise FedquadError(f"unknown task {str(name_or_path)!r}: not one of "
                       f"{', '.join(['synthetic', 'synthetic-lm', *TASKS])}, "
                       "and no such file or folder")


def _load_any(path: str) -> TextClassificationData | CausalLMData:
    if os.path.splitext(path)[1].lower() in (".jsonl", ".json", ".ndjson") and looks_causal_jsonl(path):
        return load_causal_jsonl(path)
    return load_file(path)


def _load_mrpc_train(path: str, cols: Columns) -> TextClassificationData:
    """Canonical GLUE MRPC train (3,668 pairs): the MSRP train file minus the pairs in dev_ids.tsv.

    The shared `train.tsv` lacks one pair (IDs 2750203/2750153), see mrpc/PROVENANCE.md.
    """
    full = load_file(path, cols)
    ids_path = os.path.join(os.path.dirname(path), "dev_ids.tsv")
    if not os.path.isfile(ids_path):
        raise FedquadError(f"{ids_path}: no such file (needed to split MRPC train from dev)")
    with open(ids_path, encoding="utf-8-sig", newline="") as fh:
        dev_ids = {tuple(r) for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if r}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if r][1:]
    keep = [i for i, r in enumerate(rows) if (r[1], r[2]) not in dev_ids]
    return full.subset(keep)


__all__ = [
    "AG_NEWS_CLASSES", "BatchConfig", "CausalLMData", "CausalTokenizedData", "Columns", "PartitionConfig",
    "SyntheticConfig", "SyntheticLMConfig", "TASKS", "TaskSpec", "TextClassificationData", "TokenizedData",
    "bayes_accuracy", "clear_token_cache", "constant_answer_accuracy", "count_batches", "generate_lm_split",
    "generate_split", "iterate_batches", "label_histograms", "load_causal_jsonl", "load_csv", "load_file",
    "load_jsonl", "load_table", "load_task", "load_tsv", "looks_causal_jsonl", "make_synthetic_task",
    "partition", "resolve_data_root", "tokenize",
]
