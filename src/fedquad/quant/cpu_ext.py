"""Native CPU kernels for the fast quantizer: a small C file built with the system C compiler.

Why C and not ``torch.compile``: the quantizer's work per group is tiny (64-128 floats), so the
win comes from touching each activation once -- a group is loaded from memory, its min/max found,
and its codes written while it still sits in L1 -- and from no one-off compilation inside a
measured step. Inductor keeps the min/max and the codes as two kernels over the whole tensor
(two trips to memory) and costs ~10 s of compilation per process; this file builds in about a
second, once per machine (cached), and runs at roughly copy speed (benchmarks/quant_throughput.py).

Bit-exactness with ``reference.py``: the same float32 operations in the same order, compiled with
``-ffp-contract=off`` (no fused multiply-add) and without ``-ffast-math``. Round-half-even is the
``(v + 1.5 * 2**23) - 1.5 * 2**23`` identity, exact for 0 <= v < 2**22 (v <= qmax * (1 + 3 eps)
here) in the default rounding mode; stochastic codes truncate ``v + u >= 0``, which is floor. The
min/max reductions are ``omp simd`` reductions, exact for non-NaN input (NaN input is flagged and
the tensor kept raw, so its codes do not matter). Tests compare every path with the reference.

Building: ``cc -O3 -march=native -fopenmp`` into ``$FEDQUAD_CACHE_DIR`` (default
``~/.cache/fedquad``), keyed by a hash of the source, the compiler flags and the CPU model, written
atomically so parallel processes can race safely. ``available()`` is False (and the callers fall
back to the compiled/eager paths) when there is no compiler, the build fails, or
``FEDQUAD_QUANT_NATIVE=0``.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <float.h>

#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: (v + M) - M rounds half to even for 0 <= v < 2^22 */

static inline int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

/* min/max of one group; nf |= any non-finite element (exponent bits all ones) */
static inline void group_minmax(const float *x, int64_t m, float *plo, float *phi, uint32_t *pnf) {
    float lo = x[0], hi = x[0];
    uint32_t nf = 0;
    const uint32_t *u = (const uint32_t *)x;
#pragma omp simd reduction(min:lo) reduction(max:hi) reduction(|:nf)
    for (int64_t j = 0; j < m; j++) {
        float v = x[j];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        nf |= (uint32_t)((u[j] & 0x7f800000u) == 0x7f800000u);
    }
    *plo = lo; *phi = hi; *pnf |= nf;
}

/* codes of one group from (x or sqrt x), its lo and inv; int4 packs pairs, odd tail: high nibble 0 */
static inline void group_codes(const float *x, int64_t m, float lo, float inv, float qmax, int bits,
                               int use_sqrt, const float *noise, uint8_t *out) {
    if (bits == 8) {
        if (noise) {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float v = use_sqrt ? sqrtf(x[j]) : x[j];
                float s = (v - lo) * inv + noise[j];
                int32_t c = (int32_t)s; /* s >= 0: truncation is floor */
                out[j] = (uint8_t)(c > 255 ? 255 : c);
            }
        } else if (use_sqrt) {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float v = (sqrtf(x[j]) - lo) * inv;
                out[j] = (uint8_t)(int32_t)((v + ROUND_MAGIC) - ROUND_MAGIC);
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float v = (x[j] - lo) * inv;
                out[j] = (uint8_t)(int32_t)((v + ROUND_MAGIC) - ROUND_MAGIC);
            }
        }
        return;
    }
    int64_t pairs = m / 2;
    int32_t q = (int32_t)qmax;
#pragma omp simd
    for (int64_t k = 0; k < pairs; k++) {
        float a = use_sqrt ? sqrtf(x[2 * k]) : x[2 * k];
        float b = use_sqrt ? sqrtf(x[2 * k + 1]) : x[2 * k + 1];
        float va = (a - lo) * inv, vb = (b - lo) * inv;
        int32_t ca, cb;
        if (noise) {
            ca = (int32_t)(va + noise[2 * k]); cb = (int32_t)(vb + noise[2 * k + 1]);
            ca = ca > q ? q : ca; cb = cb > q ? q : cb;
        } else {
            ca = (int32_t)((va + ROUND_MAGIC) - ROUND_MAGIC);
            cb = (int32_t)((vb + ROUND_MAGIC) - ROUND_MAGIC);
        }
        out[k] = (uint8_t)(ca | (cb << 4));
    }
    if (m & 1) {
        float a = use_sqrt ? sqrtf(x[m - 1]) : x[m - 1];
        float va = (a - lo) * inv;
        int32_t ca;
        if (noise) { ca = (int32_t)(va + noise[m - 1]); ca = ca > q ? q : ca; }
        else ca = (int32_t)((va + ROUND_MAGIC) - ROUND_MAGIC);
        out[pairs] = (uint8_t)ca;
    }
}

/* scale and inv of a group, exactly as reference.group_params */
static inline void group_params(float lo, float hi, float qmax, float *scale, float *inv) {
    float r = hi - lo;
    *scale = r / qmax;
    *inv = r >= qmax * FLT_MIN ? (1.0f / r) * qmax : 0.0f;
}

/* Quantize x[n] in groups of gs. sqrt_mode: 0 never, 1 if every element >= 0. A tensor whose
   max |x| is >= limit, or that holds a non-finite value or a non-finite group range, is flagged:
   returns 1 and leaves the outputs unspecified. Otherwise returns 0 (2 if the sqrt grid was used). */
int fq_quantize(const float *x, int64_t n, int64_t gs, int bits, const float *noise, int sqrt_mode,
                float limit, uint8_t *payload, float *scale, float *minimum, int threads) {
    if (n <= 0) return 0;
    const int64_t groups = (n + gs - 1) / gs;
    const float qmax = (float)((1 << bits) - 1);
    const int64_t bytes_per_group = bits == 8 ? gs : gs / 2;
    int par = n >= 32768 && threads > 1;
    /* speculate: if the first group has a negative value the sqrt grid is out, and one fused pass
       (min/max and codes per group while it is in L1) does everything */
    float lo0, hi0; uint32_t nf0 = 0;
    group_minmax(x, imin64(gs, n), &lo0, &hi0, &nf0);
    int fused = !(sqrt_mode && lo0 >= 0.0f);
    float gmin = lo0, gmax = hi0;
    uint32_t nf = nf0;
#pragma omp parallel for schedule(static) if(par) num_threads(threads) reduction(min:gmin) reduction(max:gmax) reduction(|:nf)
    for (int64_t g = 0; g < groups; g++) {
        int64_t off = g * gs, m = imin64(gs, n - off);
        float lo, hi; uint32_t f = 0;
        group_minmax(x + off, m, &lo, &hi, &f);
        float s, inv;
        group_params(lo, hi, qmax, &s, &inv);
        f |= !(s <= FLT_MAX); /* range beyond float32 */
        minimum[g] = lo;
        if (fused) {
            scale[g] = s;
            group_codes(x + off, m, lo, inv, qmax, bits, 0, noise ? noise + off : 0, payload + g * bytes_per_group);
        } else {
            scale[g] = hi; /* kept for the second pass */
        }
        gmin = lo < gmin ? lo : gmin;
        gmax = hi > gmax ? hi : gmax;
        nf |= f;
    }
    if (nf || !(fabsf(gmin) < limit && fabsf(gmax) < limit)) return 1;
    if (fused) return 0;
    int use_sqrt = sqrt_mode && gmin >= 0.0f;
#pragma omp parallel for schedule(static) if(par) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        int64_t off = g * gs, m = imin64(gs, n - off);
        float lo = minimum[g], hi = scale[g], s, inv;
        if (use_sqrt) { lo = sqrtf(lo); hi = sqrtf(hi); }
        group_params(lo, hi, qmax, &s, &inv);
        minimum[g] = lo;
        scale[g] = use_sqrt ? -s : s; /* the sign bit marks the square-root grid */
        group_codes(x + off, m, lo, inv, qmax, bits, use_sqrt, noise ? noise + off : 0, payload + g * bytes_per_group);
    }
    return use_sqrt ? 2 : 0;
}

/* out[n] = code * |scale| + lo per group, squared where the scale's sign bit is set */
void fq_dequantize(const uint8_t *payload, int64_t n, int64_t gs, int bits, const float *scale,
                   const float *minimum, float *out, int threads) {
    if (n <= 0) return;
    const int64_t groups = (n + gs - 1) / gs;
    const int64_t bytes_per_group = bits == 8 ? gs : gs / 2;
    int par = n >= 32768 && threads > 1;
#pragma omp parallel for schedule(static) if(par) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        int64_t off = g * gs, m = imin64(gs, n - off);
        const uint8_t *p = payload + g * bytes_per_group;
        float *o = out + off;
        float s = fabsf(scale[g]), lo = minimum[g];
        int sq = signbit(scale[g]) != 0;
        if (bits == 8) {
            if (sq) {
#pragma omp simd
                for (int64_t j = 0; j < m; j++) { float y = (float)p[j] * s + lo; o[j] = y * y; }
            } else {
#pragma omp simd
                for (int64_t j = 0; j < m; j++) o[j] = (float)p[j] * s + lo;
            }
        } else {
            int64_t pairs = m / 2;
#pragma omp simd
            for (int64_t k = 0; k < pairs; k++) {
                float a = (float)(p[k] & 15) * s + lo, b = (float)(p[k] >> 4) * s + lo;
                o[2 * k] = sq ? a * a : a;
                o[2 * k + 1] = sq ? b * b : b;
            }
            if (m & 1) { float a = (float)(p[pairs] & 15) * s + lo; o[m - 1] = sq ? a * a : a; }
        }
    }
}

/* ---- Walsh-Hadamard rotation per block (fedquad.quant.rotation's butterfly, bit for bit) ---- */

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

/* one butterfly stage inside a 16-float vector: lane i pairs with lane i ^ h; low lanes get a + b,
   high lanes a - b, computed as p + (+-v), which IEEE makes exactly a + b and a - b */
static inline v16f bfly16(v16f v, v16i idx, v16f sign) {
    return __builtin_shuffle(v, idx) + v * sign; /* v * +-1 is exact */
}

static inline void wht(float *y, int64_t block, float norm) {
    if (block >= 16) { /* vectorised: stages 1..8 inside each 16-float vector, then between vectors */
        for (int64_t i = 0; i < block; i += 16) {
            v16f v;
            memcpy(&v, y + i, sizeof v);
            v = bfly16(v, (v16i){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14},
                       (v16f){1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1});
            v = bfly16(v, (v16i){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13},
                       (v16f){1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1});
            v = bfly16(v, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11},
                       (v16f){1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1});
            v = bfly16(v, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7},
                       (v16f){1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1});
            memcpy(y + i, &v, sizeof v);
        }
        for (int64_t h = 16; h < block; h *= 2)
            for (int64_t i = 0; i < block; i += 2 * h)
#pragma omp simd
                for (int64_t j = i; j < i + h; j++) { float a = y[j], b = y[j + h]; y[j] = a + b; y[j + h] = a - b; }
#pragma omp simd
        for (int64_t j = 0; j < block; j++) y[j] *= norm;
        return;
    }
    for (int64_t h = 1; h < block; h *= 2)
        for (int64_t i = 0; i < block; i += 2 * h)
#pragma omp simd
            for (int64_t j = i; j < i + h; j++) { float a = y[j], b = y[j + h]; y[j] = a + b; y[j + h] = a - b; }
#pragma omp simd
    for (int64_t j = 0; j < block; j++) y[j] *= norm;
}

/* rotation.choose_groups: returns 0 (nothing rotated: outputs untouched) when the tensor has no
   negative value or a value with |x| >= limit (NaN too); else writes y and one flag per block. */
int fq_choose_groups(const float *x, int64_t n, int64_t block, float limit, float norm, float *y,
                     uint8_t *flags, int threads) {
    if (n <= 0) return 0;
    const int64_t groups = n / block;
    int par = n >= 32768 && threads > 1;
    float gmin = x[0];
    uint32_t bad = 0;
#pragma omp parallel for simd schedule(static) if(par) num_threads(threads) reduction(min:gmin) reduction(|:bad)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        gmin = v < gmin ? v : gmin;
        bad |= (uint32_t)!(fabsf(v) < limit);
    }
    if (bad || !(gmin < 0.0f)) return 0;
#pragma omp parallel for schedule(static) if(par) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        const float *p = x + g * block;
        float *o = y + g * block;
        float plo, phi, rlo, rhi;
        uint32_t nf = 0;
        memcpy(o, p, (size_t)block * sizeof(float));
        wht(o, block, norm);
        group_minmax(p, block, &plo, &phi, &nf);
        group_minmax(o, block, &rlo, &rhi, &nf);
        int use = (rhi - rlo) < (phi - plo);
        if (!use) memcpy(o, p, (size_t)block * sizeof(float));
        flags[g] = (uint8_t)use;
    }
    return 1;
}

/* rotation.undo_groups into a new buffer: out = y, with flagged blocks rotated back */
void fq_undo_groups(const float *y, int64_t n, int64_t block, float norm, const uint8_t *flags, float *out,
                    int threads) {
    const int64_t groups = n / block;
    int par = n >= 32768 && threads > 1;
#pragma omp parallel for schedule(static) if(par) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        memcpy(out + g * block, y + g * block, (size_t)block * sizeof(float));
        if (flags[g]) wht(out + g * block, block, norm);
    }
}
"""

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-strict-aliasing", "-fPIC", "-shared", "-std=c11"]

