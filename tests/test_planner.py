"""Planner: properties against brute force and naive references, reasons, state, coverage, no torch."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from _profiles import synthetic_profile
from fedquad.costmodel import cost_model, profile_from_dict, round_time_s
from fedquad.devices import Device
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan
from fedquad.planner import DepthUtility, PlannerConfig, PlannerState, feasible_plans, plan_menu, plan_round

FAST = settings(max_examples=100, deadline=None)


@st.composite
def profiles(draw, max_blocks=6):
    L = draw(st.integers(1, max_blocks))
    ints = lambda hi: st.lists(st.integers(0, hi), min_size=L, max_size=L)  # noqa: E731
    floats = lambda hi: st.lists(st.floats(0, hi), min_size=L, max_size=L)  # noqa: E731
    data = synthetic_profile(
        num_blocks=L, saved_bytes_per_block=draw(ints(10_000)), kept_ratio_8=draw(floats(1.0)),
        kept_ratio_4=draw(floats(1.0)), adapter_bytes_per_block=draw(ints(500)), forward_s=draw(floats(1.0)),
        backward_s=draw(floats(2.0)), quant_s_8=draw(floats(0.5)), quant_s_4=draw(floats(0.5)),
        frozen_weight_bytes=draw(st.integers(0, 20_000)), workspace_bytes=draw(st.integers(0, 2_000)),
        head_adapter_bytes=draw(st.integers(0, 100)), head_saved_bytes=draw(st.integers(0, 500)),
        # recompute bytes on most profiles (the menu then offers recompute plans), none on some
        input_bytes_per_block=draw(st.one_of(st.none(), ints(3_000), ints(3_000), ints(3_000))))
    return profile_from_dict(data)


@st.composite
def scenes(draw, max_devices=8):
    """(profile, devices): budgets spread from below the smallest plan to above the largest."""
    profile = draw(profiles())
    cm = cost_model(profile)
    lo, hi = cm.head_only_bytes() * 0.9 - 10, cm.full_footprint_bytes() * 1.1 + 10
    n = draw(st.integers(1, max_devices))
    devices = [Device(f"dev-{i}", "test", budget_bytes=int(draw(st.floats(lo, hi))), speed=draw(st.floats(0.1, 10)),
                      up_Bps=draw(st.floats(1, 1000)), down_Bps=draw(st.floats(1, 1000)),
                      local_steps=draw(st.integers(1, 5)), data_weight=draw(st.floats(0.1, 3)))
               for i in range(n)]
    return profile, devices


def efficient_plan(profile, budget, depth, config=PlannerConfig()):
    """Brute force: least-time feasible plan of a depth (ties: fewer quantized blocks, wider bits,
    fewer recomputed blocks)."""
    cm = cost_model(profile)
    cands = [p for p in feasible_plans(profile, budget, config) if p.depth == depth]
    return min(cands, key=lambda p: (cm.step_time_s(p), p.quant_layers, -p.bits if p.quant_layers else -8,
                                     p.recompute_layers)) if cands else None


def max_depth(profile, budget, config=PlannerConfig()):
    return max((p.depth for p in feasible_plans(profile, budget, config)), default=None)


def utility_of(profile, devices, plans, utility=DepthUtility()):
    """U = sum_i w_i v(plan_i) / max_i T_i from the public cost model, independently of the planner."""
    total_w = sum(d.data_weight for d in devices)
    pairs = [(d, p) for d, p in zip(devices, plans) if p is not None]
    value = math.fsum(d.data_weight / total_w * utility.plan_value(p, profile.num_blocks) for d, p in pairs)
    rt = max(round_time_s(profile, p, d.speed, d.up_Bps, d.down_Bps, d.local_steps) for d, p in pairs)
    return utility.round_utility(value, rt), rt


def uniform_plans(profile, devices, depth):
    out = []
    for d in devices:
        top = max_depth(profile, d.budget_bytes)
        out.append(None if top is None else efficient_plan(profile, d.budget_bytes, min(depth, top)))
    return out


@FAST
@given(scenes())
def test_chosen_plans_are_feasible_and_exclusions_justified(scene):
    profile, devices = scene
    result = plan_round(devices, profile)
    for dev, dec in zip(devices, result.decisions):
        assert dec.device_id == dev.device_id
        if dec.plan is None:
            assert feasible_plans(profile, dev.budget_bytes) == []
            assert dec.reason.startswith("cannot take part")
        else:
            assert cost_model(profile).memory_bytes(dec.plan) <= dev.budget_bytes
            assert dec.predicted_bytes <= dev.budget_bytes
            assert dec.max_depth == max_depth(profile, dev.budget_bytes)
            assert dec.feasible_plans == len(feasible_plans(profile, dev.budget_bytes))
            # every chosen plan is the efficient one of its depth
            assert dec.plan == efficient_plan(profile, dev.budget_bytes, dec.plan.depth)


@FAST
@given(scenes())
def test_round_time_within_all_deepest_and_utility_beats_uniform(scene):
    profile, devices = scene
    result = plan_round(devices, profile)
    assume(result.participants)
    plans = [d.plan for d in result.decisions]
    u, rt = utility_of(profile, devices, plans)
    assert result.round_time_s == pytest.approx(rt, rel=1e-9)
    assert result.utility == pytest.approx(u, rel=1e-9)
    deepest = uniform_plans(profile, devices, profile.num_blocks)
    assert rt <= utility_of(profile, devices, deepest)[1] * (1 + 1e-9)
    for depth in range(profile.num_blocks + 1):
        assert u >= utility_of(profile, devices, uniform_plans(profile, devices, depth))[0] * (1 - 1e-9)


@FAST
@given(scenes(), st.booleans())
def test_plain_greedy_beats_uniform_when_monotone(scene, prune):
    """The docstring's claim: with monotone walks the greedy alone dominates uniform assignments."""
    profile, devices = scene
    config = PlannerConfig(consider_uniform=False, prune_dominated=prune)
    menu = plan_menu(profile, config)
    sets = [menu.efficient_set(d.budget_bytes) for d in devices]
    assume(any(sets) and all(es.monotone for es in sets if es is not None))
    result = plan_round(devices, profile, config)
    u = utility_of(profile, devices, [d.plan for d in result.decisions])[0]
    for depth in range(profile.num_blocks + 1):
        assert u >= utility_of(profile, devices, uniform_plans(profile, devices, depth))[0] * (1 - 1e-9)


