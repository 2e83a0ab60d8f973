"""Reference activation quantizer: plain PyTorch, written for clarity. It is the spec.

Every fast path (``fast.py``, a compiled kernel, a GPU kernel) has the same signatures and is
tested against this module: identical codes, identical scale/minimum, identical dequantized values.
That is why the arithmetic below is spelled out operation by operation -- the order and the exact
float32 operations *are* the definition:

    lo, hi = min, max of the group               (tail group: only its real elements)
    r      = hi - lo
    scale  = r / qmax                            qmax = 2**bits - 1
    inv    = (1 / r) * qmax   if r >= qmax * tiny  else 0   (tiny = smallest normal float32)
    code   = clamp(round_half_even((x - lo) * inv), 0, qmax)        round-to-nearest
           = clamp(floor((x - lo) * inv + u), 0, qmax),  u ~ U[0,1)  stochastic
    x'     = code * scale + lo                   (two roundings: multiply, then add; no FMA)

``inv`` is one reciprocal per group instead of a division per element, so a kernel can hoist it
(``1 / r * qmax`` is also exactly what eager ``qmax / r`` computes). The ``qmax * tiny`` guard keeps
``inv`` finite: constant groups (and groups whose range is below ~1e-36) get code 0 everywhere and
round-trip to exactly ``lo``. For finite input ``0 <= (x - lo) * inv <= qmax * (1 + 3 eps)``, so the
round-to-nearest clamp never changes a code; it is kept here as the plain statement of the spec.

Saved activations go through ``quantize_saved``, which adds two per-tensor decisions the pack hook
needs, both taken from the tensor's min/max (a kernel gets them from its own per-group pass, with
no extra read and no host synchronisation):

    keep_raw = not (|min| < limit and |max| < limit)    (true for NaN/inf too, and when a group's
               range overflows float32): the codes are then unspecified
    sqrt     = sqrt_nonnegative and min >= 0             quantize s = sqrt(x) (correctly rounded)
               instead of x; stored as -scale (the sign bit marks the grid) and squared back:
    x'       = (code * |scale| + lo) ** 2   where signbit(scale), else  code * |scale| + lo

``torch.sqrt`` on CPU is not correctly rounded (it differs from IEEE sqrt in ~20% of float32
inputs), so the spec computes it in float64 and rounds once, which equals IEEE float32 sqrt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedquad.errors import FedquadError
from fedquad.plan import DEFAULT_GROUP_SIZE

SUPPORTED_BITS = (8, 4)
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TINY = torch.finfo(torch.float32).tiny
_PRIVATE_SEED = 0x5EED_0F_AC7  # stochastic rounding without a generator must not touch the global RNG


@dataclass(frozen=True)
class QuantizedTensor:
    """What a quantizer keeps of one tensor; everything needed to rebuild it, nothing more.

    ``payload`` holds one code per element (int8) or two per byte (int4, low nibble = even index,
    last high nibble zero for odd counts); ``scale``/``minimum`` hold one float32 per group. A set
    sign bit on a group's scale means the group is on the square-root grid (``quantize_saved``).
    """

    payload: torch.Tensor  # uint8 [numel] (int8) or [ceil(numel / 2)] (int4)
    scale: torch.Tensor  # float32 [num_groups]
    minimum: torch.Tensor  # float32 [num_groups]
    shape: torch.Size
    dtype: torch.dtype
    bits: int
    group_size: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Exact bytes kept alive: what the activation-memory accounting charges for this tensor."""
        return sum(t.numel() * t.element_size() for t in (self.payload, self.scale, self.minimum))


