"""JSON Lines files, and JSON files holding one array of objects (`Dataset.to_json(lines=False)`).

The first object's keys are the header; the rows then go through the common column and label
rules of `fedquad.datasets.loaders` (`table_to_data`). Causal-LM JSON Lines is read by
`fedquad.datasets.causal_jsonl`.
"""

from __future__ import annotations

import json
import os

from fedquad.datasets.loaders import (DEFAULT_LABEL_COLUMNS, DEFAULT_PAIR_COLUMNS, DEFAULT_TEXT_COLUMNS, Columns,
                                      TextClassificationData, Where, _fail, _open, table_to_data)


def read_json_records(path: str) -> list[tuple[Where, dict]]:
    """(line or record, object) of a JSON Lines file, or of a JSON file holding one array of objects."""
    records: list[tuple[Where, dict]] = []
    with _open(path) as fh:
        try:
            text = fh.read()
        except UnicodeDecodeError as exc:
            raise _fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if text.lstrip().startswith("["):  # a JSON array (what `Dataset.to_json(lines=False)` writes)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(path, f"malformed JSON: {exc.msg}", exc.lineno) from None
        pairs = [(f"record {i}", obj) for i, obj in enumerate(items, 1)]
    else:
        pairs = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                pairs.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise _fail(path, f"malformed line: {exc.msg}", line_no) from None
    for where, obj in pairs:
        if not isinstance(obj, dict):
            raise _fail(path, f"malformed line: expected a JSON object, got {type(obj).__name__}", where)
        records.append((where, obj))
    return records


def load_jsonl(path, columns: Columns = Columns()) -> TextClassificationData:
    """JSON Lines (or a JSON array of objects); the first object's keys are the header."""
    path = os.fspath(path)
    records = read_json_records(path)
    if not records:
        raise _fail(path, "no examples (empty file)")
    for role, c in (("text", columns.text), ("text pair", columns.text_pair), ("label", columns.label)):
        if isinstance(c, int):
            raise _fail(path, f"{role} column must be a field name in JSON, got index {c}")
    keys = list(records[0][1])
    wanted = [k for k in keys if k in _wanted_keys(keys, columns)]
    rows = []
    for where, obj in records:
        missing = next((k for k in wanted if k not in obj), None)
        if missing is not None:
            raise _fail(path, f"malformed line: no field {missing!r}", where)
        rows.append((where, [obj.get(k) for k in keys]))
    return table_to_data(path, keys, rows, columns)


def _wanted_keys(keys: list[str], columns: Columns) -> set[str]:
    """The keys the column rules will pick (a record may lack the others)."""
    out = set(columns.given_names)
    for c, defaults in ((columns.text, DEFAULT_TEXT_COLUMNS), (columns.label, DEFAULT_LABEL_COLUMNS)):
        if c is None:
            found = next((k for k in defaults if k in keys), None)
            if found:
                out.add(found)
                if defaults is DEFAULT_TEXT_COLUMNS and columns.text_pair is None:
                    out.add(DEFAULT_PAIR_COLUMNS.get(found, ""))
    return out
