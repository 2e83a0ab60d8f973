"""Triton kernels for CUDA tensors: ``reference.quantize_saved`` / ``dequantize``, bit for bit.

Two kernels per quantize, one per dequantize, no host synchronisation:

1. ``_minmax``: each program takes ``BLOCK_G`` groups, writes every group's min, max and a
   non-finite flag. The per-tensor decisions (keep raw, square-root grid) are then a handful of
   torch reductions over the ``num_groups`` results (1/group_size of the tensor), on the device.
2. ``_codes``: reads the device flag, re-reads the groups (usually from L2), computes scale and
   codes (int4: two codes per byte), and writes the scales with the sign bit marking the grid.
3. ``_dequant``: codes * |scale| + min, squared where the sign bit is set.

Bit-exactness with the reference: float32 division and square root are the correctly rounded
``div_rn``/``sqrt_rn`` (plain ``/`` and ``sqrt`` are approximate on NVIDIA GPUs), kernels are
launched with ``enable_fp_fusion=False`` (no FMA contraction), and round-half-even is the
``(v + 1.5 * 2**23) - 1.5 * 2**23`` identity, as in ``cpu_ext.py``. Group sizes need not be
powers of two (tiles are padded and masked); int4 needs an even group size (the callers route odd
ones to the reference). ``TRITON_INTERPRET=1`` runs the same kernels on CPU tensors, which is how
the tests check them without a GPU (``tests/test_quant.py``).
"""

from __future__ import annotations

import math
import os

import torch

from fedquad.plan import DEFAULT_GROUP_SIZE
from fedquad.quant import reference as ref
from fedquad.quant.reference import QuantizedTensor

def available() -> bool:
    """Triton importable and not switched off (``FEDQUAD_QUANT_TRITON=0``)."""
    return triton is not None and os.environ.get("FEDQUAD_QUANT_TRITON", "1") not in ("0", "false", "no")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "")


try:  # kernels are defined only where Triton is importable; the module imports fine without it
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - missing or broken install
    triton = None

