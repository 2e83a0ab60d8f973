"""Strategies on plain data (no model): what each assigns, and the HetLoRA merge."""

from __future__ import annotations

import torch

from fedquad.costmodel import cost_model, profile_from_dict
from fedquad.devices import Device
from fedquad.plan import ClientPlan
from fedquad.strategies import STRATEGIES, ClientOutcome, RoundContext, get_strategy
from tests._profiles import synthetic_profile

PROFILE = profile_from_dict(synthetic_profile(6, input_bytes_per_block=2_000_000))  # recompute bytes: fedlora-ckpt
CM = cost_model(PROFILE)
FULL = CM.full_footprint_bytes()
HEAD = CM.head_only_bytes()


def ctx(round_index: int = 0) -> RoundContext:
    return RoundContext(round_index, PROFILE, seed=1, lora_rank=8)


def devices() -> list[Device]:
    budgets = [HEAD * 0.5, HEAD + 0.1 * (FULL - HEAD), HEAD + 0.5 * (FULL - HEAD), FULL * 1.2]
    return [Device(f"d{i}", "t", int(b), 1.0 + i, 1e6, 1e6, 5, 100.0) for i, b in enumerate(budgets)]


def assignments(name: str):
    s = get_strategy(name)
    return {a.device_id: a for a in s.configure(ctx(), devices(), s.init_state(6))}


def test_every_strategy_assigns_each_device_once():
    for name in STRATEGIES:
        out = assignments(name)
        assert set(out) == {"d0", "d1", "d2", "d3"}, name
        assert out["d3"].plan is not None, f"{name}: the strongest device must take part"


def test_fedlora_sends_full_depth_to_everyone_who_fits_it():
    out = assignments("fedlora")
    fits = {dev.device_id: FULL <= dev.budget_bytes for dev in devices()}
    assert all((a.plan == ClientPlan(6)) == fits[k] for k, a in out.items()) and any(fits.values())
    assert "sits out" in out["d0"].reason
    literal = get_strategy("fedlora", fit_check=False)  # the literal FedAvg: d0 is sent it and will run out
    out = {a.device_id: a for a in literal.configure(ctx(), devices(), {})}
    assert all(a.plan == ClientPlan(6) for a in out.values())
    assert out["d0"].predicted_bytes > devices()[0].budget_bytes


def test_hetlora_sits_out_devices_that_cannot_fit_full_depth():
    out = assignments("hetlora")
    for dev in devices():
        a = out[dev.device_id]
        assert (a.plan is None) == (a.predicted_bytes is None)
        if a.plan is not None:
            assert a.predicted_bytes <= dev.budget_bytes
    assert out["d0"].plan is None and out["d3"].plan is not None
    literal = get_strategy("hetlora", fit_check=False)
    assert all(a.plan is not None for a in literal.configure(ctx(), devices(), literal.init_state(6)))


def test_weakest_uniform_depth_is_the_weakest_participants_deepest():
    s = get_strategy("fedlora-uniform", weakest=True)
    out = {a.device_id: a for a in s.configure(ctx(), devices(), {})}
    assert out["d0"].plan is None  # cannot fit even the head
    depths = {a.plan.depth for a in out.values() if a.plan is not None}
    assert len(depths) == 1
    d = depths.pop()
    assert CM.memory_bytes(ClientPlan(d)) <= devices()[1].budget_bytes < CM.memory_bytes(ClientPlan(d + 1))


def test_uniform_depth_maximises_layers_times_data_per_second():
    """The chosen depth beats every other uniform depth on (data share x layers) / round time, by
    brute force over depths; devices that cannot fit it sit out."""
    s = get_strategy("fedlora-uniform")
    out = {a.device_id: a for a in s.configure(ctx(), devices(), {})}
    depth = {a.plan.depth for a in out.values() if a.plan is not None}
    assert len(depth) == 1
    chosen = depth.pop()

    def score(d):
        takers = [dev for dev in devices() if CM.memory_bytes(ClientPlan(d)) <= dev.budget_bytes]
        if not takers:
            return -1.0
        t = max(CM.round_time(ClientPlan(d), dev.speed, dev.up_Bps, dev.down_Bps, dev.local_steps).total_s
                for dev in takers)
        return sum(dev.data_weight for dev in takers) / sum(dev.data_weight for dev in devices()) * (d + 1) / t

    assert score(chosen) == max(score(d) for d in range(7))
    for dev in devices():
        assert (out[dev.device_id].plan is None) == (CM.memory_bytes(ClientPlan(chosen)) > dev.budget_bytes)
    weak_only = [Device("w", "t", int(HEAD * 1.01), 1.0, 1e6, 1e6, 5, 100.0), devices()[3]]
    out = {a.device_id: a for a in s.configure(ctx(), weak_only, {})}
    assert out["d3"].plan.depth > 0  # one head-only board does not pin everyone to depth 0


