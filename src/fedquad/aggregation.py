"""Server-side aggregation of client updates: per-key weighted mean (DESIGN section 6).

Clients train different subsets of blocks (different LoRA depths), so an update holds only the
tensors its client trained. Each key is averaged over the clients that returned it, weighted by
their local example counts; a key nobody returned keeps its previous tensor *object* (bitwise
unchanged, no copy). LoRA A and B are separate keys and so are averaged separately (FedAvg on
LoRA, as FedQuad and our baselines do; averaging the product B@A would need a different merge).

Updates are validated first; an invalid one is rejected with its reasons and the round goes on
with the others. Pure functions over `dict[str, torch.Tensor]`: no Flower, no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

TensorSpec = tuple[tuple[int, ...], torch.dtype]


def expected_spec(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """What a valid update may contain: the keys of `state`, each with its exact shape and dtype."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def validate_update(update: Any, expected: Mapping[str, TensorSpec]) -> list[str]:
    """Reasons `update` cannot be used; an empty list means it is valid.

    An update may hold any subset of the expected keys (a client returns only what it trained),
    but nothing else, and every tensor must match shape and dtype exactly and be finite.
    """
    if not isinstance(update, Mapping):
        return [f"update is a {type(update).__name__}, not a mapping of tensors"]
    reasons = []
    for key, value in update.items():
        if key not in expected:
            reasons.append(f"unexpected key {key!r}")
            continue
        if not isinstance(value, torch.Tensor):
            reasons.append(f"{key}: not a tensor ({type(value).__name__})")
            continue
        shape, dtype = expected[key]
        if tuple(value.shape) != tuple(shape):
            reasons.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(shape)}")
        if value.dtype != dtype:
            reasons.append(f"{key}: dtype {value.dtype}, expected {dtype}")
        if (value.is_floating_point() or value.is_complex()) and value.numel():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                reasons.append(f"{key}: {bad} non-finite value{'s' if bad > 1 else ''}")
    return reasons


def _validate_weight(num_examples: Any) -> str | None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)):
        return f"num_examples is {type(num_examples).__name__}, not a number"
    if not math.isfinite(num_examples) or num_examples <= 0:
        return f"num_examples must be positive and finite, got {num_examples}"
    return None


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float | torch.Tensor], *,
                  fallback: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """sum_i w_i * x_i / sum_i w_i, accumulated in float64 (complex128), cast to `dtype` (default: x's).

    A weight is a number (FedAvg: example count; HetLoRA: a sparsity score) or a tensor
    broadcastable to the tensors (per-row or per-element weights: heterogeneous LoRA ranks, where
    a client covers only its first r rows). Elements whose total weight is zero take `fallback`
    (e.g. the previous global value); without one they are an error. Integer dtypes are rounded.
    """
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    if not tensors:
        raise ValueError("weighted_mean of no tensors")
    out_dtype = dtype or tensors[0].dtype
    acc_dtype = torch.complex128 if any(t.is_complex() for t in tensors) else torch.float64
    device = tensors[0].device
    total_x = torch.zeros(tensors[0].shape, dtype=acc_dtype, device=device)
    total_w = torch.zeros((), dtype=torch.float64, device=device)
    for x, w in zip(tensors, weights):
        if tuple(x.shape) != tuple(tensors[0].shape):
            raise ValueError(f"shape {tuple(x.shape)} differs from {tuple(tensors[0].shape)}")
        w = torch.as_tensor(w, dtype=torch.float64, device=device)
        if torch.broadcast_shapes(w.shape, x.shape) != x.shape:
            raise ValueError(f"weight of shape {tuple(w.shape)} does not broadcast to {tuple(x.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and non-negative")
        total_x = total_x + w * x.detach().to(device=device, dtype=acc_dtype)
        total_w = total_w + w
    total_w = total_w.expand(total_x.shape)
    covered = total_w > 0
    mean = total_x / torch.where(covered, total_w, torch.ones_like(total_w))
    if not bool(covered.all()):
        if fallback is None:
            raise ValueError("some elements have zero total weight and no fallback was given")
        mean = torch.where(covered, mean, fallback.detach().to(device=device, dtype=acc_dtype))
    if not (out_dtype.is_floating_point or out_dtype.is_complex):
        mean = mean.real.round() if mean.is_complex() else mean.round()
    return mean.to(out_dtype)


@dataclass(frozen=True)
class RejectedUpdate:
    index: int = field(metadata={"help": "position of the update in the list given to the aggregator"})
    reasons: tuple[str, ...] = field(metadata={"help": "why it was not used"})


@dataclass(frozen=True)
class AggregationReport:
    contributors: Mapping[str, int] = field(metadata={"help": "per key: how many accepted updates held it"})
    examples: Mapping[str, float] = field(metadata={"help": "per key: total weight (examples) behind the mean"})
    accepted: tuple[int, ...] = field(metadata={"help": "indices of the updates used"})
    rejected: tuple[RejectedUpdate, ...] = field(metadata={"help": "updates not used, with reasons"})
    untouched_keys: tuple[str, ...] = field(metadata={"help": "keys nobody returned: previous value kept"})

    def to_dict(self) -> dict:
        """JSON-ready form for the per-round run log."""
        return {"contributors": dict(self.contributors), "examples": dict(self.examples),
                "accepted": list(self.accepted),
                "rejected": [{"index": r.index, "reasons": list(r.reasons)} for r in self.rejected],
                "untouched_keys": list(self.untouched_keys)}


