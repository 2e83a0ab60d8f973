"""Hadamard rotation (fast matmul vs the butterfly spec), the per-group choice, and how the
saved-tensor hook stores int4 activations with it (16-bit group parameters, packed flags)."""

from __future__ import annotations

import pytest
import torch

from fedquad.client.saved_activations import QuantSettings, SavedTensorPolicy
from fedquad.errors import FedquadError
from fedquad.quant import rotation, stored


@pytest.mark.parametrize("block", [1, 2, 8, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_matches_butterfly_and_is_its_own_inverse(block, dtype):
    x = torch.randn(6, 5, 128, generator=torch.Generator().manual_seed(block)).to(dtype)
    fast, ref = rotation.rotate(x, block), rotation.rotate_reference(x, block)
    assert fast.shape == x.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, rtol=0, atol=2e-6 * block ** 0.5)
    torch.testing.assert_close(rotation.rotate(fast, block), x.float(), rtol=0, atol=1e-5)
    # orthonormal: the L2 norm of every block is preserved
    torch.testing.assert_close(fast.reshape(-1, block).norm(dim=1), x.float().reshape(-1, block).norm(dim=1))


def test_rotation_spreads_an_outlier_over_its_block():
    x = torch.zeros(64)
    x[5] = 8.0
    y = rotation.rotate(x, 64)
    assert torch.allclose(y.abs(), torch.full((64,), 1.0))  # 8 / sqrt(64) everywhere, sign from H


def test_rotate_rejects_bad_blocks_and_shapes():
    for bad in (0, 3, 48, True):
        with pytest.raises(FedquadError):
            rotation.rotate(torch.randn(96), bad)
    with pytest.raises(FedquadError):
        rotation.rotate(torch.randn(100), 64)  # not whole blocks
    with pytest.raises(FedquadError):
        rotation.rotate(torch.arange(64), 64)


def _mixed(seed=0):
    """Rows with an outlier (rotation narrows them) and rows with a large offset (it widens them)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 64, generator=g)
    x[::2, 7] *= 40.0
    x[1::4] += 25.0
    return x


def test_choose_groups_matches_reference_and_picks_the_narrower_range():
    x = _mixed()
    y, flags = rotation.choose_groups(x, 64)
    y_ref, flags_ref = rotation.choose_groups_reference(x, 64)
    assert torch.equal(flags, flags_ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-4)
    assert flags[::2].all() and not flags[1::4].any()  # outlier rows rotated, offset rows not
    for row, out, f in zip(x, y, flags):
        assert (out.max() - out.min()) <= (row.max() - row.min())
        assert bool(f) == (not torch.equal(out, row))
    torch.testing.assert_close(rotation.undo_groups(y, flags, 64), x, rtol=0, atol=1e-4)
    torch.testing.assert_close(rotation.undo_groups_reference(y_ref, flags_ref, 64), x, rtol=0, atol=1e-4)


def test_choose_groups_leaves_nonnegative_and_huge_tensors_alone():
    probs = torch.rand(16, 64) ** 4  # peaky and non-negative: the sqrt grid's case
    y, flags = rotation.choose_groups(probs, 64)
    assert not flags.any() and torch.equal(y, probs)
    masked = _mixed()
    masked[3, 3] = torch.finfo(torch.float32).min  # the hook keeps such a tensor raw: do not hide it
    y, flags = rotation.choose_groups(masked, 64, limit=1e6)
    assert not flags.any() and torch.equal(y, masked)
    nan = _mixed()
    nan[0, 0] = float("nan")
    assert not rotation.choose_groups(nan, 64)[1].any()


@pytest.mark.parametrize("count", [1, 7, 8, 9, 64, 77])
def test_flag_packing_round_trip(count):
    flags = torch.rand(count, generator=torch.Generator().manual_seed(count)) < 0.5
    packed = rotation.pack_flags(flags)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-count // 8)
    assert torch.equal(rotation.unpack_flags(packed, count), flags)


def _hook_roundtrip(quant, x):
    policy = SavedTensorPolicy(set(), quant)
    packed = policy.pack(x)
    return policy, packed, policy.unpack(packed)


@pytest.mark.parametrize("quantizer", ["reference", "fast"])
def test_int4_hook_storage_is_exact_and_rotation_lowers_the_error(quantizer):
    x = _mixed(1).reshape(16, 2, 64)
    plain_q = QuantSettings(bits=4, rotation="off", scale_dtype="float32", quantizer=quantizer)
    default_q = QuantSettings(bits=4, rotation="int4", quantizer=quantizer)  # + bfloat16 parameters (default)
    policy, packed, back = _hook_roundtrip(default_q, x)
    _, _, plain_back = _hook_roundtrip(plain_q, x)
    assert isinstance(packed, stored.StoredTensor)
    assert packed.q.scale.dtype == torch.bfloat16 and packed.q.minimum.dtype == torch.bfloat16
    groups = x.numel() // 64
    assert packed.flags is not None and packed.flags.numel() == -(-groups // 8)
    expected = x.numel() // 2 + groups * 2 * 2 + -(-groups // 8)
    assert packed.nbytes == expected == policy.bytes.kept_bytes
    assert expected == stored.stored_nbytes(x.numel(), 4, 64, "bfloat16", True)
    assert back.shape == x.shape and back.dtype == x.dtype
    assert (back - x).norm() < 0.7 * (plain_back - x).norm()  # the outlier rows gain most
    assert torch.equal(policy.unpack(packed), back)  # unpack is pure


def test_defaults_int8_float32_unrotated_int4_bfloat16_rotated():
    x = _mixed(2)
    policy, packed, back = _hook_roundtrip(QuantSettings(bits=8, quantizer="reference"), x)
    assert packed.q.scale.dtype == torch.float32 and packed.flags is None
    assert policy.bytes.kept_bytes == stored.stored_nbytes(x.numel(), 8, 64, "float32", False)
    assert (back - x).abs().max() < 0.6  # half an int8 step of the widest group (~40 sigma range)
    policy, packed, back = _hook_roundtrip(QuantSettings(bits=4, quantizer="reference"), x)
    assert packed.q.scale.dtype == torch.bfloat16 and packed.flags is not None  # rotation on at int4
    assert policy.bytes.kept_bytes == stored.stored_nbytes(x.numel(), 4, 64, "bfloat16", True)


def test_head_width_tensors_in_an_int4_block_are_kept_at_int8():
    q = torch.randn(2, 4, 64, 16)  # [batch, heads, tokens, head width]
    other = torch.randn(2, 64, 64)
    policy = SavedTensorPolicy(set(), QuantSettings(bits=4, quantizer="reference"), head_dims=frozenset({16}))
    packed_q, packed_other = policy.pack(q), policy.pack(other)
    # int8 codes, but the int4 block's 16-bit scales (not rotated: rotation is an int4 rule)
    assert packed_q.q.bits == 8 and packed_q.q.scale.dtype == torch.bfloat16 and packed_q.flags is None
    assert packed_other.q.bits == 4
    assert policy.bytes.kept_bytes == (stored.stored_nbytes(q.numel(), 8, 64, "bfloat16", False)
                                       + stored.stored_nbytes(other.numel(), 4, 64, "bfloat16", True))
    assert (policy.unpack(packed_q) - q).abs().max() < 0.03
    off = SavedTensorPolicy(set(), QuantSettings(bits=4, head_bits=4, quantizer="reference"), head_dims=frozenset({16}))
    assert off.pack(q).q.bits == 4


def test_bfloat16_inputs_and_the_sqrt_grid_survive_the_wrapping():
    x = _mixed(3).bfloat16()
    _, packed, back = _hook_roundtrip(QuantSettings(bits=4, quantizer="reference"), x)
    assert back.dtype == torch.bfloat16 and back.shape == x.shape
    probs = torch.softmax(torch.randn(8, 64, 64) * 3, dim=-1)
    _, packed, back = _hook_roundtrip(QuantSettings(bits=4, rotation="on", quantizer="reference"), probs)
    assert not rotation.unpack_flags(packed.flags, probs.numel() // 64).any()
    assert torch.signbit(packed.q.scale.float()).all()  # every group on the sqrt grid, sign kept in bfloat16
    assert back.min() >= 0 and (back - probs).abs().max() < 0.05


def test_odd_shapes_are_quantized_without_rotation():
    x = torch.randn(3, 1000)  # 3000 elements: not whole groups of 64
    policy, packed, back = _hook_roundtrip(QuantSettings(bits=4, rotation="on", quantizer="reference"), x)
    assert packed.flags is None and back.shape == x.shape
    assert policy.bytes.kept_bytes == stored.stored_nbytes(3000, 4, 64, "bfloat16", True)


def test_quant_settings_reject_unknown_storage_options():
    with pytest.raises(FedquadError):
        QuantSettings(rotation="sometimes")
    with pytest.raises(FedquadError):
        QuantSettings(scale_dtype="float16")