def packed_nbytes(numel: int, bits: int, group_size: int) -> int:
    """Bytes a QuantizedTensor of ``numel`` elements keeps: codes plus two float32 per group."""
    check_config(bits, group_size)
    groups = -(-numel // group_size)
    return -(-numel * bits // 8) + 8 * groups


def check_config(bits: int, group_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise FedquadError(f"quantization bits must be 8 or 4, got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise FedquadError(f"quantization group_size must be a positive integer, got {group_size!r}")


def check_input(x: torch.Tensor, bits: int, group_size: int) -> None:
    """Shared by every implementation so they reject exactly the same inputs."""
    check_config(bits, group_size)
    if x.dtype not in _FLOAT_DTYPES:
        raise FedquadError(f"can only quantize float32/bfloat16/float16 tensors, got {x.dtype}")


def check_finite(scale: torch.Tensor) -> None:
    """NaN/inf inputs (or a range that overflows float32) poison a whole group silently; refuse.

    Checked on the per-group scale, which costs one pass over ``num_groups`` floats, not the tensor.
    Callers (the saved-tensor hook) skip such tensors before quantizing.
    """
    if not bool(torch.isfinite(scale).all()):
        raise ValueError("cannot quantize a tensor with non-finite values or a range beyond float32")


def group_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, inv) per group from its min/max; see the module docstring for why ``inv`` exists."""
    qmax = float((1 << bits) - 1)
    r = hi - lo
    scale = r / qmax
    inv = torch.where(r >= qmax * _TINY, r.reciprocal() * qmax, torch.zeros_like(r))
    return scale, inv


def private_generator(device: torch.device) -> torch.Generator:
    """A per-device generator owned by this package, so ``generator=None`` stays reproducible
    within a process and never advances the global RNG (which would change dropout masks)."""
    key = str(device)
    gen = _PRIVATE_GENERATORS.get(key)
    if gen is None:
        gen = _PRIVATE_GENERATORS[key] = torch.Generator(device=device)
        gen.manual_seed(_PRIVATE_SEED)
    return gen


_PRIVATE_GENERATORS: dict[str, torch.Generator] = {}


def uniform_noise(shape: tuple[int, int], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """U[0,1) noise for the *padded* [num_groups, group_size] grid, drawn in one call so that every
    implementation consumes the generator identically and produces identical stochastic codes."""
    gen = generator if generator is not None else private_generator(device)
    return torch.rand(shape, generator=gen, device=device, dtype=torch.float32)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [n] (each < 16) -> bytes [ceil(n/2)]; element 2k in the low nibble of byte k."""
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)  # [ceil(n/2), 2]
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(payload: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of ``pack_int4``: bytes [ceil(n/2)] -> uint8 codes [n]."""
    codes = torch.stack([payload & 0x0F, payload >> 4], dim=1)  # [ceil(n/2), 2]
    return codes.reshape(-1)[:numel]


def quantize(x: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE, stochastic: bool = False,
             generator: torch.Generator | None = None) -> QuantizedTensor:
    """Per-group asymmetric min/max quantization of ``x`` flattened; see the module docstring."""
    check_input(x, bits, group_size)
    q = _quantize_flat(x.detach().reshape(-1).to(torch.float32), bits, group_size, stochastic, generator)
    check_finite(q.scale)
    return QuantizedTensor(q.payload, q.scale, q.minimum, x.shape, x.dtype, bits, group_size)


def quantize_saved(x: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE, stochastic: bool = False,
                   generator: torch.Generator | None = None, sqrt_nonnegative: bool = True,
                   limit: float = math.inf) -> tuple[QuantizedTensor, torch.Tensor]:
    """(quantized, keep_raw): the pack hook's quantizer, see the module docstring. ``keep_raw`` is a
    0-dim bool tensor on ``x``'s device; where it is true the caller must keep ``x`` itself."""
    check_input(x, bits, group_size)
    flat = x.detach().reshape(-1).to(torch.float32)  # [n]
    lo, hi = (flat.amin(), flat.amax()) if flat.numel() else (flat.new_zeros(()), flat.new_zeros(()))
    keep_raw = ~((lo.abs() < limit) & (hi.abs() < limit))
    use_sqrt = (lo >= 0) & ~keep_raw if sqrt_nonnegative else torch.zeros_like(keep_raw)
    src = torch.where(use_sqrt, flat.double().sqrt().float(), flat)
    q = _quantize_flat(src, bits, group_size, stochastic, generator)
    keep_raw = keep_raw | ~torch.isfinite(q.scale).all()  # a group range beyond float32
    scale = torch.where(use_sqrt, q.scale.neg(), q.scale)
    return QuantizedTensor(q.payload, scale, q.minimum, x.shape, x.dtype, bits, group_size), keep_raw


def _quantize_flat(flat: torch.Tensor, bits: int, group_size: int, stochastic: bool,
                   generator: torch.Generator | None) -> QuantizedTensor:
    """The quantizer proper on float32 [n], with no finiteness check (callers decide)."""
    n = flat.numel()
    groups = -(-n // group_size)
    pad = groups * group_size - n
    if pad:  # replicate the last element: the tail group's min/max are those of its real elements
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    grid = flat.view(groups, group_size)  # [G, group_size]

    lo = grid.amin(dim=1) if groups else grid.new_zeros(0)  # [G]
    hi = grid.amax(dim=1) if groups else grid.new_zeros(0)  # [G]
    scale, inv = group_params(lo, hi, bits)

    v = (grid - lo[:, None]) * inv[:, None]  # [G, group_size], in [0, qmax] up to rounding
    if stochastic:
        v = torch.floor(v + uniform_noise(grid.shape, grid.device, generator))
    else:
        v = torch.round(v)
    codes = v.clamp(0, (1 << bits) - 1).to(torch.uint8).reshape(-1)[:n]  # [n]
    payload = pack_int4(codes) if bits == 4 else codes.clone()
    return QuantizedTensor(payload, scale, lo, flat.shape, torch.float32, bits, group_size)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Rebuild a new contiguous tensor of ``q.shape``/``q.dtype``; never mutates ``q``."""
    n = q.numel
    codes = unpack_int4(q.payload, n) if q.bits == 4 else q.payload  # uint8 [n]
    scale = q.scale.abs().repeat_interleave(q.group_size)[:n]  # [n]
    lo = q.minimum.repeat_interleave(q.group_size)[:n]  # [n]
    out = codes.to(torch.float32) * scale + lo
    on_sqrt_grid = torch.signbit(q.scale).repeat_interleave(q.group_size)[:n]  # [n]
    out = torch.where(on_sqrt_grid, out * out, out)
    return out.to(q.dtype).reshape(q.shape)
