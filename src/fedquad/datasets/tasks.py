"""Tasks: the built-in benchmark folders, the generated tasks, and the user's own data files.

`load_task_data(task, DataSettings(...))` gives a run its training data and its evaluation data,
and says where the evaluation data came from (`TaskData.eval_source`):

* built-in tasks (`sst2`, `mrpc`, `rte`, `ag_news`, under the data root) evaluate on their
  evaluation split (`TASKS[name].eval_split`; AG News has no dev split, its test split is used),
  or on `eval_split` / `eval_file`;
* a data folder holds `train.<ext>` and evaluates on `eval_split` (`<eval_split>.<ext>`), by
  default the first of `dev`, `validation`, `test` present; a saved Hugging Face DatasetDict
  folder is read the same way, by split name;
* a single data file, or a folder without an evaluation split, holds out a seeded, per-label
  share `eval_fraction` of its examples for evaluation (never trained on), unless `eval_file`
  names the evaluation data.

The evaluation data is read with the training data's label vocabulary, so a class has the same
index in both, and a label the training data never had is an error (docs/data.md).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

from fedquad.datasets.causal import CausalLMData
from fedquad.datasets.causal_jsonl import load_causal_jsonl, looks_causal_jsonl
from fedquad.datasets.files import load_file
from fedquad.datasets.loaders import Column, Columns, TextClassificationData, vocabulary_of
from fedquad.datasets.partition import holdout_split
from fedquad.datasets.synthetic import generate_split
from fedquad.datasets.synthetic_lm import generate_lm_split
from fedquad.errors import FedquadError

DATA_ROOT_ENV = "FEDQUAD_DATA_ROOT"
DEFAULT_EVAL_SPLITS = ("dev", "validation", "test")  # tried in this order in a data folder
DEFAULT_EVAL_FRACTION = 0.2
SPLIT_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
GENERATED = ("synthetic", "synthetic-lm")
Data = TextClassificationData | CausalLMData


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


@dataclass(frozen=True)
class DataSettings:
    """How a run reads its data: columns, label vocabulary and evaluation data (SimConfig fields)."""

    text_column: Column | None = field(default=None, metadata={"help": "text column (name or 0-based index)"})
    text_pair_column: Column | None = field(default=None, metadata={"help": "second-text column"})
    label_column: Column | None = field(default=None, metadata={"help": "label column (name or 0-based index)"})
    label_names: tuple[str, ...] | None = field(default=None, metadata={"help": "the label vocabulary, in order"})
    eval_split: str | None = field(default=None, metadata={"help": "evaluation split; None = the task's"})
    eval_file: str | None = field(default=None, metadata={"help": "a data file to evaluate on instead"})
    eval_fraction: float = field(default=DEFAULT_EVAL_FRACTION, metadata={
        "help": "share held out for evaluation where the data has no evaluation split"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out share"})

    @property
    def columns(self) -> Columns:
        return Columns(text=self.text_column, text_pair=self.text_pair_column, label=self.label_column,
                       label_names=self.label_names)

    @property
    def sets_columns(self) -> bool:
        return any(v is not None for v in (self.text_column, self.text_pair_column, self.label_column,
                                           self.label_names))


@dataclass(frozen=True, eq=False)
class TaskData:
    train: Data = field(metadata={"help": "training data"})
    evaluation: Data = field(metadata={"help": "central evaluation data, never trained on"})
    eval_source: str = field(metadata={"help": "what the evaluation data is, for configs, tables and logs"})


def _project_roots() -> list[str]:
    """shared/data beside or above a source checkout (src/fedquad/datasets/tasks.py): the data root
    follows the project, whatever the current directory."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    if not os.path.isfile(os.path.join(root, "pyproject.toml")):
        return []
    return [os.path.join(root, "shared", "data"), os.path.join(os.path.dirname(root), "shared", "data")]


def resolve_data_root(data_root: str | os.PathLike | None = None) -> str:
    """`data_root`, else $FEDQUAD_DATA_ROOT, else shared/data in or beside the source checkout, else
    ./shared/data or ../shared/data of the current directory."""
    candidates = [os.fspath(data_root)] if data_root is not None else (
        [os.environ[DATA_ROOT_ENV]] if os.environ.get(DATA_ROOT_ENV) else
        [*_project_roots(), os.path.join("shared", "data"), os.path.join("..", "shared", "data")])
    for c in candidates:
        if os.path.isdir(c):
            return c
    raise FedquadError(f"data root not found (tried {', '.join(candidates)}); set data_root or {DATA_ROOT_ENV}")


