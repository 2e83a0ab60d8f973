"""Device catalog and scenarios: spec figures, budgets, reproducible draws and dynamics."""

from __future__ import annotations

import dataclasses
import json

import pytest

from _profiles import minilm_like_profile
from fedquad.costmodel import cost_model, profile_from_dict
from fedquad.devices import (budget_bytes_for, device_class, devices_at_round, draw_devices, list_scenarios,
                             load_catalog, load_scenario)
from fedquad.errors import FedquadError
from fedquad.planner import plan_round

JETSONS = {"jetson-tx2", "jetson-xavier-nx", "jetson-agx-xavier", "jetson-orin-nano", "jetson-orin-nx",
           "jetson-agx-orin"}


@pytest.fixture(scope="module")
def minilm():
    return profile_from_dict(minilm_like_profile())


def test_catalog_spec_figures():
    cat = load_catalog()
    assert JETSONS | {"laptop-cpu"} <= set(cat)
    tx2 = cat["jetson-tx2"]
    assert tx2.memory_bandwidth_GBps == 59.7 and tx2.peak_tflops == pytest.approx(1.3, abs=0.05)
    assert cat["jetson-agx-orin"].peak_tflops == 5.3 and cat["jetson-agx-orin"].memory_bandwidth_GBps == 204.8
    assert cat["jetson-agx-xavier"].memory_bytes == 32 * 2**30
    for name in ("jetson-orin-nano", "jetson-orin-nx"):
        assert "ESTIMATE" in cat[name].source
    watts = {m.watts for m in cat["jetson-tx2"].power_modes}
    assert min(watts) == 7.5 and max(watts) == 15
    assert {m.watts for m in cat["jetson-agx-orin"].power_modes} >= {15, 60}
    for cls in cat.values():
        assert 0 < cls.efficiency <= 1 and max(m.speed_factor for m in cls.power_modes) == 1.0


def test_speed_formula(minilm):
    scenario = load_scenario("jetson-small")
    cls = device_class("jetson-agx-orin")
    devices = draw_devices(scenario, minilm)
    orin = next(d for d in devices if d.device_class == "jetson-agx-orin")
    mode = cls.power_mode(orin.power_mode)
    assert orin.speed == pytest.approx(5.3 * 1000 * cls.efficiency * mode.speed_factor / minilm.machine_gflops)
    loaded = devices_at_round([orin], dataclasses.replace(
        scenario, dynamics=dataclasses.replace(scenario.dynamics, background_load_prob=1.0, background_load=(0.5, 0.5),
                                               power_mode_switch_prob=0.0)), 3)[0]
    assert loaded.speed == pytest.approx(orin.speed * 0.5)


def test_shipped_scenarios(minilm):
    assert {"jetson-small", "jetson-mixed", "laptops"} <= set(list_scenarios())
    small, mixed = load_scenario("jetson-small"), load_scenario("jetson-mixed")
    assert 8 <= small.num_devices <= 12
    assert mixed.num_devices >= 20 and {c.device_class for c in mixed.classes} == JETSONS
    for name in list_scenarios():
        devices = draw_devices(load_scenario(name), minilm)
        assert len({d.device_id for d in devices}) == len(devices)
        assert all(d.speed > 0 and d.up_Bps > 0 and d.down_Bps > 0 and d.budget_bytes > 0 for d in devices)


def test_jetson_mixed_weak_devices_need_shallow_plans(minilm):
    """With MiniLM at 16 x 64, weak classes cannot fit full depth even at int4 but fit a shallower plan.
    (Fraction budgets are calibrated for that model and shape; `headroom` budgets are shape-free.)"""
    scenario = load_scenario("jetson-mixed")
    result = plan_round(draw_devices(scenario, minilm), minilm)
    weak = [d for d in result.decisions if d.device_class in ("jetson-tx2", "jetson-xavier-nx", "jetson-orin-nano")]
    assert weak and all(d.max_depth is not None and 1 <= d.max_depth < minilm.num_blocks for d in weak)
    assert any(d.max_depth == minilm.num_blocks for d in result.decisions)


def test_repeated_class_gets_distinct_ids(tmp_path, minilm):
    two = [{"class": "jetson-tx2", "count": 2, "budget": [0.4, 0.5]},
           {"class": "jetson-tx2", "count": 1, "budget": [0.9, 1.0], "power_mode": "MAXQ"}]
    devices = draw_devices(load_scenario(_scenario_file(tmp_path, devices=two)), minilm)
    assert [d.device_id for d in devices] == ["jetson-tx2-0", "jetson-tx2-1", "jetson-tx2-2"]
    assert devices[2].power_mode == "MAXQ"


