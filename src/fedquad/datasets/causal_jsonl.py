"""The causal-LM file format: JSON Lines, one object per line, in one of two shapes (they may be mixed):

* `{"prompt": "...", "response": "..."}` -- the loss is taken on the response tokens only;
* `{"text": "..."}` -- plain language modelling, the loss is taken on every token.

An optional `category` (a non-negative integer or a string) groups examples for the partition
(`CausalLMData.labels`); it must be on every line or on none. Problems a user can cause (a line
that is not an object, a missing or non-string field, an empty response or text, `category` on
some lines only) are one-line `FedquadError`s naming the file and the line.
"""

from __future__ import annotations

import json
import os

import numpy as np

from fedquad.datasets.causal import CausalLMData
from fedquad.errors import FedquadError


def _fail(path: str, msg: str, line: int | None = None) -> FedquadError:
    return FedquadError(f"{path}:{line}: {msg}" if line is not None else f"{path}: {msg}")


def looks_causal_jsonl(path: str | os.PathLike) -> bool:
    """Whether a JSON Lines file holds causal-LM records: the first object has `prompt` or
    `response`, or `text` without a `label`. Unreadable files answer False (the classification
    loader then reports the problem)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    break
            else:
                return False
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(obj, dict):
        return False
    return "prompt" in obj or "response" in obj or ("text" in obj and "label" not in obj and "labels" not in obj)


def load_causal_jsonl(path: str | os.PathLike) -> CausalLMData:
    """Read a causal-LM JSON Lines file (see the module docstring for the format and errors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _fail(path, "no such file" if not os.path.exists(path) else "not a regular file")
    prompts, responses, cats, cat_lines = [], [], [], []
    first_without_cat = None
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _fail(path, f"malformed line: {exc.msg}", line_no) from None
                if not isinstance(obj, dict):
                    raise _fail(path, f"malformed line: expected a JSON object, got {type(obj).__name__}", line_no)
                prompt, response = _record(path, obj, line_no)
                prompts.append(prompt)
                responses.append(response)
                if "category" in obj:
                    cat = obj["category"]
                    if isinstance(cat, bool) or not isinstance(cat, (int, str)) or (isinstance(cat, int) and cat < 0):
                        raise _fail(path, f"malformed line: category {cat!r} is neither a non-negative integer "
                                          "nor a string", line_no)
                    cats.append(cat)
                    cat_lines.append(line_no)
                elif first_without_cat is None:
                    first_without_cat = line_no
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not responses:
        raise _fail(path, "no examples (empty file)")
    if cats and first_without_cat is not None:
        raise _fail(path, f"malformed line: no field 'category' (line {cat_lines[0]} has one: give it on every "
                          "line or on none)", first_without_cat)
    labels, names = _categories(cats) if cats else (np.zeros(len(responses), dtype=np.int64), ("all",))
    return CausalLMData(prompts=tuple(prompts), responses=tuple(responses), labels=labels, label_names=names,
                        source=path)


def _record(path: str, obj: dict, line_no: int) -> tuple[str, str]:
    if "prompt" in obj or "response" in obj:
        for key in ("prompt", "response"):
            if key not in obj:
                raise _fail(path, f"malformed line: has {'prompt' if key == 'response' else 'response'} "
                                  f"but no field {key!r}", line_no)
            if not isinstance(obj[key], str):
                raise _fail(path, f"malformed line: field {key!r} is {type(obj[key]).__name__}, not text", line_no)
        if not obj["response"].strip():
            raise _fail(path, "empty response", line_no)
        return obj["prompt"], obj["response"]
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise _fail(path, f"malformed line: field 'text' is {type(obj['text']).__name__}, not text", line_no)
        if not obj["text"].strip():
            raise _fail(path, "empty text", line_no)
        return "", obj["text"]
    raise _fail(path, f"malformed line: needs fields 'prompt' and 'response', or 'text' "
                      f"(has {', '.join(repr(k) for k in obj) or 'none'})", line_no)


def _categories(raw: list) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer categories as they are; otherwise strings by position in their sorted set."""
    if all(isinstance(c, int) for c in raw):
        labels = np.asarray(raw, dtype=np.int64)
        return labels, tuple(str(i) for i in range(int(labels.max()) + 1))
    names = sorted({str(c) for c in raw})
    lookup = {n: i for i, n in enumerate(names)}
    return np.asarray([lookup[str(c)] for c in raw], dtype=np.int64), tuple(names)
