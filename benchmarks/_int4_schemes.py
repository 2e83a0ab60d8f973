"""The plain-PyTorch quantizer of benchmarks/int4_study.py: any grouping axis, parameter storage,
rotation or mixed precision can be tried on it (the library's hooks stay the spec of what ships).

`study_roundtrip(x, scheme)` returns the dequantized tensor and the bytes a store would keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedquad.quant.rotation import can_rotate, rotate


@dataclass(frozen=True)
class Scheme:
    """One study candidate (plain PyTorch quantizer below)."""
    group_size: int = 64
    params: str = "float32"  # storage of each group's scale and minimum: float32, float16 or bfloat16
    axis: str = "token"  # "token" or "channel"
    rotate: bool = False  # Hadamard rotation of each group (signed tensors)
    rotate_dc: bool = False  # with the rotation: store each group's DC coefficient apart (float16)
    rotate_auto: bool = False  # with the rotation: per group, rotate only where it narrows the range (1 bit/group)
    rotate_block: int = 0  # rotation block (0 = the group size); smaller blocks cost less
    rotate_kinds: tuple[str, ...] = ()  # if set, rotate only these kinds
    outliers: int = 0  # channels kept at int8
    sqrt: bool = True  # sqrt grid for non-negative tensors
    keep_stats: bool = False  # keep per-token statistics (last dimension 1: LayerNorm mean / rstd)
    keep: tuple[str, ...] = ()  # tensor kinds kept unquantized (prefixes of `kind_of`)
    only: tuple[str, ...] = ()  # if set, quantize only these kinds (a sensitivity probe)
    int8: tuple[str, ...] = ()  # kinds quantized at 8 bits instead (mixed precision)
    position: int = -1  # if >= 0, quantize only the block's n-th distinct saved tensor (--per-tensor)
    int8_positions: tuple[int, ...] = ()  # saved tensors (n-th distinct storage of a block) at 8 bits
    two_valued_bits: bool = False  # a tensor of two values {0, c} (a CPU dropout mask) kept as 1 bit each


# ---- the study quantizer ---------------------------------------------------------------------

def _fp16_params(lo: torch.Tensor, scale: torch.Tensor):
    """Round the minimum down and the scale up to float16, so every code stays within [0, qmax]."""
    lo16, s16 = lo.half(), scale.half()
    lo16 = torch.where(lo16.float() > lo, torch.nextafter(lo16, lo16.new_tensor(-float("inf"))), lo16)
    s16 = torch.where(s16.float() < scale, torch.nextafter(s16, s16.new_tensor(float("inf"))), s16)
    return lo16.float(), s16.float()


def _quant_rows(x: torch.Tensor, bits: int, g: int, params: str):
    """Flat per-group min/max quantize + dequantize; returns (float32 values, bytes kept).

    params: "float32"; "float16" (minimum rounded down and scale up to float16 before the codes are
    computed, float32 where float16 cannot hold them); "bfloat16" (codes from the float32 values, then
    scale and minimum stored rounded to nearest bfloat16: what a hook can do after any quantizer)."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    groups = -(-n // g)
    if groups * g > n:
        flat = torch.cat([flat, flat[-1:].expand(groups * g - n)])
    grid = flat.view(groups, g)
    lo, hi = grid.amin(1), grid.amax(1)
    qmax = (1 << bits) - 1
    scale = (hi - lo) / qmax
    pb = 4 if params == "float32" else 2
    if params == "float16":
        lo2, s2 = _fp16_params(lo, scale)
        # float16 cannot hold it (overflow or a scale in the subnormal range): keep float32 params
        ok = bool(torch.isfinite(lo2).all() and torch.isfinite(s2).all() and (s2[scale > 0] >= 2 ** -14).all())
        if ok:
            lo, scale = lo2, s2
        else:
            pb = 4
    inv = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    codes = ((grid - lo[:, None]) * inv[:, None]).round().clamp(0, qmax)
    if params == "bfloat16":
        lo, scale = lo.bfloat16().float(), scale.bfloat16().float()
    out = (codes * scale[:, None] + lo[:, None]).reshape(-1)[:n]
    return out.view(x.shape), -(-n * bits // 8) + 2 * pb * groups


def kind_of(t: torch.Tensor, nonneg: bool) -> str:
    """"signed-4d-32": sign, "4d" for head-layout tensors, then the last dimension."""
    return ("nonneg" if nonneg else "signed") + ("-4d" if t.dim() == 4 else "") + f"-{t.shape[-1]}"


def _matches(kind: str, patterns: tuple[str, ...]) -> bool:
    return any(kind == p or kind.startswith(p + "-") for p in patterns)


def study_roundtrip(x: torch.Tensor, s: Scheme, bits: int = 4, kind: str = ""):
    """(dequantized tensor, kept bytes) of one saved activation under scheme ``s``."""
    x32 = x.float()
    nonneg = bool(x32.min() >= 0)
    if s.two_valued_bits and nonneg:
        top = x32.max()
        if bool(((x32 == 0) | (x32 == top)).all()):  # exact: one bit per element and the value c
            return x, -(-x32.numel() // 8) + 4
    if s.sqrt and nonneg:
        y, nbytes = _quant_rows(x32.sqrt(), bits, s.group_size, s.params)
        return y.square().to(x.dtype), nbytes
    shape, C = x32.shape, x32.shape[-1]
    work = x32.reshape(-1, C)  # [N, C]
    extra, cols = 0, None
    if s.outliers and C > s.outliers:
        cols = work.abs().amax(0).topk(s.outliers).indices  # [k]
        kept_cols, nb = _quant_rows(work[:, cols].t().contiguous(), 8, s.group_size, s.params)
        extra += nb + 8 * s.outliers
        work = work.clone()
        work[:, cols] = 0
    if s.axis == "channel":
        work = work.t().contiguous()  # [C, N]: groups run along the tokens of one channel
    rb = s.rotate_block or s.group_size
    rotated = s.rotate and can_rotate(work.numel(), rb) and (not s.rotate_kinds or _matches(kind, s.rotate_kinds))
    if rotated:
        plain = work
        work = rotate(work, rb)
        if s.rotate_auto:
            pr, rr = plain.reshape(-1, rb), work.reshape(-1, rb)
            flag = (rr.amax(1) - rr.amin(1)) < (pr.amax(1) - pr.amin(1))  # [G]
            work = torch.where(flag[:, None], rr, pr).view(plain.shape)
            extra += -(-flag.numel() // 8)
        if s.rotate_dc:  # the group mean becomes one large coefficient; keep it apart at float16
            rows = work.reshape(-1, s.group_size)
            dc = rows[:, 0].half().float()
            rows[:, 0] = 0
            extra += 2 * dc.numel()
    y, nbytes = _quant_rows(work, bits, s.group_size, s.params)
    if rotated:
        if s.rotate_dc:
            y = y.clone()
            y.reshape(-1, s.group_size)[:, 0] = dc
        if s.rotate_auto:
            back = rotate(y, rb).reshape(-1, rb)
            y = torch.where(flag[:, None], back, y.reshape(-1, rb)).view(y.shape)
        else:
            y = rotate(y, rb)
    if s.axis == "channel":
        y = y.t()
    y = y.reshape(-1, C)
    if cols is not None:
        y = y.clone()
        y[:, cols] = kept_cols.t()
    return y.reshape(shape).to(x.dtype), nbytes + extra
