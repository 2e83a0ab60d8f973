"""Recompute (activation checkpointing) as a plan choice: the plan encoding, the runtime (real
non-reentrant checkpointing with the saved-tensor hooks inside it), the cost model against a
per-block reference and against measurement, the planner's menu and the fedlora-ckpt baseline."""

from __future__ import annotations

import itertools

import pytest
import torch
from _profiles import synthetic_profile
from conftest import cached_model

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import QuantSettings
from fedquad.client.train import forward_backward
from fedquad.costmodel import cost_model, profile_from_dict, profile_to_dict
from fedquad.devices import Device
from fedquad.diagnostics.memory import generated_batch, probe_memory
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan
from fedquad.planner import PlannerConfig, feasible_plans, plan_menu, plan_round

QUANT = QuantSettings(group_size=64)


# -- plan encoding ----------------------------------------------------------------------------

def test_plan_places_recompute_like_quantization_and_round_trips():
    plan = ClientPlan(4, 1, 8, "bottom", 3)
    assert list(plan.recomputed_blocks(6)) == [2, 3, 4] and list(plan.quantized_blocks(6)) == [2]
    top = ClientPlan(4, 1, 8, "top", 3)
    assert list(top.recomputed_blocks(6)) == [3, 4, 5] and list(top.quantized_blocks(6)) == [5]
    assert ClientPlan.from_dict(plan.to_dict()) == plan
    assert ClientPlan.from_dict({"depth": 2}).recompute_layers == 0  # plans written before recompute
    assert plan.describe() == "d=4 q=1@int8 r=3" and ClientPlan(4, 0, 8, "bottom", 4).describe() == "d=4 r=4"
    assert ClientPlan(4).describe() == "d=4"
    for bad in (dict(depth=2, recompute_layers=3), dict(depth=2, recompute_layers=-1),
                dict(depth=2, recompute_layers=1.0)):
        with pytest.raises(FedquadError, match="recompute_layers"):
            ClientPlan(**bad)


# -- runtime: real checkpointing, hooks inside it ------------------------------------------------

def _grads(adapted, runtime):
    out = {}
    for key in runtime.trainable_keys:
        p = adapted.parameter(key)
        out[key] = p.grad.detach().clone()
        p.grad = None
    return out


def _step(adapted, plan, batch, quant=QUANT):
    adapted.model.train()
    torch.manual_seed(0)
    with PlanRuntime(adapted, plan, quant) as runtime:
        forward_backward(adapted, runtime, batch)
        return _grads(adapted, runtime), runtime.block_bytes(), runtime.recompute_bytes(), runtime


@pytest.mark.parametrize("name,task", [("tiny-bert", "seq-cls"), ("tiny-llama", "causal-lm")])
def test_recomputed_blocks_give_identical_gradients_and_store_only_their_input(name, task):
    adapted = cached_model(name, task)
    L = adapted.num_blocks
    batch = generated_batch(adapted, 2, 16)
    ref, ref_bytes, ref_re, _ = _step(adapted, ClientPlan(L), batch)
    grads, blocks, recomputed, runtime = _step(adapted, ClientPlan(L, 0, 8, "bottom", 2), batch)
    for key in ref:  # same dropout masks replayed, same math: bit-identical on CPU
        assert torch.equal(grads[key], ref[key]), key
    assert runtime.recomputed == {0, 1} and ref_re == [0] * L
    hidden = adapted.model.config.hidden_size
    for i in range(L):
        if i < 2:  # only the checkpoint's saved inputs reach the block's hooks: the hidden states
            assert blocks[i].raw_bytes < ref_bytes[i].raw_bytes / 4
            assert blocks[i].raw_bytes >= 2 * 16 * hidden * 4
            # the recompute rebuilds what the block saves without checkpointing (plus its input)
            assert ref_bytes[i].raw_bytes * 0.9 <= recomputed[i] <= ref_bytes[i].raw_bytes + blocks[i].raw_bytes
        else:
            assert blocks[i].raw_bytes == ref_bytes[i].raw_bytes and recomputed[i] == 0
    for block in adapted.blocks:  # the runtime put the class's forward back
        assert "forward" not in block.__dict__


