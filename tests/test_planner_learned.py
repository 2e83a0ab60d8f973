"""The learned planner (issue 9, item 5): measured block values, the utility they define, and the
sit-out option with its floor; plain data, no model (the per-block gain uses small tensors)."""

from __future__ import annotations

import pytest
import torch

from fedquad.costmodel import cost_model, profile_from_dict
from fedquad.devices import Device
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan
from fedquad.planner import PlannerConfig, PlannerState, plan_round
from fedquad.planner.config import DepthUtility, LearnedUtility
from fedquad.planner.participation import plan_with_sit_out
from fedquad.strategies import ClientOutcome, RoundContext, get_strategy
from fedquad.strategies.fedquad import block_gains
from tests._profiles import synthetic_profile

PROFILE = profile_from_dict(synthetic_profile(6))
CM = cost_model(PROFILE)
FULL = CM.full_footprint_bytes()


def dev(i, speed=1.0, weight=100.0, budget=FULL * 1.2):
    return Device(f"d{i}", "t", int(budget), speed, 1e6, 1e6, 5, weight)


def test_learned_utility_sums_the_trained_blocks_values():
    u = LearnedUtility((0.1, 0.2, 0.3, 0.4, 0.5, 0.6), head_value=1.0, int8_penalty=0.5, int4_penalty=1.0)
    assert u.plan_value(ClientPlan(0), 6) == 1.0
    assert u.plan_value(ClientPlan(2), 6) == pytest.approx(1.0 + 0.5 + 0.6)
    # bottom placement: the lowest trained block (index 4) is the quantized one, at half its value
    assert u.plan_value(ClientPlan(2, 1, 8), 6) == pytest.approx(1.0 + 0.5 * 0.5 + 0.6)
    assert u.plan_value(ClientPlan(2, 1, 4), 6) == pytest.approx(1.0 + 0.6)
    with pytest.raises(FedquadError):
        u.plan_value(ClientPlan(1), 5)
    with pytest.raises(FedquadError):
        LearnedUtility((1.0, -1.0))


def test_state_folds_gains_and_values_unmeasured_blocks_at_the_mean():
    s = PlannerState(3, ema_alpha=0.5)
    assert s.block_values() is None
    s.observe_gains([None, 2.0, 4.0], 6.0)
    assert s.block_values() == ((4.0, 2.0, 4.0), 6.0)
    s.observe_gains([None, 4.0, None], None)
    assert s.block_values()[0] == (pytest.approx((3.0 + 4.0 + 6.0) / 3), 3.0, 4.0)
    again = PlannerState.from_dict(s.to_dict())
    assert again.block_values() == s.block_values()
    with pytest.raises(FedquadError):
        s.observe_gains([1.0, float("nan"), 1.0], None)


def test_config_for_state_plans_with_what_was_measured():
    s = PlannerState(6)
    learned = PlannerConfig(value="learned")
    assert learned.for_state(s).resolved_utility() == LearnedUtility((1.0,) * 6, 1.0, 0.05, 0.2)  # the prior
    assert PlannerConfig().for_state(s) == PlannerConfig()  # value = depth: unchanged
    s.observe_gains([0.0] * 5 + [1.0], 1.0)
    devices = [dev(0), dev(1, speed=2.0)]
    # only the top block moved: deeper plans cost time and buy nothing, so the plans get shallow
    shallow = plan_round(devices, PROFILE, learned.for_state(s), s)
    deep = plan_round(devices, PROFILE, PlannerConfig(), s)
    assert max(d.plan.depth for d in shallow.participants) <= 1 < min(d.plan.depth for d in deep.participants)
    with pytest.raises(FedquadError):
        PlannerConfig(value="guess")


def test_block_gain_keeps_agreement_and_cancels_noise():
    ctx = RoundContext(0, PROFILE, seed=1, lora_rank=8, key_blocks={"a": 4, "b": 5, "h": None})
    g = {"a": torch.zeros(100), "b": torch.zeros(100), "h": torch.zeros(10)}
    torch.manual_seed(0)
    agree = torch.full((100,), 0.1)
    updates = [{"a": agree + 0.01 * torch.randn(100), "b": torch.randn(100), "h": torch.ones(10)} for _ in range(8)]
    updates.append({"h": torch.ones(10)})  # trained only the head
    out = block_gains(ctx, g, updates)
    assert out["blocks"][:4] == [None] * 4  # nobody trained them
    assert out["blocks"][4] == pytest.approx(0.1, rel=0.05)  # the agreed step survives
    assert out["blocks"][5] < 0.5  # pure noise (RMS 1.0 per client) is mostly cancelled
    assert out["head"] == pytest.approx(1.0)
    assert block_gains(ctx, g, updates[:1])["blocks"][4] is None  # one contributor: no noise estimate