def walk(profile, budget, prune, utility=DepthUtility()):
    """Depths the greedy visits: all feasible ones, or (pruned) those worth more than any shallower."""
    top = max_depth(profile, budget)
    depths, best = [], float("-inf")
    for d in range(top + 1):
        v = utility.plan_value(efficient_plan(profile, budget, d), profile.num_blocks)
        if not prune or v > best:
            depths.append(d)
            best = max(best, v)
    return depths


def naive_greedy(profile, devices, prune):
    """The greedy of docs/design.md, "Planner", literally: no heap, no bound, full recomputation every step."""
    walks = {i: walk(profile, d.budget_bytes, prune) for i, d in enumerate(devices)
             if max_depth(profile, d.budget_bytes) is not None}
    pos = {i: len(w) - 1 for i, w in walks.items()}

    def plans():
        return [efficient_plan(profile, d.budget_bytes, walks[i][pos[i]]) if i in walks else None
                for i, d in enumerate(devices)]

    def time(i):
        d = devices[i]
        return round_time_s(profile, efficient_plan(profile, d.budget_bytes, walks[i][pos[i]]), d.speed, d.up_Bps,
                            d.down_Bps, d.local_steps)

    best_u, best = utility_of(profile, devices, plans())[0], plans()
    while True:
        straggler = max(walks, key=lambda i: (time(i), -i))
        if pos[straggler] == 0:
            return best_u, best
        pos[straggler] -= 1
        u = utility_of(profile, devices, plans())[0]
        if u > best_u:
            best_u, best = u, plans()


@settings(max_examples=60, deadline=None)
@given(scenes(max_devices=5), st.booleans())
def test_fast_greedy_equals_naive_greedy(scene, prune):
    profile, devices = scene
    result = plan_round(devices, profile, PlannerConfig(consider_uniform=False, prune_dominated=prune))
    assume(result.participants)
    naive_u, _ = naive_greedy(profile, devices, prune)
    assert result.utility == pytest.approx(naive_u, rel=1e-9)


