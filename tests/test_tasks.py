"""Task kinds (fedquad.tasks): picked once from the data or the head, then everything goes through them."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

from conftest import cached_model
from fedquad.datasets import BatchConfig, SyntheticConfig, SyntheticLMConfig, iterate_batches, load_task
from fedquad.diagnostics.memory import generated_batch
from fedquad.errors import FedquadError
from fedquad.evaluation import evaluate
from fedquad.models import load_model
from fedquad.tasks import (CAUSAL_LM, CLASSIFICATION, KINDS, CausalTokenizedData, task_kind, task_kind_named,
                           tokenize)
from fedquad.tasks.causal_lm_eval import evaluate_causal_lm


@functools.lru_cache(maxsize=None)
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from fedquad.models.presets import minilm_path
    return AutoTokenizer.from_pretrained(minilm_path())


def cls_data(n: int = 24):
    return load_task("synthetic", "train", synthetic=SyntheticConfig(num_train=n, num_dev=8))


def lm_data(n: int = 24):
    return load_task("synthetic-lm", "train", synthetic=SyntheticLMConfig(num_train=n, num_dev=8))


def test_the_kind_follows_the_data_type():
    assert task_kind(cls_data()) is CLASSIFICATION
    assert task_kind(lm_data()) is CAUSAL_LM
    with pytest.raises(FedquadError, match="no task kind trains on list"):
        task_kind(["some", "texts"])


def test_heads_name_the_kinds_and_unknown_heads_are_one_line_errors():
    assert {k: v.head for k, v in KINDS.items()} == {"seq-cls": "seq-cls", "causal-lm": "causal-lm"}
    assert task_kind_named("causal-lm") is CAUSAL_LM
    with pytest.raises(FedquadError, match=r"unknown task 'lm'; choose one of seq-cls, causal-lm"):
        task_kind_named("lm")
    with pytest.raises(FedquadError, match=r"unknown task 'lm'; choose one of seq-cls, causal-lm"):
        load_model("tiny-llama", task="lm", with_tokenizer=False)


def test_a_kind_refuses_the_other_kinds_data():
    """No silent wrong result: classification tokens of causal-LM data would drop the loss mask."""
    with pytest.raises(FedquadError, match="seq-cls tokenization needs TextClassificationData, got CausalLMData"):
        CLASSIFICATION.tokenize(lm_data(), minilm_tokenizer(), 16)
    with pytest.raises(FedquadError, match="causal-lm tokenization needs CausalLMData"):
        CAUSAL_LM.tokenize(cls_data(), minilm_tokenizer(), 16)


def test_tokens_and_batches_are_laid_out_by_the_kind(tmp_path):
    tok = minilm_tokenizer()
    cls_tokens = tokenize(cls_data(), tok, 16, cache_dir=tmp_path / "cls")
    lm_tokens = tokenize(lm_data(), tok, 16, cache_dir=tmp_path / "lm")
    assert type(cls_tokens) is CLASSIFICATION.tokens_type and type(lm_tokens) is CAUSAL_LM.tokens_type
    # the safetensors cache holds classification tokens; causal-LM tokens stay in memory only
    assert len(os.listdir(tmp_path / "cls")) == 1 and not (tmp_path / "lm").exists()
    config = BatchConfig(batch_size=4, shuffle=False, fixed_shape=True)
    (cls_batch, *_), (lm_batch, *_) = iterate_batches(cls_tokens, config), iterate_batches(lm_tokens, config)
    assert cls_batch["labels"].shape == (4,)  # one class per example
    assert lm_batch["labels"].shape == lm_batch["input_ids"].shape == (4, 16)  # one target per token
    prompt = int(lm_tokens.prompt_lengths[0])
    assert (lm_batch["labels"][0, :prompt] == -100).all() and (lm_batch["labels"][0, prompt] >= 0)
    assert torch.equal(CAUSAL_LM.collate(lm_tokens, np.arange(4), 16)["labels"], lm_batch["labels"])


def test_the_model_keeps_its_kind_and_the_head_follows_it():
    cls_model = cached_model("tiny-bert")
    lm_model = cached_model("tiny-llama", "causal-lm")
    assert cls_model.kind is CLASSIFICATION and lm_model.kind is CAUSAL_LM
    head_keys = [k for k, block in cls_model.key_block.items() if block is None]
    assert head_keys and all("modules_to_save" in k for k in head_keys)  # a trained classifier head
    assert all(block is not None for block in lm_model.key_block.values())  # the LM head stays frozen
    assert type(lm_model.model.get_base_model()).__name__.endswith("ForCausalLM")
    lm_batch = generated_batch(lm_model, 2, 8, seed=1)
    assert torch.equal(lm_batch["labels"], lm_batch["input_ids"])
    assert generated_batch(cls_model, 3, 8, seed=1)["labels"].shape == (3,)


def test_evaluate_hands_over_to_the_models_kind():
    tok = minilm_tokenizer()
    lm_tokens = tokenize(lm_data(16), tok, 16)
    lm = evaluate(cached_model("tiny-llama", "causal-lm"), None, lm_tokens, batch_size=8)
    assert {"perplexity", "token_accuracy", "exact_match"} <= set(lm) and lm["examples"] == 16
    cls = evaluate(cached_model("tiny-bert"), None, tokenize(cls_data(16), tok, 16), batch_size=8)
    assert set(cls) == {"accuracy", "loss", "examples", "max_class_share"} and cls["examples"] == 16


def test_lm_evaluation_refuses_classification_tokens():
    tokens = tokenize(cls_data(8), minilm_tokenizer(), 16)
    assert not isinstance(tokens, CausalTokenizedData)
    with pytest.raises(FedquadError, match="causal-LM evaluation needs causal-LM tokens"):
        evaluate_causal_lm(cached_model("tiny-llama", "causal-lm"), tokens)
