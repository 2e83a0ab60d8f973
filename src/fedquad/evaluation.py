"""Central evaluation of a global adapter state on a held-out split.

One entry point, `evaluate(adapted, state, tokens, ...)`, used by the simulator, `compare` and
the Flower ServerApp. It loads the state and hands over to the model's task kind
(`AdaptedModel.kind`, `fedquad.tasks`: classification or causal LM), chosen when the model was
loaded. It always returns `accuracy` (the metric time-to-accuracy is measured on), `loss` and
`examples`; a kind may add more (e.g. `perplexity` for causal LMs).
"""

from __future__ import annotations

import torch

from fedquad.datasets.batching import TokenizedData
from fedquad.models.adapted import AdaptedModel
from fedquad.tasks import eval_indices

__all__ = ["eval_indices", "evaluate"]


def evaluate(adapted: AdaptedModel, state: dict[str, torch.Tensor] | None, tokens: TokenizedData, *,
             batch_size: int = 64, max_examples: int | None = None, seed: int = 0) -> dict[str, float]:
    """The task kind's metrics of the model with `state` loaded (None: as it is) on `tokens`."""
    if state is not None:
        with torch.no_grad():  # loaded outside inference mode: the parameters train again afterwards
            adapted.load_adapter_state(state)
    return adapted.kind.evaluate(adapted, tokens, batch_size=batch_size, max_examples=max_examples, seed=seed)