def aggregate_per_key(global_state: Mapping[str, torch.Tensor],
                      updates: Sequence[tuple[Mapping[str, torch.Tensor], float]], *,
                      expected: Mapping[str, TensorSpec] | None = None
                      ) -> tuple[dict[str, torch.Tensor], AggregationReport]:
    """New global state and a report. `global_state` is not modified; keys keep its order.

    `updates` holds (state_dict, num_examples) pairs; `expected` defaults to the shapes and dtypes
    of `global_state`. With no valid update, every value is the previous tensor object.
    """
    expected = expected_spec(global_state) if expected is None else expected
    accepted: list[int] = []
    rejected: list[RejectedUpdate] = []
    per_key: dict[str, tuple[list[torch.Tensor], list[float]]] = {}
    for i, item in enumerate(updates):
        try:
            update, num_examples = item
        except (TypeError, ValueError):
            rejected.append(RejectedUpdate(i, (f"expected a (state_dict, num_examples) pair, got "
                                               f"{type(item).__name__}",)))
            continue
        reasons = validate_update(update, expected)
        weight_problem = _validate_weight(num_examples)
        if weight_problem:
            reasons.append(weight_problem)
        if not reasons:  # a key in `expected` but not in the global state cannot be merged into it
            reasons = [f"key {k!r} is not in the global state" for k in update if k not in global_state]
        if reasons:
            rejected.append(RejectedUpdate(i, tuple(reasons)))
            continue
        accepted.append(i)
        for key, value in update.items():
            tensors, weights = per_key.setdefault(key, ([], []))
            tensors.append(value)
            weights.append(float(num_examples))
    new_state: dict[str, torch.Tensor] = {}
    contributors: dict[str, int] = {}
    examples: dict[str, float] = {}
    untouched: list[str] = []
    for key, old in global_state.items():
        if key not in per_key:
            new_state[key] = old  # same object: callers may rely on identity to skip re-sending it
            contributors[key], examples[key] = 0, 0.0
            untouched.append(key)
            continue
        tensors, weights = per_key[key]
        new_state[key] = weighted_mean(tensors, weights, dtype=old.dtype).to(old.device)
        contributors[key], examples[key] = len(tensors), float(sum(weights))
    report = AggregationReport(contributors=contributors, examples=examples, accepted=tuple(accepted),
                               rejected=tuple(rejected), untouched_keys=tuple(untouched))
    return new_state, report


def _rank_weight(key: str, value: torch.Tensor, rank: int, weight: float) -> torch.Tensor | float:
    """Per-component weight: LoRA A rows / B columns beyond the client's rank carry none."""
    if "lora_A" in key and value.dim() == 2:
        w = torch.zeros(value.shape[0], 1, dtype=torch.float64)
        w[:rank] = weight
        return w
    if "lora_B" in key and value.dim() == 2:
        w = torch.zeros(1, value.shape[1], dtype=torch.float64)
        w[:, :rank] = weight
        return w
    return weight


def update_norm(update: Mapping[str, torch.Tensor]) -> float:
    """Frobenius norm of the client's weight change sum_pairs B @ A (HetLoRA's sparsity score)."""
    total = 0.0
    for key, a in update.items():
        if "lora_A" not in key:
            continue
        b = update.get(key.replace("lora_A", "lora_B"))
        if b is not None:
            total += float((b.double() @ a.double()).pow(2).sum())
    return math.sqrt(total)


def aggregate_ranked(global_state: Mapping[str, torch.Tensor],
                     updates: Sequence[tuple[Mapping[str, torch.Tensor], float, int]]
                     ) -> tuple[dict[str, torch.Tensor], AggregationReport]:
    """HetLoRA's merge: weight = examples x update norm, each rank component averaged over the clients
    whose rank covers it; components nobody trained keep their previous value."""
    expected = expected_spec(global_state)
    accepted, rejected = [], []
    per_key: dict[str, tuple[list[torch.Tensor], list]] = {}
    for i, (update, examples, rank) in enumerate(updates):
        reasons = validate_update(update, expected)
        problem = _validate_weight(examples)
        if problem:
            reasons.append(problem)
        if reasons:
            rejected.append(RejectedUpdate(i, tuple(reasons)))
            continue
        accepted.append(i)
        weight = float(examples) * max(update_norm(update), 1e-12)
        for key, value in update.items():
            tensors, weights = per_key.setdefault(key, ([], []))
            tensors.append(value)
            weights.append(_rank_weight(key, value, rank, weight))
    new_state, contributors, examples_per_key, untouched = {}, {}, {}, []
    for key, old in global_state.items():
        if key not in per_key:
            new_state[key], contributors[key], examples_per_key[key] = old, 0, 0.0
            untouched.append(key)
            continue
        tensors, weights = per_key[key]
        new_state[key] = weighted_mean(tensors, weights, fallback=old, dtype=old.dtype).to(old.device)
        contributors[key] = len(tensors)
        examples_per_key[key] = float(sum(float(updates[i][1]) for i in accepted if key in updates[i][0]))
    return new_state, AggregationReport(contributors, examples_per_key, tuple(accepted), tuple(rejected),
                                        tuple(untouched))


def tail_energy_share(update: Mapping[str, torch.Tensor], rank: int, tail: int) -> float:
    """Share of the update's LoRA energy in its last `tail` rank components (HetLoRA self-pruning).

    Energy of component j over all pairs: ||B[:, j]||^2 * ||A[j, :]||^2. NaN when there is none."""
    total = tail_part = 0.0
    for key, a in update.items():
        if "lora_A" not in key:
            continue
        b = update.get(key.replace("lora_A", "lora_B"))
        if b is None:
            continue
        energy = b[:, :rank].double().pow(2).sum(0) * a[:rank].double().pow(2).sum(1)  # [rank]
        total += float(energy.sum())
        tail_part += float(energy[rank - tail:].sum())
    return tail_part / total if total > 0 else float("nan")