@pytest.mark.parametrize("use_cache", [False, True])
def test_recompute_on_a_padded_decoder_batch_matches_plain_backward(use_cache):
    """A padded batch gives the attention an explicit mask. If a KV cache reaches a checkpointed
    block (transformers 5 passes it as `cache=`), the recompute appends the keys a second time and
    the mask no longer fits; load_model turns the training cache off, and the runtime drops one
    that a caller's config turns back on."""
    adapted = cached_model("tiny-llama", "causal-lm")
    assert adapted.model.config.use_cache is False
    L = adapted.num_blocks
    batch = generated_batch(adapted, 2, 16)
    batch["attention_mask"][1, 10:] = 0
    batch["labels"][1, 10:] = -100
    adapted.model.config.use_cache = use_cache
    try:
        ref, _, _, _ = _step(adapted, ClientPlan(L), batch)
        grads, _, recomputed, _ = _step(adapted, ClientPlan(L, 0, 8, "bottom", 2), batch)
    finally:
        adapted.model.config.use_cache = False
    assert recomputed[0] > 0 and recomputed[1] > 0
    for key in ref:
        assert torch.equal(grads[key], ref[key]), key


def test_recompute_with_quantized_input_quantizes_the_stored_input_only():
    adapted = cached_model("tiny-bert")
    L = adapted.num_blocks
    batch = generated_batch(adapted, 2, 16)
    ref, _, _, _ = _step(adapted, ClientPlan(L), batch)
    _, plain, _, _ = _step(adapted, ClientPlan(L, 0, 8, "bottom", L), batch)
    grads, blocks, recomputed, _ = _step(adapted, ClientPlan(L, L, 8, "bottom", L), batch)
    for i in range(L):  # the pack hook saw the checkpoint's input and quantized it
        assert blocks[i].quantized_tensors >= 1 and blocks[i].raw_bytes == plain[i].raw_bytes
        assert blocks[i].kept_bytes < 0.4 * plain[i].kept_bytes and recomputed[i] > 0
    worst = min(torch.nn.functional.cosine_similarity(grads[k].flatten().double(), ref[k].flatten().double(), 0)
                for k in ref if ref[k].abs().sum() > 0)
    assert 0.99 < worst < 1.0  # inexact (the recompute starts from a quantized input), but close


def test_memory_probe_reports_recompute_separately():
    adapted = cached_model("tiny-bert")
    L = adapted.num_blocks
    batch = generated_batch(adapted, 2, 16)
    full = probe_memory(adapted, ClientPlan(L), batch, QUANT).to_dict()
    report = probe_memory(adapted, ClientPlan(L, 0, 8, "bottom", L), batch, QUANT).to_dict()
    assert report["grad_cosine_min"] == 1.0 and report["kept_bytes"] <= 0.1 * full["raw_bytes"]
    assert all(b["recomputed"] for b in report["blocks"])
    assert report["recompute_peak_bytes"] == max(b["recompute_bytes"] for b in report["blocks"]) > 0
    assert full["recompute_peak_bytes"] == 0


# -- cost model -----------------------------------------------------------------------------

def reference_costs(profile, plan):
    """Block by block, straight from the definitions (docs/design.md, "Cost model"): the plain
    reference of CostModel.costs / recompute_grid for recompute plans."""
    L = profile.num_blocks
    trainable = set(plan.trainable_blocks(L))
    quantized, recomputed = set(plan.quantized_blocks(L)), set(plan.recomputed_blocks(L))
    lowest = L - plan.depth
    act, step, peak = profile.head.saved_bytes, 0.0, 0
    for i in sorted(trainable):  # input side first: `act` is what is stored up to block i
        b = profile.blocks[i]
        low = i == lowest
        if i in recomputed:
            act += b.input_kept_bytes[plan.bits] if i in quantized else b.input_bytes
            # its backward runs when the blocks above have freed theirs: the stored bytes up to it
            # plus what it rebuilds
            peak = max(peak, act + (b.saved_bytes_lowest if low else b.saved_bytes))
            step += b.forward_s + (b.quant_s[plan.bits] * b.input_bytes / b.saved_bytes
                                   if i in quantized and b.saved_bytes else 0.0)
        elif i in quantized:
            act += b.kept_bytes_lowest[plan.bits] if low else b.kept_bytes[plan.bits]
            step += b.quant_s[plan.bits]
        else:
            act += b.saved_bytes_lowest if low else b.saved_bytes
        step += b.backward_s
    adapter = sum(profile.blocks[i].adapter_bytes for i in trainable)
    memory = (profile.frozen_weight_bytes + profile.adapter_bytes + profile.optimizer_bytes_per_trainable_byte
              * (profile.head_adapter_bytes + adapter) + profile.workspace_bytes + max(act, peak))
    step += (profile.embedding_forward_s + sum(b.forward_s for b in profile.blocks) + profile.head.forward_s
             + profile.head.backward_s)
    return memory, step, profile.head_adapter_bytes + adapter, act


