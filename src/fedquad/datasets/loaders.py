"""Text-classification data and its file loaders (GLUE-style TSV, CSV, JSON Lines).

Every loader returns a `TextClassificationData`. Errors a user can cause (missing file, malformed
line, unknown column, empty file, unknown label) are one-line `FedquadError`s naming the file.

Label rules, the same for every format:
* `label_values` given: the raw label `label_values[i]` becomes `i` (AG News: "1".."4" -> 0..3).
* otherwise, labels that all read as non-negative integers are used as they are;
* otherwise string labels map to their position in `label_names` when given, else to their
  position in the sorted set of values seen (deterministic, independent of row order).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

import numpy as np

from fedquad.errors import FedquadError

Column = Union[str, int]

# Column names tried, in order, when a column is not given. They cover GLUE (SST-2, RTE, MRPC's
# `#1 String`/`Quality`, QNLI/QQP style) and the common HF-datasets JSON field names. First
# columns of pairs come first: QNLI has both `question` and `sentence`, and is a pair task.
DEFAULT_TEXT_COLUMNS = ("sentence1", "#1 String", "question1", "question", "premise", "sentence", "text")
DEFAULT_PAIR_COLUMNS = {"sentence1": "sentence2", "#1 String": "#2 String", "question": "sentence",
                        "question1": "question2", "premise": "hypothesis", "text": "text_pair"}
DEFAULT_LABEL_COLUMNS = ("label", "Quality", "labels", "gold_label")


def checked_labels(labels, count: int, names, source: str, what: str) -> np.ndarray:
    """Labels as a read-only int64 array, one per example, each the index of an entry of `names`.

    Read-only because partitions and token caches share the array: nobody may edit it in place."""
    labels = np.asarray(labels, dtype=np.int64)
    labels.setflags(write=False)
    if labels.shape != (count,):
        raise ValueError(f"{count} examples but {what}s of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise FedquadError(f"{source or 'data'}: {what} {int(labels.max())} has no name "
                           f"({what} names: {', '.join(names)})")
    return labels


def hash_text_sequences(h, sequences) -> None:
    """Feed sequences of strings into hash `h`, length-prefixed (sequence and string), so that
    ("ab", "c") and ("a", "bc") hash differently. The datasets' cache keys are built on it."""
    for seq in sequences:
        h.update(len(seq).to_bytes(8, "little"))
        for t in seq:
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)


