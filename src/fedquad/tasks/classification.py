"""Sequence classification: text (or text pairs) in, one class per example out.

Tokens: the tokenizer's own layout (special tokens, pairs truncated longest-first, segment ids
where the tokenizer has them), one label per example; batches are `TokenizedData.collate`'s.
Evaluation: accuracy of the argmax class and the mean loss per example. Head: the model
family's classification head (`seq-cls`), trained with the adapters.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from fedquad.datasets.batching import BatchConfig, TokenizedData, iterate_batches
from fedquad.datasets.files import load_file
from fedquad.datasets.loaders import Columns, TextClassificationData
from fedquad.tasks.base import TaskKind, eval_indices

_TOKENIZE_CHUNK = 4096  # rows per tokenizer call: bounds the tokenizer's temporary Python lists


class ClassificationTask(TaskKind):
    head = "seq-cls"
    auto_model_class = "AutoModelForSequenceClassification"
    head_trains = True  # a new classifier on top of the blocks: it must learn
    has_classes = True
    needs_decoder = False
    data_type = TextClassificationData
    tokens_type = TokenizedData
    tokens_on_disk = True

    def load_file(self, path: str | os.PathLike, columns: Columns = Columns()) -> TextClassificationData:
        return load_file(path, columns)

    def model_num_labels(self, data: TextClassificationData) -> int:
        return max(int(data.num_labels), 2)

    def _tokenize(self, data: TextClassificationData, tokenizer, max_len: int, key: tuple) -> TokenizedData:
        return tokenize_classification(data, tokenizer, max_len, key)

    def generated_labels(self, input_ids: torch.Tensor, num_labels: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, num_labels, (input_ids.shape[0],), generator=generator)

    def evaluate(self, adapted, tokens: TokenizedData, *, batch_size: int = 64, max_examples: int | None = None,
                 seed: int = 0) -> dict[str, float]:
        return evaluate_classification(adapted, tokens, batch_size=batch_size, max_examples=max_examples, seed=seed)


def tokenize_classification(data: TextClassificationData, tokenizer, max_len: int, key: tuple) -> TokenizedData:
    """Token ids of `data`, truncated to `max_len` (pairs: longest-first), without padding."""
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    pad = tokenizer.pad_token_id
    if pad is None:  # decoder tokenizers (GPT-2 as a classifier) often have no pad token; eos is the usual stand-in
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids, types, lengths = [], [], []
    for start in range(0, len(data), _TOKENIZE_CHUNK):
        stop = min(start + _TOKENIZE_CHUNK, len(data))
        pairs = None if data.text_pairs is None else list(data.text_pairs[start:stop])
        enc = tokenizer(list(data.texts[start:stop]), pairs, truncation=True, max_length=max_len, padding=False,
                        return_attention_mask=False, return_token_type_ids=with_types)
        for i, row in enumerate(enc["input_ids"]):
            ids.append(np.asarray(row, dtype=np.int32))
            lengths.append(len(row))
            if with_types:
                types.append(np.asarray(enc["token_type_ids"][i], dtype=np.int8))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
    return TokenizedData(ids=cat(ids, np.int32), offsets=offsets, labels=np.array(data.labels, dtype=np.int64),
                         token_type_ids=cat(types, np.int8) if with_types else None, pad_token_id=int(pad),
                         max_len=int(max_len), key=key)


@torch.inference_mode()  # no autograd bookkeeping at all: evaluation every round must stay cheap
def evaluate_classification(adapted, tokens: TokenizedData, *, batch_size: int = 64, max_examples: int | None = None,
                            seed: int = 0) -> dict[str, float]:
    """Accuracy and mean loss per example of `adapted` (an AdaptedModel) as it is, on `tokens`.

    `max_class_share` is the share of examples given the most predicted class: 1.0 means the
    model predicts one class for everything (a collapsed run looks like "accuracy = majority
    share"; this tells the two apart)."""
    was_training = adapted.model.training
    adapted.model.eval()
    idx = eval_indices(len(tokens), max_examples, seed)
    correct, loss_sum, seen = 0, 0.0, 0
    predicted = torch.zeros(max(int(adapted.model.config.num_labels), 2), dtype=torch.int64)
    config = BatchConfig(batch_size=batch_size, shuffle=False)
    try:
        for batch in iterate_batches(tokens, config, indices=idx):
            batch = {k: v.to(adapted.device) for k, v in batch.items()}
            out = adapted.model(**batch)
            n = int(batch["labels"].shape[0])
            guess = out.logits.argmax(-1)
            correct += int((guess == batch["labels"]).sum())
            predicted += torch.bincount(guess.cpu(), minlength=len(predicted))[:len(predicted)]
            loss_sum += float(out.loss) * n
            seen += n
    finally:
        adapted.model.train(was_training)
    return {"accuracy": correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "examples": float(seen),
            "max_class_share": float(predicted.max()) / max(seen, 1)}
