"""Causal language modelling: prompt/response or plain text in, next-token loss on the answer.

The kind object bundles the pieces, one module each: the data type and its JSON Lines format
(`fedquad.datasets.causal`, `fedquad.datasets.causal_jsonl`), tokens, truncation and batches with
a per-token loss mask (`fedquad.tasks.causal_lm_tokens`), and evaluation by loss, perplexity,
token accuracy and exact match (`fedquad.tasks.causal_lm_eval`). The head is the model's own
(tied) LM head, which stays frozen: only the adapters train.
"""

from __future__ import annotations

import os

import torch

from fedquad.datasets.causal import CausalLMData
from fedquad.datasets.causal_jsonl import load_causal_jsonl
from fedquad.tasks.base import TaskKind
from fedquad.tasks.causal_lm_eval import evaluate_causal_lm
from fedquad.tasks.causal_lm_tokens import IGNORE_INDEX, CausalTokenizedData, tokenize_causal


class CausalLMTask(TaskKind):
    head = "causal-lm"
    auto_model_class = "AutoModelForCausalLM"
    head_trains = False  # the pretrained (often tied) LM head stays as it is
    has_classes = False
    needs_decoder = True
    data_type = CausalLMData
    tokens_type = CausalTokenizedData
    tokens_on_disk = False  # the disk format holds plain TokenizedData only

    def load_file(self, path: str | os.PathLike) -> CausalLMData:
        return load_causal_jsonl(path)

    def model_num_labels(self, data: CausalLMData) -> int:
        return 2  # ignored by a causal-LM head; categories only steer the partition

    def _tokenize(self, data: CausalLMData, tokenizer, max_len: int, key: tuple) -> CausalTokenizedData:
        return tokenize_causal(data, tokenizer, max_len, key)

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """Scored tokens: the model's loss is the mean over every position whose next-token label
        (labels shifted by one) is not IGNORE_INDEX (transformers' ForCausalLMLoss)."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def generated_labels(self, input_ids: torch.Tensor, num_labels: int, generator: torch.Generator) -> torch.Tensor:
        return input_ids.clone()  # every position is scored: the most a step can save

    def evaluate(self, adapted, tokens: CausalTokenizedData, *, batch_size: int = 64, max_examples: int | None = None,
                 seed: int = 0) -> dict[str, float]:
        return evaluate_causal_lm(adapted, tokens, batch_size=batch_size, max_examples=max_examples, seed=seed)
