"""Pack/unpack policy: skip rules, dedup, accounting, and the known traps (DESIGN section 3)."""

from __future__ import annotations

import numpy as np
import torch

from fedquad.client.saved_activations import QuantSettings, SavedTensorPolicy, parameter_storages
from fedquad.quant import QuantizedTensor, packed_nbytes

Q8 = QuantSettings(bits=8, group_size=128, quantizer="reference")


def _policy(quant=Q8, module=None):
    return SavedTensorPolicy(parameter_storages(module) if module is not None else set(), quant)


def test_kept_bytes_equal_payload_plus_scales():
    for bits in (8, 4):
        policy = _policy(QuantSettings(bits=bits, group_size=128, quantizer="reference"))
        shapes = [(16, 64, 384), (3, 1000), (5000,)]
        packed = [policy.pack(torch.randn(s)) for s in shapes]
        assert all(isinstance(p, QuantizedTensor) for p in packed)
        expected = sum(p.payload.numel() * p.payload.element_size() + p.scale.numel() * 4 + p.minimum.numel() * 4
                       for p in packed)
        assert policy.bytes.kept_bytes == expected
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
