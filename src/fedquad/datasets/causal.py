"""Causal-LM data: prompt/response (instruction tuning) or plain text, a generated task, batches.

Files are JSON Lines, one object per line, in one of two shapes (they may be mixed):

* `{"prompt": "...", "response": "..."}` -- the loss is taken on the response tokens only;
* `{"text": "..."}` -- plain language modelling, the loss is taken on every token.

An optional `category` (a non-negative integer or a string) groups examples for the Dirichlet
non-IID partition over devices; it is the `labels` array of `CausalLMData` and has no other use.
Without it every example is in category 0. Problems a user can cause (a line that is not an
object, a missing or non-string field, an empty response or text, `category` on some lines only)
are one-line `FedquadError`s naming the file and the line.

Tokenization (`tokenize_causal`, reached through `fedquad.datasets.tokenize`): prompt and response
are tokenized separately, without the tokenizer's own special tokens, and joined as

    [BOS] prompt-tokens response-tokens EOS

BOS is the tokenizer's `bos_token_id`, else its `cls_token_id`, else nothing; EOS is its
`eos_token_id`, else its `sep_token_id` (the tiny presets use MiniLM's BERT tokenizer: [CLS] and
[SEP]). Put any separator (a space, a newline) at the end of the prompt: nothing is inserted.

Truncation to `max_len` tokens (documented behaviour, never an error):

1. everything fits: kept as it is;
2. otherwise the response and its EOS are kept whole and the prompt is cut *from the left* (its
   end, next to the response, is what the response depends on most);
3. if the response is so long that fewer than `min(prompt, (max_len - BOS) // 2)` prompt tokens
   would remain, the prompt keeps its last `min(prompt, (max_len - BOS) // 2)` tokens and the
   response is cut *from the right*; it then loses its EOS (the answer does go on).
   Plain text (no prompt) is cut from the right.

The counts of cut prompts and responses are kept on the tokenized data (`truncated_prompts`,
`truncated_responses`) so a caller can report them.

Batches (`iterate_batches`) are `{input_ids, attention_mask, labels}`, right-padded int64
`[batch, seq]` tensors; `labels` is `input_ids` with -100 on BOS, prompt and padding positions
(the model shifts labels itself: position t's logits predict labels[t + 1]). So
`labels.shape[0]` is the number of examples, as for classification. Length bucketing works as for
classification (`BatchConfig.bucket_batches`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

import numpy as np
import torch

from fedquad.datasets.loaders import checked_labels, hash_text_sequences
from fedquad.datasets.batching import TokenizedData
from fedquad.errors import FedquadError

IGNORE_INDEX = -100  # the label value HF causal-LM losses skip
SHORT_ANSWER_TOKENS = 16  # responses at most this long (all of them) make exact-match evaluation apply
_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class CausalLMData:
    """Prompt/response pairs (prompt "" = plain text) with an integer category per example."""

    prompts: tuple[str, ...] = field(metadata={"help": "prompt of each example; '' means plain text"})
    responses: tuple[str, ...] = field(metadata={"help": "response of each example (the text, for plain text)"})
    labels: np.ndarray = field(metadata={"help": "int64 category of each example (used by the partition only)"})
    label_names: tuple[str, ...] = field(default=("all",), metadata={"help": "name of category i at position i"})
    source: str = field(default="", metadata={"help": "where the data came from, for messages"})

    is_causal: ClassVar[bool] = True  # what `tokenize` and `load_task` dispatch on

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if len(self.prompts) != len(self.responses):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.responses)} responses")
        object.__setattr__(self, "labels", checked_labels(self.labels, len(self.responses), self.label_names,
                                                          self.source, "category"))

    def __len__(self) -> int:
        return len(self.responses)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def has_prompts(self) -> bool:
        """True when every example has a non-empty prompt (instruction-style data)."""
        return all(self.prompts)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the content: the token cache key follows the data, not the path."""
        h = hashlib.sha256(b"causal-lm")
        hash_text_sequences(h, (self.prompts, self.responses))
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    def subset(self, indices: Iterable[int]) -> "CausalLMData":
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        return CausalLMData(prompts=tuple(self.prompts[i] for i in idx),
                            responses=tuple(self.responses[i] for i in idx), labels=self.labels[idx],
                            label_names=self.label_names, source=self.source)

    def label_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_labels)


# ------------------------------------------------------------------------------------ loading

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


# ------------------------------------------------------------------------ the generated task