def test_fedquad_learns_block_values_through_aggregate_and_observe():
    ctx = RoundContext(0, PROFILE, seed=1, lora_rank=8, key_blocks={"a": 5, "h": None})
    s = get_strategy("fedquad")
    state = s.init_state(6)
    devices = [dev(0), dev(1)]
    assignments = s.configure(ctx, devices, state)
    g = {"a": torch.zeros(4), "h": torch.zeros(4)}
    outcomes = [ClientOutcome(a, "ok", update={"a": torch.full((4,), 0.2), "h": torch.full((4,), 0.1)}, examples=10,
                              time_s=a.predicted_time_s, budget_bytes=FULL * 1.2) for a in assignments]
    s.aggregate(ctx, g, outcomes, state)
    state = s.observe(ctx, outcomes, state)
    learned = PlannerState.from_dict(state["planner"])
    assert learned.block_gain[5] == pytest.approx(0.2) and learned.head_gain == pytest.approx(0.1)
    paper = get_strategy("fedquad-paper")
    paper_state = paper.init_state(6)
    paper.aggregate(ctx, g, outcomes, paper_state)
    paper_state = paper.observe(ctx, outcomes, paper_state)
    assert PlannerState.from_dict(paper_state["planner"]).block_gain == [None] * 6  # the fixed utility measures nothing


def _devices_with_slow_small_one():
    return [dev(0, speed=4.0, weight=500.0), dev(1, speed=4.0, weight=500.0), dev(2, speed=0.02, weight=10.0)]


def test_slow_device_with_little_data_sits_out_and_the_round_gets_better():
    config = PlannerConfig(sit_out=True)
    devices = _devices_with_slow_small_one()
    everyone = plan_round(devices, PROFILE, config)
    out = plan_with_sit_out(devices, PROFILE, config)
    assert out.decision("d2").plan is None and "sits out" in out.decision("d2").reason
    assert out.round_time_s < everyone.round_time_s and out.utility > everyone.utility
    assert "sit-out" in out.method
    assert plan_with_sit_out(devices, PROFILE, PlannerConfig()) == everyone  # option off: the plain plan


def test_sit_out_floor_makes_a_starved_device_train():
    config = PlannerConfig(sit_out=True, sit_out_floor_rounds=2)
    devices = _devices_with_slow_small_one()
    state = PlannerState(6)
    trained = []
    for _ in range(6):
        plan = plan_with_sit_out(devices, PROFILE, config, state)
        trained.append(plan.decision("d2").plan is not None)
        state.record_round(plan)
    assert trained == [False, False, True] * 2  # never more than 2 rounds in a row without training


def test_sit_out_keeps_a_device_worth_its_time():
    devices = [dev(0, speed=1.0), dev(1, speed=0.9)]  # nearly equal: dropping one halves the value
    config = PlannerConfig(sit_out=True)
    assert plan_with_sit_out(devices, PROFILE, config) == plan_round(devices, PROFILE, config)


def test_a_saturating_round_value_buys_shorter_rounds():
    """value_exponent < 1: (sum_i w_i v_i) ** e / R -- the planner gives up value for time more
    readily, never the other way round; 1 is the linear utility exactly."""
    profile = profile_from_dict(synthetic_profile(), "synthetic")
    shorter = 0
    for slow in (0.7, 0.6, 0.5, 0.4):
        devices = [Device("fast", "t", 10**10, 1.0, 1e9, 1e9, 4), Device("slow", "t", 10**10, slow, 1e9, 1e9, 4)]
        linear, saturating = (plan_with_sit_out(devices, profile, PlannerConfig(sit_out=True, value_exponent=e))
                              for e in (1.0, 0.5))
        assert saturating.round_time_s <= linear.round_time_s + 1e-12
        shorter += saturating.round_time_s < linear.round_time_s
    assert shorter >= 2
    assert DepthUtility(value_exponent=0.5).round_utility(4.0, 2.0) == pytest.approx(1.0)
    assert DepthUtility().round_utility(4.0, 2.0) == pytest.approx(2.0)
    for bad in (0.0, 1.5):
        with pytest.raises(FedquadError, match="value_exponent"):
            PlannerConfig(value_exponent=bad)
