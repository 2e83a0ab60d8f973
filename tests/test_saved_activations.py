"""Pack/unpack policy: skip rules, dedup, accounting, and the known traps (docs/design.md, "The client")."""

from __future__ import annotations

import numpy as np
import torch

from fedquad.client.saved_activations import QuantSettings, SavedTensorPolicy, parameter_storages
from fedquad.quant import QuantizedTensor, packed_nbytes
from fedquad.quant.stored import StoredTensor, stored_nbytes

Q8 = QuantSettings(bits=8, group_size=128, quantizer="reference")


def _policy(quant=Q8, module=None):
    return SavedTensorPolicy(parameter_storages(module) if module is not None else set(), quant)


def test_kept_bytes_equal_payload_plus_scales():
    for bits in (8, 4):
        policy = _policy(QuantSettings(bits=bits, group_size=128, quantizer="reference"))
        shapes = [(16, 64, 384), (3, 1000), (5000,)]
        packed = [policy.pack(torch.randn(s)) for s in shapes]
        assert all(isinstance(p, StoredTensor) and isinstance(p.q, QuantizedTensor) for p in packed)
        param_bytes = 4 if bits == 8 else 2  # QuantSettings' default scale_dtype: bfloat16 at int4
        assert all(p.q.scale.element_size() == p.q.minimum.element_size() == param_bytes for p in packed)
        flags = [0 if p.flags is None else p.flags.numel() for p in packed]  # int4 rotation flags
        expected = sum(p.q.payload.numel() * p.q.payload.element_size() + (p.q.scale.numel() + p.q.minimum.numel())
                       * param_bytes + f for p, f in zip(packed, flags))
        assert policy.bytes.kept_bytes == expected
        assert expected == sum(stored_nbytes(torch.Size(s).numel(), bits, 128, policy.quant.param_dtype(),
                                             policy.quant.rotates()) for s in shapes)
        if bits == 8:  # float32 parameters, no flags: the quantizer's own packed_nbytes
            assert expected == sum(packed_nbytes(torch.Size(s).numel(), bits, 128) for s in shapes)
        assert policy.bytes.raw_bytes == sum(torch.Size(s).numel() * 4 for s in shapes)


def test_parameters_and_views_of_them_are_not_stored_or_counted():
    lin = torch.nn.Linear(256, 256)
    policy = _policy(module=lin)
    for t in (lin.weight, lin.weight.t(), lin.weight[:10]):
        assert policy.unpack(policy.pack(t)) is t
    assert policy.bytes.raw_bytes == 0 and policy.bytes.kept_bytes == 0


def test_skip_rules_non_float_tiny_and_masks():
    policy = _policy()
    ids = torch.randint(0, 10, (4096,))
    tiny = torch.randn(10)
    mask = torch.zeros(8, 1, 64, 64)
    mask[..., 32:] = torch.finfo(torch.float32).min  # an additive attention mask
    inf = torch.randn(4096)
    inf[7] = float("inf")
    for t in (ids, tiny, mask, inf):
        assert policy.unpack(policy.pack(t)) is t
    assert policy.bytes.quantized_tensors == 0
    assert policy.bytes.kept_bytes == policy.bytes.raw_bytes
    assert set(policy.bytes.skipped) == {"non-float", "tiny", "non-finite or huge"}


def test_mask_with_dtype_minimum_keeps_gradients_exact():
    x = torch.rand(4, 64, 64, requires_grad=True) * 1e-30
    x.retain_grad()
    mask = torch.zeros(4, 64, 64)
    mask[:, :, 40:] = torch.finfo(torch.float32).min
    policy = _policy()
    with policy.hooks():
        y = x * mask  # autograd saves the mask to form x's gradient
    y.sum().backward()
    assert torch.equal(x.grad, mask)  # quantizing the mask would have destroyed this
    assert policy.bytes.skipped.get("non-finite or huge", 0) >= 1


def test_tensor_saved_twice_is_stored_once():
    policy = _policy()
    x = torch.randn(64, 128)
    a = policy.pack(x)
    b = policy.pack(x)
    assert a is b
    assert policy.bytes.tensors == 1 and policy.bytes.raw_bytes == x.numel() * 4
    # through autograd: x * x saves x twice
    w = torch.randn(64, 128, requires_grad=True)
    policy.reset()
    with policy.hooks():
        h = w * 2.0
        y = (h * h).sum()
    assert policy.bytes.tensors == 1
    y.backward()
    # int8 step over the range of h is ~0.07; the gradient 4h carries at most 4x half a step
    torch.testing.assert_close(w.grad, 8.0 * w.detach(), rtol=0, atol=0.15)