def test_budget_modes(minilm):
    cm = cost_model(minilm)
    base = load_scenario("jetson-small")
    assert budget_bytes_for(base, minilm, 0.5) == int(0.5 * cm.full_footprint_bytes())
    absolute = dataclasses.replace(base, budget_mode="absolute")
    assert budget_bytes_for(absolute, minilm, 123456789) == 123456789
    headroom = dataclasses.replace(base, budget_mode="headroom")
    assert budget_bytes_for(headroom, minilm, 0.0) == int(cm.head_only_bytes())
    assert budget_bytes_for(headroom, minilm, 1.0) == int(cm.full_footprint_bytes())


def test_draw_is_reproducible(minilm):
    scenario = load_scenario("jetson-mixed")
    a, b = draw_devices(scenario, minilm), draw_devices(scenario, minilm, seed=scenario.seed)
    assert a == b
    assert draw_devices(scenario, minilm, seed=1) != a


def test_round_dynamics_are_deterministic(minilm):
    scenario = load_scenario("jetson-mixed")
    devices = draw_devices(scenario, minilm)
    r7 = devices_at_round(devices, scenario, 7)
    for r in range(7):  # computing other rounds first changes nothing
        devices_at_round(devices, scenario, r)
    assert devices_at_round(devices, scenario, 7) == r7
    assert devices_at_round(r7, scenario, 7) == r7  # advanced devices may be passed back in
    assert devices_at_round(devices, scenario, 7, seed=5) != r7
    rounds = [devices_at_round(devices, scenario, r) for r in range(30)]
    assert len({tuple(d.power_mode for d in rs) for rs in rounds}) > 1
    assert any(d.background_load > 0 for rs in rounds for d in rs)
    assert any(d.budget_bytes < d.base_budget_bytes for rs in rounds for d in rs)
    assert all(d.budget_bytes <= d.base_budget_bytes for rs in rounds for d in rs)
    with pytest.raises(FedquadError):
        devices_at_round(devices, scenario, -1)


def _scenario_file(tmp_path, **changes):
    with open(_shipped("jetson-small")) as f:
        data = json.load(f)
    data.update(changes)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    return str(path)


def _shipped(name):
    from importlib import resources
    return str(resources.files("fedquad").joinpath(f"resources/scenarios/{name}.json"))


def test_scenario_by_path_and_errors(tmp_path, minilm):
    assert load_scenario(_scenario_file(tmp_path)).num_devices == load_scenario("jetson-small").num_devices
    with pytest.raises(FedquadError, match="unknown scenario 'nope'.*jetson-small"):
        load_scenario("nope")
    path = _scenario_file(tmp_path, devices=[{"class": "jetson-tx3", "count": 1, "budget": [0.5, 0.6]}])
    with pytest.raises(FedquadError, match="jetson-tx3"):
        load_scenario(path)
    for bad, word in ((dict(budget_mode="relative"), "budget_mode"),
                      (dict(devices=[{"class": "jetson-tx2", "count": 0, "budget": [0.5, 0.6]}]), "count"),
                      (dict(devices=[{"class": "jetson-tx2", "count": 1, "budget": [0.6, 0.5]}]), "budget"),
                      (dict(devices=[{"class": "jetson-tx2", "count": 1, "budget": [0.5, 0.6], "power_mode": "X"}]),
                       "power mode"),
                      (dict(bandwidth_Mbps={"up": {"dist": "pareto"}, "down": {"dist": "fixed", "Mbps": 1}}), "dist"),
                      (dict(dynamics={"power_mode_switch_prob": 2}), "power_mode_switch_prob")):
        with pytest.raises(FedquadError, match=word):
            load_scenario(_scenario_file(tmp_path, **bad))


def test_device_record_scenario_format_and_sampling_are_separate_modules():
    """Device is a plain record (nothing of fedquad under it); reading a scenario file needs no
    cost model; only sampling turns a scenario plus a profile into Devices."""
    import ast
    import fedquad.devices as devices
    from fedquad.devices import device, sampling, scenario

    def fedquad_imports(module) -> set[str]:
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        return {n.module for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("fedquad")}

    assert devices.Device is device.Device and devices.draw_devices is sampling.draw_devices
    assert devices.load_scenario is scenario.load_scenario
    assert fedquad_imports(device) == set()
    assert fedquad_imports(scenario) == {"fedquad.devices.catalog", "fedquad.errors"}
    assert "fedquad.costmodel.model" in fedquad_imports(sampling)
