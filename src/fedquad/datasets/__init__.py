"""Data for federated fine-tuning: loaders, generated tasks, device partitions and batches.

`load_task_data(name_or_path, DataSettings(...))` is what the simulator and the Flower apps use:
training data, evaluation data and a line saying where the evaluation data came from
(`fedquad.datasets.tasks`). `load_task(name_or_path, split)` reads one split:

* `sst2`, `mrpc`, `rte`, `ag_news`: the benchmark folders under a data root (`shared/data`);
  see each folder's PROVENANCE.md for the file formats handled here;
* `synthetic`: the generated task of `fedquad.datasets.synthetic` (no files needed);
* `synthetic-lm`: the generated causal-LM task of `fedquad.datasets.synthetic_lm` (no files needed);
* a directory holding `<split>.tsv|.csv|.jsonl|.json|.parquet` or a saved Hugging Face dataset,
  or a single data file (split ignored). A JSON Lines file whose first object has
  `prompt`/`response`, or `text` without a label, is causal-LM data (`CausalLMData`); everything
  else is classification (`TextClassificationData`), read by the column rules of
  `fedquad.datasets.loaders` (docs/data.md).
"""

from __future__ import annotations

from fedquad.datasets.batching import BatchConfig, TokenizedData, clear_token_cache, count_batches, iterate_batches
from fedquad.datasets.causal import CausalLMData
from fedquad.datasets.causal_jsonl import load_causal_jsonl, looks_causal_jsonl
from fedquad.datasets.files import load_file
from fedquad.datasets.jsonfiles import load_jsonl
from fedquad.datasets.loaders import Columns, TextClassificationData, load_csv, load_table, load_tsv, vocabulary_of
from fedquad.datasets.partition import PartitionConfig, holdout_split, label_histograms, partition
from fedquad.datasets.synthetic import SyntheticConfig, bayes_accuracy, generate_split, make_synthetic_task
from fedquad.datasets.synthetic_lm import SyntheticLMConfig, constant_answer_accuracy, generate_lm_split
from fedquad.datasets.tasks import (AG_NEWS_CLASSES, ALIASES, DATA_ROOT_ENV, DEFAULT_EVAL_FRACTION,
                                    DEFAULT_EVAL_SPLITS, TASKS, DataSettings, TaskData, TaskSpec, load_task,
                                    load_task_data, resolve_data_root)

__all__ = [
    "AG_NEWS_CLASSES", "ALIASES", "BatchConfig", "CausalLMData", "Columns", "DATA_ROOT_ENV",
    "DEFAULT_EVAL_FRACTION", "DEFAULT_EVAL_SPLITS", "DataSettings", "PartitionConfig", "SyntheticConfig",
    "SyntheticLMConfig", "TASKS", "TaskData", "TaskSpec", "TextClassificationData", "TokenizedData",
    "bayes_accuracy", "clear_token_cache", "constant_answer_accuracy", "count_batches", "generate_lm_split",
    "generate_split", "holdout_split", "iterate_batches", "label_histograms", "load_causal_jsonl", "load_csv",
    "load_file", "load_jsonl", "load_table", "load_task", "load_task_data", "load_tsv", "looks_causal_jsonl",
    "make_synthetic_task", "partition", "resolve_data_root", "vocabulary_of",
]
