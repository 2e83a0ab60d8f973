"""Central evaluation of a global adapter state on a held-out split.

One entry point, `evaluate(adapted, state, tokens, ...)`, used by the simulator, `compare` and
the Flower ServerApp. It always returns `accuracy` (the metric time-to-accuracy is measured on)
and `loss`; a task may add more (e.g. `perplexity` for causal LMs).
"""

from __future__ import annotations

import numpy as np
import torch

from fedquad.datasets.batching import BatchConfig, TokenizedData, iterate_batches
from fedquad.models.adapted import AdaptedModel


def eval_indices(num_examples: int, max_examples: int | None, seed: int = 0) -> np.ndarray:
    """A fixed, seeded subset of the eval split (all of it when `max_examples` is None)."""
    if max_examples is None or max_examples >= num_examples:
        return np.arange(num_examples)
    return np.sort(np.random.default_rng([seed, 0xE7A1]).choice(num_examples, max_examples, replace=False))


@torch.no_grad()
def evaluate(adapted: AdaptedModel, state: dict[str, torch.Tensor] | None, tokens: TokenizedData, *,
             batch_size: int = 64, max_examples: int | None = None, seed: int = 0) -> dict[str, float]:
    """Accuracy and mean loss of the model with `state` loaded (None: as it is) on `tokens`."""
    if state is not None:
        adapted.load_adapter_state(state)
    if adapted.task == "causal-lm":
        from fedquad.evaluation_lm import evaluate_causal_lm  # the decoder path lives on its own
        return evaluate_causal_lm(adapted, tokens, batch_size=batch_size, max_examples=max_examples, seed=seed)
    was_training = adapted.model.training
    adapted.model.eval()
    idx = eval_indices(len(tokens), max_examples, seed)
    correct, loss_sum, seen = 0, 0.0, 0
    config = BatchConfig(batch_size=batch_size, shuffle=False)
    try:
        for batch in iterate_batches(tokens, config, indices=idx):
            batch = {k: v.to(adapted.device) for k, v in batch.items()}
            out = adapted.model(**batch)
            n = int(batch["labels"].shape[0])
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            loss_sum += float(out.loss) * n
            seen += n
    finally:
        adapted.model.train(was_training)
    return {"accuracy": correct / max(seen, 1), "loss": loss_sum / max(seen, 1), "examples": float(seen)}
