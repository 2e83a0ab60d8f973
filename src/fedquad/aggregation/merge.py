"""Merging screened updates into the global state: the per-key weighted mean (FedAvg over LoRA
keys) and HetLoRA's rank-aware merge. Every update goes through `fedquad.aggregation.checks` first."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from fedquad.aggregation.checks import (AggregationConfig, TensorSpec, check_examples, expected_spec, norm_bound,
                                       read_update, short_repr)


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
        if isinstance(w, torch.Tensor):
            w = w.to(dtype=torch.float64, device=device)
            if not _broadcasts_to(tuple(w.shape), tuple(x.shape)):
                raise ValueError(f"weight of shape {tuple(w.shape)} does not broadcast to {tuple(x.shape)}")
            finite_nonnegative = bool(torch.isfinite(w).all()) and not bool((w < 0).any())
        else:  # a number: no tensor needed for the checks
            w = float(w)
            finite_nonnegative = math.isfinite(w) and w >= 0
        if not finite_nonnegative:
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


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether a weight of `shape` broadcasts to `target` without changing it (torch's rule)."""
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


@dataclass(frozen=True)
class RejectedUpdate:
    index: int = field(metadata={"help": "position of the update in the list given to the aggregator"})
    reasons: tuple[str, ...] = field(metadata={"help": "why it was not used"})
    client_id: str | None = field(default=None, metadata={"help": "the client that sent it, where known"})


@dataclass(frozen=True)
class AggregationReport:
    contributors: Mapping[str, int] = field(metadata={"help": "per key: how many accepted updates held it"})
    examples: Mapping[str, float] = field(metadata={"help": "per key: total examples behind the mean"})
    accepted: tuple[int, ...] = field(metadata={"help": "indices of the updates used"})
    rejected: tuple[RejectedUpdate, ...] = field(metadata={"help": "updates not used, with reasons"})
    untouched_keys: tuple[str, ...] = field(metadata={"help": "keys nobody returned: previous value kept"})
    unmerged_keys: tuple[str, ...] = field(default=(), metadata={
        "help": "keys whose merged value was not finite (or could not be computed): previous value kept"})

    def to_dict(self) -> dict:
        """JSON-ready form for the per-round run log."""
        return {"contributors": dict(self.contributors), "examples": dict(self.examples),
                "accepted": list(self.accepted),
                "rejected": [{"index": r.index, "client_id": r.client_id, "reasons": list(r.reasons)}
                             for r in self.rejected],
                "untouched_keys": list(self.untouched_keys), "unmerged_keys": list(self.unmerged_keys)}


# An accepted update after screening: (index, snapshot, example count, what the merge needs of it).
_Accepted = tuple[int, dict, int, Any]


def _screen(global_state: Mapping[str, torch.Tensor], updates: Sequence, arity: int,
            client_ids: Sequence[Any] | None, config: AggregationConfig,
            expected: Mapping[str, TensorSpec] | None, extra_check: Callable | None = None
            ) -> tuple[list[_Accepted], list[RejectedUpdate]]:
    """Check each update on its own against the global state; the first valid one per client counts."""
    if client_ids is not None and len(client_ids) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(client_ids)} client ids")
    expected = expected_spec(global_state) if expected is None else expected
    bounds = {k: norm_bound(v, config) for k, v in global_state.items()}
    shape = "(state_dict, num_examples, rank) triple" if arity == 3 else "(state_dict, num_examples) pair"
    accepted: list[_Accepted] = []
    rejected: list[RejectedUpdate] = []
    seen: dict[Any, int] = {}
    for i, item in enumerate(updates):
        cid = None if client_ids is None else client_ids[i]
        try:
            if not isinstance(item, (tuple, list)) or len(item) != arity:
                raise _Reject(f"expected a {shape}, got {type(item).__name__}")
            update, examples, *rest = item
            snapshot, reasons = read_update(update, expected, bounds)
            count, problem = check_examples(examples, config.max_examples)
            reasons += [problem] if problem else []
            if not reasons:  # a key in `expected` but not in the global state cannot be merged into it
                reasons = [f"key {k!r} is not in the global state" for k in snapshot if k not in global_state]
            if not reasons and cid is not None and cid in seen:
                reasons = [f"client {short_repr(cid)} already sent update {seen[cid]} this round"]
            if reasons:
                raise _Reject(*reasons)
            extra = extra_check(snapshot, count, *rest) if extra_check else None
        except _Reject as rej:
            rejected.append(RejectedUpdate(i, rej.args, None if cid is None else str(cid)))
            continue
        except Exception as exc:  # last resort: an object that breaks even the checks is not used
            rejected.append(RejectedUpdate(i, (f"update cannot be checked ({type(exc).__name__}: "
                                               f"{short_repr(str(exc))})",), None if cid is None else str(cid)))
            continue
        if cid is not None:
            seen[cid] = i
        accepted.append((i, snapshot, count, extra))
    return accepted, rejected


class _Reject(Exception):
    """An update's reasons for rejection, raised inside the screening loop."""