def test_in_place_change_between_saves_is_not_deduplicated():
    policy = _policy()
    x = torch.randn(64, 128)
    a = policy.pack(x)
    x.add_(1.0)
    b = policy.pack(x)
    assert a is not b


def test_reused_addresses_are_not_mistaken_for_the_same_tensor():
    # Inside one forward a freed activation's address is handed to the next one. Reproduce that
    # deterministically: two tensor objects over the same numpy buffer, the first dead before
    # the second exists, with different contents and fresh version counters.
    buffer = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    policy = _policy()
    first = torch.from_numpy(buffer)
    address = first.data_ptr()
    packed_first = policy.pack(first)
    del first
    buffer[:] = 3.0
    second = torch.from_numpy(buffer)
    assert second.data_ptr() == address and second._version == 0
    packed_second = policy.pack(second)
    assert packed_second is not packed_first
    torch.testing.assert_close(policy.unpack(packed_second), second)
    assert policy.bytes.tensors == 2


def test_unpack_twice_with_retain_graph():
    w = torch.randn(128, 64, requires_grad=True)
    x = torch.randn(32, 128)
    policy = _policy()
    with policy.hooks():
        y = torch.tanh(x @ w)
    loss = y.square().sum()
    loss.backward(retain_graph=True)
    first = w.grad.clone()
    loss.backward()
    torch.testing.assert_close(w.grad, 2 * first)


def test_cpu_dropout_float_mask_is_accounted_and_quantized_losslessly():
    x = torch.randn(64, 256, requires_grad=True)
    policy = _policy()
    torch.manual_seed(0)
    with policy.hooks():
        y = torch.nn.functional.dropout(x, p=0.1, training=True)
    # on CPU dropout saves a float mask as large as its input (on CUDA a bool mask)
    assert policy.bytes.raw_bytes >= x.numel() * 4
    y.sum().backward()
    torch.manual_seed(0)
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.dropout(x2, p=0.1, training=True).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_pack_and_unpack_read_no_device_data_on_the_host(monkeypatch):
    """The skip/sqrt decisions come out of the quantizer's pass: no .item()/float() in the hooks
    (on CUDA either would be a synchronisation per tensor; the gpu tier checks that directly)."""
    torch.manual_seed(0)  # fixed inputs: the error bound below is checked on these, not on luck
    for quantizer in ("fast", "reference"):
        for bits in (8, 4):
            policy = _policy(QuantSettings(bits=bits, quantizer=quantizer))
            tensors = [torch.randn(8, 512), torch.rand(8, 512), torch.full((8, 512), torch.finfo(torch.float32).min)]

            def refuse(*args, **kwargs):
                raise AssertionError("host read of tensor data inside a hook")

            with monkeypatch.context() as m:
                for name in ("item", "__float__", "tolist"):
                    m.setattr(torch.Tensor, name, refuse)
                m.setattr(torch, "aminmax", refuse)  # the old separate min/max pass
                packed = [policy.pack(t) for t in tensors]
                out = [policy.unpack(p) for p in packed]
            assert policy.bytes.quantized_tensors == 2 and policy.bytes.skipped == {"non-finite or huge": 1}
            assert out[2] is tensors[2]
            for t, y in zip(tensors[:2], out[:2]):
                assert y.shape == t.shape and float((y - t).abs().max()) < (0.5 if bits == 4 else 0.03)


def test_non_negative_tensors_go_on_the_square_root_grid():
    p = torch.softmax(torch.randn(16, 64, 64) * 4, dim=-1)
    errors = {}
    for sqrt_grid in (True, False):
        policy = _policy(QuantSettings(bits=8, group_size=64, sqrt_nonnegative=sqrt_grid))
        y = policy.unpack(policy.pack(p))
        small = p < 1e-3
        errors[sqrt_grid] = float((y - p)[small].abs().mean())
    assert errors[True] < 0.2 * errors[False], errors