def _name(name_or_path) -> str:
    return ALIASES.get(str(name_or_path).lower(), str(name_or_path).lower())


def load_task(name_or_path: str | os.PathLike, split: str = "train", *,
              data_root: str | os.PathLike | None = None, synthetic=None,
              columns: Columns | None = None) -> Data:
    """One split of a task. `synthetic` configures a generated task (SyntheticConfig for
    `synthetic`, SyntheticLMConfig for `synthetic-lm`); `columns` reads one's own files (a folder's
    `<split>.<ext>`, or a single file, whose split is then ignored)."""
    name = _name(name_or_path)
    if name in GENERATED:
        from fedquad.datasets.synthetic import SyntheticConfig
        from fedquad.datasets.synthetic_lm import SyntheticLMConfig
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
        from fedquad.datasets.arrow import is_saved_dataset, load_saved, saved_splits
        if is_saved_dataset(path):
            return load_saved(path, split if saved_splits(path) is not None else None, columns or Columns())
        found = split_file(path, split)
        if found is None:
            raise FedquadError(f"{path}: no {' or '.join(split + s for s in SPLIT_SUFFIXES)} in this folder "
                               f"(it holds: {', '.join(sorted(os.listdir(path))) or 'nothing'})")
        return load_own(found, columns)
    if os.path.exists(path):
        return load_own(path, columns)
    raise FedquadError(f"unknown task {str(name_or_path)!r}: not one of {', '.join([*GENERATED, *TASKS])}, "
                       "and no such file or folder")


def split_file(folder: str, split: str) -> str | None:
    """`<split>.<ext>` in `folder`; two files of one split (train.tsv and train.csv) are refused."""
    found = [os.path.join(folder, split + s) for s in SPLIT_SUFFIXES if os.path.isfile(os.path.join(folder, split + s))]
    if len(found) > 1:
        raise FedquadError(f"{folder}: {' and '.join(os.path.basename(f) for f in found)} both hold split "
                           f"{split!r}: keep one")
    return found[0] if found else None


def load_own(path: str, columns: Columns | None = None) -> Data:
    """A data file of one's own: causal-LM JSON Lines when it looks like it and no column is set,
    else classification data read by the column rules."""
    if columns is None and os.path.splitext(path)[1].lower() in (".jsonl", ".json", ".ndjson") \
            and looks_causal_jsonl(path):
        return load_causal_jsonl(path)
    return load_file(path, columns or Columns())


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


# ------------------------------------------------------------------ training + evaluation data

def load_task_data(name_or_path: str | os.PathLike, settings: DataSettings = DataSettings(), *,
                   data_root: str | os.PathLike | None = None, synthetic=None) -> TaskData:
    """Training and evaluation data of a task, and where the evaluation data came from (module docstring)."""
    s = settings
    if s.eval_file is not None and s.eval_split is not None:
        raise FedquadError("set eval_file or eval_split, not both")
    if s.eval_split == "train":
        raise FedquadError("eval_split train is the training data: evaluating on it reports training accuracy; "
                           "name another split, or leave eval_split unset to hold out part of the training data")
    name = _name(name_or_path)
    if name in GENERATED:
        if s.sets_columns or s.eval_file is not None:
            raise FedquadError(f"task {name} is generated: the column, label_names and eval_file settings apply "
                               "to data files only")
        split = s.eval_split or "dev"
        return TaskData(load_task(name, "train", synthetic=synthetic), load_task(name, split, synthetic=synthetic),
                        f"{name} {split} split (generated)")
    if name in TASKS:
        if s.sets_columns and s.eval_file is None:
            raise FedquadError(f"task {name} is built in, its columns and labels are fixed: the column and "
                               "label_names settings apply to your own data files (a folder, a file, or eval_file)")
        if s.label_names is not None:
            raise FedquadError(f"task {name} is built in, its labels are fixed: label_names applies to your own data")
        train = load_task(name, "train", data_root=data_root)
        if s.eval_file is not None:
            return TaskData(train, _eval_file(train, s), f"{s.eval_file} (eval_file)")
        split = s.eval_split or TASKS[name].eval_split
        file = TASKS[name].splits.get(split, ("?",))[0]
        return TaskData(train, load_task(name, split, data_root=data_root), f"{name} {split} split ({file})")
    return _own_task_data(os.fspath(name_or_path), s)