@dataclass(frozen=True, eq=False)
class TextClassificationData:
    """Texts (or text pairs) with integer labels 0..num_labels-1. Immutable; `labels` is read-only."""

    texts: tuple[str, ...] = field(metadata={"help": "first (or only) text of each example"})
    labels: np.ndarray = field(metadata={"help": "int64 class index of each example"})
    label_names: tuple[str, ...] = field(metadata={"help": "name of class i at position i"})
    text_pairs: tuple[str, ...] | None = field(default=None, metadata={"help": "second text of each pair, or None"})
    source: str = field(default="", metadata={"help": "where the data came from, for messages"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        if self.text_pairs is not None:
            object.__setattr__(self, "text_pairs", tuple(self.text_pairs))
            if len(self.text_pairs) != len(self.texts):
                raise ValueError(f"{len(self.texts)} texts but {len(self.text_pairs)} text pairs")
        object.__setattr__(self, "labels", checked_labels(self.labels, len(self.texts), self.label_names,
                                                          self.source, "label"))

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.text_pairs is not None

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the content (texts, pairs, labels): a cache key that follows the data, not the path."""
        h = hashlib.sha256()
        hash_text_sequences(h, (self.texts, self.text_pairs or ()))
        h.update(b"pairs" if self.is_pair else b"single")
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def subset(self, indices: Iterable[int]) -> "TextClassificationData":
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        return TextClassificationData(
            texts=tuple(self.texts[i] for i in idx), labels=self.labels[idx], label_names=self.label_names,
            text_pairs=None if self.text_pairs is None else tuple(self.text_pairs[i] for i in idx),
            source=self.source)

    def label_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_labels)


@dataclass(frozen=True)
class Columns:
    """Which columns hold the text, the optional second text and the label; None = format default."""

    text: Column | None = field(default=None, metadata={"help": "text column: header name or 0-based index"})
    text_pair: Column | None = field(default=None, metadata={
        "help": "second-text column; by default only looked for when `text` is also default"})
    label: Column | None = field(default=None, metadata={"help": "label column: header name or 0-based index"})
    label_names: tuple[str, ...] | None = field(default=None, metadata={"help": "class names in index order"})
    label_values: tuple[str, ...] | None = field(default=None, metadata={
        "help": "raw label strings in index order, e.g. ('1','2','3','4') for 1-based AG News"})


def _fail(path: str, msg: str, line: int | None = None) -> FedquadError:
    where = f"{path}:{line}" if line is not None else path
    return FedquadError(f"{where}: {msg}")


def _open(path: str):
    if not os.path.isfile(path):
        raise _fail(path, "no such file" if not os.path.exists(path) else "not a regular file")
    # utf-8-sig strips the BOM of MRPC's header and is a no-op on files without one; newline=""
    # lets csv handle quoted newlines itself.
    return open(path, encoding="utf-8-sig", newline="")


def _resolve(path: str, columns: Sequence[str] | None, wanted: Column | None, defaults: Sequence[str],
             role: str, required: bool = True) -> int | None:
    """Index of the column for `role`; `columns` is the header (None for header-less files)."""
    if isinstance(wanted, bool):
        raise FedquadError(f"{role} column must be a name or an index, got {wanted!r}")
    if isinstance(wanted, int):
        return wanted
    listing = ", ".join(repr(c) for c in columns) if columns else "none (file has no header)"
    if wanted is None:
        for name in defaults:
            if columns and name in columns:
                return list(columns).index(name)
        if not required:
            return None
        raise _fail(path, f"no {role} column found (tried {', '.join(defaults)}); columns: {listing}")
    if not columns or wanted not in columns:
        raise _fail(path, f"no {role} column {wanted!r}; columns: {listing}")
    return list(columns).index(wanted)


def _build(path: str, raw_texts: list[str], raw_pairs: list[str] | None, raw_labels: list,
           label_lines: list[int], cols: Columns) -> TextClassificationData:
    if not raw_texts:
        raise _fail(path, "no examples (empty file)")
    labels = np.empty(len(raw_labels), dtype=np.int64)
    names = cols.label_names
    if cols.label_values is not None:
        lookup = {str(v): i for i, v in enumerate(cols.label_values)}
        for i, raw in enumerate(raw_labels):
            if str(raw) not in lookup:
                raise _fail(path, f"label {raw!r} is not one of {', '.join(lookup)}", label_lines[i])
            labels[i] = lookup[str(raw)]
        names = names or tuple(str(v) for v in cols.label_values)
    elif all(_as_int(r) is not None for r in raw_labels):
        for i, raw in enumerate(raw_labels):
            labels[i] = _as_int(raw)
        names = names or tuple(str(i) for i in range(int(labels.max()) + 1))
    else:
        known = list(names) if names else sorted({str(r) for r in raw_labels})
        lookup = {n: i for i, n in enumerate(known)}
        for i, raw in enumerate(raw_labels):
            if str(raw) not in lookup:
                raise _fail(path, f"label {raw!r} is not one of {', '.join(known)}", label_lines[i])
            labels[i] = lookup[str(raw)]
        names = tuple(known)
    if int(labels.max()) >= len(names):
        raise _fail(path, f"label {int(labels.max())} but only {len(names)} label names ({', '.join(names)})")
    return TextClassificationData(texts=tuple(raw_texts), labels=labels, label_names=tuple(names),
                                  text_pairs=None if raw_pairs is None else tuple(raw_pairs), source=path)


def _as_int(raw) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return None


def load_table(path: str | os.PathLike, columns: Columns = Columns(), *, delimiter: str = "\t",
               has_header: bool | None = True, quoted: bool = False) -> TextClassificationData:
    """Delimited text file. `quoted=False` reads fields verbatim (csv.QUOTE_NONE: SST-2/RTE/MRPC
    contain bare `"`); `has_header=None` detects a header by looking for known column names."""
    path = os.fspath(path)
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
                            strict=quoted)
        rows = _rows(path, reader)
    if not rows:
        raise _fail(path, "no examples (empty file)")
    first = rows[0][1]
    if has_header is None:  # a header names at least one column we would look for
        wanted = {c for c in (columns.text, columns.text_pair, columns.label) if isinstance(c, str)}
        has_header = bool(set(first) & (wanted or set(DEFAULT_TEXT_COLUMNS + DEFAULT_LABEL_COLUMNS)))
    header = [c.strip() for c in first] if has_header else None
    body = rows[1:] if has_header else rows
    width = len(first)
    if has_header:
        t = _resolve(path, header, columns.text, DEFAULT_TEXT_COLUMNS, "text")
        default_pair = DEFAULT_PAIR_COLUMNS.get(header[t], "") if columns.text is None else ""
        p = _resolve(path, header, columns.text_pair, (default_pair,) if default_pair else (), "text pair",
                     required=columns.text_pair is not None)
        lab = _resolve(path, header, columns.label, DEFAULT_LABEL_COLUMNS, "label")
    else:  # header-less: label first, text second (AG News csv, most "label,text" dumps)
        t = 1 if columns.text is None else _resolve(path, None, columns.text, (), "text")
        p = None if columns.text_pair is None else _resolve(path, None, columns.text_pair, (), "text pair")
        lab = 0 if columns.label is None else _resolve(path, None, columns.label, (), "label")
    for role, idx in (("text", t), ("text pair", p), ("label", lab)):
        if idx is not None and not 0 <= idx < width:
            raise _fail(path, f"{role} column index {idx} is out of range: the file has {width} columns")
    texts, pairs, labels, lines = [], [] if p is not None else None, [], []
    for line, row in body:
        if len(row) != width:
            raise _fail(path, f"malformed line: {len(row)} fields, expected {width}", line)
        if not row[lab].strip():
            raise _fail(path, "malformed line: empty label", line)
        texts.append(row[t])
        if pairs is not None:
            pairs.append(row[p])
        labels.append(row[lab].strip())
        lines.append(line)
    return _build(path, texts, pairs, labels, lines, columns)


def _rows(path: str, reader) -> list[tuple[int, list[str]]]:
    rows, start = [], 1
    try:
        for row in reader:
            if row and any(f.strip() for f in row):  # blank lines (e.g. a trailing one) carry no example
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _fail(path, f"malformed line: {exc}", reader.line_num) from None
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return rows


def load_tsv(path, columns: Columns = Columns(), *, has_header: bool = True, quoted: bool = False):
    """GLUE-style TSV (SST-2 `sentence/label`, RTE `sentence1/sentence2/label`, MRPC `#1 String/#2 String/Quality`)."""
    return load_table(path, columns, delimiter="\t", has_header=has_header, quoted=quoted)


def load_csv(path, columns: Columns = Columns(), *, has_header: bool | None = None, delimiter: str = ","):
    """CSV with standard quoting; header detected unless given (AG News: no header, label then text)."""
    return load_table(path, columns, delimiter=delimiter, has_header=has_header, quoted=True)


def load_jsonl(path, columns: Columns = Columns()) -> TextClassificationData:
    """JSON Lines, one object per line; defaults: text/sentence/sentence1, sentence2/text_pair, label."""
    path = os.fspath(path)
    records: list[tuple[int, dict]] = []
    with _open(path) as fh:
        try:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _fail(path, f"malformed line: {exc.msg}", line_no) from None
                if not isinstance(obj, dict):
                    raise _fail(path, f"malformed line: expected a JSON object, got {type(obj).__name__}", line_no)
                records.append((line_no, obj))
        except UnicodeDecodeError as exc:
            raise _fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not records:
        raise _fail(path, "no examples (empty file)")
    keys = list(records[0][1])
    for role, c in (("text", columns.text), ("text pair", columns.text_pair), ("label", columns.label)):
        if isinstance(c, int) and not isinstance(c, bool):
            raise _fail(path, f"{role} column must be a field name in JSON Lines, got index {c}")
    t = keys[_resolve(path, keys, columns.text, DEFAULT_TEXT_COLUMNS, "text")]
    default_pair = DEFAULT_PAIR_COLUMNS.get(t, "") if columns.text is None else ""
    p_idx = _resolve(path, keys, columns.text_pair, (default_pair,) if default_pair else (), "text pair",
                     required=columns.text_pair is not None)
    p = None if p_idx is None else keys[p_idx]
    lab = keys[_resolve(path, keys, columns.label, DEFAULT_LABEL_COLUMNS, "label")]
    texts, pairs, labels, lines = [], [] if p is not None else None, [], []
    for line_no, obj in records:
        for k in (t, p, lab):
            if k is not None and k not in obj:
                raise _fail(path, f"malformed line: no field {k!r}", line_no)
        for k in (t, p):
            if k is not None and not isinstance(obj[k], str):
                raise _fail(path, f"malformed line: field {k!r} is {type(obj[k]).__name__}, not text", line_no)
        if not isinstance(obj[lab], (str, int)) or isinstance(obj[lab], bool):
            raise _fail(path, f"malformed line: label {obj[lab]!r} is neither an integer nor a string", line_no)
        texts.append(obj[t])
        if pairs is not None:
            pairs.append(obj[p])
        labels.append(obj[lab])
        lines.append(line_no)
    return _build(path, texts, pairs, labels, lines, columns)


def load_file(path, columns: Columns = Columns(), **options) -> TextClassificationData:
    """Dispatch on the file suffix: .tsv/.txt -> TSV, .csv -> CSV, .jsonl/.json -> JSON Lines."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in (".tsv", ".txt"):
        return load_tsv(path, columns, **options)
    if suffix == ".csv":
        return load_csv(path, columns, **options)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return load_jsonl(path, columns, **options)
    raise _fail(os.fspath(path), f"unknown data file type {suffix!r}: use .tsv, .csv or .jsonl")
