"""Parquet files and saved Hugging Face datasets (`save_to_disk` folders), read with `datasets`.

Why `datasets` here and not for TSV/CSV/JSON: docs/design.md, "Reading data files". The loaded
table goes through the same column and label rules as every other format
(`loaders.table_to_data`); a `ClassLabel` label column supplies the class names.

Nothing is fetched and nothing is left behind: `load_dataset("parquet", data_files=...)` is the
packaged Parquet builder (local files, no hub), and its Arrow cache goes to a temporary folder
that is removed once the table is in memory, not to the user's `~/.cache/huggingface/datasets`.
`datasets` is imported only when such a file is read (it is an optional dependency,
`pip install 'fedquad[hf]'`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile

from fedquad.datasets.loaders import DEFAULT_LABEL_COLUMNS, Columns, TextClassificationData, table_to_data
from fedquad.errors import FedquadError


def _datasets():
    try:
        import datasets
    except ImportError:
        raise FedquadError("reading Parquet files and saved Hugging Face datasets needs the `datasets` package: "
                           "pip install 'fedquad[hf]'") from None
    return datasets


@contextlib.contextmanager
def _quiet(datasets):
    """No "Generating train split" bars and no logged copy of an error we report in one line
    ourselves; the user's settings are restored."""
    was, level = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if was:
            datasets.enable_progress_bars()


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def saved_splits(path: str | os.PathLike) -> list[str] | None:
    """Split names of a saved DatasetDict, or None for a single saved Dataset."""
    index = os.path.join(os.fspath(path), "dataset_dict.json")
    if not os.path.isfile(index):
        return None
    try:
        with open(index) as f:
            return [str(s) for s in json.load(f)["splits"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise FedquadError(f"{index}: not a readable dataset_dict.json") from None


def load_parquet(path: str | os.PathLike, columns: Columns = Columns()) -> TextClassificationData:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FedquadError(f"{path}: {'no such file' if not os.path.exists(path) else 'not a regular file'}")
    datasets = _datasets()
    with tempfile.TemporaryDirectory(prefix="fedquad-parquet-") as cache, _quiet(datasets):
        try:
            table = datasets.load_dataset("parquet", data_files=path, split="train", cache_dir=cache,
                                          keep_in_memory=True)
        except Exception as exc:  # pyarrow/datasets raise many types for a broken file
            raise FedquadError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return dataset_to_data(path, table, columns)


def load_saved(path: str | os.PathLike, split: str | None, columns: Columns = Columns()) -> TextClassificationData:
    """One split of a saved DatasetDict (`split` required), or a saved Dataset (`split` None)."""
    path = os.fspath(path)
    splits = saved_splits(path)
    if splits is not None and split not in splits:
        raise FedquadError(f"{path}: saved dataset has no split {split!r}; splits: {', '.join(splits)}")
    datasets = _datasets()
    with _quiet(datasets):
        try:
            loaded = datasets.load_from_disk(path, keep_in_memory=True)
        except Exception as exc:
            raise FedquadError(f"{path}: not a readable saved dataset ({type(exc).__name__})") from None
    if splits is not None:
        return dataset_to_data(f"{path} [{split}]", loaded[split], columns)
    return dataset_to_data(path, loaded, columns)


def dataset_to_data(source: str, table, columns: Columns) -> TextClassificationData:
    """A `datasets.Dataset` through the common column and label rules."""
    header = list(table.column_names)
    label = columns.label if isinstance(columns.label, str) else (
        header[columns.label] if isinstance(columns.label, int) and columns.label < len(header)
        else next((c for c in DEFAULT_LABEL_COLUMNS if c in header), None))
    feature = table.features.get(label) if label is not None else None
    if getattr(feature, "names", None) and columns.label_names is None and columns.label_values is None:
        columns = dataclasses.replace(columns, label_names=tuple(feature.names))
    data = table.to_dict()
    rows = [(f"row {i}", values) for i, values in enumerate(zip(*(data[c] for c in header)))]
    if not rows:
        raise FedquadError(f"{source}: has columns ({', '.join(header)}) but no rows")
    return table_to_data(source, header, rows, columns)
