"""Server-side aggregation of client updates: per-key weighted mean (docs/design.md, "Aggregation").

Clients train different subsets of blocks (different LoRA depths), so an update holds only the
tensors its client trained. Each key is averaged over the clients that returned it, weighted by
their local example counts; a key nobody returned keeps its previous tensor *object* (bitwise
unchanged, no copy). LoRA A and B are separate keys and so are averaged separately (FedAvg on
LoRA, as FedQuad and our baselines do; averaging the product B@A would need a different merge).

Nothing a client sends can crash a merge or poison the global state. Every update is screened
on its own, against the global state only, so a rejected update leaves the result exactly as if
it had never been sent (the guards and their defaults: `AggregationConfig`, docs/simulation.md):

- structure: a mapping of string keys the global state holds; each value a plain dense tensor
  (`torch.Tensor` or `nn.Parameter`, strided layout, not nested, not on the meta device) of the
  global tensor's exact shape and dtype, with finite values;
- size: an update tensor's L2 norm at most max(`max_norm_ratio` x the global tensor's norm,
  `norm_floor_rms` x sqrt(elements)) -- the floor because LoRA B starts at zero;
- weight: the example count a whole number in [1, `max_examples`]; weights are normalised in
  float64 before the sum, so no count can overflow or dominate past its share;
- one update per client and round: the first valid one counts, later ones are rejected;
- the merged tensor must be finite, otherwise the previous tensor is kept and the key reported.

Pure functions over `dict[str, torch.Tensor]`: no Flower, no model. `checks` screens, `merge` merges.
"""

from fedquad.aggregation.checks import (MAX_EXAMPLES, AggregationConfig, TensorSpec, check_examples, expected_spec,
                                       norm_bound, tensor_norm, validate_update)
from fedquad.aggregation.merge import (AggregationReport, RejectedUpdate, aggregate_per_key, aggregate_ranked,
                                      tail_energy_share, update_norm, weighted_mean)

__all__ = ["AggregationConfig", "AggregationReport", "MAX_EXAMPLES", "RejectedUpdate", "TensorSpec", "aggregate_per_key",
           "aggregate_ranked", "check_examples", "expected_spec", "norm_bound", "tail_energy_share", "tensor_norm",
           "update_norm", "validate_update", "weighted_mean"]
