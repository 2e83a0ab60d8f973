"""Causal-LM data: prompt/response pairs (instruction tuning) or plain text, with a category each.

A prompt of "" means plain text: the loss is then taken on every token, otherwise on the
response only. The optional category (an integer per example, `labels`) groups examples for
the Dirichlet non-IID partition over devices and has no other use; without one every example
is in category 0.

Where the rest of the causal-LM path lives, one module per job:

* `fedquad.datasets.causal_jsonl` -- the JSON Lines file format (`load_causal_jsonl`);
* `fedquad.datasets.synthetic_lm` -- the generated `synthetic-lm` task;
* `fedquad.tasks.causal_lm_tokens` -- tokenization (layout, truncation, loss mask) and batches;
* `fedquad.tasks.causal_lm_eval` -- central evaluation (loss, perplexity, exact match);
* `fedquad.tasks.causal_lm` -- the task kind that bundles them with the model head.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from fedquad.datasets.loaders import checked_labels, hash_text_sequences


@dataclass(frozen=True, eq=False)
class CausalLMData:
    """Prompt/response pairs (prompt "" = plain text) with an integer category per example."""

    prompts: tuple[str, ...] = field(metadata={"help": "prompt of each example; '' means plain text"})
    responses: tuple[str, ...] = field(metadata={"help": "response of each example (the text, for plain text)"})
    labels: np.ndarray = field(metadata={"help": "int64 category of each example (used by the partition only)"})
    label_names: tuple[str, ...] = field(default=("all",), metadata={"help": "name of category i at position i"})
    source: str = field(default="", metadata={"help": "where the data came from, for messages"})

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
