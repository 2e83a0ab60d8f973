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

Pure functions over `dict[str, torch.Tensor]`: no Flower, no model.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from fedquad.errors import FedquadError

TensorSpec = tuple[tuple[int, ...], torch.dtype]

# More examples than any device trains on in one round (a round is local_steps x batch_size);
# small enough that a float64 sum of a million clients' counts stays exact (< 2**53).
MAX_EXAMPLES = 10**9
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)  # exact types: subclasses may lie about shape or data
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


@dataclass(frozen=True)
class AggregationConfig:
    """The guards every strategy's merge applies before an update may touch the global state."""

    max_norm_ratio: float = field(default=10.0, metadata={
        "help": "reject an update tensor whose L2 norm exceeds this many times the global tensor's "
                "(or the floor below, whichever is larger); inf turns the relative bound off"})
    norm_floor_rms: float = field(default=1.0, metadata={
        "help": "the bound is never below this root-mean-square per element, i.e. a norm of "
                "norm_floor_rms x sqrt(elements): LoRA B starts at zero"})
    max_examples: int = field(default=MAX_EXAMPLES, metadata={
        "help": "largest example count one client may claim in one round; more is rejected"})

    def __post_init__(self) -> None:
        for name in ("max_norm_ratio", "norm_floor_rms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise FedquadError(f"aggregation setting {name} must be a number > 0, got {value!r}")
        m = self.max_examples
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 2**53:
            raise FedquadError(f"aggregation setting max_examples must be an integer in [1, 2**53], got {m!r}")


def expected_spec(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """What a valid update may contain: the keys of `state`, each with its exact shape and dtype."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def tensor_norm(x: torch.Tensor) -> float:
    """L2 norm in float64, scaled by the largest magnitude first so that it cannot overflow."""
    if x.numel() == 0:
        return 0.0
    x = x.detach().to(torch.complex128 if x.is_complex() else torch.float64).abs()
    scale = float(x.max())
    if scale == 0.0 or not math.isfinite(scale):
        return scale
    return scale * float(torch.linalg.vector_norm(x / scale))


def norm_bound(global_tensor: torch.Tensor, config: AggregationConfig) -> float:
    """The largest norm an update tensor for this key may have."""
    g = tensor_norm(global_tensor)
    relative = config.max_norm_ratio * g if 0.0 < g < math.inf else 0.0
    return max(relative, config.norm_floor_rms * math.sqrt(global_tensor.numel()))


def _short(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _tensor_problems(key: str, value: Any, spec: TensorSpec, bound: float | None) -> list[str]:
    """Why `value` cannot stand for `key`; checks in an order where no check can fail on the input."""
    if type(value) not in _TENSOR_TYPES:
        if not isinstance(value, torch.Tensor):
            return [f"{key}: not a tensor ({type(value).__name__})"]
        try:
            nested = value.is_nested is True  # a jagged nested tensor is a subclass
        except Exception:  # a subclass whose every call fails
            nested = False
        return [f"{key}: a nested tensor" if nested else f"{key}: a tensor subclass ({type(value).__name__})"]
    if value.is_nested:
        return [f"{key}: a nested tensor"]
    if value.layout != torch.strided:
        return [f"{key}: layout {value.layout}, expected a dense (strided) tensor"]
    if value.device.type not in _DEVICE_TYPES:
        return [f"{key}: on device {value.device.type!r}, which holds no data to merge"]
    shape, dtype = spec
    problems = []
    if tuple(value.shape) != tuple(shape):
        problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(shape)}")
    if value.dtype != dtype:
        problems.append(f"{key}: dtype {value.dtype}, expected {dtype}")
    if problems or value.numel() == 0:
        return problems
    if value.is_floating_point() or value.is_complex():
        bad = int((~torch.isfinite(value.detach())).sum())
        if bad:
            return [f"{key}: {bad} non-finite value{'s' if bad > 1 else ''}"]
    if bound is not None:
        norm = tensor_norm(value)
        if not norm <= bound:
            return [f"{key}: norm {norm:.4g} exceeds the bound {bound:.4g} (max_norm_ratio x the global "
                    f"tensor's norm, at least norm_floor_rms x sqrt(elements))"]
    return []


def _read_update(update: Any, expected: Mapping[str, TensorSpec], bounds: Mapping[str, float] | None
                 ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(a plain-dict snapshot of the update, its problems): later steps use only the snapshot."""
    if not isinstance(update, Mapping):
        return {}, [f"update is a {type(update).__name__}, not a mapping of tensors"]
    try:
        items = list(update.items())
    except Exception as exc:
        return {}, [f"update cannot be read ({type(exc).__name__})"]
    snapshot: dict[str, torch.Tensor] = {}
    reasons: list[str] = []
    for key, value in items:
        if type(key) is not str:
            reasons.append(f"key {_short(key)} is not a string")
        elif key in snapshot:
            reasons.append(f"key {key!r} given twice")
        elif key not in expected:
            reasons.append(f"unexpected key {_short(key)}")
        else:
            reasons += _tensor_problems(key, value, expected[key], None if bounds is None else bounds.get(key))
            snapshot[key] = value
    return snapshot, reasons


def validate_update(update: Any, expected: Mapping[str, TensorSpec], *,
                    bounds: Mapping[str, float] | None = None) -> list[str]:
    """Reasons `update` cannot be used; an empty list means it is valid.

    An update may hold any subset of the expected keys (a client returns only what it trained),
    but nothing else; every tensor must be dense, match shape and dtype exactly, be finite and,
    where `bounds` names its key, have at most that L2 norm.
    """
    return _read_update(update, expected, bounds)[1]


def check_examples(value: Any, max_examples: int = MAX_EXAMPLES) -> tuple[int | None, str | None]:
    """(the example count as an int, None) or (None, why it is not one).

    A count is a whole number of any numeric type (int, numpy integer, an integral float) in
    [1, max_examples]; bools, strings, NaN, infinities, fractions and absurd sizes are refused."""
    try:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None, f"num_examples is {type(value).__name__}, not a number"
        if isinstance(value, numbers.Integral):
            count = int(value)
        else:
            as_float = float(value)
            if not math.isfinite(as_float) or not as_float.is_integer():
                return None, f"num_examples must be a finite whole number, got {_short(value)}"
            count = int(as_float)
    except Exception as exc:  # a numeric type whose conversion fails (e.g. a float of 10**400)
        return None, f"num_examples {_short(value)} is not usable ({type(exc).__name__})"
    if not 1 <= count <= max_examples:
        shown = f"{count}" if abs(count) < 10**15 else f"about 10**{len(str(abs(count))) - 1}"
        return None, f"num_examples must be between 1 and {max_examples}, got {shown}"
    return count, None


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
            snapshot, reasons = _read_update(update, expected, bounds)
            count, problem = check_examples(examples, config.max_examples)
            reasons += [problem] if problem else []
            if not reasons:  # a key in `expected` but not in the global state cannot be merged into it
                reasons = [f"key {k!r} is not in the global state" for k in snapshot if k not in global_state]
            if not reasons and cid is not None and cid in seen:
                reasons = [f"client {_short(cid)} already sent update {seen[cid]} this round"]
            if reasons:
                raise _Reject(*reasons)
            extra = extra_check(snapshot, count, *rest) if extra_check else None
        except _Reject as rej:
            rejected.append(RejectedUpdate(i, rej.args, None if cid is None else str(cid)))
            continue
        except Exception as exc:  # last resort: an object that breaks even the checks is not used
            rejected.append(RejectedUpdate(i, (f"update cannot be checked ({type(exc).__name__}: "
                                               f"{_short(str(exc))})",), None if cid is None else str(cid)))
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
        raise _Reject(f"rank must be a positive integer, got {_short(rank)}")
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
