"""Fast activation quantizer: the reference's contract and bit-exact results, fewer memory passes.

Paths, chosen per call: CPU tensors take the native C kernels (``cpu_ext.py``: one pass, group by
group, roughly copy speed) when a C compiler is at hand; otherwise the ``torch.compile``d kernels
below, and the eager chunked path if compiling fails. CUDA tensors take the Triton kernels
(``triton_kernels.py``) when Triton is installed (``FEDQUAD_QUANT_TRITON=0`` turns them off), else
the eager path. ``backend()`` says which path CPU tensors take; ``warm_up`` builds/compiles
everything a setting needs ahead of time. ``quantize_saved`` (the pack hook's entry point) never
synchronises with a device on any path.

The torch.compile path, why it is faster than the reference: the reference makes ~10 full passes
over the activation (pad copy, min, max, sub, mul, round, clamp, cast, pack, ...). Here the tensor is viewed as [groups, group_size] without a
copy and, on CPU, one ``torch.compile``d (Inductor C++, OpenMP) kernel makes two passes: per-row
min/max, then codes with int4 packing fused in; a second kernel dequantizes in one pass. The
per-group ``inv`` is a graph output on purpose: it makes Inductor materialise it. Left inline,
Inductor fuses both passes per row but recomputes ``inv`` (a division) for every 16-float vector,
which measured 1.6x slower than re-reading the row, even for tensors far larger than L3.

Results equal the reference exactly: same float32 operations in the same order, Inductor compiles
with ``-ffp-contract=off`` (no FMA) and rounds half-to-even like ``torch.round``. Tests enforce it.

Compilation: one graph per (bits, group_size, stochastic) for quantize and (bits, group_size) for
dequantize, dim 0 dynamic so new activation shapes do not recompile. First use costs ~10 s cold on
a 2-core CPU (~1 s per extra graph, less with Inductor's on-disk cache). If compiling fails (no C++
compiler, unsupported platform) we warn once and use the chunked eager path below (1.4-2.5x faster
than the reference, about half the compiled speed). ``FEDQUAD_QUANT_COMPILE=0`` or
``use_compile(False)`` selects it (after the native kernels: ``use_native(False)``,
``FEDQUAD_QUANT_NATIVE=0``).
"""

from __future__ import annotations

import math
import os
import time
import types
import warnings

import torch

from fedquad.plan import DEFAULT_GROUP_SIZE
from fedquad.quant import cpu_ext
from fedquad.quant import reference as ref
from fedquad.quant.reference import QuantizedTensor

_EAGER_CHUNK = 1 << 18  # elements per eager chunk (1 MiB of float32): stays in L2, few op launches
_MIN_COMPILED_GROUPS = 2  # dim 0 of size 0/1 would be specialised by dynamo -> recompiles
_HINT_ROWS = 8192  # rows of the dummy input each kernel is first compiled on

_compile_enabled = os.environ.get("FEDQUAD_QUANT_COMPILE", "1") not in ("0", "false", "no")
_native_enabled = True  # cpu_ext reads FEDQUAD_QUANT_NATIVE itself
_compile_failed = False
_compiled: dict[tuple, object] = {}


def use_compile(enabled: bool) -> None:
    """Select the compiled kernels (default) or the eager chunked path for later calls."""
    global _compile_enabled
    _compile_enabled = bool(enabled)


def use_native(enabled: bool) -> None:
    """Select the native C kernels (default where they build) or the torch.compile/eager paths."""
    global _native_enabled
    _native_enabled = bool(enabled)


def backend() -> str:
    """Which path CPU tensors take now: "native", "compiled" or "eager"."""
    if _native_enabled and cpu_ext.available():
        return "native"
    return "compiled" if _compile_enabled and not _compile_failed else "eager"


_triton_failed = False
_triton_enabled = True


def use_triton(enabled: bool) -> None:
    """Select the Triton kernels (default where Triton is installed) or the eager path for CUDA."""
    global _triton_enabled
    _triton_enabled = bool(enabled)


