"""One classification data file, whatever its format: the loader is picked by the file's suffix.

The format modules (`loaders` for TSV/CSV, `jsonfiles`, `arrow` for Parquet) all build on the
column and label rules of `fedquad.datasets.loaders`; this module sits above them so that none
of them has to import another's loader.
"""

from __future__ import annotations

import os

from fedquad.datasets.arrow import load_parquet
from fedquad.datasets.jsonfiles import load_jsonl
from fedquad.datasets.loaders import Columns, TextClassificationData, _fail, load_csv, load_tsv


def load_file(path, columns: Columns = Columns(), **options) -> TextClassificationData:
    """Dispatch on the suffix: .tsv/.txt TSV, .csv CSV, .jsonl/.json/.ndjson JSON, .parquet Parquet."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in (".tsv", ".txt"):
        return load_tsv(path, columns, **options)
    if suffix == ".csv":
        return load_csv(path, columns, **options)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return load_jsonl(path, columns, **options)
    if suffix == ".parquet":
        return load_parquet(path, columns)
    raise _fail(os.fspath(path), f"unknown data file type {suffix!r}: use .tsv, .csv, .jsonl, .json or .parquet")