def _uneven_profile(num_blocks=5):
    return profile_from_dict(synthetic_profile(
        num_blocks=num_blocks, saved_bytes_per_block=[9_000 + 1_000 * i for i in range(num_blocks)],
        input_bytes_per_block=[360 + 40 * i for i in range(num_blocks)], lowest_saving=[300] * num_blocks,
        forward_s=[0.004 + 0.001 * i for i in range(num_blocks)], quant_s_8=[0.001 * (i + 1) for i in range(num_blocks)]))


@pytest.mark.parametrize("placement", ["bottom", "top"])
def test_cost_model_recompute_matches_the_per_block_reference(placement):
    profile = _uneven_profile()
    cm = cost_model(profile)
    L = profile.num_blocks
    for d, q, r, bits in itertools.product(range(1, L + 1), range(L + 1), range(1, L + 1), (8, 4)):
        if q > d or r > d:
            continue
        plan = ClientPlan(d, q, bits, placement, r)
        memory, step, upload, act = reference_costs(profile, plan)
        assert cm.memory_bytes(plan) == pytest.approx(memory, rel=1e-12), plan
        assert cm.step_time_s(plan) == pytest.approx(step, rel=1e-12), plan
        assert cm.upload_bytes(plan) == upload and cm.saved_bytes(plan) == act, plan
    for d in range(1, L + 1):  # the planner's fast grid equals costs(), to the last bit
        for bits in (None, 8, 4):
            for memory, step, upload, q, r in cm.recompute_grid(d, bits, placement):
                assert (memory, step, upload) == cm.costs(d, q, bits or 8, placement, r)


def test_profile_without_recompute_bytes_reads_and_refuses_recompute_plans():
    old = profile_from_dict(synthetic_profile())
    assert not old.supports_recompute
    assert "input_bytes" not in profile_to_dict(old)["blocks"][0]
    with pytest.raises(FedquadError, match="recompute"):
        cost_model(old).memory_bytes(ClientPlan(3, 0, 8, "bottom", 1))
    assert all(p.recompute_layers == 0 for p in feasible_plans(old, 1e12))  # the menu offers none
    new = _uneven_profile()
    assert new.supports_recompute and profile_from_dict(profile_to_dict(new)) == new


def test_cost_model_predicts_measured_recompute_bytes_on_tiny_bert():
    """Bytes from a real profile of tiny-bert (its recompute fields measured), against `fedquad
    memory`'s exact counts for every recompute plan."""
    from fedquad.diagnostics.profile import profile_model
    adapted = cached_model("tiny-bert")
    batch = generated_batch(adapted, 2, 16)
    profile = profile_from_dict(profile_model(adapted, batch, quant=QUANT, repeats=1, warmup=0))
    cm = cost_model(profile)
    L = adapted.num_blocks
    plans = [ClientPlan(d, q, bits, placement, r) for d in range(1, L + 1) for r in range(1, d + 1)
             for q in (0, 1, r, d) for bits in (8, 4) for placement in ("bottom", "top") if q or bits == 8]
    for plan in sorted(set(plans))[::3]:
        report = probe_memory(adapted, plan, batch, QUANT)
        measured = report.kept_bytes + report.outside_bytes
        assert cm.saved_bytes(plan) == pytest.approx(measured, rel=0.05), plan
        assert cm.recompute_peak_bytes(plan) == pytest.approx(report.to_dict()["recompute_peak_bytes"], rel=0.2)


# -- planner and baseline -------------------------------------------------------------------------

