"""Walsh-Hadamard rotation of consecutive blocks, applied to an activation before quantizing it.

Why: a min/max group is only as fine as its widest value allows. Transformer activations carry a
few outlier channels (LayerNorm outputs, attention values), so a group holding one outlier spends
its 16 int4 levels on that value and rounds every other element to a handful of codes. Rotating
each block of ``block`` consecutive elements by the orthonormal Hadamard matrix ``H / sqrt(block)``
spreads every outlier evenly over its block: the rotated values are close to Gaussian, their range
shrinks, and the quantization error (which the rotation preserves in L2, being orthogonal) drops.
``H / sqrt(block)`` is symmetric and its own inverse, so undoing the rotation is the same call.

The blocks are runs of the *flattened* tensor, exactly like the quantizer's groups, so with
``block == group_size`` every quantization group is one rotated block. The tensor's element count
must be a multiple of ``block`` (callers skip the rotation otherwise).

``rotate_reference`` is the spec: the plain butterfly (fast Walsh-Hadamard transform, log2(block)
passes of sums and differences). ``rotate`` computes the same transform as one small matmul against
the cached normalised matrix (``block`` multiply-adds per element, which a BLAS runs near peak and
which costs one read and one write of the tensor, where the butterfly in eager PyTorch costs
log2(block) full passes). The two agree to float32 rounding; ``tests/test_rotation.py`` compares
them.
"""

from __future__ import annotations

import math

import torch

from fedquad.errors import FedquadError

_MATRICES: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}


def check_block(block: int) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1 or block & (block - 1):
        raise FedquadError(f"Hadamard rotation block must be a power of two, got {block!r}")


def can_rotate(numel: int, block: int) -> bool:
    """Whether a tensor of ``numel`` elements splits into whole blocks."""
    return numel > 0 and numel % block == 0


def _check_input(x: torch.Tensor, block: int) -> None:
    check_block(block)
    if not x.is_floating_point():
        raise FedquadError(f"can only rotate floating-point tensors, got {x.dtype}")
    if not can_rotate(x.numel(), block):
        raise FedquadError(f"a tensor of {x.numel()} elements does not split into blocks of {block}")