def test_fedquad_and_quant_only_plans_fit_budgets():
    for name in ("fedquad", "depth-only", "quant-only"):
        for dev, a in zip(devices(), assignments(name).values()):
            if a.plan is not None:
                assert CM.memory_bytes(a.plan) <= dev.budget_bytes, name
    assert all(a.plan is None or a.plan.quant_layers == 0 for a in assignments("depth-only").values())
    assert all(a.plan is None or a.plan.depth == 6 for a in assignments("quant-only").values())


def test_fedra_subsets_fit_and_vary_by_round():
    s = get_strategy("fedra")
    first = {a.device_id: a for a in s.configure(ctx(0), devices(), {})}
    second = {a.device_id: a for a in s.configure(ctx(1), devices(), {})}
    d2 = first["d2"]
    assert d2.options.lora_blocks and d2.predicted_bytes <= devices()[2].budget_bytes
    assert d2.plan.depth == 6 - min(d2.options.lora_blocks)
    assert any(first[k].options.lora_blocks != second[k].options.lora_blocks for k in first
               if first[k].options.lora_blocks)


def test_hetlora_rank_grows_with_capacity():
    s = get_strategy("hetlora", fit_check=False)
    out = {a.device_id: a for a in s.configure(ctx(), devices(), s.init_state(6))}
    ranks = [out[f"d{i}"].options.rank for i in range(4)]
    assert ranks == sorted(ranks) and ranks[-1] == 8 and ranks[0] >= 2


def test_hetlora_merge_averages_each_component_over_its_trainers():
    from fedquad.aggregation import aggregate_ranked
    g = {"m.lora_A.weight": torch.ones(4, 3), "m.lora_B.weight": torch.ones(5, 4)}  # updates within 10x its norm
    full = {"m.lora_A.weight": torch.ones(4, 3), "m.lora_B.weight": torch.ones(5, 4)}
    low = {"m.lora_A.weight": torch.cat([3 * torch.ones(2, 3), torch.zeros(2, 3)]),
           "m.lora_B.weight": torch.cat([3 * torch.ones(5, 2), torch.zeros(5, 2)], 1)}
    new, report = aggregate_ranked(g, [(full, 10, 4), (low, 10, 2)])
    a = new["m.lora_A.weight"]
    assert torch.allclose(a[2:], torch.ones(2, 3))  # only the rank-4 client trained rows 2-3
    assert bool((a[:2] > 1).all() and (a[:2] < 3).all())  # both trained rows 0-1
    _, bad = aggregate_ranked(g, [({"m.lora_A.weight": torch.full((4, 3), float("nan"))}, 1, 4)])
    assert bad.rejected and "non-finite" in bad.rejected[0].reasons[0]


def test_fedquad_observe_learns_from_measurements():
    s = get_strategy("fedquad")
    state = s.init_state(6)
    out = s.configure(ctx(), devices(), state)
    a = next(x for x in out if x.device_id == "d2")
    slow = ClientOutcome(a, "ok", update={}, examples=10, measured_bytes=a.predicted_bytes,
                         time_s=3 * a.predicted_time_s, budget_bytes=devices()[2].budget_bytes)
    state = s.observe(ctx(), [slow], state)
    assert state["planner"]["devices"]["d2"]["time_ratio"] > 1.0


def test_depth_zero_sits_out_when_the_head_is_frozen():
    data = synthetic_profile(6)
    data["head_adapter_bytes"] = 0  # a causal LM: its tied LM head does not train
    frozen = profile_from_dict(data)
    c = RoundContext(0, frozen, seed=1, lora_rank=8)
    weak = Device("weak", "t", int(cost_model(frozen).head_only_bytes() * 1.01), 1.0, 1e6, 1e6, 5, 100.0)
    strong = Device("strong", "t", int(cost_model(frozen).full_footprint_bytes() * 1.2), 1.0, 1e6, 1e6, 5, 100.0)
    for name in ("fedquad", "depth-only", "fedra"):
        s = get_strategy(name)
        out = {a.device_id: a for a in s.configure(c, [weak, strong], s.init_state(6))}
        assert out["weak"].plan is None and "trains nothing" in out["weak"].reason, name
        assert out["strong"].plan is not None and out["strong"].plan.depth > 0, name


def test_memory_ratio_measured_on_one_device_is_the_prior_of_unmeasured_ones():
    from fedquad.planner import PlannerConfig, PlannerState
    s = get_strategy("fedquad")
    state = s.init_state(6)
    out = {a.device_id: a for a in s.configure(ctx(), devices(), state)}
    a = out["d2"]
    half = ClientOutcome(a, "ok", update={}, examples=10, measured_bytes=0.5 * a.predicted_bytes,
                         time_s=a.predicted_time_s, budget_bytes=devices()[2].budget_bytes)
    state = s.observe(ctx(), [half], state)
    planner = PlannerState.from_dict(state["planner"])
    assert planner.corrections("never-seen")[1] < 1.0  # learned from d2
    off = PlannerState.for_config(6, PlannerConfig(share_memory_ratio=False))
    assert off.corrections("never-seen")[1] == 1.0