SYNTHETIC_LM_TASKS = ("add", "next", "max", "copy", "reverse")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class SyntheticLMConfig:
    """`synthetic-lm`: short prompts with one checkable answer each, one category per kind.

    * add      `add 3 5 =`        -> `8`       (operands 0..max_operand: a table to memorise)
    * next     `next f =`         -> `g`       (the letter after; 25 facts)
    * max      `max 3 8 5 =`      -> `8`       (largest of `list_len` digits: a rule over positions)
    * copy     `copy d k a =`     -> `d k a`   (`list_len` letters: needs attention to the prompt)
    * reverse  `reverse d k a =`  -> `a k d`
    """

    num_train: int = field(default=4000, metadata={"help": "training examples"})
    num_dev: int = field(default=500, metadata={"help": "dev (evaluation) examples"})
    tasks: tuple[str, ...] = field(default=SYNTHETIC_LM_TASKS, metadata={"help": "kinds of prompt, one category each"})
    max_operand: int = field(default=9, metadata={"help": "largest operand of `add` (and digit of `max`)"})
    list_len: int = field(default=3, metadata={"help": "items in `max`, `copy` and `reverse` prompts"})
    seed: int = field(default=0, metadata={"help": "generation seed; same seed, same data"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        unknown = [t for t in self.tasks if t not in SYNTHETIC_LM_TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise FedquadError(f"synthetic-lm tasks must be distinct names from {', '.join(SYNTHETIC_LM_TASKS)}, "
                               f"got {', '.join(self.tasks) or 'none'}")
        if self.num_train < 1 or self.num_dev < 0:
            raise FedquadError(f"synthetic-lm sizes must be positive, got train={self.num_train} dev={self.num_dev}")
        if not 1 <= self.max_operand <= 9:
            raise FedquadError(f"synthetic-lm max_operand must be 1..9, got {self.max_operand}")
        if not 1 <= self.list_len <= 8:
            raise FedquadError(f"synthetic-lm list_len must be 1..8, got {self.list_len}")


def _synthetic_example(rng: random.Random, kind: str, config: SyntheticLMConfig) -> tuple[str, str]:
    n = config.list_len
    if kind == "add":
        a, b = rng.randint(0, config.max_operand), rng.randint(0, config.max_operand)
        return f"add {a} {b} =", str(a + b)
    if kind == "next":
        i = rng.randrange(len(LETTERS) - 1)
        return f"next {LETTERS[i]} =", LETTERS[i + 1]
    if kind == "max":
        digits = [rng.randint(0, config.max_operand) for _ in range(n)]
        return f"max {' '.join(map(str, digits))} =", str(max(digits))
    letters = [rng.choice(LETTERS) for _ in range(n)]
    if kind == "copy":
        return f"copy {' '.join(letters)} =", " ".join(letters)
    return f"reverse {' '.join(letters)} =", " ".join(reversed(letters))


def generate_lm_split(config: SyntheticLMConfig, split: str, size: int | None = None) -> CausalLMData:
    """One split of `synthetic-lm`; categories are the prompt kinds, in `config.tasks` order.

    Each example draws its kind uniformly. Splits use independent streams (changing num_dev never
    changes the training set); the small fact tables (add, next) recur across splits by design.
    """
    if split not in ("train", "dev"):
        raise FedquadError(f"synthetic-lm task has splits train and dev, not {split!r}")
    n = size if size is not None else (config.num_train if split == "train" else config.num_dev)
    rng = random.Random(f"fedquad-synthetic-lm:{config.seed}:{','.join(config.tasks)}:{split}")
    prompts, responses, labels = [], [], []
    for _ in range(n):
        k = rng.randrange(len(config.tasks))
        p, r = _synthetic_example(rng, config.tasks[k], config)
        prompts.append(p)
        responses.append(r)
        labels.append(k)
    return CausalLMData(prompts=tuple(prompts), responses=tuple(responses), labels=np.asarray(labels, dtype=np.int64),
                        label_names=config.tasks, source=f"synthetic-lm(seed={config.seed}, split={split})")


def constant_answer_accuracy(data: CausalLMData) -> float:
    """Exact-match accuracy of the best constant answer per category (the category is visible in
    the prompt): the floor a model must clearly beat to have learned anything beyond the format."""
    best = 0
    for c in range(data.num_labels):
        answers = [r for r, lab in zip(data.responses, data.labels) if lab == c]
        if answers:
            best += max(answers.count(a) for a in set(answers))
    return best / max(len(data), 1)


# ------------------------------------------------------------------------------ tokenization

@dataclass(frozen=True, eq=False)
class CausalTokenizedData(TokenizedData):
    """TokenizedData plus, per example, how many leading tokens carry no loss (BOS + prompt).

    `labels` (inherited) holds the per-example category; the per-token labels are built per
    batch by `collate_rows`, which `fedquad.datasets.batching.collate` calls for this class.
    """

    prompt_lengths: np.ndarray = field(metadata={"help": "int64 tokens per example without loss (BOS + prompt)"})
    eos_token_id: int = field(metadata={"help": "id appended after each response"})
    bos_token_id: int | None = field(metadata={"help": "id put in front of each example, or None"})
    short_answers: bool = field(metadata={
        "help": "every example has a prompt and a whole response of at most SHORT_ANSWER_TOKENS tokens: "
                "exact-match evaluation by greedy generation applies"})
    truncated_prompts: int = field(default=0, metadata={"help": "examples whose prompt was cut from the left"})
    truncated_responses: int = field(default=0, metadata={"help": "examples whose response was cut from the right"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prompt_lengths.setflags(write=False)

    def response_ids(self, i: int) -> np.ndarray:
        """Response tokens of example i, EOS included when it was kept."""
        return self.ids[self.offsets[i] + self.prompt_lengths[i]:self.offsets[i + 1]]

    def collate_rows(self, batch: np.ndarray, width: int) -> dict[str, torch.Tensor]:
        """Right-padded `{input_ids, attention_mask, labels}`, labels -100 off the responses."""
        n = len(batch)
        input_ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        for row, i in enumerate(batch):
            a, b = self.offsets[i], self.offsets[i + 1]
            p = self.prompt_lengths[i]
            input_ids[row, :b - a] = self.ids[a:b]
            mask[row, :b - a] = 1
            labels[row, p:b - a] = self.ids[a + p:b]
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels)}


def special_ids(tokenizer) -> tuple[int | None, int, int]:
    """(BOS or None, EOS, pad) as this module uses them (see the module docstring)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(tokenizer, "cls_token_id", None)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(tokenizer, "sep_token_id", None)
    if eos is None:
        raise FedquadError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither an EOS nor a SEP "
                           "token: causal-LM data needs one to end responses")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, int(eos), int(pad)


def fit_lengths(prompt_len: int, response_len: int, budget: int) -> tuple[int, int]:
    """(prompt tokens kept, response tokens kept) under `budget`; the response counts its EOS.

    The truncation rule of the module docstring, on lengths alone (pure, so tests can check it).
    """
    if prompt_len + response_len <= budget:
        return prompt_len, response_len
    floor = min(prompt_len, budget // 2)
    keep_p = min(prompt_len, max(floor, budget - response_len))
    return keep_p, budget - keep_p


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), _CHUNK):
        enc = tokenizer(texts[start:start + _CHUNK], add_special_tokens=False, truncation=False, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)
        out.extend(enc["input_ids"])
    return out


def tokenize_causal(data: CausalLMData, tokenizer, max_len: int, key: tuple) -> CausalTokenizedData:
    """Token ids of `data` under the layout and truncation rule of the module docstring."""
    bos, eos, pad = special_ids(tokenizer)
    prefix = [bos] if bos is not None else []
    budget = max_len - len(prefix)
    prompt_ids = _ids(tokenizer, list(data.prompts))
    response_ids = _ids(tokenizer, list(data.responses))
    rows, prompt_lengths = [], np.zeros(len(data), dtype=np.int64)
    cut_prompts = cut_responses = 0
    longest_answer = 0  # tokens, EOS not counted
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if not r:
            raise FedquadError(f"{data.source or 'data'}: example {i} has a response with no tokens "
                               f"({data.responses[i]!r})")
        r = list(r) + [eos]
        keep_p, keep_r = fit_lengths(len(p), len(r), budget)
        cut_prompts += keep_p < len(p)
        cut_responses += keep_r < len(r)
        longest_answer = max(longest_answer, len(r) - 1)
        rows.append(np.asarray(prefix + list(p[len(p) - keep_p:]) + r[:keep_r], dtype=np.int32))
        prompt_lengths[i] = len(prefix) + keep_p
    lengths = [len(r) for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(rows) if rows else np.zeros(0, np.int32)
    short = bool(len(data)) and data.has_prompts and not cut_responses and longest_answer <= SHORT_ANSWER_TOKENS
    return CausalTokenizedData(ids=ids, offsets=offsets, labels=np.array(data.labels, dtype=np.int64),
                               token_type_ids=None, pad_token_id=int(pad), max_len=int(max_len), key=key,
                               prompt_lengths=prompt_lengths, eos_token_id=eos, bos_token_id=bos, short_answers=short,
                               truncated_prompts=int(cut_prompts), truncated_responses=int(cut_responses))


def check_context(model_config, max_len: int) -> None:
    """A clear error when `max_len` exceeds the model's context (GPT-2 would fail with an index
    error deep inside its position embedding otherwise)."""
    ctx = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if ctx and max_len > ctx:
        raise FedquadError(f"max_len {max_len} exceeds the model's context of {ctx} tokens; "
                           f"use at most {ctx}")
