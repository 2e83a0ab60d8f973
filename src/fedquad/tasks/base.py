"""What a kind of task is: the one object that knows its data, tokens, batches, metrics and head.

fedquad trains two kinds of task: sequence classification (`fedquad.tasks.classification`) and
causal language modelling (`fedquad.tasks.causal_lm`). Everything that differs between them is
a member of one `TaskKind` object, picked once where a run starts (`task_kind(data)` for loaded
data; `load_model` keeps the kind of its head as `AdaptedModel.kind`), so no code further in
asks "is this a causal LM?" of the data, the tokens or the model. The shape follows PEFT, where
each tuning method is one config/model/layer trio chosen once by `peft_type`.

Layering: this package sits above `fedquad.datasets` and below `fedquad.models`; it takes the
model (an AdaptedModel) as an argument and never imports it.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from fedquad.datasets.batching import TokenizedData, cached_tokens
from fedquad.errors import FedquadError


class TaskKind(ABC):
    """One kind of task. Subclasses set the class attributes and implement the abstract methods."""

    # the model head
    head: ClassVar[str]  # its name, as `fedquad.models.load_model(task=...)` takes it and `AdaptedModel.task` holds it
    auto_model_class: ClassVar[str]  # the transformers Auto class that builds model and head
    head_trains: ClassVar[bool]  # the head is trained with the adapters (and is part of the adapter state)
    has_classes: ClassVar[bool]  # the head predicts one of num_labels classes (at least 2)
    needs_decoder: ClassVar[bool]  # only decoder families can run it
    # data and tokens
    data_type: ClassVar[type]  # the data this kind trains and evaluates on
    tokens_type: ClassVar[type]  # what its `tokenize` returns (a TokenizedData)
    tokens_on_disk: ClassVar[bool]  # whether its tokens may use the safetensors token cache

    def __repr__(self) -> str:
        return f"<task kind {self.head}>"

    # -- data -----------------------------------------------------------------------------
    @abstractmethod
    def load_file(self, path: str | os.PathLike):
        """One data file of this kind (the format rules are the loader's; docs/data.md)."""

    @abstractmethod
    def model_num_labels(self, data) -> int:
        """`num_labels` for `load_model` (a causal LM has no classes; the argument is unused there)."""

    # -- tokens and batches ---------------------------------------------------------------
    def tokenize(self, data, tokenizer, max_len: int, *, cache_dir: str | os.PathLike | None = None) -> TokenizedData:
        """Token ids of `data`, cached (`fedquad.datasets.batching.cached_tokens`)."""
        if not isinstance(data, self.data_type):
            raise FedquadError(f"{self.head} tokenization needs {self.data_type.__name__}, "
                               f"got {type(data).__name__}")
        return cached_tokens(data, tokenizer, max_len, lambda key: self._tokenize(data, tokenizer, max_len, key),
                             cache_dir=cache_dir if self.tokens_on_disk else None)

    @abstractmethod
    def _tokenize(self, data, tokenizer, max_len: int, key: tuple) -> TokenizedData:
        """Tokenize without any cache (`key` goes into the result, for the cache)."""

    def collate(self, tokens: TokenizedData, batch: np.ndarray, width: int) -> dict[str, torch.Tensor]:
        """The padded batch of examples `batch` (`fedquad.datasets.iterate_batches` calls the same
        method of the tokens, which this kind's `tokenize` made)."""
        return tokens.collate(batch, width)

    def loss_units(self, batch: dict[str, torch.Tensor]) -> int:
        """How many units the model's loss on `batch` is the mean over: the weight of a
        micro-batch in its step (`fedquad.client.train`). Classification: examples."""
        return int(batch["labels"].shape[0])

    @abstractmethod
    def generated_labels(self, input_ids: torch.Tensor, num_labels: int, generator: torch.Generator) -> torch.Tensor:
        """Labels for a generated batch of `input_ids` (profiling and memory probes: shapes matter, not content)."""

    # -- evaluation -----------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, adapted, tokens: TokenizedData, *, batch_size: int = 64, max_examples: int | None = None,
                 seed: int = 0) -> dict[str, float]:
        """Metrics of `adapted` as it is on `tokens`; always `accuracy`, `loss` and `examples`."""


def eval_indices(num_examples: int, max_examples: int | None, seed: int = 0) -> np.ndarray:
    """A fixed, seeded subset of the eval split (all of it when `max_examples` is None); every kind uses it."""
    if max_examples is None or max_examples >= num_examples:
        return np.arange(num_examples)
    return np.sort(np.random.default_rng([seed, 0xE7A1]).choice(num_examples, max_examples, replace=False))
