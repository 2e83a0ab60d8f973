"""Kinds of task: sequence classification and causal language modelling, one object each.

A `TaskKind` bundles what differs between the two: the data type and its file loader, the
tokenization (and so the batch layout), the evaluation metrics, the model head (which
transformers class, whether it trains) and labels for a generated batch. A run picks its kind
once, where it starts:

* from loaded data: `task_kind(data)` (the simulator and the Flower apps, after `load_task_data`),
  whose `head` then goes to `load_model(task=...)`;
* by head name: `task_kind_named("seq-cls" | "causal-lm")`, which `load_model` does; the model
  keeps it as `AdaptedModel.kind` (evaluation, memory probes and profiling use that).

Everything further in calls the kind's members and never asks the data, the tokens or the model
which kind it is. `tokenize(data, tokenizer, max_len)` is the kind's tokenize for callers that
hold only the data.

Modules: `base` (the TaskKind interface, the shared evaluation subset), `classification`,
`causal_lm` (the kind), `causal_lm_tokens` (its tokens), `causal_lm_eval` (its metrics).
"""

from __future__ import annotations

import os

from fedquad.datasets.batching import TokenizedData
from fedquad.errors import FedquadError
from fedquad.tasks.base import TaskKind, eval_indices
from fedquad.tasks.causal_lm import CausalLMTask
from fedquad.tasks.causal_lm_tokens import IGNORE_INDEX, CausalTokenizedData, check_context, fit_lengths
from fedquad.tasks.classification import ClassificationTask

CLASSIFICATION = ClassificationTask()
CAUSAL_LM = CausalLMTask()
KINDS: dict[str, TaskKind] = {k.head: k for k in (CLASSIFICATION, CAUSAL_LM)}  # by model head name


def task_kind(data) -> TaskKind:
    """The kind of task `data` is (by its type: TextClassificationData or CausalLMData)."""
    for kind in KINDS.values():
        if isinstance(data, kind.data_type):
            return kind
    raise FedquadError(f"no task kind trains on {type(data).__name__}; "
                       f"expected one of {', '.join(k.data_type.__name__ for k in KINDS.values())}")


def task_kind_named(head: str) -> TaskKind:
    """The kind of task whose model head is `head` (`AdaptedModel.task`: seq-cls or causal-lm)."""
    if head not in KINDS:
        raise FedquadError(f"unknown task {head!r}; choose one of {', '.join(KINDS)}")
    return KINDS[head]


def tokenize(data, tokenizer, max_len: int, *, cache_dir: str | os.PathLike | None = None) -> TokenizedData:
    """Token ids of `data` as its kind lays them out, cached (`TaskKind.tokenize`)."""
    return task_kind(data).tokenize(data, tokenizer, max_len, cache_dir=cache_dir)


__all__ = ["CAUSAL_LM", "CLASSIFICATION", "IGNORE_INDEX", "KINDS", "CausalLMTask", "CausalTokenizedData",
           "ClassificationTask", "TaskKind", "check_context", "eval_indices", "fit_lengths", "task_kind",
           "task_kind_named", "tokenize"]