def _triton(t: torch.Tensor, bits: int, group_size: int) -> bool:
    if t.device.type != "cuda" or not _triton_enabled or _triton_failed or (bits == 4 and group_size % 2):
        return False
    from fedquad.quant import triton_kernels
    return triton_kernels.available()


def _triton_call(name: str, *args):
    """A Triton kernel's result, or None (after one warning) if it cannot compile or launch here."""
    global _triton_failed
    from fedquad.quant import triton_kernels
    try:
        return getattr(triton_kernels, name)(*args)
    except Exception as exc:  # noqa: BLE001 - an unsupported GPU or toolchain means "use eager"
        _triton_failed = True
        warnings.warn(f"fedquad: Triton quantization kernels unavailable ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); using the eager path",
                      RuntimeWarning, stacklevel=3)
        return None


def _native(t: torch.Tensor, bits: int, group_size: int) -> bool:
    return (t.device.type == "cpu" and _native_enabled and not (bits == 4 and group_size % 2)
            and cpu_ext.available())


def warm_up(bits: int, group_size: int, stochastic: bool = False, device: torch.device | str = "cpu") -> float:
    """Build or compile every kernel a (bits, group_size, stochastic) setting uses, on ``device``;
    returns the seconds it took. Timed measurements call this first, so that no one-off
    compilation lands inside a measured step (the compiled path costs ~10 s cold)."""
    start = time.perf_counter()
    x = torch.randn(4 * group_size + 1, device=device)  # several groups and a partial tail
    gen = torch.Generator(device=x.device).manual_seed(0) if stochastic else None
    for sample in (x, x.abs()):  # the linear and the square-root grid
        q, _ = quantize_saved(sample, bits, group_size, stochastic, gen)
        dequantize(q)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# ---- compiled kernels ------------------------------------------------------------------------

