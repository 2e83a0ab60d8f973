"""Causal-LM tokens: prompt/response or plain text as token ids, with a loss mask per token.

Tokenization: prompt and response are tokenized separately, without the tokenizer's own special
tokens, and joined as

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
`truncated_responses`) so a caller can report them. Causal-LM tokens are cached in memory only.

Batches (`iterate_batches`) are `{input_ids, attention_mask, labels}`, right-padded int64
`[batch, seq]` tensors; `labels` is `input_ids` with -100 on BOS, prompt and padding positions
(the model shifts labels itself: position t's logits predict labels[t + 1]). So
`labels.shape[0]` is the number of examples, as for classification. Length bucketing works as for
classification (`BatchConfig.bucket_batches`).

The task kind that uses these tokens is `fedquad.tasks.causal_lm.CausalLMTask`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedquad.datasets.batching import TokenizedData
from fedquad.datasets.causal import CausalLMData
from fedquad.errors import FedquadError

IGNORE_INDEX = -100  # the label value HF causal-LM losses skip
SHORT_ANSWER_TOKENS = 16  # responses at most this long (all of them) make exact-match evaluation apply
_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class CausalTokenizedData(TokenizedData):
    """TokenizedData plus, per example, how many leading tokens carry no loss (BOS + prompt).

    `labels` (inherited) holds the per-example category; the per-token labels are built per
    batch by `collate`, which `fedquad.datasets.iterate_batches` calls.
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

    def collate(self, batch: np.ndarray, width: int) -> dict[str, torch.Tensor]:
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