_lock = threading.Lock()
_lib = None
_tried = False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("FEDQUAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fedquad")
    return Path(root) / "kernels"


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    key = hashlib.sha256("\0".join([_SOURCE, cc, *_FLAGS, _cpu_model(), sys.platform]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"fedquad_quant_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / "quant.c"
            src.write_text(_SOURCE)
            out = Path(tmp) / target.name
            proc = subprocess.run([cc, *_FLAGS, str(src), "-o", str(out), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                first = next((ln for ln in lines if "error" in ln), lines[-1] if lines else "")
                raise RuntimeError(f"{cc} failed: {first.strip()[:200]}")
            os.replace(out, target)  # atomic: a concurrent process sees the old state or the whole file
    lib = ctypes.CDLL(str(target))
    i64, ptr, c_int, c_float = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.fq_quantize.argtypes = [ptr, i64, i64, c_int, ptr, c_int, c_float, ptr, ptr, ptr, c_int]
    lib.fq_quantize.restype = c_int
    lib.fq_dequantize.argtypes = [ptr, i64, i64, c_int, ptr, ptr, ptr, c_int]
    lib.fq_dequantize.restype = None
    lib.fq_choose_groups.argtypes = [ptr, i64, i64, c_float, c_float, ptr, ptr, c_int]
    lib.fq_choose_groups.restype = c_int
    lib.fq_undo_groups.argtypes = [ptr, i64, i64, c_float, ptr, ptr, c_int]
    lib.fq_undo_groups.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; None (after one warning) if impossible."""
    global _lib, _tried
    if _lib is not None or _tried:
        return _lib
    with _lock:
        if not _tried:
            try:
                if os.environ.get("FEDQUAD_QUANT_NATIVE", "1") in ("0", "false", "no"):
                    return None
                _lib = _build()
            except Exception as exc:  # noqa: BLE001 - any toolchain failure means "use another path"
                warnings.warn(f"fedquad: native quantization kernels unavailable ({exc}); "
                              "using the torch.compile/eager path", RuntimeWarning, stacklevel=3)
            finally:
                _tried = True
    return _lib


def available() -> bool:
    return library() is not None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def quantize(flat: torch.Tensor, bits: int, group_size: int, noise: torch.Tensor | None, sqrt_mode: bool,
             limit: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """flat: contiguous float32 CPU [n]. Returns (payload, scale, minimum, status); status 1 means
    "flagged" (non-finite, range beyond float32, or |x| >= limit; outputs unspecified), 2 "sqrt grid"."""
    n = flat.numel()
    groups = -(-n // group_size)
    payload = torch.empty(-(-n * bits // 8), dtype=torch.uint8)  # exact: no slack kept alive
    scale = torch.empty(groups, dtype=torch.float32)
    minimum = torch.empty(groups, dtype=torch.float32)
    status = library().fq_quantize(flat.data_ptr(), n, group_size, bits, noise.data_ptr() if noise is not None else None,
                              int(sqrt_mode), float(limit), payload.data_ptr(), scale.data_ptr(),
                              minimum.data_ptr(), _threads())
    return payload, scale, minimum, status


def dequantize(payload: torch.Tensor, n: int, group_size: int, bits: int, scale: torch.Tensor,
               minimum: torch.Tensor) -> torch.Tensor:
    """Contiguous uint8 payload on CPU -> float32 [n] (squared where the scale's sign bit is set)."""
    out = torch.empty(n, dtype=torch.float32)
    library().fq_dequantize(payload.data_ptr(), n, group_size, bits, scale.data_ptr(), minimum.data_ptr(),
                       out.data_ptr(), _threads())
    return out


def _norm(block: int) -> float:
    # what ``y * (1.0 / math.sqrt(block))`` multiplies a float32 tensor by: the float32 rounding
    # (struct, not a tensor: the hooks read no tensor on the host, tests/test_saved_activations.py)
    return struct.unpack("f", struct.pack("f", 1.0 / math.sqrt(block)))[0]


def choose_groups(x: torch.Tensor, block: int, limit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``rotation.choose_groups`` on a CPU tensor: one read pass for the tensor-wide conditions,
    then one pass rotating each block in L1 and keeping it only where that narrows its range.
    Equals ``rotation.choose_groups_reference`` bit for bit (the butterfly, not a matmul)."""
    flat = x.detach().reshape(-1).to(torch.float32).contiguous()
    n = flat.numel()
    flags = torch.zeros(n // block, dtype=torch.bool)
    y = torch.empty_like(flat)
    done = library().fq_choose_groups(flat.data_ptr(), n, block, float(limit), _norm(block), y.data_ptr(),
                                      flags.data_ptr(), _threads())
    return (y if done else flat).reshape(x.shape), flags


def undo_groups(y: torch.Tensor, flags: torch.Tensor, block: int) -> torch.Tensor:
    """``rotation.undo_groups`` on a CPU float32 tensor, into a new tensor (``y`` is only read)."""
    flat = y.reshape(-1).contiguous()
    f = flags.to(torch.bool).contiguous()
    out = torch.empty_like(flat)
    library().fq_undo_groups(flat.data_ptr(), flat.numel(), block, _norm(block), f.data_ptr(), out.data_ptr(),
                             _threads())
    return out.reshape(y.shape)
