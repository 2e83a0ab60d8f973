"""Micro-batching (issue 10, item 4): a step predicted not to fit runs as micro-batches whose
accumulated gradient is the whole step's up to float summation order, for classification
(per-example mean loss) and causal LM (per-token mean loss)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import cached_model
from fedquad.client import LocalTrainConfig, PlanRuntime, QuantSettings, StepMemory, train_local
from fedquad.client.train import ClientOutOfMemory, StepDoesNotFit, accumulated_step, split_batch
from fedquad.diagnostics.memory import generated_batch
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan
from fedquad.tasks.causal_lm_tokens import IGNORE_INDEX

MODELS = [("tiny-bert", "seq-cls"), ("tiny-llama", "causal-lm")]


@contextlib.contextmanager
def no_dropout(model):
    """Dropout draws per micro-batch (documented), so exact comparisons switch it off."""
    saved = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m, _ in saved:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in saved:
            m.p = p


def _batch(adapted, batch_size=8, seq_len=16, seed=1):
    """A padded batch whose examples differ in length; causal LM: a different number of scored
    tokens per example (prompt positions and padding at IGNORE_INDEX), one example with none."""
    batch = generated_batch(adapted, batch_size, seq_len, seed=seed)
    lengths = [seq_len - (3 * i) % (seq_len // 2) for i in range(batch_size)]
    for i, n in enumerate(lengths):
        batch["attention_mask"][i, n:] = 0
    if adapted.kind.head == "causal-lm":
        labels = batch["input_ids"].clone()
        for i, n in enumerate(lengths):
            prompt = 1 + (5 * i) % (n - 1)
            labels[i, :prompt] = IGNORE_INDEX
            labels[i, n:] = IGNORE_INDEX
        labels[batch_size - 1] = IGNORE_INDEX  # nothing scored in the last example
        batch["labels"] = labels
    return batch


def _step_grads(adapted, plan, batch, sizes, quant=QuantSettings()):
    with PlanRuntime(adapted, plan, quant) as runtime:
        loss = accumulated_step(adapted, runtime, batch, sizes)
        grads = {k: adapted.parameter(k).grad.detach().clone() for k in runtime.trainable_keys}
        for k in runtime.trainable_keys:
            adapted.parameter(k).grad = None
    return float(loss), grads


def _assert_close(a, b, rtol=1e-5, atol=1e-7):
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("name,task", MODELS)
def test_split_step_gives_the_whole_steps_loss_and_gradient(name, task):
    adapted = cached_model(name, task)
    batch = _batch(adapted)
    plan = ClientPlan(adapted.num_blocks)
    with no_dropout(adapted.model):
        whole_loss, whole = _step_grads(adapted, plan, batch, [8])
        for sizes in ([4, 4], [3, 3, 2], [1] * 8):
            loss, split = _step_grads(adapted, plan, batch, sizes)
            assert loss == pytest.approx(whole_loss, rel=1e-6), sizes
            _assert_close(split, whole)


def test_causal_lm_weights_micro_batches_by_scored_tokens_not_examples():
    """The check above can fail: weighing each half by its examples (what a per-example mean
    would do) moves the causal-LM gradient well beyond the tolerance."""
    adapted = cached_model("tiny-llama", "causal-lm")
    batch = _batch(adapted)
    parts = split_batch(batch, [4, 4])
    tokens = [adapted.kind.loss_units(p) for p in parts]
    assert tokens[0] != tokens[1] and adapted.kind.loss_units(batch) == sum(tokens)
    plan = ClientPlan(adapted.num_blocks)
    with no_dropout(adapted.model):
        _, whole = _step_grads(adapted, plan, batch, [8])
        halves = [_step_grads(adapted, plan, p, [4])[1] for p in parts]
    by_examples = {k: 0.5 * halves[0][k] + 0.5 * halves[1][k] for k in whole}
    by_tokens = {k: (tokens[0] * halves[0][k] + tokens[1] * halves[1][k]) / sum(tokens) for k in whole}
    _assert_close(by_tokens, whole)
    worst = max(float((by_examples[k] - whole[k]).abs().max() / whole[k].abs().max()) for k in whole)
    assert worst > 1e-3


def test_loss_units_per_kind():
    cls = cached_model("tiny-bert")
    lm = cached_model("tiny-llama", "causal-lm")
    assert cls.kind.loss_units(_batch(cls)) == 8
    batch = _batch(lm)
    assert lm.kind.loss_units(batch) == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _worst_lora_cosine(grads, reference):
    return min(float(torch.nn.functional.cosine_similarity(grads[k].flatten(), reference[k].flatten(), dim=0))
               for k in grads if "lora_" in k)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_split_step_is_as_faithful_as_the_whole_step(bits):
    """Deterministic rounding. Where every quantization group lies inside one example (length 64:
    each example's slice of every saved tensor is whole groups) the split step is the whole step
    up to summation order. Where groups straddle two examples (length 33: attention scores are
    12 x 33 x 33 per example) the two steps round differently; the split step's gradient is then
    as close to the unquantized one as the whole step's (measured: equal to 4 digits at both widths)."""
    adapted = cached_model("tiny-bert")
    L = adapted.num_blocks
    plan, quant = ClientPlan(L, L, bits), QuantSettings(bits=bits)
    with no_dropout(adapted.model):
        aligned = generated_batch(adapted, 8, 64, seed=3)
        _, whole = _step_grads(adapted, plan, aligned, [8], quant)
        _, split = _step_grads(adapted, plan, aligned, [4, 4], quant)
        _assert_close(split, whole, rtol=1e-4, atol=1e-6)
        straddling = generated_batch(adapted, 8, 33, seed=3)
        _, reference = _step_grads(adapted, ClientPlan(L), straddling, [8])
        _, whole = _step_grads(adapted, plan, straddling, [8], quant)
        _, split = _step_grads(adapted, plan, straddling, [4, 4], quant)
    assert _worst_lora_cosine(split, reference) >= _worst_lora_cosine(whole, reference) - 0.002


def _peak(batch_size: int, seq_len: int) -> float:
    """A stand-in predictor of the form the cost model has: fixed part plus per-token activations."""
    return 1000.0 + 10.0 * batch_size * seq_len


def test_micro_batch_sizes_are_the_fewest_that_fit():
    assert StepMemory(_peak, _peak(16, 64)).micro_batch_sizes(16, 64) == [16]
    sizes = StepMemory(_peak, _peak(5, 64)).micro_batch_sizes(16, 64)
    assert sizes == [4, 4, 4, 4] and all(_peak(n, 64) <= _peak(5, 64) for n in sizes)
    assert StepMemory(_peak, _peak(6, 64)).micro_batch_sizes(16, 64) == [6, 5, 5]
    assert StepMemory(_peak, _peak(1, 64)).micro_batch_sizes(7, 64) == [1] * 7
    with pytest.raises(StepDoesNotFit, match="one example"):
        StepMemory(_peak, _peak(1, 64) - 1).micro_batch_sizes(16, 64)
    with pytest.raises(FedquadError, match="predictor returned"):
        StepMemory(lambda b, s: float("nan"), 1e9).micro_batch_sizes(4, 8)
    with pytest.raises(FedquadError, match="callable"):
        StepMemory(5, 1e9)


def _batches(adapted, n, seed):
    return [_batch(adapted, 8, 16, seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("name,task", MODELS)
def test_train_local_splits_only_what_does_not_fit_and_gives_the_same_update(name, task):
    adapted = cached_model(name, task)
    state = adapted.adapter_state()
    plan = ClientPlan(adapted.num_blocks)
    config = LocalTrainConfig(local_steps=3, seed=5)
    with no_dropout(adapted.model):
        whole = train_local(adapted, state, plan, _batches(adapted, 3, 40), config)
        roomy = train_local(adapted, state, plan, _batches(adapted, 3, 40), config,
                            step_memory=StepMemory(_peak, _peak(8, 16)))
        tight = train_local(adapted, state, plan, _batches(adapted, 3, 40), config,
                            step_memory=StepMemory(_peak, _peak(3, 16)))
    assert whole.metrics.micro_batches == [1, 1, 1] and roomy.metrics.micro_batches == [1, 1, 1]
    assert tight.metrics.micro_batches == [3, 3, 3] and tight.metrics.max_micro_batches == 3
    assert tight.metrics.predicted_peak_bytes == _peak(3, 16)
    assert tight.metrics.to_dict()["max_micro_batches"] == 3
    for k in whole.update:  # a step that fits runs exactly as without a predictor
        assert torch.equal(whole.update[k], roomy.update[k]), k
    _assert_close(tight.update, whole.update, rtol=1e-4, atol=1e-6)
    assert tight.metrics.loss == pytest.approx(whole.metrics.loss, rel=1e-5)
    assert tight.metrics.examples == whole.metrics.examples == 24
    # the split is real: memory holds one micro-batch's saved activations, about a third of the
    # whole batch's; the step's counts (what the planner compares with its prediction) add up to the whole
    assert whole.metrics.held_saved_kept_bytes == whole.metrics.saved_kept_bytes
    assert tight.metrics.held_saved_kept_bytes < 0.5 * whole.metrics.saved_kept_bytes
    assert tight.metrics.saved_raw_bytes == pytest.approx(whole.metrics.saved_raw_bytes, rel=0.02)


def test_split_step_fits_a_saved_limit_the_whole_step_exceeds():
    adapted = cached_model("tiny-bert")
    state = adapted.adapter_state()
    plan = ClientPlan(adapted.num_blocks)
    config = LocalTrainConfig(local_steps=1, seed=6)
    whole = train_local(adapted, state, plan, _batches(adapted, 1, 50), config)
    limit = 0.75 * whole.metrics.saved_kept_bytes
    with pytest.raises(ClientOutOfMemory):
        train_local(adapted, state, plan, _batches(adapted, 1, 50), config, saved_limit_bytes=limit)
    split = train_local(adapted, state, plan, _batches(adapted, 1, 50), config, saved_limit_bytes=limit,
                        step_memory=StepMemory(_peak, _peak(4, 16)))
    assert split.metrics.micro_batches == [2] and split.metrics.held_saved_kept_bytes <= limit


def test_a_step_that_cannot_fit_fails_before_it_runs_and_leaves_no_gradients():
    adapted = cached_model("tiny-bert")
    with pytest.raises(StepDoesNotFit) as info:
        train_local(adapted, adapted.adapter_state(), ClientPlan(1), _batches(adapted, 1, 60),
                    LocalTrainConfig(local_steps=1), step_memory=StepMemory(_peak, 10.0))
    assert info.value.peak_bytes == _peak(1, 16)
    assert info.value.needed_bytes(123.0) == _peak(8, 16)  # the whole batch's peak, not fixed + saved
    assert all(p.grad is None for p in adapted.model.parameters())


def test_split_batch_rejects_ragged_batches():
    with pytest.raises(FedquadError, match="rows"):
        split_batch({"input_ids": torch.zeros(4, 3), "labels": torch.zeros(3)}, [2, 2])


def test_step_memory_from_the_shipped_profile_splits_what_the_cost_model_says_does_not_fit():
    from fedquad.costmodel import load_profile, predict_step_peak_bytes
    profile = load_profile("minilm-b16-s64")
    plan = ClientPlan(profile.num_blocks)
    peak = {b: predict_step_peak_bytes(profile, plan, b, 64) for b in (4, 5, 8, 16)}
    assert peak[4] < peak[8] < peak[16]
    memory = StepMemory.from_profile(profile, plan, peak[16])
    assert memory.micro_batch_sizes(16, 64) == [16]
    assert memory.micro_batch_sizes(16, 128) != [16]  # a longer batch of the same size does not fit
    sizes = StepMemory.from_profile(profile, plan, (peak[4] + peak[5]) / 2).micro_batch_sizes(16, 64)
    assert sizes == [4, 4, 4, 4]
    assert 0 < memory.fixed_bytes(8, 64) < memory.fixed_bytes(16, 64) < peak[16]  # logits scale with the batch


def test_the_measured_check_uses_the_fixed_part_at_the_micro_batch_shape():
    """With `fixed_bytes` the client fails a micro-step whose measured saved activations exceed
    the budget less the fixed part at that micro-batch's shape, and reports that whole."""
    adapted = cached_model("tiny-bert")
    state = adapted.adapter_state()
    plan = ClientPlan(adapted.num_blocks)
    config = LocalTrainConfig(local_steps=1, seed=7)
    saved = train_local(adapted, state, plan, _batches(adapted, 1, 70), config,
                        step_memory=StepMemory(_peak, _peak(4, 16))).metrics.held_saved_kept_bytes  # per half
    budget = _peak(4, 16)
    fits = StepMemory(_peak, budget, lambda b, s: budget - saved)
    assert train_local(adapted, state, plan, _batches(adapted, 1, 70), config,
                       step_memory=fits).metrics.micro_batches == [2]
    short = StepMemory(_peak, budget, lambda b, s: budget - saved + 1)
    with pytest.raises(ClientOutOfMemory) as info:
        train_local(adapted, state, plan, _batches(adapted, 1, 70), config, step_memory=short,
                    saved_limit_bytes=1e12)  # the step's own limit replaces the flat one
    assert info.value.needed_bytes(0.0) == budget + 1


def test_a_split_step_clips_and_steps_the_optimizer_once_on_the_accumulated_gradient():
    """Mutants: an optimizer step (or clipping) per micro-batch. One step per batch, and the norm
    it applies is the whole batch's clipped norm (max_grad_norm small enough to clip)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    adapted = cached_model("tiny-bert")
    norms = []

    def observe(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    config = LocalTrainConfig(local_steps=2, seed=8, max_grad_norm=1e-3)
    handle = register_optimizer_step_pre_hook(observe)
    try:
        with no_dropout(adapted.model):
            train_local(adapted, adapted.adapter_state(), ClientPlan(adapted.num_blocks), _batches(adapted, 2, 80),
                        config, step_memory=StepMemory(_peak, _peak(3, 16)))
    finally:
        handle.remove()
    assert len(norms) == 2
    assert norms == pytest.approx([1e-3, 1e-3], rel=1e-3)
