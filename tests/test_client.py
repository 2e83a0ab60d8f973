"""The FedQuad client: plan application, exact accounting, gradient fidelity."""

from __future__ import annotations

import pytest
import torch

from _sweeps import train_every_plan
from conftest import cached_model
from fedquad.client import LocalTrainConfig, PlanRuntime, QuantSettings, forward_backward, train_local
from fedquad.diagnostics.memory import generated_batch, probe_memory
from fedquad.plan import ClientPlan

FIDELITY_MODELS = [("minilm", "seq-cls"), ("tiny-llama", "causal-lm")]


def _grads(adapted, keys):
    return {k: adapted.parameter(k).grad.detach().clone() for k in keys}


@pytest.mark.parametrize("name,task", FIDELITY_MODELS)
def test_identity_hooks_reproduce_gradients_exactly(name, task):
    adapted = cached_model(name, task)
    batch = generated_batch(adapted, 4, 32, seed=1)
    plan = ClientPlan(adapted.num_blocks)
    adapted.model.train()
    with PlanRuntime(adapted, plan) as runtime:  # accounting-only hooks on every block
        torch.manual_seed(0)
        forward_backward(adapted, runtime, batch)
        hooked = _grads(adapted, runtime.trainable_keys)
        for k in runtime.trainable_keys:
            adapted.parameter(k).grad = None
        # the same step with no hooks at all installed
        for h in runtime._handles:
            h.remove()
        torch.manual_seed(0)
        adapted.model(**batch).loss.backward()
        plain = _grads(adapted, runtime.trainable_keys)
        for k in runtime.trainable_keys:
            adapted.parameter(k).grad = None
    assert hooked.keys() == plain.keys() and hooked
    for k in hooked:
        assert torch.equal(hooked[k], plain[k]), k


# Fidelity targets (docs/design.md, "The client"): int8 >= 0.9999, int4 >= 0.98 on every LoRA gradient. They hold
# for one quantized block (FedQuad's bottom placement) at both widths. With every block quantized
# the error of each block adds up: int8 is held to the done-when figure (>= 0.999); int4,
# with the default int4 storage (bfloat16 scales, per-group Hadamard rotation, head-width tensors at
# int8; docs/quantization.md section 5) and storage-exact views, reaches 0.989 on MiniLM for this batch
# (0.981-0.988 over docs/bench_fidelity.md's seeds; the tiny LLaMA 0.988-0.990), so it is held to the 0.98
# target too.
FIDELITY_CASES = [(8, "one", 0.9999), (4, "one", 0.98), (8, "all", 0.999), (4, "all", 0.98)]


@pytest.mark.parametrize("name,task", FIDELITY_MODELS)
@pytest.mark.parametrize("bits,quantized,threshold", FIDELITY_CASES)
def test_quantized_gradient_fidelity(name, task, bits, quantized, threshold):
    adapted = cached_model(name, task)
    batch = generated_batch(adapted, 16, 64, seed=2)  # the reference workload's batch shape
    L = adapted.num_blocks
    plan = ClientPlan(L, 1 if quantized == "one" else L, bits)
    report = probe_memory(adapted, plan, batch, QuantSettings(bits=bits))
    lora = {k: c for k, c in report.grad_cosines.items() if "lora_" in k}
    assert len(lora) == len([k for k in adapted.adapter_keys if "lora_" in k])
    worst = min(lora, key=lora.get)
    assert lora[worst] >= threshold, (worst, lora[worst])
    if quantized == "all":
        # the tiny LLaMA's width is 64, so its rank-8 LoRA bottlenecks (kept) weigh 8x more than in MiniLM;
        # raw counts storages once (its q/k/v and gate/up inputs are views of one storage: measured 0.339
        # at int8) and int4 keeps the SiLU input at int8 (0.238), docs/quantization.md
        limit = {8: 0.30, 4: 0.16} if name == "minilm" else {8: 0.35, 4: 0.25}
        assert report.kept_bytes < report.raw_bytes * limit[bits]