def hadamard_matrix(block: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal Sylvester-Hadamard matrix ``H_block / sqrt(block)`` (symmetric, H @ H = I)."""
    check_block(block)
    key = (block, str(device), dtype)
    h = _MATRICES.get(key)
    if h is None:
        m = torch.ones(1, 1, dtype=torch.float64)
        while m.shape[0] < block:  # Sylvester: H_2n = [[H, H], [H, -H]]
            m = torch.cat([torch.cat([m, m], 1), torch.cat([m, -m], 1)], 0)
        h = _MATRICES[key] = (m / math.sqrt(block)).to(device=device, dtype=dtype)
    return h


def rotate_reference(x: torch.Tensor, block: int) -> torch.Tensor:
    """Spec: each run of ``block`` consecutive elements of ``x.reshape(-1)`` times H / sqrt(block),
    by the butterfly. Returns a new float32 tensor of ``x``'s shape; ``x`` is only read."""
    _check_input(x, block)
    y = x.detach().reshape(-1, block).to(torch.float32).clone()  # [rows, block]
    h = 1
    while h < block:  # pair element i with i + h inside every run of 2h: (a, b) -> (a + b, a - b)
        v = y.view(-1, block // (2 * h), 2, h)
        a, b = v[:, :, 0, :].clone(), v[:, :, 1, :]
        v[:, :, 0, :] += b
        v[:, :, 1, :] = a - b
        h *= 2
    return (y * (1.0 / math.sqrt(block))).reshape(x.shape)


def rotate(x: torch.Tensor, block: int) -> torch.Tensor:
    """Same transform as ``rotate_reference`` as one matmul; float32 result of ``x``'s shape.
    It is its own inverse: ``rotate(rotate(x, b), b) == x`` up to float32 rounding."""
    _check_input(x, block)
    rows = x.detach().reshape(-1, block).to(torch.float32)  # [rows, block]; a view when x is float32
    return (rows @ hadamard_matrix(block, x.device)).reshape(x.shape)


# ---- per-group choice, as the saved-tensor hook uses it ----------------------------------------
#
# A rotation helps a group that holds an outlier and hurts one whose values share a large offset
# or vary smoothly (a log-sum-exp row, rotary cos/sin tables): there the transform piles the
# group's energy into a few coefficients and widens its range. So each group is rotated only where
# that narrows its min/max range, which is what sets a min/max grid's step, and one bit per group
# records the choice. Everything stays on the device: no host synchronisation.

def _native(t: torch.Tensor) -> bool:
    """CPU tensors use the native kernels where they build (bit-identical to the reference)."""
    from fedquad.quant import cpu_ext, fast
    return t.device.type == "cpu" and fast._native_enabled and cpu_ext.available()


def choose_groups(x: torch.Tensor, block: int, limit: float = math.inf) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, flags): ``y`` float32 of ``x``'s shape with each block replaced by its rotation where
    that narrows the block's range, ``flags`` bool [numel / block] marking those blocks.

    Nothing is rotated when ``x`` is non-negative (the square-root grid serves it better, and a
    rotation would destroy the sign it relies on) or holds a value that is non-finite or of
    magnitude >= ``limit`` (the caller keeps such tensors raw; rotating would hide the value)."""
    _check_input(x, block)
    if _native(x):  # the same butterfly as choose_groups_reference, in two passes (cpu_ext.py)
        from fedquad.quant import cpu_ext
        return cpu_ext.choose_groups(x, block, limit)
    plain = x.detach().reshape(-1, block).to(torch.float32)  # [G, block]
    rotated = plain @ hadamard_matrix(block, x.device)  # [G, block]
    p_lo, p_hi = plain.amin(dim=1), plain.amax(dim=1)  # [G]
    ordinary = ((p_lo.abs() < limit) & (p_hi.abs() < limit)).all()  # false for NaN/inf too
    signed = p_lo.amin() < 0
    flags = ((rotated.amax(dim=1) - rotated.amin(dim=1)) < (p_hi - p_lo)) & signed & ordinary  # [G]
    return torch.where(flags[:, None], rotated, plain).reshape(x.shape), flags


def undo_groups(y: torch.Tensor, flags: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of ``choose_groups``: rotate the flagged blocks of float32 ``y`` back."""
    if _native(y) and y.dtype == torch.float32:
        from fedquad.quant import cpu_ext
        return cpu_ext.undo_groups(y, flags, block)
    rows = y.reshape(-1, block)
    return torch.where(flags[:, None], rows @ hadamard_matrix(block, y.device), rows).reshape(y.shape)


def choose_groups_reference(x: torch.Tensor, block: int, limit: float = math.inf) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec of ``choose_groups``, one block at a time with the butterfly."""
    _check_input(x, block)
    plain = x.detach().reshape(-1, block).to(torch.float32)
    rows, flags = [], []
    ordinary = bool(torch.all(plain.abs() < limit))
    signed = bool((plain < 0).any())
    for row in plain:
        r = rotate_reference(row, block)
        use = ordinary and signed and bool(r.max() - r.min() < row.max() - row.min())
        rows.append(r if use else row)
        flags.append(use)
    return torch.stack(rows).reshape(x.shape), torch.tensor(flags, dtype=torch.bool)


def undo_groups_reference(y: torch.Tensor, flags: torch.Tensor, block: int) -> torch.Tensor:
    rows = [rotate_reference(r, block) if f else r for r, f in zip(y.reshape(-1, block).float(), flags.tolist())]
    return torch.stack(rows).reshape(y.shape)


def pack_flags(flags: torch.Tensor) -> torch.Tensor:
    """bool [G] -> uint8 [ceil(G / 8)], flag i in bit i % 8 of byte i // 8 (what the hook keeps)."""
    pad = -flags.numel() % 8
    bits = torch.cat([flags, flags.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
    return (bits << torch.arange(8, dtype=torch.uint8, device=flags.device)).sum(dim=1, dtype=torch.uint8)


def unpack_flags(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of ``pack_flags``."""
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8, device=packed.device)) & 1
    return bits.reshape(-1)[:count].bool()