@FAST
@given(profiles(), st.lists(st.floats(0, 1.2), min_size=2, max_size=10))
def test_more_memory_never_lowers_max_depth(profile, fractions):
    cm = cost_model(profile)
    budgets = sorted(int(f * cm.full_footprint_bytes()) for f in fractions)
    devices = [Device(f"d{i}", "t", b, 1.0, 100.0, 100.0) for i, b in enumerate(budgets)]
    depths = [-1 if d.max_depth is None else d.max_depth for d in plan_round(devices, profile).decisions]
    assert depths == sorted(depths)


@FAST
@given(scenes())
def test_deterministic(scene):
    profile, devices = scene
    assert plan_round(devices, profile) == plan_round(list(devices), profile)


def _devices(n, budget, speeds=None):
    return [Device(f"d{i}", "t", budget, (speeds or [1.0] * n)[i], 1e6, 1e6, 10) for i in range(n)]


def test_reasons_and_options():
    profile = profile_from_dict(synthetic_profile())  # 6 blocks
    cm = cost_model(profile)
    full, head = cm.full_footprint_bytes(), cm.head_only_bytes()
    devices = _devices(3, int(full), [5.0, 5.0, 0.5]) + [Device("tiny", "t", int(head) - 2**20, 1.0, 1e6, 1e6)]
    result = plan_round(devices, profile)
    reasons = {d.device_id: d.reason for d in result.decisions}
    assert reasons["d0"] == "full depth"
    assert reasons["d2"].startswith("straggler: lowered")
    assert "cannot take part" in reasons["tiny"] and "MiB" in reasons["tiny"] and "short by 1.0 MiB" in reasons["tiny"]
    assert result.straggler_id in {"d0", "d1", "d2"}
    tight = plan_round(_devices(1, int(0.8 * full)), profile).decisions[0]
    assert tight.plan.quant_layers > 0 and "to fit" in tight.reason
    no_quant = plan_round(_devices(1, int(0.8 * full)), profile, PlannerConfig(allow_quant=False)).decisions[0]
    assert no_quant.plan.quant_layers == 0 and no_quant.plan.depth < 6
    only8 = plan_round(_devices(1, int(0.75 * full)), profile, PlannerConfig(bits=(8,))).decisions[0]
    assert only8.plan.bits == 8
    top = plan_round(_devices(1, int(0.8 * full)), profile, PlannerConfig(placement="top")).decisions[0]
    assert top.plan.placement == "top"
    assert json.loads(json.dumps(result.to_dict()))["devices"][0]["plan"]["depth"] == 6


def test_config_and_input_errors():
    for kwargs in (dict(bits=(3,)), dict(bits=()), dict(placement="middle"), dict(ema_alpha=0),
                   dict(coverage_rounds=0), dict(int4_penalty=-1), dict(utility=object())):
        with pytest.raises(FedquadError):
            PlannerConfig(**kwargs)
    profile = profile_from_dict(synthetic_profile())
    with pytest.raises(FedquadError, match="unique"):
        plan_round(_devices(1, 10**9) * 2, profile)
    with pytest.raises(FedquadError, match="speed"):
        plan_round([Device("x", "t", 10**9, 0.0, 1.0, 1.0)], profile)


def test_custom_utility():
    class DepthOnly:  # ignores time: everybody stays at its deepest plan
        def plan_value(self, plan, num_blocks):
            return plan.depth

        def round_utility(self, value, round_time_s):
            return value

    profile = profile_from_dict(synthetic_profile())
    devices = _devices(3, 10**9, [5.0, 1.0, 0.1])
    result = plan_round(devices, profile, PlannerConfig(utility=DepthOnly()))
    assert all(d.plan.depth == 6 for d in result.decisions)