def _merge_keys(global_state: Mapping[str, torch.Tensor], accepted: list[_Accepted],
                merge: Callable[[str, torch.Tensor, list[_Accepted]], torch.Tensor],
                rejected: list[RejectedUpdate]) -> tuple[dict[str, torch.Tensor], AggregationReport]:
    """Merge every key some accepted update holds; keep a key's previous tensor if the merge is not finite."""
    new_state: dict[str, torch.Tensor] = {}
    contributors: dict[str, int] = {}
    examples: dict[str, float] = {}
    untouched: list[str] = []
    unmerged: list[str] = []
    for key, old in global_state.items():
        holders = [a for a in accepted if key in a[1]]
        contributors[key] = len(holders)
        examples[key] = float(sum(a[2] for a in holders))
        if not holders:
            new_state[key] = old  # same object: callers may rely on identity to skip re-sending it
            untouched.append(key)
            continue
        try:
            value = merge(key, old, holders).to(old.device)
            finite = not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
        except Exception:  # cannot happen for screened updates; if it does, the key is kept and reported
            finite = False
        new_state[key] = value if finite else old
        if not finite:
            unmerged.append(key)
    report = AggregationReport(contributors=contributors, examples=examples, accepted=tuple(a[0] for a in accepted),
                               rejected=tuple(sorted(rejected, key=lambda r: r.index)),
                               untouched_keys=tuple(untouched), unmerged_keys=tuple(unmerged))
    return new_state, report


def aggregate_per_key(global_state: Mapping[str, torch.Tensor],
                      updates: Sequence[tuple[Mapping[str, torch.Tensor], int]], *,
                      expected: Mapping[str, TensorSpec] | None = None,
                      client_ids: Sequence[Any] | None = None,
                      config: AggregationConfig | None = None
                      ) -> tuple[dict[str, torch.Tensor], AggregationReport]:
    """New global state and a report. `global_state` is not modified; keys keep its order.

    `updates` holds (state_dict, num_examples) pairs; `client_ids` (one per update) enables the
    one-update-per-client rule; `expected` defaults to the shapes and dtypes of `global_state`.
    With no valid update, every value is the previous tensor object.
    """
    config = config or AggregationConfig()
    accepted, rejected = _screen(global_state, updates, 2, client_ids, config, expected)

    def merge(key, old, holders):
        total = sum(a[2] for a in holders)  # exact: ints below 2**53 each
        return weighted_mean([a[1][key] for a in holders], [a[2] / total for a in holders], dtype=old.dtype)

    return _merge_keys(global_state, accepted, merge, rejected)


def _rank_weight(key: str, value: torch.Tensor, rank: int, weight: float) -> torch.Tensor | float:
    """Per-component weight: LoRA A rows / B columns beyond the client's rank carry none."""
    if "lora_A" in key and value.dim() == 2:
        w = torch.zeros(value.shape[0], 1, dtype=torch.float64)
        w[:min(rank, value.shape[0])] = weight
        return w
    if "lora_B" in key and value.dim() == 2:
        w = torch.zeros(1, value.shape[1], dtype=torch.float64)
        w[:, :min(rank, value.shape[1])] = weight
        return w
    return weight


def update_norm(update: Mapping[str, torch.Tensor]) -> float:
    """Frobenius norm of the client's weight change sum_pairs B @ A (HetLoRA's sparsity score)."""
    total = 0.0
    for key, a in update.items():
        if "lora_A" not in key:
            continue
        b = update.get(key.replace("lora_A", "lora_B"))
        if b is not None and a.dim() == 2 and b.dim() == 2 and b.shape[1] == a.shape[0]:
            total += float((b.double() @ a.double()).pow(2).sum())
    return math.sqrt(total)


def _sparsity_weight(update: dict, examples: int, rank: Any) -> tuple[int, float]:
    """HetLoRA's (rank, weight = examples x update norm) of a screened update; rejects a bad rank."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or int(rank) < 1:
        raise _Reject(f"rank must be a positive integer, got {short_repr(rank)}")
    weight = examples * max(update_norm(update), 1e-12)
    if not math.isfinite(weight):
        raise _Reject("the update's sparsity weight (examples x norm of B @ A) is not finite")
    return int(rank), weight


def aggregate_ranked(global_state: Mapping[str, torch.Tensor],
                     updates: Sequence[tuple[Mapping[str, torch.Tensor], int, int]], *,
                     client_ids: Sequence[Any] | None = None, config: AggregationConfig | None = None
                     ) -> tuple[dict[str, torch.Tensor], AggregationReport]:
    """HetLoRA's merge: weight = examples x update norm, each rank component averaged over the clients
    whose rank covers it; components nobody trained keep their previous value. Same guards as
    `aggregate_per_key`; the weights are divided by the largest before the sum."""
    config = config or AggregationConfig()
    accepted, rejected = _screen(global_state, updates, 3, client_ids, config, None, _sparsity_weight)
    largest = max((a[3][1] for a in accepted), default=1.0)

    def merge(key, old, holders):
        weights = [_rank_weight(key, a[1][key], a[3][0], a[3][1] / largest) for a in holders]
        return weighted_mean([a[1][key] for a in holders], weights, fallback=old, dtype=old.dtype)

    return _merge_keys(global_state, accepted, merge, rejected)


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
