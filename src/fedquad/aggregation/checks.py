"""Screening of client updates before any merge: structure, size, weight (the guards listed in
`fedquad.aggregation`). Pure functions over tensors and numbers."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

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


def short_repr(obj: Any) -> str:
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


def read_update(update: Any, expected: Mapping[str, TensorSpec], bounds: Mapping[str, float] | None
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
            reasons.append(f"key {short_repr(key)} is not a string")
        elif key in snapshot:
            reasons.append(f"key {key!r} given twice")
        elif key not in expected:
            reasons.append(f"unexpected key {short_repr(key)}")
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
    return read_update(update, expected, bounds)[1]


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
                return None, f"num_examples must be a finite whole number, got {short_repr(value)}"
            count = int(as_float)
    except Exception as exc:  # a numeric type whose conversion fails (e.g. a float of 10**400)
        return None, f"num_examples {short_repr(value)} is not usable ({type(exc).__name__})"
    if not 1 <= count <= max_examples:
        shown = f"{count}" if abs(count) < 10**15 else f"about 10**{len(str(abs(count))) - 1}"
        return None, f"num_examples must be between 1 and {max_examples}, got {shown}"
    return count, None