def test_uniform_candidates_rescue_a_non_monotone_utility():
    """Value only at depth 1: the greedy alone keeps the fast device deep (worth 0); uniform depth 1 wins."""
    class SweetSpot:
        def plan_value(self, plan, num_blocks):
            return 1.0 if plan.depth == 1 else 0.0

        def round_utility(self, value, round_time_s):
            return value / round_time_s

    profile = profile_from_dict(synthetic_profile())
    devices = _devices(2, 10**9, [100.0, 1.0])
    literal = PlannerConfig(utility=SweetSpot(), prune_dominated=False)
    plain = plan_round(devices, profile, dataclasses.replace(literal, consider_uniform=False))
    result = plan_round(devices, profile, literal)
    assert result.method == "uniform depth 1" and result.utility > plain.utility
    # By hand (10 steps, 0.59 s download): T_slow(d) = 0.848 + 0.178 d, T_fast(d) = 0.595 + 0.099 d.
    # The slow straggler walks down to depth 1 (every state on the way is worth 0: the early stop
    # must bound by the best value still below, not by the current one), then the fast device
    # straggles from 6 to 4 (T_fast(4) = 0.992 < T_slow(1) = 1.026); the last moves (slow to 0,
    # fast to 2, until slow straggles at its lowest plan) are worth nothing: 10 moves.
    assert [d.plan for d in plain.decisions] == [ClientPlan(4), ClientPlan(1)]
    assert plain.utility == pytest.approx(0.5 / (0.847896 + 0.178304)) and plain.greedy_steps == 10
    assert [d.plan.depth for d in result.decisions] == [1, 1]
    assert "uniform depth 1" in result.decisions[0].reason
    # pruning dominated depths finds the same optimum with the greedy alone
    pruned = plan_round(devices, profile, PlannerConfig(utility=SweetSpot()))
    assert pruned.method == "greedy" and pruned.utility == pytest.approx(result.utility)
    assert "deepest worth it" in pruned.decisions[0].reason


def test_state_ema_lightens_plans_and_roundtrips():
    profile = profile_from_dict(synthetic_profile())
    full = cost_model(profile).full_footprint_bytes()
    devices = _devices(2, int(full))
    state = PlannerState.for_config(profile.num_blocks, PlannerConfig(ema_alpha=0.5))
    first = plan_round(devices, profile, state=state)
    d0 = first.decisions[0]
    state.observe(d0, measured_time_s=d0.predicted_time_s * 3, measured_bytes=d0.predicted_bytes * 1.2)
    assert state.devices["d0"].time_ratio == pytest.approx(2.0)  # 0.5 * 1 + 0.5 * 3
    assert state.devices["d0"].memory_ratio == pytest.approx(1.1)
    second = plan_round(devices, profile, state=state)
    s0 = second.decisions[0]
    assert s0.time_ratio == 2.0 and s0.predicted_bytes <= s0.budget_bytes
    assert s0.plan < d0.plan  # slower and tighter: a lighter plan
    # the EMA tracks the raw model error: observing the corrected prediction again leaves it at 2
    state.observe(s0, measured_time_s=s0.predicted_time_s)
    assert state.devices["d0"].time_ratio == pytest.approx(2.0)
    state.observe(s0, free_bytes=full / 2)
    assert plan_round(devices, profile, state=state).decisions[0].budget_bytes == pytest.approx(full / 2)
    state.record_round(second)
    again = PlannerState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again.to_dict() == state.to_dict()
    with pytest.raises(FedquadError):
        PlannerState.from_dict({"num_blocks": 6})


def test_coverage_gives_starving_block_to_cheapest_device():
    profile = profile_from_dict(synthetic_profile())
    devices = _devices(3, 10**9, [1.0, 1.2, 1.1])
    state = PlannerState(6)
    base = plan_round(devices, profile, PlannerConfig(utility=_Shallow()))
    assert max(d.plan.depth for d in base.decisions) < 6
    for _ in range(2):
        state.record_round(base)
    assert state.rounds_without_trainer[0] == 2
    covered = plan_round(devices, profile, PlannerConfig(coverage_rounds=2, utility=_Shallow()), state=state)
    raised = [d for d in covered.decisions if "coverage" in d.reason]
    assert len(raised) == 1 and raised[0].device_id == "d1" and raised[0].plan.depth == 6  # fastest device
    assert "coverage" in covered.method
    state.record_round(covered)
    assert state.rounds_without_trainer == [0] * 6