if triton is not None:

    @triton.jit
    def minmax(x_ptr, lo_ptr, hi_ptr, nf_ptr, n, groups, GS: tl.constexpr, GS_P2: tl.constexpr,
               BLOCK_G: tl.constexpr):
        gg = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BLOCK_G]
        gm = gg < groups
        j = tl.arange(0, GS_P2)[None, :]  # [1, GS_P2]
        idx = gg[:, None].to(tl.int64) * GS + j
        mask = (j < GS) & (idx < n)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0)
        lo = tl.min(tl.where(mask, x, float("inf")), axis=1)
        hi = tl.max(tl.where(mask, x, float("-inf")), axis=1)
        bad = mask & ((x != x) | (tl.abs(x) == float("inf")))
        nf = tl.max(bad.to(tl.int32), axis=1)
        tl.store(lo_ptr + gg, lo, mask=gm)
        tl.store(hi_ptr + gg, hi, mask=gm)
        tl.store(nf_ptr + gg, nf, mask=gm)

    @triton.jit
    def _code(x, lo, inv, u, QMAX: tl.constexpr, STOCHASTIC: tl.constexpr):
        v = (x - lo) * inv
        if STOCHASTIC:
            c = (v + u).to(tl.int32)  # v + u >= 0: truncation is floor
            c = tl.minimum(c, QMAX)
        else:
            c = ((v + 12582912.0) - 12582912.0).to(tl.int32)  # 1.5 * 2**23: round half to even
        return c

    @triton.jit
    def codes(x_ptr, lo_ptr, hi_ptr, sqrt_ptr, noise_ptr, out_ptr, scale_ptr, min_ptr, n, groups,
              GS: tl.constexpr, HALF_P2: tl.constexpr, GS_P2: tl.constexpr, BLOCK_G: tl.constexpr,
              BITS: tl.constexpr, STOCHASTIC: tl.constexpr):
        QMAX: tl.constexpr = (1 << BITS) - 1
        gg = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BLOCK_G]
        gm = gg < groups
        use_sqrt = tl.load(sqrt_ptr) != 0
        lo = tl.load(lo_ptr + gg, mask=gm, other=0.0)
        hi = tl.load(hi_ptr + gg, mask=gm, other=0.0)
        lo = tl.where(use_sqrt, tl.sqrt_rn(tl.maximum(lo, 0.0)), lo)
        hi = tl.where(use_sqrt, tl.sqrt_rn(tl.maximum(hi, 0.0)), hi)
        r = hi - lo
        scale = tl.math.div_rn(r, QMAX * 1.0)
        inv = tl.where(r >= QMAX * 1.1754943508222875e-38, tl.math.div_rn(1.0, r) * QMAX, 0.0)
        tl.store(scale_ptr + gg, tl.where(use_sqrt, -scale, scale), mask=gm)
        tl.store(min_ptr + gg, lo, mask=gm)
        g = gg[:, None].to(tl.int64)
        lo2, inv2 = lo[:, None], inv[:, None]
        if BITS == 8:
            j = tl.arange(0, GS_P2)[None, :]
            idx = g * GS + j
            mask = (j < GS) & (idx < n)
            x = tl.load(x_ptr + idx, mask=mask, other=0.0)
            x = tl.where(use_sqrt, tl.sqrt_rn(tl.maximum(x, 0.0)), x)
            u = tl.load(noise_ptr + idx, mask=mask, other=0.0) if STOCHASTIC else 0.0
            c = _code(x, lo2, inv2, u, QMAX, STOCHASTIC)
            tl.store(out_ptr + idx, c.to(tl.uint8), mask=mask)
        else:
            k = tl.arange(0, HALF_P2)[None, :]
            ie = g * GS + 2 * k
            me = (2 * k < GS) & (ie < n)
            mo = (2 * k + 1 < GS) & (ie + 1 < n)
            xe = tl.load(x_ptr + ie, mask=me, other=0.0)
            xo = tl.load(x_ptr + ie + 1, mask=mo, other=0.0)
            xe = tl.where(use_sqrt, tl.sqrt_rn(tl.maximum(xe, 0.0)), xe)
            xo = tl.where(use_sqrt, tl.sqrt_rn(tl.maximum(xo, 0.0)), xo)
            ue = tl.load(noise_ptr + ie, mask=me, other=0.0) if STOCHASTIC else 0.0
            uo = tl.load(noise_ptr + ie + 1, mask=mo, other=0.0) if STOCHASTIC else 0.0
            ce = _code(xe, lo2, inv2, ue, QMAX, STOCHASTIC)
            co = tl.where(mo, _code(xo, lo2, inv2, uo, QMAX, STOCHASTIC), 0)
            byte = g * (GS // 2) + k
            tl.store(out_ptr + byte, (ce | (co << 4)).to(tl.uint8), mask=me)

    @triton.jit
    def dequant(p_ptr, scale_ptr, min_ptr, out_ptr, n, groups, GS: tl.constexpr, HALF_P2: tl.constexpr,
                GS_P2: tl.constexpr, BLOCK_G: tl.constexpr, BITS: tl.constexpr):
        gg = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
        gm = gg < groups
        s = tl.load(scale_ptr + gg, mask=gm, other=0.0)
        sq = (s.to(tl.int32, bitcast=True) < 0)[:, None]  # sign bit, also of -0.0
        s = tl.abs(s)[:, None]
        lo = tl.load(min_ptr + gg, mask=gm, other=0.0)[:, None]
        g = gg[:, None].to(tl.int64)
        if BITS == 8:
            j = tl.arange(0, GS_P2)[None, :]
            idx = g * GS + j
            mask = (j < GS) & (idx < n)
            c = tl.load(p_ptr + idx, mask=mask, other=0)
            y = c.to(tl.float32) * s + lo
            tl.store(out_ptr + idx, tl.where(sq, y * y, y), mask=mask)
        else:
            k = tl.arange(0, HALF_P2)[None, :]
            ie = g * GS + 2 * k
            me = (2 * k < GS) & (ie < n)
            mo = (2 * k + 1 < GS) & (ie + 1 < n)
            b = tl.load(p_ptr + g * (GS // 2) + k, mask=me, other=0).to(tl.int32)
            ye = (b & 15).to(tl.float32) * s + lo
            yo = (b >> 4).to(tl.float32) * s + lo
            tl.store(out_ptr + ie, tl.where(sq, ye * ye, ye), mask=me)
            tl.store(out_ptr + ie + 1, tl.where(sq, yo * yo, yo), mask=mo)


def _kernels():
    if triton is None:
        raise RuntimeError("Triton is not installed")
    return triton, minmax, codes, dequant


def _tiles(group_size: int) -> tuple[int, int, int]:
    gs_p2 = 1 << max(0, (group_size - 1).bit_length())
    half_p2 = 1 << max(0, (-(-group_size // 2) - 1).bit_length())
    return gs_p2, half_p2, max(1, 4096 // gs_p2)


def _launch_options() -> dict:
    return {} if _interpreting() else {"enable_fp_fusion": False}


def quantize_saved(x: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE, stochastic: bool = False,
                   generator: torch.Generator | None = None, sqrt_nonnegative: bool = True,
                   limit: float = math.inf) -> tuple[QuantizedTensor, torch.Tensor]:
    """``reference.quantize_saved`` in Triton (int4 with an even group size)."""
    ref.check_input(x, bits, group_size)
    triton, minmax, codes, _ = _kernels()
    flat = x.detach().reshape(-1).to(torch.float32).contiguous()
    n = flat.numel()
    groups = -(-n // group_size)
    gs_p2, half_p2, block_g = _tiles(group_size)
    lo = torch.empty(groups, dtype=torch.float32, device=flat.device)
    hi = torch.empty_like(lo)
    nf = torch.empty(groups, dtype=torch.int32, device=flat.device)
    payload = torch.empty(-(-n * bits // 8), dtype=torch.uint8, device=flat.device)
    scale, minimum = torch.empty_like(lo), torch.empty_like(lo)
    noise = ref.uniform_noise((groups, group_size), flat.device, generator).reshape(-1) if stochastic else flat
    if groups == 0:
        return QuantizedTensor(payload, scale, minimum, x.shape, x.dtype, bits, group_size), \
            torch.zeros((), dtype=torch.bool, device=flat.device)
    grid = (triton.cdiv(groups, block_g),)
    opts = _launch_options()
    minmax[grid](flat, lo, hi, nf, n, groups, GS=group_size, GS_P2=gs_p2, BLOCK_G=block_g, **opts)
    gmin, gmax = lo.amin(), hi.amax()
    keep_raw = (nf.amax() > 0) | ~((gmin.abs() < limit) & (gmax.abs() < limit)) | ~torch.isfinite(hi - lo).all()
    use_sqrt = (gmin >= 0) & ~keep_raw if sqrt_nonnegative else torch.zeros_like(keep_raw)
    codes[grid](flat, lo, hi, use_sqrt.to(torch.int8), noise, payload, scale, minimum, n, groups, GS=group_size,
                HALF_P2=half_p2, GS_P2=gs_p2, BLOCK_G=block_g, BITS=bits, STOCHASTIC=stochastic, **opts)
    return QuantizedTensor(payload, scale, minimum, x.shape, x.dtype, bits, group_size), keep_raw


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """``reference.dequantize`` in Triton."""
    triton, _, _, dequant = _kernels()
    n, groups = q.numel, q.scale.numel()
    out = torch.empty(n, dtype=torch.float32, device=q.payload.device)
    if n:
        gs_p2, half_p2, block_g = _tiles(q.group_size)
        dequant[(triton.cdiv(groups, block_g),)](q.payload.contiguous(), q.scale.contiguous(), q.minimum.contiguous(),
                                                 out, n, groups, GS=q.group_size, HALF_P2=half_p2, GS_P2=gs_p2,
                                                 BLOCK_G=block_g, BITS=q.bits, **_launch_options())
    return out.to(q.dtype).reshape(q.shape)
