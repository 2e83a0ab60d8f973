"""Client-side checks aimed at bugs the rest of the suite let through (issue 14, "tests that would
not catch real bugs"): each test names the hand-made mutant it kills.

They observe real components from outside (optimizer and forward hooks, the pack hooks' own byte
counts) rather than replacing anything: gradient clipping applied at every step, gradients
cleared between steps, LoRA bottleneck outputs kept raw, parameter views recognised by storage
at any offset, and the out-of-memory limit compared with the kept (not the raw) bytes.
"""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import cached_model
from fedquad.client import LocalTrainConfig, QuantSettings, train_local
from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import SavedTensorPolicy, parameter_storages
from fedquad.client.train import ClientOutOfMemory, forward_backward
from fedquad.diagnostics.memory import generated_batch
from fedquad.plan import ClientPlan


def _batches(adapted, n, seed):
    return [generated_batch(adapted, 4, 16, seed=seed + i) for i in range(n)]


class _StepObserver:
    """Per optimizer step: the total gradient norm the optimizer is about to apply; per forward:
    whether any parameter still holds a gradient (a leftover of the previous step)."""

    def __init__(self, adapted):
        self.norms: list[float] = []
        self.stale_at_forward: list[bool] = []
        self._model = adapted.model

    def __enter__(self):
        def before_step(optimizer, args, kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        def before_forward(module, args, kwargs):
            self.stale_at_forward.append(any(p.grad is not None for p in self._model.parameters()))

        self._handles = [register_optimizer_step_pre_hook(before_step),
                         self._model.register_forward_pre_hook(before_forward, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def _observe(adapted, state, plan, batches, config):
    with _StepObserver(adapted) as seen:
        train_local(adapted, state, plan, batches, config)
    return seen


def test_gradient_clipping_is_applied_at_every_step():
    """Mutant killed: `clip_grad_norm_` never called (the default max norm 1.0 is above tiny-bert's
    gradient norms, so a run at the default cannot tell)."""
    adapted = cached_model("tiny-bert")
    state = adapted.adapter_state()
    plan = ClientPlan(adapted.num_blocks)
    free = _observe(adapted, state, plan, _batches(adapted, 3, 40), LocalTrainConfig(local_steps=3, max_grad_norm=0))
    assert len(free.norms) == 3 and min(free.norms) > 0
    limit = min(free.norms) / 4
    clipped = _observe(adapted, state, plan, _batches(adapted, 3, 40),
                       LocalTrainConfig(local_steps=3, max_grad_norm=limit))
    assert clipped.norms == pytest.approx([limit] * 3, rel=1e-4)


def test_gradients_are_cleared_between_steps():
    """Mutant killed: `optimizer.zero_grad` removed (gradients of step k added into step k+1). The
    clean-up at train_local's start and end hides it from a test that only looks between calls."""
    adapted = cached_model("tiny-bert")
    seen = _observe(adapted, adapted.adapter_state(), ClientPlan(2), _batches(adapted, 3, 50),
                    LocalTrainConfig(local_steps=3))
    assert seen.stale_at_forward == [False, False, False]


def test_lora_bottleneck_outputs_are_kept_raw():
    """Mutant killed: the LoRA-bottleneck keep rule removed from `_skip_reason`. A tensor whose last
    dimension is the LoRA rank is kept as it is; the same size with another last dimension is
    quantized."""
    policy = SavedTensorPolicy(set(), QuantSettings(bits=8), keep_last_dims=frozenset({8}))
    bottleneck = torch.randn(256, 8)
    assert policy.pack(bottleneck) is bottleneck
    assert policy.bytes.skipped == {"LoRA bottleneck": 1}
    assert policy.bytes.kept_bytes == policy.bytes.raw_bytes == bottleneck.numel() * 4
    other = torch.randn(128, 16)
    assert policy.pack(other) is not other
    assert policy.bytes.quantized_tensors == 1
    # and in a real quantized step: every LoRA A output of a quantized block is kept raw
    adapted = cached_model("tiny-bert")
    with PlanRuntime(adapted, ClientPlan(2, 2, 8)) as runtime:
        forward_backward(adapted, runtime, generated_batch(adapted, 8, 64))
        for b in runtime.block_bytes()[-2:]:
            assert b.skipped.get("LoRA bottleneck", 0) > 0 and b.quantized_tensors > 0


def test_parameter_views_at_an_offset_are_kept_by_reference():
    """Mutant killed: parameters recognised by `data_ptr()` instead of their storage. A view that
    starts past the parameter's first element (a slice) has another data_ptr but the same
    storage; it must be neither counted nor quantized, so the gradient through it stays exact."""
    module = torch.nn.Module()
    module.w = torch.nn.Parameter(torch.randn(65, 64))
    view = module.w[1:]
    assert view.data_ptr() != module.w.data_ptr() and view.storage_offset() == 64
    policy = SavedTensorPolicy(parameter_storages(module), QuantSettings(bits=4, min_numel=16))
    x = torch.randn(64, 64, requires_grad=True)
    with policy.hooks():
        y = (x * view).sum()  # mul saves both operands: x (an activation) and the view
    y.backward()
    assert policy.bytes.raw_bytes == x.numel() * 4 and policy.bytes.tensors == 1
    assert torch.equal(x.grad, module.w.detach()[1:])  # the view came back unquantized


def test_out_of_memory_limit_compares_kept_bytes():
    """Mutant killed: the simulated out-of-memory check using raw instead of kept bytes. On an int8
    plan kept is far below raw: a limit of exactly the kept bytes passes, one byte less fails."""
    adapted = cached_model("tiny-bert")
    state = adapted.adapter_state()
    plan = ClientPlan(adapted.num_blocks, adapted.num_blocks, 8)
    config = LocalTrainConfig(local_steps=2)
    free = train_local(adapted, state, plan, _batches(adapted, 2, 60), config)
    kept, raw = free.metrics.saved_kept_bytes, free.metrics.saved_raw_bytes
    assert kept < raw / 2
    train_local(adapted, state, plan, _batches(adapted, 2, 60), config, saved_limit_bytes=kept)
    with pytest.raises(ClientOutOfMemory) as exc:
        train_local(adapted, state, plan, _batches(adapted, 2, 60), config, saved_limit_bytes=kept - 1)
    assert exc.value.saved_bytes == kept