class _Shallow:
    """A utility that prefers shallow plans, to create starving blocks."""

    def plan_value(self, plan, num_blocks):
        return 1.0 + 0.01 * plan.depth

    def round_utility(self, value, round_time_s):
        return value / round_time_s


def test_planner_modules_do_not_import_torch():
    code = ("import sys; import fedquad.costmodel, fedquad.devices, fedquad.planner, fedquad.cli.plan_cmd; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_thousand_devices_plan_correctly_and_share_efficient_sets():
    """Scale without a clock (the time is benchmarks/planner.py's figure, docs/bench_planner.md):
    1,000 devices on 32 blocks get efficient, feasible plans, the walk ends within its bound,
    and devices whose budgets fall between the same memory thresholds share one efficient set."""
    import bisect
    import random
    profile = profile_from_dict(synthetic_profile(num_blocks=32))
    cm = cost_model(profile)
    rng = random.Random(0)
    devices = [Device(f"d{i}", "t", int(rng.uniform(0.3, 1.1) * cm.full_footprint_bytes()), rng.uniform(0.2, 5),
                      rng.uniform(1e5, 1e7), 5e6, 10) for i in range(1000)]
    result = plan_round(devices, profile)
    menu = plan_menu(profile, PlannerConfig())
    sets = {id(menu.efficient_set(d.budget_bytes)) for d in devices}
    intervals = {bisect.bisect_right(menu._thresholds, d.budget_bytes) for d in devices}
    assert len(sets) == len(intervals) < len(devices)  # one set per interval between memory thresholds
    assert result.greedy_steps <= sum(len(menu.efficient_set(d.budget_bytes).walk) - 1 for d in devices)
    for dev, dec in list(zip(devices, result.decisions))[::50]:
        assert dec.plan == efficient_plan(profile, dev.budget_bytes, dec.plan.depth)
        assert cm.memory_bytes(dec.plan) <= dev.budget_bytes


# -- hand-checked cases: the chosen plans themselves, not only their utility ------------------
#
# The property tests above compare utilities (approximately); a planner that breaks a tie the
# other way, or walks a dominated depth, reaches the same utility with other plans. Here the
# profile is chosen so the right plans can be worked out by hand.

def _flat_profile(**kwargs):
    """4 blocks, each 0.5 s of backward and nothing else timed; nothing to upload or download by
    default, so a device's round time is 0.5 s x depth (+ quantization) exactly."""
    data = synthetic_profile(num_blocks=4, forward_s=0.0, backward_s=0.5, **{
        "adapter_bytes_per_block": 0, "head_adapter_bytes": 0, **kwargs})
    data["embedding_forward_s"] = 0.0
    data["head"].update(forward_s=0.0, backward_s=0.0)
    return profile_from_dict(data)


class _DeepestValue:
    """Time does not count: the greedy keeps every device at its walk's deepest step."""

    def plan_value(self, plan, num_blocks):
        return plan.depth

    def round_utility(self, value, round_time_s):
        return value


def test_equal_utility_keeps_the_earlier_deeper_assignment():
    """U = depth / (0.5 s x depth) = 2.0 at every depth >= 1 (exact in binary): every straggler
    move ties, and the greedy keeps the first, deepest state (a `>=` would end at depth 1)."""
    profile = _flat_profile()
    result = plan_round([Device("a", "t", 10**12, 1.0, 1e6, 1e6, 1)], profile)
    assert result.utility == 2.0 and result.greedy_steps == 4
    assert result.decisions[0].plan == ClientPlan(4) and result.decisions[0].reason == "full depth"
    two = plan_round(_devices(2, 10**12), profile)
    assert [d.plan for d in two.decisions] == [ClientPlan(4), ClientPlan(4)]


def test_equal_step_times_prefer_fewer_quantized_blocks_then_wider_bits():
    free = _flat_profile(quant_s_8=0.0, quant_s_4=0.0)  # quantizing costs no time: every q ties
    es = plan_menu(free, PlannerConfig()).efficient_set(10**12)
    assert es.plans == tuple(ClientPlan(d) for d in range(5))
    same = _flat_profile(quant_s_8=0.25, quant_s_4=0.25)  # int8 and int4 tie at each q
    cm = cost_model(same)
    int8, int4 = cm.memory_bytes(ClientPlan(4, 1, 8)), cm.memory_bytes(ClientPlan(4, 1, 4))
    assert int4 < int8 < cm.memory_bytes(ClientPlan(4))
    menu = plan_menu(same, PlannerConfig())
    assert menu.efficient_set(int8).plans[4] == ClientPlan(4, 1, 8)
    assert menu.efficient_set(int8 - 1).plans[4] == ClientPlan(4, 1, 4)  # now only int4 fits at q = 1
    chosen = plan_round([Device("a", "t", int8, 1.0, 1e6, 1e6, 1)], same, PlannerConfig(utility=_DeepestValue()))
    assert chosen.decisions[0].plan == ClientPlan(4, 1, 8)


def test_a_deeper_plan_worth_no_more_is_pruned_from_the_walk():
    """int4 penalty 1.0: depth 4 with one int4 block is worth 3, as much as depth 3 unquantized, and
    is slower. Device a (fast) can reach depth 4 only that way; device b (slow links: about 4000 s)
    is the straggler throughout. The round utility is the same either way (b sets the time,
    a's value is 3 in both); only pruning keeps a at depth 3."""
    profile = _flat_profile(adapter_bytes_per_block=1000, quant_s_8=0.25, quant_s_4=0.25)
    cm = cost_model(profile)
    a_budget = int(cm.memory_bytes(ClientPlan(4, 1, 4)))
    assert a_budget < cm.memory_bytes(ClientPlan(4))
    devices = [Device("a", "t", a_budget, 10.0, 1e9, 1e9, 1), Device("b", "t", 10**12, 1.0, 1e9, 1.0, 1)]
    config = PlannerConfig(bits=(4,), int4_penalty=1.0)
    pruned = plan_round(devices, profile, config)
    assert [d.plan for d in pruned.decisions] == [ClientPlan(3), ClientPlan(4)]
    assert pruned.decisions[0].reason.startswith("deepest worth it: deeper fits only as d=4 q=1@int4")
    literal = plan_round(devices, profile, dataclasses.replace(config, prune_dominated=False))
    assert [d.plan for d in literal.decisions] == [ClientPlan(4, 1, 4), ClientPlan(4)]
    assert literal.utility == pruned.utility


def test_memory_margin_plans_above_the_mean_ratio_by_its_scatter():
    profile = profile_from_dict(synthetic_profile())
    full = cost_model(profile).full_footprint_bytes()
    devices = _devices(2, int(full))
    plain = PlannerState.for_config(profile.num_blocks, PlannerConfig(ema_alpha=0.5))
    careful = PlannerState.for_config(profile.num_blocks, PlannerConfig(ema_alpha=0.5, memory_margin=2.0))
    for state in (plain, careful):
        d0 = plan_round(devices, profile, state=state).decisions[0]
        state.observe(d0, measured_bytes=d0.predicted_bytes / d0.memory_ratio * 1.2)
    # same mean ratio (1.1) and deviation (0.5 * |1.2 - 1.0| = 0.1); only the margin differs
    for state in (plain, careful):
        assert state.devices["d0"].memory_ratio == pytest.approx(1.1)
        assert state.devices["d0"].memory_ratio_dev == pytest.approx(0.1)
    assert plain.corrections("d0")[1] == pytest.approx(1.1)
    assert careful.corrections("d0")[1] == pytest.approx(1.3)
    assert careful.corrections("unseen")[1] == pytest.approx(1.1 + 2 * 0.1)  # the shared prior has a margin too
    tight = plan_round(devices, profile, state=careful).decisions[0]
    loose = plan_round(devices, profile, state=plain).decisions[0]
    assert tight.memory_ratio == pytest.approx(1.3) and tight.predicted_bytes <= tight.budget_bytes
    assert tight.plan <= loose.plan
    again = PlannerState.from_dict(json.loads(json.dumps(careful.to_dict())))
    assert again.to_dict() == careful.to_dict() and again.corrections("d0") == careful.corrections("d0")
    with pytest.raises(FedquadError, match="memory_margin"):
        PlannerConfig(memory_margin=-1)