def _make_quantize_kernel(bits: int, stochastic: bool):
    qmax = float((1 << bits) - 1)
    threshold = qmax * ref._TINY

    def kernel(grid: torch.Tensor, noise: torch.Tensor | None):  # grid float32 [G, gs]
        gs = grid.shape[1]
        lo_in, hi_in = grid, grid
        if gs % 32 == 0:  # fold the halves first: two independent vector chains per row (ILP)
            lo_in = torch.minimum(grid[:, : gs // 2], grid[:, gs // 2:])  # [G, gs/2]
            hi_in = torch.maximum(grid[:, : gs // 2], grid[:, gs // 2:])
        lo = lo_in.amin(dim=1, keepdim=True)  # [G, 1]
        r = hi_in.amax(dim=1, keepdim=True) - lo  # [G, 1]
        inv = torch.where(r >= threshold, r.reciprocal() * qmax, 0.0)  # [G, 1]
        v = (grid - lo) * inv  # in [0, qmax * (1 + 3 eps)] for finite input: no clamp needed ...
        if stochastic:  # ... except that v + u may round up to qmax + 1
            v = torch.floor(v + noise).clamp(max=qmax)
        else:
            v = torch.round(v)
        codes = v.to(torch.uint8)  # [G, gs]
        if bits == 4:
            pairs = codes.view(codes.shape[0], -1, 2)  # [G, gs/2, 2]
            codes = pairs[..., 0] | (pairs[..., 1] << 4)  # [G, gs/2]
        return codes, (r / qmax).squeeze(1), lo.squeeze(1), inv

    return kernel


def _make_dequantize_kernel(bits: int):
    def kernel(payload: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor):  # payload uint8 [G, *]
        s, m = scale.view(-1, 1).abs(), lo.view(-1, 1)  # [G, 1]
        sq = torch.signbit(scale).view(-1, 1)  # square-root grid
        if bits == 8:
            y = payload.to(torch.float32) * s + m  # [G, gs]
            return torch.where(sq, y * y, y)
        # dequantize each nibble, then interleave: one fused kernel (stacking the uint8 nibbles
        # first makes Inductor emit two kernels and an intermediate buffer; 1.25x slower)
        even = (payload & 0x0F).to(torch.float32) * s + m  # [G, gs/2]
        odd = (payload >> 4).to(torch.float32) * s + m
        even, odd = torch.where(sq, even * even, even), torch.where(sq, odd * odd, odd)
        return torch.stack([even, odd], dim=-1).view(payload.shape[0], -1)  # [G, gs]

    return kernel


def _compiled_call(key: tuple, make, *args):
    """Run the compiled kernel for ``key``; None (after one warning) if compilation is impossible."""
    global _compile_failed
    try:
        fn = _compiled.get(key)
        if fn is None:
            fn = torch.compile(_own_code(make(), key), dynamic=False, fullgraph=True)
            _call(fn, [_hint_sized(a) for a in args])  # compile against a large size hint (see below)
            _compiled[key] = fn
        return _call(fn, args)
    except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure means "use eager"
        _compile_failed = True
        warnings.warn(f"fedquad: torch.compile quantization kernels unavailable ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); using the eager path",
                      RuntimeWarning, stacklevel=3)
        return None


def _own_code(fn, key: tuple):
    """Copy ``fn`` onto a code object of its own. Dynamo keeps compiled variants (and counts them
    against its recompile limit of 8) per code object; all kernels share one source function, so
    without this a 9th (bits, group_size, ...) combination would silently run uncompiled."""
    name = "fedquad_" + "_".join(map(str, key))
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _call(fn, args):
    for a in args:
        if isinstance(a, torch.Tensor):
            torch._dynamo.maybe_mark_dynamic(a, 0)
    with torch.no_grad():
        return fn(*args)


def _hint_sized(a):
    """A zero tensor like ``a`` with ``_HINT_ROWS`` rows. Inductor decides whether a dynamic-shape
    kernel gets an OpenMP loop from the size seen at compile time, and its on-disk cache ignores that
    size: compiling first on a tiny activation would leave every later (large) call single-threaded."""
    if not isinstance(a, torch.Tensor):
        return a
    return torch.zeros((_HINT_ROWS, *a.shape[1:]), dtype=a.dtype, device=a.device)


def _want_compiled(grid: torch.Tensor) -> bool:
    return (_compile_enabled and not _compile_failed and grid.device.type == "cpu"
            and grid.shape[0] >= _MIN_COMPILED_GROUPS)


# ---- eager chunked path ----------------------------------------------------------------------

def _eager_quantize_rows(grid: torch.Tensor, bits: int, noise: torch.Tensor | None):
    """Same results as the kernel, in L2-sized chunks of rows with in-place ops (few temporaries)."""
    qmax = (1 << bits) - 1
    rows, gs = grid.shape
    # two reductions, not torch.aminmax(dim=1): that is 12x slower on CPU for rows this short
    lo, hi = (grid.amin(dim=1), grid.amax(dim=1)) if rows else (grid.new_zeros(0), grid.new_zeros(0))  # [G]
    scale, inv = ref.group_params(lo, hi, bits)
    out = torch.empty(rows, gs // 2 if bits == 4 else gs, dtype=torch.uint8, device=grid.device)
    step = max(1, _EAGER_CHUNK // gs)
    buf = torch.empty(min(step, rows), gs, device=grid.device)
    for i in range(0, rows, step):
        j = min(rows, i + step)
        b = buf[: j - i]
        torch.sub(grid[i:j], lo[i:j, None], out=b).mul_(inv[i:j, None])
        if noise is not None:
            b.add_(noise[i:j]).floor_().clamp_(max=qmax)
        else:
            b.round_()  # no clamp needed: see the reference's docstring
        if bits == 4:  # low + 16 * high is exact in float32 and needs one cast
            b = torch.add(b[:, 0::2], b[:, 1::2], alpha=16)
        out[i:j].copy_(b)
    return out, scale, lo


def _eager_dequantize_rows(payload: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int,
                           group_size: int) -> torch.Tensor:
    rows = payload.shape[0]
    out = torch.empty(rows, group_size, device=payload.device)  # [G, gs] float32
    step = max(1, _EAGER_CHUNK // group_size)
    for i in range(0, rows, step):
        j = min(rows, i + step)
        o, p = out[i:j], payload[i:j]
        if bits == 4:
            o[:, 0::2].copy_(p & 0x0F)
            o[:, 1::2].copy_(p >> 4)
        else:
            o.copy_(p)
        s = scale[i:j, None]
        o.mul_(s.abs()).add_(lo[i:j, None])
        torch.where(torch.signbit(s), o * o, o, out=o)  # square-root grid
    return out


# ---- public API ------------------------------------------------------------------------------

def quantize(x: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE, stochastic: bool = False,
             generator: torch.Generator | None = None) -> QuantizedTensor:
    """Same contract and same bits as ``reference.quantize``."""
    ref.check_input(x, bits, group_size)
    if _native(x, bits, group_size):
        q, status = _native_quantize(x, bits, group_size, stochastic, generator, False, math.inf)
        if status == 1:
            raise ValueError("cannot quantize a tensor with non-finite values or a range beyond float32")
        return q
    if _triton(x, bits, group_size):
        out = _triton_call("quantize_saved", x, bits, group_size, stochastic, generator, False, math.inf)
        if out is not None:
            if bool(out[1]):  # the plain quantizer's contract: refuse (this reads the flag on the host)
                raise ValueError("cannot quantize a tensor with non-finite values or a range beyond float32")
            return out[0]
    q = _quantize_any(x, bits, group_size, stochastic, generator)
    ref.check_finite(q.scale)
    return q


def quantize_saved(x: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE, stochastic: bool = False,
                   generator: torch.Generator | None = None, sqrt_nonnegative: bool = True,
                   limit: float = math.inf) -> tuple[QuantizedTensor, torch.Tensor]:
    """Same contract and same bits as ``reference.quantize_saved``; never synchronises with a device.
    Native CPU path: the keep-raw and sqrt-grid decisions come out of the kernel's own pass."""
    ref.check_input(x, bits, group_size)
    if _native(x, bits, group_size):
        q, status = _native_quantize(x, bits, group_size, stochastic, generator, sqrt_nonnegative, limit)
        return q, torch.tensor(status == 1)
    if _triton(x, bits, group_size):
        out = _triton_call("quantize_saved", x, bits, group_size, stochastic, generator, sqrt_nonnegative, limit)
        if out is not None:
            return out
    flat = x.detach().reshape(-1).to(torch.float32)
    lo, hi = (flat.amin(), flat.amax()) if flat.numel() else (flat.new_zeros(()), flat.new_zeros(()))
    keep_raw = ~((lo.abs() < limit) & (hi.abs() < limit))
    if sqrt_nonnegative:
        use_sqrt = (lo >= 0) & ~keep_raw
        flat = torch.where(use_sqrt, flat.double().sqrt().float(), flat)
    q = _quantize_any(flat, bits, group_size, stochastic, generator)
    keep_raw = keep_raw | ~torch.isfinite(q.scale).all()
    scale = torch.where(use_sqrt, q.scale.neg(), q.scale) if sqrt_nonnegative else q.scale
    return QuantizedTensor(q.payload, scale, q.minimum, x.shape, x.dtype, bits, group_size), keep_raw


def _native_quantize(x, bits, group_size, stochastic, generator, sqrt_nonnegative, limit):
    flat = x.detach().reshape(-1).to(torch.float32).contiguous()  # a view for contiguous float32
    groups = -(-flat.numel() // group_size)
    noise = ref.uniform_noise((groups, group_size), flat.device, generator).reshape(-1) if stochastic else None
    payload, scale, lo, status = cpu_ext.quantize(flat, bits, group_size, noise, sqrt_nonnegative, limit)
    return QuantizedTensor(payload, scale, lo, x.shape, x.dtype, bits, group_size), status


def _quantize_any(x: torch.Tensor, bits: int, group_size: int, stochastic: bool,
                  generator: torch.Generator | None) -> QuantizedTensor:
    """torch.compile / eager paths, no finiteness check (callers decide)."""
    if bits == 4 and group_size % 2:  # per-row packing needs even rows; odd group sizes are exotic
        q = ref._quantize_flat(x.detach().reshape(-1).to(torch.float32), bits, group_size, stochastic, generator)
        return QuantizedTensor(q.payload, q.scale, q.minimum, x.shape, x.dtype, bits, group_size)
    flat = x.detach().reshape(-1).to(torch.float32)  # [n]; a view for contiguous float32 input
    n = flat.numel()
    full, rest = divmod(n, group_size)
    groups = full + (rest > 0)
    noise = ref.uniform_noise((groups, group_size), flat.device, generator) if stochastic else None

    main = flat[: full * group_size].view(full, group_size)  # [full, gs], no copy
    result = None
    if _want_compiled(main):
        key = ("q", bits, group_size, stochastic)
        result = _compiled_call(key, lambda: _make_quantize_kernel(bits, stochastic), main,
                                None if noise is None else noise[:full])
    if result is None:
        result = _eager_quantize_rows(main, bits, None if noise is None else noise[:full])
    payload, scale, lo = result[:3]

    if rest:  # tail group, padded by replicating its last element (min/max unchanged)
        tail = torch.cat([flat[full * group_size:], flat[-1:].expand(group_size - rest)])[None]
        t_pay, t_scale, t_lo = _eager_quantize_rows(tail, bits, None if noise is None else noise[full:])
        t_pay = t_pay.reshape(-1)[: -(-rest * bits // 8)]  # drop codes of padding
        if bits == 4 and rest % 2:
            t_pay[-1:] &= 0x0F  # the spec leaves the unused last high nibble zero
        payload = torch.cat([payload.reshape(-1), t_pay])
        scale, lo = torch.cat([scale, t_scale]), torch.cat([lo, t_lo])
    return QuantizedTensor(payload.reshape(-1), scale, lo, x.shape, x.dtype, bits, group_size)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Same contract and same values as ``reference.dequantize``; ``q`` is only read."""
    if _native(q.payload, q.bits, q.group_size):
        out = cpu_ext.dequantize(q.payload.contiguous(), q.numel, q.group_size, q.bits, q.scale.contiguous(),
                                 q.minimum.contiguous())
        return out.to(q.dtype).reshape(q.shape)
    if _triton(q.payload, q.bits, q.group_size):
        out = _triton_call("dequantize", q)
        if out is not None:
            return out
    if q.bits == 4 and q.group_size % 2:
        return ref.dequantize(q)
    n, gs = q.numel, q.group_size
    full, rest = divmod(n, gs)
    per_row = gs // 2 if q.bits == 4 else gs
    main = q.payload[: full * per_row].view(full, per_row)  # [full, per_row]
    out = None
    if _want_compiled(main):
        key = ("d", q.bits, gs)
        out = _compiled_call(key, lambda: _make_dequantize_kernel(q.bits), main, q.scale[:full], q.minimum[:full])
    if out is None:
        out = _eager_dequantize_rows(main, q.scale[:full], q.minimum[:full], q.bits, gs)
    out = out.reshape(-1)
    if rest:
        tail = q.payload[full * per_row:]
        tail = torch.cat([tail, tail.new_zeros(per_row - tail.numel())])  # pad to a whole row
        t_out = _eager_dequantize_rows(tail[None], q.scale[full:], q.minimum[full:], q.bits, gs)
        out = torch.cat([out, t_out.reshape(-1)[:rest]])
    return out.to(q.dtype).reshape(q.shape)
