"""Logit adjustment (the non-IID collapse fix, benchmarks/learning_probe.py) and evaluation's collapse metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import cached_model
from fedquad.client import LocalTrainConfig, train_local
from fedquad.client.train import logit_adjustment_offsets
from fedquad.datasets.batching import TokenizedData
from fedquad.diagnostics.memory import generated_batch
from fedquad.errors import FedquadError
from fedquad.evaluation import evaluate
from fedquad.plan import ClientPlan
from fedquad.sim.config import SimConfig


def test_offsets_are_tau_log_label_shares_with_a_floor():
    got = logit_adjustment_offsets(np.array([0, 0, 0, 1]), 2, tau=1.0)
    assert got == pytest.approx((math.log(0.75), math.log(0.25)))
    assert logit_adjustment_offsets(np.array([1, 1]), 3, tau=0.5) == pytest.approx(
        (0.5 * math.log(1e-3), 0.0, 0.5 * math.log(1e-3)))  # absent classes: floored, finite


def test_config_and_local_config_reject_bad_values():
    with pytest.raises(FedquadError, match="logit_adjustment"):
        SimConfig(logit_adjustment=-1.0)
    with pytest.raises(FedquadError, match="logit_offsets"):
        LocalTrainConfig(logit_offsets=(0.0, float("-inf")))


def _train(adapted, offsets, batch):
    state = adapted.adapter_state()
    result = train_local(adapted, state, ClientPlan(depth=1), [batch] * 2,
                         LocalTrainConfig(local_steps=2, seed=0, logit_offsets=offsets))
    adapted.load_adapter_state(state)
    return result


def test_offsets_change_training_only_and_the_hook_is_removed():
    adapted = cached_model("tiny-bert")
    batch = generated_batch(adapted, 4, 8, seed=0)
    plain = _train(adapted, None, batch)
    zero = _train(adapted, (0.0, 0.0), batch)
    shifted = _train(adapted, (0.0, -3.0), batch)
    assert zero.metrics.loss == pytest.approx(plain.metrics.loss, rel=1e-6)  # zero offsets: the plain loss
    assert shifted.metrics.loss != pytest.approx(plain.metrics.loss, rel=1e-3)
    for key in plain.update:
        assert torch.allclose(zero.update[key], plain.update[key], atol=1e-6)
    adapted.model.eval()
    with torch.no_grad():  # after training the head gives its own logits again
        out = adapted.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        again = adapted.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.equal(out, again)
    assert not any(m._forward_hooks for m in adapted.model.modules())


def test_evaluation_reports_the_share_of_the_most_predicted_class():
    adapted = cached_model("tiny-bert")
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 9, size=20)
    ids = rng.integers(5, 100, size=int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = TokenizedData(ids=ids, offsets=offsets, labels=rng.integers(0, 2, 20).astype(np.int64),
                           token_type_ids=None, pad_token_id=0, max_len=8, key=("test", 8))
    metrics = evaluate(adapted, None, tokens, batch_size=8)
    assert metrics["examples"] == 20
    assert 0.5 <= metrics["max_class_share"] <= 1.0
    with torch.no_grad():  # a head whose bias dwarfs everything predicts one class: share 1.0
        state = adapted.adapter_state()
        bias = [k for k in state if k.endswith("classifier.modules_to_save.default.bias")]
        assert bias, list(state)[:5]
        forced = dict(state, **{bias[0]: torch.tensor([100.0, -100.0])})
    try:
        assert evaluate(adapted, forced, tokens, batch_size=8)["max_class_share"] == 1.0
    finally:
        adapted.load_adapter_state(state)
