"""Planning each device at its own data's length (`Device.seq_len_tokens`): the planner and every
strategy charge a device with short examples for the batches it really makes, not the profile's.

Pure planning tests over a synthetic profile (no torch model), plus the two places a length comes
from: the simulator's partition and a Flower node's report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _profiles import synthetic_profile

from fedquad.costmodel import cost_model, cost_model_at, profile_for_length, profile_from_dict
from fedquad.devices import Device, planning_length
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan
from fedquad.planner import PlannerConfig, plan_round
from fedquad.sim.config import SimConfig
from fedquad.sim.workload import device_length
from fedquad.strategies import RoundContext, deepest_fitting_depth, get_strategy

PROFILE = profile_from_dict(synthetic_profile(input_bytes_per_block=1_000_000), "synthetic")  # batch 16 x 64


def _device(name: str, budget: float, seq_len: int | None) -> Device:
    return Device(name, "t", int(budget), 1.0, 1e6, 1e6, 4, seq_len_tokens=seq_len)


def test_planning_length_rounds_up_to_8_and_stops_at_max_len():
    assert [planning_length(n) for n in (1, 8, 9, 57)] == [8, 8, 16, 64]
    assert planning_length(61, max_len=60) == 60
    with pytest.raises(ValueError):
        planning_length(0)


def test_profile_for_length_is_the_shape_cost_model_and_stable():
    assert profile_for_length(PROFILE, None) is PROFILE and profile_for_length(PROFILE, PROFILE.seq_len) is PROFILE
    short = profile_for_length(PROFILE, 32)
    assert short is profile_for_length(PROFILE, 32)  # one object per length: the planner's menus reuse it
    assert cost_model(short).memory_bytes(ClientPlan(6)) == cost_model_at(PROFILE, 16, 32).memory_bytes(ClientPlan(6))


def test_planner_plans_a_short_data_device_deeper_within_the_same_budget():
    cm, short_cm = cost_model(PROFILE), cost_model_at(PROFILE, 16, 32)
    # a budget that fits unquantized full depth at 32 tokens but not at the profile's 64
    budget = (short_cm.memory_bytes(ClientPlan(6)) + cm.memory_bytes(ClientPlan(6))) / 2
    assert short_cm.memory_bytes(ClientPlan(6)) < budget < cm.memory_bytes(ClientPlan(6))
    config = PlannerConfig(value="depth")
    plan = plan_round([_device("long", budget, None), _device("short", budget, 32)], PROFILE, config)
    long_d, short_d = plan.decisions
    assert short_d.plan == ClientPlan(6) and long_d.plan != ClientPlan(6)  # long: quantized or shallower
    assert short_d.predicted_bytes == pytest.approx(short_cm.memory_bytes(ClientPlan(6)))
    assert long_d.predicted_bytes == pytest.approx(cm.memory_bytes(long_d.plan))
    # the time it is charged is that of the shorter batches too
    alone = plan_round([_device("short", budget, 32)], PROFILE, config).decisions[0]
    assert alone.predicted_time_s == pytest.approx(short_cm.round_time(ClientPlan(6), 1.0, 1e6, 1e6, 4).total_s)


@pytest.mark.parametrize("name", ["fedlora", "fedlora-uniform", "fedlora-ckpt", "quant-only", "fedra", "hetlora",
                                  "fedquad", "depth-only"])
def test_every_strategy_fits_and_charges_a_device_at_its_length(name):
    strategy = get_strategy(name)
    ctx = RoundContext(0, PROFILE, 0, 8)
    short_cm = cost_model_at(PROFILE, 16, 32)
    budget = short_cm.memory_bytes(ClientPlan(6)) * 1.01  # full depth fits only at the short length
    state = strategy.init_state(6)
    short, long = _device("short", budget, 32), _device("long", budget, None)
    by_id = {a.device_id: a for a in strategy.configure(ctx, [short, long], state)}
    a = by_id["short"]
    assert a.plan is not None
    memory, time = strategy.costs(ctx, a, short)
    assert memory <= budget and memory == pytest.approx(a.predicted_bytes)
    assert memory < strategy.costs(ctx, a, long)[0]  # the same plan costs more at the profile's length
    assert deepest_fitting_depth(ctx, short) == 6 and deepest_fitting_depth(ctx, long) < 6
    if name in ("fedlora", "fedlora-ckpt", "quant-only"):  # a plan that fits at 32 tokens only
        assert a.plan.depth == 6 and a.plan.quant_layers == 0 and a.plan.recompute_layers == 0
        b = by_id["long"]
        assert b.plan is None or b.plan != a.plan


def test_the_simulator_plans_each_device_at_its_partition_length():
    lengths = np.array([5, 17, 30, 9])
    assert device_length(SimConfig(max_len=64), lengths) == 32
    assert device_length(SimConfig(max_len=24), lengths) == 24
    assert device_length(SimConfig(plan_at_device_length=False), lengths) is None
    assert device_length(SimConfig(), lengths[:0]) is None
    with pytest.raises(FedquadError, match="plan_at_device_length"):
        SimConfig(plan_at_device_length="yes")


def test_a_flower_node_with_its_own_data_is_planned_at_its_longest_example():
    from fedquad.flower.node import device_from_report
    report = {"memory-budget-mb": 512, "speed": 1.0, "device-id": "laptop", "length_max_tokens": 27}
    device, _ = device_from_report(report, node_id=1, profile=PROFILE, local_steps=4, data_weight=10)
    assert device.seq_len_tokens == 32
    device, _ = device_from_report({k: v for k, v in report.items() if k != "length_max_tokens"}, node_id=1,
                                   profile=PROFILE, local_steps=4, data_weight=10)
    assert device.seq_len_tokens is None
    assert dataclasses.asdict(device)["seq_len_tokens"] is None


def test_a_run_written_before_the_setting_reads_as_planned_at_the_profile_length():
    from fedquad.sim.config import from_dict, run_config_from_dict
    old = {k: v for k, v in SimConfig().to_dict().items() if k != "plan_at_device_length"}
    assert run_config_from_dict(old).plan_at_device_length is False  # reproduces how it was made
    assert from_dict(old).plan_at_device_length is True  # a user's config gets today's default
    assert run_config_from_dict({**old, "plan_at_device_length": True}).plan_at_device_length is True
