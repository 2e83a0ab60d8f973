"""What the saved-tensor hook keeps of a quantized activation, around the quantizer's contract.

The quantizer (``reference.quantize_saved`` and its fast twins) is left exactly as specified; two
storage choices wrap it:

* **16-bit group parameters.** The quantizer returns one float32 scale and one float32 minimum per
  group. At int4 with groups of 64 those 8 bytes are a fifth of what a group keeps (32 bytes of
  codes), so the hook may keep them as bfloat16 (4 bytes per group; kept/raw of a float32 tensor
  0.156 -> 0.141). Rounding a minimum or a scale to bfloat16 moves a dequantized value by at most
  2**-9 of (|minimum| + range), ~6% of an int4 step when |minimum| ~ range (but about one int8
  step, hence float32 at int8); measured, it moves the worst gradient cosine by less than 0.002
  (docs/quantization.md). bfloat16 rather than float16: it has
  float32's exponent range, so no value needs a range check (which would read device data on the
  host). The sign bit that marks a square-root-grid group survives the cast.
* **Per-group Hadamard rotation** (``fedquad.quant.rotation.choose_groups``): groups whose range a
  rotation narrows are quantized rotated; one bit per group says which, packed 8 to a byte.

``prepare`` runs before the quantizer, ``store`` after it, ``restore`` in unpack. All three are
device-side tensor work only: no host synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from fedquad.quant import rotation
from fedquad.quant.reference import QuantizedTensor

PARAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class StoredTensor:
    """A quantized activation as kept: the quantizer's result with its scale/minimum in
    ``q.scale.dtype``, plus the packed rotation flags (None when no group could be rotated)."""

    q: QuantizedTensor
    flags: torch.Tensor | None  # uint8 [ceil(groups / 8)]
    dtype: torch.dtype  # of the original activation

    @property
    def nbytes(self) -> int:
        """Exact bytes kept: codes, scales, minima and flags."""
        return self.q.nbytes + (0 if self.flags is None else self.flags.numel())


def rotates(numel: int, group_size: int) -> bool:
    """Shape-only (so accounting is predictable): the tensor splits into whole power-of-two groups."""
    return group_size > 1 and not group_size & (group_size - 1) and rotation.can_rotate(numel, group_size)


def stored_nbytes(numel: int, bits: int, group_size: int, param_dtype: str, rotate: bool) -> int:
    """Bytes ``store`` keeps for ``numel`` elements; mirrors ``StoredTensor.nbytes`` without data."""
    groups = -(-numel // group_size)
    flags = -(-groups // 8) if rotate and rotates(numel, group_size) else 0
    return -(-numel * bits // 8) + 2 * groups * PARAM_DTYPES[param_dtype].itemsize + flags


def prepare(x: torch.Tensor, group_size: int, rotate: bool, limit: float = math.inf):
    """(tensor for the quantizer, rotation flags or None)."""
    if not (rotate and rotates(x.numel(), group_size)):
        return x, None
    return rotation.choose_groups(x, group_size, limit)


def store(q: QuantizedTensor, flags: torch.Tensor | None, dtype: torch.dtype, param_dtype: str) -> StoredTensor:
    target = PARAM_DTYPES[param_dtype]
    if q.scale.dtype != target:
        q = replace(q, scale=q.scale.to(target), minimum=q.minimum.to(target))
    return StoredTensor(q, None if flags is None else rotation.pack_flags(flags), dtype)


def restore(s: StoredTensor, dequantize: Callable[[QuantizedTensor], torch.Tensor]) -> torch.Tensor:
    """The activation back, in its dtype and shape; ``s`` is only read (unpack may run twice)."""
    q = s.q
    if q.scale.dtype != torch.float32:  # the quantizer's contract: float32 parameters
        q = replace(q, scale=q.scale.float(), minimum=q.minimum.float())
    out = dequantize(q)
    if s.flags is not None:
        block = q.group_size
        out = rotation.undo_groups(out.float(), rotation.unpack_flags(s.flags, q.numel // block), block)
    return out.to(s.dtype)


@dataclass(frozen=True)
class TwoValued:
    """A tensor whose every element is 0 or one value ``high`` (a CPU dropout mask: 0 or 1/(1-p)),
    kept exactly as one bit per element (packed 8 to a byte, low bit first) plus ``high``."""

    bits: torch.Tensor  # uint8 [ceil(numel / 8)]
    high: torch.Tensor  # 0-dim, the tensor's dtype
    shape: torch.Size

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    @property
    def nbytes(self) -> int:
        return self.bits.numel() + self.high.element_size()


_BIT_WEIGHTS = {}


def _weights(device: torch.device) -> torch.Tensor:
    if device not in _BIT_WEIGHTS:
        _BIT_WEIGHTS[device] = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=device)
    return _BIT_WEIGHTS[device]


def two_valued(x: torch.Tensor, probe: int = 64) -> TwoValued | None:
    """``x`` as a TwoValued when every element is 0 or its maximum (> 0), else None. CPU tensors
    only (the decision is read on the host, free there, a synchronisation on a GPU). A cheap probe of
    the first elements turns almost every other tensor away before the full check; the full check
    runs on the two-valued ones (the masks) alone."""
    if x.device.type != "cpu" or not x.is_floating_point() or x.numel() < 2 * probe:
        return None
    flat = x.detach().reshape(-1)
    head = flat[:probe]
    if not bool(((head == 0) | (head == head.amax())).all()):
        return None
    high = flat.amax()
    if not bool(high > 0):
        return None
    on = flat == high
    if not bool((on | (flat == 0)).all()):
        return None
    pad = -on.numel() % 8
    if pad:
        on = torch.cat([on, on.new_zeros(pad)])
    bits = (on.view(-1, 8).to(torch.uint8) * _weights(x.device)).sum(1, dtype=torch.uint8)
    return TwoValued(bits, high.clone(), x.shape)


def restore_two_valued(s: TwoValued) -> torch.Tensor:
    on = (s.bits.unsqueeze(1) & _weights(s.bits.device)).ne(0).reshape(-1)[:s.shape.numel()]
    return torch.where(on, s.high, s.high.new_zeros(())).view(s.shape)

