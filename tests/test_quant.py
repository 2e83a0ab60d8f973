"""Activation quantizer: the reference is the spec, the fast path must reproduce it bit for bit.

The fast path has three CPU backends (native C kernels, torch.compile'd kernels, eager chunks);
each is compared with the reference. Broad random coverage runs the native and eager kernels (no
compile per example); a few targeted tests run the torch.compile'd kernels, whose first call
compiles (~10 s cold, ~3 s with a warm cache).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedquad.errors import FedquadError
from fedquad.plan import DEFAULT_GROUP_SIZE
from fedquad.quant import QuantizedTensor, get_quantizer, packed_nbytes
from fedquad.quant import fast, reference

EPS = torch.finfo(torch.float32).eps


def select(backend: str) -> None:
    fast.use_native(backend == "native")
    fast.use_compile(backend == "compiled")


@pytest.fixture
def eager_fast():
    select("eager")
    yield
    select("native")


@pytest.fixture
def compiled_fast():
    select("compiled")
    yield
    select("native")


@pytest.fixture
def native_fast():
    select("native")
    if fast.backend() != "native":
        pytest.skip("no C compiler here: the native kernels are unavailable")
    yield


def make_data(numel: int, seed: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=g)
    if kind == "offset":  # large mean, small spread: precision of (x - lo)
        x = 1000.0 + 0.01 * x
    elif kind == "runs":  # constant stretches make whole constant groups
        x = torch.round(x * 2).repeat_interleave(37)[:numel]
    elif kind == "relu":
        x = x.clamp_min(0)
    return x


def assert_same(a: QuantizedTensor, b: QuantizedTensor) -> None:
    assert torch.equal(a.payload, b.payload), "codes differ"
    assert torch.equal(a.scale, b.scale) and torch.equal(a.minimum, b.minimum)
    assert (a.shape, a.dtype, a.bits, a.group_size) == (b.shape, b.dtype, b.bits, b.group_size)


def error_bound(x: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
    """Per-element bound: half a step, float32 arithmetic slack, plus output-dtype rounding."""
    n = x.numel()
    scale = q.scale.repeat_interleave(q.group_size)[:n]
    lo = q.minimum.repeat_interleave(q.group_size)[:n]
    mag = lo.abs() + scale * ((1 << q.bits) - 1)
    out_eps = torch.finfo(q.dtype).eps if q.dtype != torch.float32 else 0.0
    return scale * (0.5 + 1e-3) + 4 * EPS * mag + out_eps * (x.abs() + scale) + 1e-30


shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).filter(lambda s: math.prod(s) <= 4000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([8, 4]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), group_size=st.sampled_from([1, 7, 64, 128]),
       kind=st.sampled_from(["normal", "offset", "runs", "relu"]))
def test_roundtrip_and_fast_matches_reference(eager_fast, shape, seed, bits, dtype, group_size, kind):
    x = make_data(math.prod(shape), seed, kind).reshape(shape).to(dtype)
    q = reference.quantize(x, bits, group_size)
    n = x.numel()
    assert q.payload.dtype == torch.uint8 and q.payload.numel() == -(-n * bits // 8)
    assert q.scale.numel() == q.minimum.numel() == -(-n // group_size)
    y = reference.dequantize(q)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    err = (y.float() - x.float()).abs().reshape(-1)
    assert bool((err <= error_bound(x.float().reshape(-1), q)).all()), float(err.max())

    qf = fast.quantize(x, bits, group_size)
    assert_same(q, qf)
    assert torch.equal(fast.dequantize(qf), y)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([8, 4]),
       kind=st.sampled_from(["normal", "offset", "runs", "relu"]))
def test_compiled_random_shapes_match_reference(compiled_fast, shape, seed, bits, kind):
    # group_size fixed so every example reuses the same two compiled graphs (dim 0 is dynamic)
    x = make_data(math.prod(shape), seed, kind).reshape(shape)
    q, qf = reference.quantize(x, bits), fast.quantize(x, bits)
    assert_same(q, qf)
    assert torch.equal(fast.dequantize(qf), reference.dequantize(q))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compiled_kernels_match_reference(compiled_fast, bits, dtype):
    # 3 groups + a partial tail; also a second shape to check dim 0 is dynamic (no crash, same bits)
    for shape in [(3, 131), (7, 64, 9)]:
        x = make_data(math.prod(shape), 11, "normal").reshape(shape).to(dtype)
        q, qf = reference.quantize(x, bits), fast.quantize(x, bits)
        assert_same(q, qf)
        assert torch.equal(fast.dequantize(qf), reference.dequantize(q))
    if fast.backend() != "compiled":
        pytest.skip("torch.compile unavailable here; the eager fallback was checked instead")


def test_compiled_stochastic_matches_reference(compiled_fast):
    x = make_data(1000, 3, "normal")
    a = reference.quantize(x, 4, stochastic=True, generator=torch.Generator().manual_seed(5))
    b = fast.quantize(x, 4, stochastic=True, generator=torch.Generator().manual_seed(5))
    assert_same(a, b)


@pytest.mark.parametrize("impl", [reference, fast])
@pytest.mark.parametrize("bits", [8, 4])
def test_constant_zero_and_single_element(impl, bits):
    const = torch.full((5, 100), -3.25)
    assert torch.equal(impl.dequantize(impl.quantize(const, bits, 64)), const)
    mixed = torch.cat([torch.full((128,), 7.5), torch.randn(128), torch.full((3,), 1e-3)])
    y = impl.dequantize(impl.quantize(mixed, bits))
    assert torch.equal(y[:128], mixed[:128]) and torch.equal(y[-3:], mixed[-3:])
    zeros = torch.zeros(2, 3, 50)
    assert torch.equal(impl.dequantize(impl.quantize(zeros, bits)), zeros)
    one = torch.tensor([0.123])
    q = impl.quantize(one, bits)
    assert torch.equal(impl.dequantize(q), one) and q.payload.numel() == 1
    scalar = torch.tensor(2.5, dtype=torch.bfloat16)
    y = impl.dequantize(impl.quantize(scalar, bits))
    assert y.shape == () and y.dtype == torch.bfloat16 and y.item() == 2.5


@pytest.mark.parametrize("impl", [reference, fast])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("numel", [1, 2, 127, 128, 129, 1001, 4096])
def test_nbytes_accounting(impl, bits, numel):
    q = impl.quantize(torch.randn(numel), bits)
    payload = numel if bits == 8 else -(-numel // 2)
    assert q.payload.numel() == payload
    assert q.nbytes == payload + 4 * q.scale.numel() + 4 * q.minimum.numel()
    assert q.nbytes == packed_nbytes(numel, bits, DEFAULT_GROUP_SIZE)  # the one default group size
    # no hidden slack: each tensor owns exactly its bytes (not a view into a bigger buffer)
    assert sum(t.untyped_storage().nbytes() for t in (q.payload, q.scale, q.minimum)) == q.nbytes


def test_low_nibble_holds_even_index():
    x = torch.tensor([0.0, 15.0, 15.0, 0.0, 5.0])  # min 0, max 15 -> codes equal the values
    q = reference.quantize(x, 4, group_size=8)
    assert q.payload.tolist() == [0xF0, 0x0F, 0x05]
    assert_same(q, fast.quantize(x, 4, group_size=8))


@pytest.mark.parametrize("impl", [reference, fast])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_come_back_in_their_dtype(impl, dtype):
    x = torch.randn(4, 300).to(dtype)
    y = impl.dequantize(impl.quantize(x, 8))
    assert y.dtype == dtype and y.shape == x.shape


@pytest.mark.parametrize("impl", [reference, fast])
def test_stochastic_rounding_is_unbiased_seeded_and_private(impl):
    base = torch.linspace(0, 1, 128)  # min 0, max 1 in every group -> same step everywhere
    x = base.repeat(512)
    scale = 1 / 15
    state = torch.get_rng_state()
    q = impl.quantize(x, 4, 128, stochastic=True, generator=torch.Generator().manual_seed(0))
    err = impl.dequantize(q).view(512, 128) - base
    assert abs(float(err.mean())) < 0.01 * scale
    assert float(err.mean(0).abs().max()) < 0.15 * scale  # RTN would be biased by up to scale/2
    assert float(err.abs().max()) < scale * (1 + 1e-4)

    again = impl.quantize(x, 4, 128, stochastic=True, generator=torch.Generator().manual_seed(0))
    other = impl.quantize(x, 4, 128, stochastic=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(q.payload, again.payload) and not torch.equal(q.payload, other.payload)
    impl.quantize(x, 8, stochastic=True)  # generator=None uses a private generator
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("impl", [reference, fast])
@pytest.mark.parametrize("bits", [8, 4])
def test_dequantize_is_pure(impl, bits):
    q = impl.quantize(torch.randn(3, 333), bits)
    saved = [t.clone() for t in (q.payload, q.scale, q.minimum)]
    a, b = impl.dequantize(q), impl.dequantize(q)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    a.add_(1.0)  # the result is a new tensor: mutating it must not leak into q
    assert all(torch.equal(s, t) for s, t in zip(saved, (q.payload, q.scale, q.minimum)))
    assert torch.equal(impl.dequantize(q), b)


def test_get_quantizer():
    assert get_quantizer("reference").quantize is reference.quantize
    assert get_quantizer("fast").name == get_quantizer().name == "fast"
    with pytest.raises(FedquadError):
        get_quantizer("bogus")


@pytest.mark.parametrize("impl", [reference, fast])
def test_rejects_bad_input(impl):
    with pytest.raises(FedquadError):
        impl.quantize(torch.randn(10), bits=3)
    with pytest.raises(FedquadError):
        impl.quantize(torch.randn(10), bits=8, group_size=0)
    with pytest.raises(FedquadError):
        impl.quantize(torch.arange(10), bits=8)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            impl.quantize(torch.tensor([1.0, bad, 2.0] * 100), bits=8)
    with pytest.raises(FedquadError):
        packed_nbytes(10, 5, 128)


def test_compile_failure_warns_once_and_falls_back(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fast, "_native_enabled", False)
    monkeypatch.setattr(fast, "_compiled", {})
    monkeypatch.setattr(fast, "_compile_failed", False)
    monkeypatch.setattr(fast, "_compile_enabled", True)
    monkeypatch.setattr(torch, "compile", boom)
    x = torch.randn(8, 256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fast.quantize(x, 8)
        y = fast.dequantize(q)
        fast.quantize(x, 4)
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    assert fast.backend() == "eager"
    assert_same(q, reference.quantize(x, 8))
    assert torch.equal(y, reference.dequantize(q))


# ---- native kernels and quantize_saved (the pack hook's entry point) -----------------------------

def special_data(numel: int, seed: int, kind: str) -> torch.Tensor:
    """make_data plus the cases quantize_saved decides on: non-negative, NaN/inf, huge values."""
    x = make_data(numel, seed, "relu" if kind in ("relu", "softmax") else "normal")
    if kind == "softmax":
        x = torch.softmax(3 * x, dim=0)
    elif kind in ("nan", "inf", "huge"):
        x[seed % numel] = {"nan": float("nan"), "inf": float("-inf"), "huge": -3.0e38}[kind]
    elif kind != "relu":
        x = make_data(numel, seed, kind)
    return x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([8, 4]),
       group_size=st.sampled_from([1, 2, 7, 64, 128]), stochastic=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       kind=st.sampled_from(["normal", "offset", "runs", "relu", "softmax", "nan", "inf", "huge"]))
def test_native_matches_reference(native_fast, shape, seed, bits, group_size, stochastic, dtype, kind):
    x = special_data(math.prod(shape), seed, kind).reshape(shape).to(dtype)
    gen = (lambda: torch.Generator().manual_seed(seed)) if stochastic else (lambda: None)
    a, keep_a = fast.quantize_saved(x, bits, group_size, stochastic, gen(), True, 1e6)
    b, keep_b = reference.quantize_saved(x, bits, group_size, stochastic, gen(), True, 1e6)
    assert bool(keep_a) == bool(keep_b) == (kind in ("nan", "inf", "huge"))
    if not bool(keep_b):
        assert_same(a, b)
        assert torch.equal(fast.dequantize(a), reference.dequantize(b))
    if kind in ("nan", "inf"):
        with pytest.raises(ValueError):
            fast.quantize(x, bits, group_size)
    else:  # the plain quantizer: no sqrt grid, no limit (3e38 alone is finite, its range too)
        assert_same(fast.quantize(x, bits, group_size, stochastic, gen()),
                    reference.quantize(x, bits, group_size, stochastic, gen()))


@pytest.mark.parametrize("backend", ["native", "compiled", "eager"])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_saved_backends_match_reference(backend, bits):
    select(backend)
    try:
        for kind in ("normal", "relu", "huge"):
            x = special_data(7 * 129, 3, kind).reshape(7, 129)  # a partial tail group
            a, keep_a = fast.quantize_saved(x, bits, 128, limit=1e6)
            b, keep_b = reference.quantize_saved(x, bits, 128, limit=1e6)
            assert bool(keep_a) == bool(keep_b) == (kind == "huge")
            if not bool(keep_b):
                assert_same(a, b)
                assert torch.equal(fast.dequantize(a), reference.dequantize(b))
    finally:
        select("native")


def test_sqrt_grid_is_marked_by_the_scale_sign_and_squared_back():
    p = torch.softmax(torch.randn(64, 64) * 3, dim=-1)
    q, keep = reference.quantize_saved(p, 8, 64)
    assert not bool(keep) and bool(torch.signbit(q.scale).all())
    lin = reference.quantize(p, 8, 64)
    err_sqrt = (reference.dequantize(q) - p).abs()
    err_lin = (reference.dequantize(lin) - p).abs()
    small = p < p.max() / 1000  # the many near-zero probabilities: where the sqrt grid helps
    assert float(err_sqrt[small].mean()) < 0.2 * float(err_lin[small].mean())
    # the grid is the quantizer of sqrt(x), correctly rounded (torch.sqrt on CPU is not)
    s = reference.quantize(p.double().sqrt().float(), 8, 64)
    assert torch.equal(q.payload, s.payload) and torch.equal(q.scale, -s.scale)
    # off by request, or when any value is negative
    q_off, _ = reference.quantize_saved(p, 8, 64, sqrt_nonnegative=False)
    q_neg, _ = reference.quantize_saved(torch.cat([p.reshape(-1), torch.tensor([-1e-9])]), 8, 64)
    assert not torch.signbit(q_off.scale).any() and not torch.signbit(q_neg.scale).any()


def test_quantize_saved_keep_raw_rules():
    x = torch.randn(4096)
    for value, keep in ((1e6 - 64, False), (1e6, True), (-1e6, True), (float("nan"), True), (float("inf"), True)):
        y = x.clone()
        y[100] = value
        for impl in (reference, fast):
            assert bool(impl.quantize_saved(y, 8, 64, limit=1e6)[1]) == keep, (impl.__name__, value)
    # no limit: finite values are quantized, but a group range beyond float32 is not
    wide = torch.zeros(256)
    wide[0], wide[1] = 3e38, -3e38
    for impl in (reference, fast):
        assert bool(impl.quantize_saved(wide, 8, 64)[1])
        assert not bool(impl.quantize_saved(torch.tensor([3e38, 1.0] * 64), 8, 64)[1])


def test_native_build_failure_warns_once_and_falls_back(monkeypatch):
    from fedquad.quant import cpu_ext

    def boom():
        raise RuntimeError("no C compiler (cc/gcc) on PATH")

    monkeypatch.setattr(cpu_ext, "_build", boom)
    monkeypatch.setattr(cpu_ext, "_lib", None)
    monkeypatch.setattr(cpu_ext, "_tried", False)
    x = torch.randn(8, 256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = fast.quantize(x, 8)
        fast.quantize(x, 4)
    assert len([w for w in caught if "native quantization kernels" in str(w.message)]) == 1
    assert fast.backend() != "native"
    assert_same(q, reference.quantize(x, 8))


def test_warm_up_reports_seconds():
    from fedquad.quant import warm_up
    assert warm_up("reference", 8, 64) == 0.0
    assert 0.0 < warm_up("fast", 4, 32, stochastic=True) < 120


TRITON_CHECK = r"""
import warnings
import torch
from fedquad.quant import reference, triton_kernels
warnings.simplefilter("ignore")  # numpy warnings from masked lanes in the interpreter
cases = 0
for bits in (8, 4):
    for n, gs in [(1000, 64), (77, 6), (1, 64), (2500, 100)]:  # tail groups, non-power-of-two sizes
        for kind in ("normal", "softmax", "huge", "nan"):
            x = torch.randn(n, generator=torch.Generator().manual_seed(n + gs))
            x = {"relu": x.clamp_min(0), "softmax": torch.softmax(3 * x, 0)}.get(kind, x)
            if kind in ("huge", "nan"):
                x[n // 2] = -3e38 if kind == "huge" else float("nan")
            for stochastic in (False, True):
                gen = (lambda: torch.Generator().manual_seed(7)) if stochastic else (lambda: None)
                a, keep_a = triton_kernels.quantize_saved(x, bits, gs, stochastic, gen(), True, 1e6)
                b, keep_b = reference.quantize_saved(x, bits, gs, stochastic, gen(), True, 1e6)
                assert bool(keep_a) == bool(keep_b) == (kind in ("huge", "nan")), (bits, n, gs, kind)
                if not bool(keep_b):
                    assert torch.equal(a.payload, b.payload), (bits, n, gs, kind, stochastic)
                    assert torch.equal(a.scale, b.scale) and torch.equal(a.minimum, b.minimum)
                    assert torch.equal(triton_kernels.dequantize(a), reference.dequantize(b))
                cases += 1
print("ok", cases)
"""


def test_triton_kernels_match_reference_in_the_interpreter():
    """The CUDA kernels, run on CPU tensors by Triton's interpreter: bit-identical to the reference.
    Needs Triton installed (it is not a test dependency: ~290 MB download, ~1 GB installed)."""
    import importlib.util
    import os
    import subprocess
    import sys
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (pip install triton==3.9.0 to run this test on CPU)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("block", [8, 32, 64, 128])
def test_native_rotation_matches_the_butterfly_reference(native_fast, block):
    """cpu_ext's per-block Hadamard choice (vectorised butterfly) equals rotation's spec bit for bit."""
    from fedquad.quant import cpu_ext, rotation
    g = torch.Generator().manual_seed(block)
    x = torch.randn(29, 4 * block, generator=g)
    x[:, 3] *= 40  # outlier channel: the rotation narrows those groups
    x[5] += 7.0  # an offset row: the rotation widens it, so it stays plain
    for sample, any_rotated in ((x, True), (x.abs(), False), (torch.where(x.abs() > 50, 2e6, x), False)):
        y, flags = cpu_ext.choose_groups(sample, block, 1e6)
        y_ref, flags_ref = rotation.choose_groups_reference(sample, block, 1e6)
        assert torch.equal(y, y_ref) and torch.equal(flags, flags_ref)
        assert bool(flags.any()) == any_rotated and not bool(flags.all())
        assert torch.equal(cpu_ext.undo_groups(y, flags, block), rotation.undo_groups_reference(y_ref, flags_ref, block))