@pytest.mark.parametrize("name,task", [("tiny-bert", "seq-cls"), ("tiny-llama", "causal-lm")])
def test_depth_selects_exactly_the_last_blocks_and_head(name, task):
    adapted = cached_model(name, task)
    batch = generated_batch(adapted, 2, 16)
    L = adapted.num_blocks
    for depth in range(L + 1):
        with PlanRuntime(adapted, ClientPlan(depth)) as runtime:
            forward_backward(adapted, runtime, batch)
            got = {k for k in adapted.adapter_keys if adapted.parameter(k).grad is not None
                   and adapted.parameter(k).grad.abs().sum() > 0}
            expected = {k for k in adapted.adapter_keys
                        if adapted.key_block[k] is None or adapted.key_block[k] >= L - depth}
            # LoRA A at zero-gradient is impossible after perturbation; B always gets gradient
            assert got == expected, depth
            for i, b in enumerate(runtime.block_bytes()):
                if i < L - depth:
                    assert b.raw_bytes == 0 and b.tensors == 0, (depth, i)  # frozen: nothing saved
                else:
                    assert b.raw_bytes > 0
            for k in adapted.adapter_keys:
                adapted.parameter(k).grad = None


def test_raw_bytes_grow_linearly_with_depth(minilm):
    batch = generated_batch(minilm, 4, 32)
    L = minilm.num_blocks
    raw = {}
    for depth in (1, L):
        with PlanRuntime(minilm, ClientPlan(depth)) as runtime:
            forward_backward(minilm, runtime, batch)
            raw[depth] = sum(b.raw_bytes for b in runtime.block_bytes())
        for k in minilm.adapter_keys:
            minilm.parameter(k).grad = None
    assert raw[L] == pytest.approx(L * raw[1], rel=0.05)


@pytest.mark.parametrize("placement", ["bottom", "top"])
def test_placement_chooses_quantized_blocks(placement):
    adapted = cached_model("tiny-bert")
    batch = generated_batch(adapted, 4, 64)
    with PlanRuntime(adapted, ClientPlan(3, 2, 8, placement)) as runtime:
        forward_backward(adapted, runtime, batch)
        quantized = [i for i, b in enumerate(runtime.block_bytes()) if b.quantized_tensors > 0]
    assert quantized == ([1, 2] if placement == "bottom" else [2, 3])


FAMILIES = ["tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-mistral"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_one_step_under_every_plan(name):
    decoder = name.split("-")[1] in ("gpt2", "llama", "qwen2", "mistral")
    adapted = cached_model(name, "causal-lm" if decoder else "seq-cls")
    full_kept = train_every_plan(adapted, generated_batch(adapted, 2, 24))
    assert full_kept[4] < full_kept[8]


def _batches(adapted, n, seed):
    return [generated_batch(adapted, 4, 16, seed=seed + i) for i in range(n)]


def test_out_of_memory_client_leaves_no_gradients_for_the_next():
    """Issue 13 item 0: a client that fails after its backward must not leak .grad into the next
    client's first step; the next update is bitwise the one a clean run gives."""
    from fedquad.client.train import ClientOutOfMemory
    adapted = cached_model("tiny-bert")
    state = adapted.adapter_state()
    config = LocalTrainConfig(local_steps=2, seed=3)
    clean = train_local(adapted, state, ClientPlan(1), _batches(adapted, 2, 10), config)
    with pytest.raises(ClientOutOfMemory):
        train_local(adapted, state, ClientPlan(adapted.num_blocks), _batches(adapted, 2, 20), config,
                    saved_limit_bytes=1.0)
    assert all(p.grad is None for p in adapted.model.parameters())
    after = train_local(adapted, state, ClientPlan(1), _batches(adapted, 2, 10), config)
    assert clean.update.keys() == after.update.keys()
    for k in clean.update:
        assert torch.equal(clean.update[k], after.update[k]), k


def test_stale_gradients_are_cleared_at_the_start_of_train_local():
    adapted = cached_model("tiny-bert")
    state = adapted.adapter_state()
    config = LocalTrainConfig(local_steps=1, seed=4)
    clean = train_local(adapted, state, ClientPlan(1), _batches(adapted, 1, 30), config)
    for p in adapted.model.parameters():  # as if some other caller left gradients behind
        p.grad = torch.full_like(p, 5.0)
    after = train_local(adapted, state, ClientPlan(1), _batches(adapted, 1, 30), config)
    for k in clean.update:
        assert torch.equal(clean.update[k], after.update[k]), k