def _tight_devices(profile, fractions):
    cm = cost_model(profile)
    full = cm.full_footprint_bytes()
    return [Device(f"d{i}", "t", int(f * full), 1.0, 1e7, 1e7, 5) for i, f in enumerate(fractions)]


def test_planner_menu_offers_recompute_and_the_switch_removes_it():
    L = 20  # enough blocks that stored inputs plus one block's recompute undercut every block at int4
    profile = _uneven_profile(L)
    cm = cost_model(profile)
    # a budget below every quantized full-depth plan but above full recompute
    full_recompute, full_int4 = cm.memory_bytes(ClientPlan(L, 0, 8, "bottom", L)), cm.memory_bytes(ClientPlan(L, L, 4))
    assert full_recompute < full_int4
    budget = (full_int4 + full_recompute) / 2
    with_r = plan_menu(profile, PlannerConfig()).efficient_set(budget)
    without = plan_menu(profile, PlannerConfig(allow_recompute=False)).efficient_set(budget)
    assert with_r.max_depth == L and with_r.plans[L].recompute_layers > 0
    assert without.max_depth < L
    assert all(p.recompute_layers == 0 for p in without.plans)


def test_fedlora_ckpt_checkpoints_the_fewest_blocks_that_fit():
    from fedquad.strategies import STRATEGIES, get_strategy
    from fedquad.strategies.base import RoundContext
    profile = _uneven_profile(6)
    cm = cost_model(profile)
    strategy = get_strategy("fedlora-ckpt")
    assert "fedlora-ckpt" in STRATEGIES
    ctx = RoundContext(round_index=1, profile=profile, seed=0, lora_rank=8)
    # (not full recompute: the top block's backward comes first, recomputing it saves nothing)
    smallest = min(cm.memory_bytes(ClientPlan(6, 0, 8, "bottom", r)) for r in range(7))
    budgets = [cm.full_footprint_bytes() * 1.2, cm.memory_bytes(ClientPlan(6, 0, 8, "bottom", 2)),
               cm.memory_bytes(ClientPlan(6, 0, 8, "bottom", 5)) + 1, smallest - 1]
    devices = [Device(f"d{i}", "t", int(b), 1.0, 1e7, 1e7, 5) for i, b in enumerate(budgets)]
    out = strategy.configure(ctx, devices, strategy.init_state(6))
    assert out[0].plan == ClientPlan(6)  # fits plain FedLoRA: nothing recomputed
    for a, dev in zip(out[1:3], devices[1:3]):
        r = a.plan.recompute_layers
        assert a.plan.depth == 6 and a.plan.quant_layers == 0 and r > 0
        assert cm.memory_bytes(a.plan) <= dev.budget_bytes < cm.memory_bytes(ClientPlan(6, 0, 8, "bottom", r - 1))
    assert out[3].plan is None  # cannot fit even with every block checkpointed
    with pytest.raises(FedquadError, match="recompute"):
        strategy.configure(RoundContext(1, profile_from_dict(synthetic_profile()), 0, 8), devices, {})


def test_plan_round_with_recompute_stays_feasible():
    profile = _uneven_profile(6)
    devices = _tight_devices(profile, [0.35, 0.5, 0.7, 1.0, 1.3])
    result = plan_round(devices, profile)
    cm = cost_model(profile)
    for dev, dec in zip(devices, result.decisions):
        if dec.plan is not None:
            assert cm.memory_bytes(dec.plan) <= dev.budget_bytes


# -- CLI ------------------------------------------------------------------------------------------

def test_memory_cli_recompute_layers(capsys):
    import json

    from fedquad.cli.main import main
    common = ["memory", "--model", "tiny-bert", "--depth", "3", "--batch-size", "2", "--seq-len", "16", "--json"]
    assert main([*common, "--recompute-layers", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["recompute_layers"] == 3 and out["grad_cosine_min"] == 1.0
    assert [b["recomputed"] for b in out["blocks"]] == [False, True, True, True]
    assert out["recompute_peak_bytes"] > out["kept_bytes"] / 3
    try:
        code = main(["memory", "--model", "tiny-bert", "--depth", "2", "--recompute-layers", "3"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "recompute_layers (3) cannot exceed depth (2)" in capsys.readouterr().err
