"""Text-classification data, the column and label rules, and the TSV/CSV loaders (JSON Lines and
JSON in `fedquad.datasets.jsonfiles`, Parquet and saved Hugging Face datasets in `.arrow`;
`fedquad.datasets.files.load_file` picks the loader by suffix).

Every loader returns a `TextClassificationData`. Errors a user can cause (missing file, malformed
line, unknown or unrecognised columns, a file without rows, unknown label) are one-line
`FedquadError`s naming the file.

Column rules, the same for every format (docs/data.md):
* a column given by name must be in the header; one given as a 0-based index is positional
  (for files without a header);
* columns not given are looked up in the header among `DEFAULT_TEXT_COLUMNS`,
  `DEFAULT_LABEL_COLUMNS` and, for the text column found, its partner in `DEFAULT_PAIR_COLUMNS`;
* a delimited file's first row is its header when it names a known (or a given) column; a file
  whose first row names none is refused unless its columns are given as indices, so that an
  unrecognised header is never read as an example.

Label rules:
* `label_values` given: the raw label `label_values[i]` becomes `i` (AG News: "1".."4" -> 0..3);
* otherwise labels that all read as non-negative integers are used as they are;
* otherwise string labels map to their position in `label_names` when given, else to their
  position in the sorted set of values seen (deterministic, independent of row order).
The task loader (`fedquad.datasets.tasks`) reads the evaluation split with the training split's
vocabulary (`vocabulary_of`), so a class has one index across splits.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

import numpy as np

from fedquad.errors import FedquadError

Column = Union[str, int]
Where = Union[int, str, None]  # a line number, a record description, or nothing

# Column names tried, in order, when a column is not given. They cover GLUE (SST-2, RTE, MRPC's
# `#1 String`/`Quality`, QNLI/QQP style) and the common HF-datasets field names. First columns of
# pairs come first: QNLI has both `question` and `sentence`, and is a pair task.
DEFAULT_TEXT_COLUMNS = ("sentence1", "#1 String", "question1", "question", "premise", "sentence", "text")
DEFAULT_PAIR_COLUMNS = {"sentence1": "sentence2", "#1 String": "#2 String", "question": "sentence",
                        "question1": "question2", "premise": "hypothesis", "text": "text_pair"}
DEFAULT_LABEL_COLUMNS = ("label", "Quality", "labels", "gold_label")
KNOWN_COLUMNS = frozenset(DEFAULT_TEXT_COLUMNS + DEFAULT_LABEL_COLUMNS + tuple(DEFAULT_PAIR_COLUMNS.values()))
# More distinct text labels than this many, and than half the rows, is text read as labels.
MAX_PLAUSIBLE_CLASSES = 20


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
    label_values: tuple[str, ...] | None = field(default=None, metadata={
        "help": "raw label text of class i where the file's labels were text; None where they were integers"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.text_pairs is not None:
            object.__setattr__(self, "text_pairs", tuple(self.text_pairs))
            if len(self.text_pairs) != len(self.texts):
                raise ValueError(f"{len(self.texts)} texts but {len(self.text_pairs)} text pairs")
        if self.label_values is not None:
            object.__setattr__(self, "label_values", tuple(self.label_values))
            if len(self.label_values) != len(self.label_names):
                raise ValueError(f"{len(self.label_names)} label names but {len(self.label_values)} label values")
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
            source=self.source, label_values=self.label_values)

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
    label_source: str | None = field(default=None, metadata={
        "help": "where a given vocabulary comes from (e.g. the training file), for messages"})

    def __post_init__(self) -> None:
        for role, c in (("text", self.text), ("text pair", self.text_pair), ("label", self.label)):
            if c is not None and (isinstance(c, bool) or not isinstance(c, (str, int)) or (isinstance(c, int) and c < 0)
                                  or (isinstance(c, str) and not c.strip())):
                raise FedquadError(f"{role} column must be a column name or a 0-based index, got {c!r}")

    @property
    def given_names(self) -> set[str]:
        return {c for c in (self.text, self.text_pair, self.label) if isinstance(c, str)}

    @property
    def given_indices(self) -> bool:
        return any(isinstance(c, int) for c in (self.text, self.text_pair, self.label))


def vocabulary_of(data: TextClassificationData, columns: Columns = Columns()) -> Columns:
    """`columns` with the label vocabulary of `data` (the training split): another split read with
    it numbers every class as `data` does, and an unseen label is an error."""
    return dataclasses.replace(columns, label_names=data.label_names, label_values=data.label_values,
                               label_source=data.source or "the training split")


def _fail(path: str, msg: str, where: Where = None) -> FedquadError:
    if isinstance(where, int):
        return FedquadError(f"{path}:{where}: {msg}")
    return FedquadError(f"{path} ({where}): {msg}" if where else f"{path}: {msg}")


def _open(path: str):
    if not os.path.isfile(path):
        raise _fail(path, "no such file" if not os.path.exists(path) else "not a regular file")
    # utf-8-sig strips the BOM of MRPC's header and is a no-op on files without one; newline=""
    # lets csv handle quoted newlines itself.
    return open(path, encoding="utf-8-sig", newline="")


def _listing(columns: Sequence) -> str:
    return ", ".join(repr(c) for c in columns) if columns else "none"


def _resolve(path: str, header: Sequence[str] | None, wanted: Column | None, defaults: Sequence[str],
             role: str, required: bool = True) -> int | None:
    """Index of the column for `role`; `header` is None for a file read without a header."""
    if isinstance(wanted, int):
        return wanted
    if wanted is None and not required and header is None:
        return None
    if header is None:  # a name, or a required default: both need a header
        raise _fail(path, f"no {role} column {wanted!r}: the file has no header naming it")
    if wanted is None:
        for name in defaults:
            if name in header:
                return list(header).index(name)
        if not required:
            return None
        raise _fail(path, f"no {role} column found (tried {', '.join(defaults)}); columns: {_listing(header)}; "
                          f"set {role.replace(' ', '_')}_column")
    if wanted not in header:
        raise _fail(path, f"no {role} column {wanted!r}; columns: {_listing(header)}")
    return list(header).index(wanted)


def table_to_data(path: str, header: Sequence[str] | None, rows: Sequence[tuple[Where, Sequence]],
                  cols: Columns, width: int | None = None) -> TextClassificationData:
    """Examples from positional rows (`header` names the positions, or None for a header-less file).

    Every format ends here: delimited files, JSON records (in header order) and Arrow tables."""
    if header is None and (cols.text is None or cols.label is None):
        missing = " and ".join(f"{r}_column" for r, c in (("text", cols.text), ("label", cols.label)) if c is None)
        raise _fail(path, f"the file has no header, so {missing} must be given as a 0-based index")
    width = width if width is not None else (len(header) if header is not None else len(rows[0][1]))
    for role, c in (("text", cols.text), ("text pair", cols.text_pair), ("label", cols.label)):
        if isinstance(c, int) and not c < width:
            raise _fail(path, f"{role} column index {c} is out of range: the file has {width} columns")
    t = _resolve(path, header, cols.text, DEFAULT_TEXT_COLUMNS, "text")
    default_pair = DEFAULT_PAIR_COLUMNS.get(header[t], "") if cols.text is None and header else ""
    p = _resolve(path, header, cols.text_pair, (default_pair,) if default_pair else (), "text pair",
                 required=cols.text_pair is not None)
    lab = _resolve(path, header, cols.label, DEFAULT_LABEL_COLUMNS, "label")
    if len({t, p, lab} - {None}) < (3 if p is not None else 2):
        raise _fail(path, "the text, text pair and label columns must be different columns")
    texts, pairs, labels, wheres = [], [] if p is not None else None, [], []
    for where, row in rows:
        for role, i in (("text", t), ("text pair", p)):
            if i is not None and not isinstance(row[i], str):
                raise _fail(path, f"malformed line: {role} {_name(header, i)} is {type(row[i]).__name__}, not text",
                            where)
        raw = row[lab]
        if isinstance(raw, str):
            raw = raw.strip()
            if not raw:
                raise _fail(path, "malformed line: empty label", where)
        elif isinstance(raw, bool) or not isinstance(raw, int):
            raise _fail(path, f"malformed line: label {raw!r} is neither an integer nor a string", where)
        elif raw < 0:
            raise _fail(path, f"label {raw} is negative: an unlabelled row (Hugging Face test splits mark a "
                              "missing label -1)?", where)
        texts.append(row[t])
        if pairs is not None:
            pairs.append(row[p])
        labels.append(raw)
        wheres.append(where)
    return _build(path, texts, pairs, labels, wheres, cols, _name(header, lab))


def _name(header: Sequence[str] | None, i: int) -> str:
    return repr(header[i]) if header is not None else f"column {i}"


def _build(path: str, raw_texts: list[str], raw_pairs: list[str] | None, raw_labels: list,
           wheres: list[Where], cols: Columns, label_column: str) -> TextClassificationData:
    if not raw_texts:
        raise _fail(path, "no examples (empty file)")
    labels = np.empty(len(raw_labels), dtype=np.int64)
    names, values = cols.label_names, None
    of = f" of {cols.label_source}" if cols.label_source else ""
    if cols.label_values is not None:
        values = tuple(str(v) for v in cols.label_values)
        names = names or values
        lookup = {v: i for i, v in enumerate(values)}
        for i, raw in enumerate(raw_labels):
            if str(raw) not in lookup:
                raise _fail(path, f"label {str(raw)!r} is not one of the labels{of}: {', '.join(values)}", wheres[i])
            labels[i] = lookup[str(raw)]
    elif all(_as_int(r) is not None for r in raw_labels):
        for i, raw in enumerate(raw_labels):
            labels[i] = _as_int(raw)
        names = names or tuple(str(i) for i in range(int(labels.max()) + 1))
        if int(labels.max()) >= len(names):
            at = int(np.argmax(labels))
            raise _fail(path, f"label {int(labels.max())} is not one of the labels{of}: 0..{len(names) - 1} "
                              f"({', '.join(names)})", wheres[at])
    else:
        known = list(names) if names else sorted({str(r) for r in raw_labels})
        if not names and len(known) > max(MAX_PLAUSIBLE_CLASSES, len(raw_labels) // 2):
            raise _fail(path, f"label column {label_column} holds {len(known)} different values in "
                              f"{len(raw_labels)} rows: that is text, not labels; set label_column and text_column")
        lookup = {n: i for i, n in enumerate(known)}
        for i, raw in enumerate(raw_labels):
            if str(raw) not in lookup:
                raise _fail(path, f"label {str(raw)!r} is not one of the labels{of}: {', '.join(known)}", wheres[i])
            labels[i] = lookup[str(raw)]
        names = values = tuple(known)
    return TextClassificationData(texts=tuple(raw_texts), labels=labels, label_names=tuple(names),
                                  text_pairs=None if raw_pairs is None else tuple(raw_pairs), source=path,
                                  label_values=values)


def _as_int(raw) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return None


def load_table(path: str | os.PathLike, columns: Columns = Columns(), *, delimiter: str = "\t",
               has_header: bool | None = None, quoted: bool = False) -> TextClassificationData:
    """Delimited text file. `quoted=False` reads fields verbatim (csv.QUOTE_NONE: SST-2/RTE/MRPC
    contain bare `"`); `has_header=None` detects the header (module docstring)."""
    path = os.fspath(path)
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
                            strict=quoted)
        rows = _rows(path, reader)
    if not rows:
        raise _fail(path, "no examples (empty file)")
    first = [c.strip() for c in rows[0][1]]
    if has_header is None:
        has_header = _is_header(first, rows, columns)
    if has_header is False and not columns.given_indices:
        named = ", ".join(repr(n) for n in sorted(columns.given_names)) or "a known column"
        raise _fail(path, f"no header naming {named} (first row: {_listing(first)}); name the columns with "
                          "text_column and label_column: header names, or 0-based indices for a file without "
                          "a header")
    if has_header and len(rows) == 1:
        raise _fail(path, f"has a header ({', '.join(first)}) but no rows")
    width = len(rows[0][1])
    body = rows[1:] if has_header else rows
    for line, row in body:
        if len(row) != width:
            raise _fail(path, f"malformed line: {len(row)} fields, expected {width}", line)
    return table_to_data(path, first if has_header else None, body, columns, width)


def _is_header(first: list[str], rows: list, columns: Columns) -> bool:
    """A first row is a header when it names a given or a known column; with a label column given
    as an index, also when only its label is not an integer (`review,stars` above `text,1` rows)."""
    if set(first) & (columns.given_names | KNOWN_COLUMNS):
        return True
    lab = columns.label
    if isinstance(lab, int) and len(rows) > 1 and lab < len(first) and _as_int(first[lab]) is None:
        return all(lab < len(r) and _as_int(r[lab]) is not None for _, r in rows[1:])
    return False


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


def load_tsv(path, columns: Columns = Columns(), *, has_header: bool | None = None, quoted: bool = False):
    """GLUE-style TSV (SST-2 `sentence/label`, RTE `sentence1/sentence2/label`, MRPC `#1 String/#2 String/Quality`)."""
    return load_table(path, columns, delimiter="\t", has_header=has_header, quoted=quoted)


def load_csv(path, columns: Columns = Columns(), *, has_header: bool | None = None, delimiter: str = ","):
    """CSV with standard quoting; header detected unless given (AG News: no header, label then text)."""
    return load_table(path, columns, delimiter=delimiter, has_header=has_header, quoted=True)
