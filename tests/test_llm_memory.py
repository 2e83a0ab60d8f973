"""Config-only LLaMA memory estimates against the pack-hook accounting; Jetson feasibility queries.

Fast tier: tiny LLaMA/Qwen2 models, where the estimate must reproduce every measured byte.
Slow tier (`-m slow`): the ~1.1B `llama-1b` preset in bf16.
"""

from __future__ import annotations

import contextlib

import pytest

from conftest import cached_model
from fedquad.client import PlanRuntime, QuantSettings, forward_backward
from fedquad.costmodel import cost_model, profile_from_dict
from fedquad.costmodel.llm_estimate import (SHAPES, DecoderShape, deepest_feasible, estimate_profile,
                                            packed_bytes)
from fedquad.diagnostics.memory import generated_batch
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan


def measured_saved_bytes(adapted, plan: ClientPlan, batch, group_size: int, attention: str = "fused") -> int:
    """Kept bytes in the blocks plus outside them: what `fedquad memory` reports. "math" forces
    SDPA's math backend, which the runtime uses for trainable blocks on CUDA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = sdpa_kernel(SDPBackend.MATH) if attention == "math" else contextlib.nullcontext()
    quant = QuantSettings(bits=plan.bits, group_size=group_size, quantizer="reference")  # same bytes, no compile
    with backend, PlanRuntime(adapted, plan, quant) as runtime:
        forward_backward(adapted, runtime, batch)
        total = sum(b.kept_bytes for b in runtime.block_bytes()) + runtime.outside_bytes().kept_bytes
    for key in adapted.adapter_keys:
        adapted.parameter(key).grad = None
    return total


def check_estimate(adapted, dtype: str, batch_size: int, seq_len: int, plans, group_size: int = 64,
                   attention: str = "fused") -> None:
    shape = DecoderShape.from_config(adapted.model.config.to_dict())
    profile = estimate_profile(shape, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                               lora_rank=adapted.lora_rank, group_size=group_size, attention=attention)
    cm = cost_model(profile_from_dict(profile))
    batch = generated_batch(adapted, batch_size, seq_len, seed=3)
    for plan in plans:
        measured = measured_saved_bytes(adapted, plan, batch, group_size, attention)
        if plan.quant_layers and plan.bits == 4:
            # int4 since storage-exact saving (issue 10): the measured kept bytes are a few KB per
            # quantized block above the inventory (not yet traced; 0.04-0.14% on tiny LLaMA)
            assert cm.saved_bytes(plan) == pytest.approx(measured, rel=1e-2), plan.describe()
        else:
            assert cm.saved_bytes(plan) == measured, plan.describe()
    per_block, head = adapted.block_adapter_bytes()
    assert profile["adapter_bytes"] == sum(per_block) + head
    frozen = sum(p.numel() * p.element_size() for p in adapted.model.parameters()) - sum(per_block) - head
    assert profile["frozen_weight_bytes"] == frozen


@pytest.mark.parametrize("attention", ["fused", "math"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_config_only_estimate_reproduces_measured_bytes(name, attention):
    adapted = cached_model(name, "causal-lm")
    L = adapted.num_blocks
    plans = [ClientPlan(L), ClientPlan(1), ClientPlan(0), ClientPlan(2, 2, 8), ClientPlan(L, 1, 4),
             ClientPlan(3, 2, 4, "top")]
    check_estimate(adapted, "float32", 3, 40, plans, attention=attention)


def test_config_only_estimate_bf16():
    from fedquad.models import load_model
    adapted = load_model("tiny-llama", task="causal-lm", dtype="bfloat16", with_tokenizer=False)
    for attention in ("fused", "math"):
        check_estimate(adapted, "bfloat16", 2, 48, [ClientPlan(4), ClientPlan(1, 1, 8), ClientPlan(3, 3, 4)], 128,
                       attention)


def test_named_shapes_match_published_sizes():
    assert SHAPES["llama-7b"].parameters() == 6_738_415_616  # LLaMA-2-7B
    assert SHAPES["llama-1b"].parameters() == 1_100_048_384  # TinyLlama-1.1B
    from fedquad.models.presets import PRESETS
    assert DecoderShape.from_config(PRESETS["llama-1b"].config) == SHAPES["llama-1b"]
    assert packed_bytes(1000, 4, 128) == 500 + 4 * 8  # int4: bfloat16 scale + minimum; 1000 % 128: no flags
    assert packed_bytes(1024, 4, 128) == 512 + 4 * 8 + 1  # whole groups: one rotation flag byte
    assert packed_bytes(1000, 8, 128) == 1000 + 8 * 8  # int8: float32 scale + minimum
    with pytest.raises(FedquadError, match="not 'gpt2'"):
        DecoderShape(hidden=8, intermediate=8, layers=1, heads=2, kv_heads=2, vocab=10, family="gpt2")


def test_feasible_depth_grows_with_budget_and_quantization():
    profile = profile_from_dict(estimate_profile(SHAPES["llama-7b"], batch_size=4, seq_len=2048))
    cm = cost_model(profile)
    L = profile.num_blocks
    assert deepest_feasible(profile, cm.costs(0, 0)[0] - 1, None) is None  # not even the weights fit
    assert deepest_feasible(profile, cm.costs(7, 0)[0], None) == (7, 0)  # the boundary is inclusive
    last = {None: -1, 8: -1, 4: -1}
    for gib in (14, 16, 24, 32, 48, 64, 128):
        budget = gib * 2**30
        depth = {bits: (deepest_feasible(profile, budget, bits) or (-1, 0))[0] for bits in (None, 8, 4)}
        assert depth[None] <= depth[8] <= depth[4] <= L
        for bits in depth:
            assert depth[bits] >= last[bits]
        last = depth
        found = deepest_feasible(profile, budget, 8)
        if found and found[1]:  # the fewest quantized blocks: one fewer does not fit
            assert cm.costs(found[0], found[1] - 1, 8)[0] > budget
    assert last[None] == L


def test_times_scale_by_flops_from_a_reference():
    shape = SHAPES["llama-1b"]
    ref = estimate_profile(shape, batch_size=1, seq_len=256)
    assert ref["blocks"][0]["forward_s"] == 0.0 and ref["estimate"]["timing_source"].startswith("none")
    for b in ref["blocks"]:
        b.update(forward_s=0.1, backward_s=0.2, quant_s={"8": 0.01, "4": 0.02})
    ref["head"]["forward_s"] = 0.05
    doubled = estimate_profile(shape, batch_size=2, seq_len=256, timing_from=(ref, shape))
    block = doubled["blocks"][5]
    assert block["forward_s"] == pytest.approx(0.2) and block["backward_s"] == pytest.approx(0.4)
    assert block["quant_s"]["4"] == pytest.approx(0.04) and doubled["head"]["forward_s"] == pytest.approx(0.1)
    profile_from_dict(doubled)  # a valid profile


@pytest.mark.slow
def test_llama_1b_bf16_bytes_match_the_estimate():
    """~1.1B parameters built in bf16 (2.2 GB), a few real steps at batch 1 x 128."""
    from fedquad.models import load_model
    adapted = load_model("llama-1b", task="causal-lm", dtype="bf16", with_tokenizer=False)
    L = adapted.num_blocks
    assert L == 22 and sum(p.numel() for p in adapted.model.parameters()) > 1.1e9
    check_estimate(adapted, "bfloat16", 1, 128, [ClientPlan(1), ClientPlan(L // 2, L // 2, 8), ClientPlan(L, L, 4)],
                   group_size=128)