def _own_task_data(path: str, s: DataSettings) -> TaskData:
    cols = s.columns if s.sets_columns else None
    if not os.path.exists(path):
        load_task(path)  # the unknown-task message
    from fedquad.datasets.arrow import is_saved_dataset, load_saved, saved_splits
    if os.path.isdir(path) and is_saved_dataset(path):
        splits = saved_splits(path)
        if splits is None:  # one saved Dataset: like a single file
            return _eval_from(load_saved(path, None, cols or Columns()), path, s, has_splits=False)
        if "train" not in splits:
            raise FedquadError(f"{path}: saved dataset has no split 'train'; splits: {', '.join(splits)}")
        train = load_saved(path, "train", cols or Columns())
        split = s.eval_split or next((x for x in DEFAULT_EVAL_SPLITS if x in splits), None)
        if split is not None and s.eval_file is None:
            if split not in splits:
                raise FedquadError(f"{path}: saved dataset has no split {split!r} (eval_split); "
                                   f"splits: {', '.join(splits)}")
            return TaskData(train, load_saved(path, split, _vocab(train, cols)), f"{path} [{split}] split")
        return _eval_from(train, path, s, has_splits=True)
    if os.path.isdir(path):
        train_file = split_file(path, "train")
        if train_file is None:
            load_task(path, "train")  # the missing-file message
        train = load_own(train_file, cols)
        if s.eval_file is None:
            split = s.eval_split or next((x for x in DEFAULT_EVAL_SPLITS if split_file(path, x)), None)
            if split is not None:
                found = split_file(path, split)
                if found is None:
                    present = sorted({os.path.splitext(f)[0] for f in os.listdir(path)
                                      if f.lower().endswith(SPLIT_SUFFIXES)})
                    raise FedquadError(f"{path}: no {split} split (eval_split): no "
                                       f"{' or '.join(split + x for x in SPLIT_SUFFIXES)}; splits here: "
                                       f"{', '.join(present) or 'none'}")
                return TaskData(train, _load_eval(found, train, cols), f"{found} ({split} split)")
        return _eval_from(train, train_file, s, has_splits=True)
    return _eval_from(load_own(path, cols), path, s, has_splits=False)


def _eval_from(train: Data, source: str, s: DataSettings, has_splits: bool) -> TaskData:
    """Evaluation data for training data without an evaluation split: eval_file, or a held-out share."""
    if s.eval_file is not None:
        return TaskData(train, _eval_file(train, s), f"{s.eval_file} (eval_file)")
    if s.eval_split is not None and not has_splits:
        raise FedquadError(f"{source} is a single data set without splits: eval_split does not apply; set "
                           "eval_file, or leave both unset to hold out eval_fraction of it")
    keep, held = holdout_split(train.labels, s.eval_fraction, s.seed)
    return TaskData(train.subset(keep), train.subset(held),
                    f"{100 * s.eval_fraction:g}% of {source} held out (seed {s.seed}, {len(held)} of {len(train)} "
                    "examples, not trained on)")


def _vocab(train: Data, cols: Columns | None) -> Columns:
    return vocabulary_of(train, cols or Columns()) if isinstance(train, TextClassificationData) else (cols or Columns())


def _load_eval(path: str, train: Data, cols: Columns | None) -> Data:
    if isinstance(train, CausalLMData):
        data = load_own(path, None)
        if not isinstance(data, CausalLMData):
            raise FedquadError(f"{path}: the training data is causal-LM (prompt/response or text) data, this "
                               "evaluation file is not")
        return data
    return load_file(path, vocabulary_of(train, cols or Columns()))


def _eval_file(train: Data, s: DataSettings) -> Data:
    if not os.path.isfile(s.eval_file):
        problem = "no such file" if not os.path.exists(s.eval_file) else "not a file"
        raise FedquadError(f"eval_file {s.eval_file}: {problem}")
    return _load_eval(s.eval_file, train, s.columns if s.sets_columns else None)
