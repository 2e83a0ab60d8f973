"""Per-key weighted aggregation (docs/design.md, "Aggregation") and its guards against malformed updates."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquad.aggregation import (AggregationConfig, AggregationReport, aggregate_per_key, aggregate_ranked,
                                 check_examples, expected_spec, norm_bound, tensor_norm, validate_update,
                                 weighted_mean)
from fedquad.errors import FedquadError


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.lora_A": torch.randn(4, 8, generator=g),
        "blocks.0.lora_B": torch.randn(8, 4, generator=g),
        "blocks.1.lora_A": torch.randn(4, 8, generator=g),
        "blocks.1.lora_B": torch.randn(8, 4, generator=g),
        "head.weight": torch.randn(2, 8, generator=g),
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
    }


def test_untouched_keys_are_the_same_objects_and_bits():
    glob = _state()
    before = {k: v.clone() for k, v in glob.items()}
    upd = {"blocks.1.lora_A": torch.ones(4, 8), "head.weight": torch.zeros(2, 8)}
    new, report = aggregate_per_key(glob, [(upd, 10)])
    for k in ("blocks.0.lora_A", "blocks.0.lora_B", "blocks.1.lora_B", "half"):
        assert new[k] is glob[k]
        assert torch.equal(new[k], before[k])
    assert set(report.untouched_keys) == {"blocks.0.lora_A", "blocks.0.lora_B", "blocks.1.lora_B", "half"}
    assert report.contributors["blocks.1.lora_A"] == 1 and report.contributors["blocks.0.lora_A"] == 0
    assert list(new) == list(glob)  # key order kept
    for k in glob:  # the input state is not modified
        assert torch.equal(glob[k], before[k])


def test_single_contributor_is_returned_bitwise():
    glob = _state()
    upd = {"blocks.0.lora_A": torch.randn(4, 8), "half": torch.randn(3).to(torch.bfloat16)}
    new, _ = aggregate_per_key(glob, [(upd, 7)])
    assert torch.equal(new["blocks.0.lora_A"], upd["blocks.0.lora_A"])
    assert torch.equal(new["half"], upd["half"]) and new["half"].dtype == torch.bfloat16


def test_weights_are_example_counts_and_keys_use_only_their_contributors():
    glob = _state()
    a = {"head.weight": torch.full((2, 8), 1.0), "blocks.1.lora_B": torch.full((8, 4), 5.0)}
    b = {"head.weight": torch.full((2, 8), 4.0)}
    new, report = aggregate_per_key(glob, [(a, 10), (b, 30)])
    assert torch.allclose(new["head.weight"], torch.full((2, 8), (10 * 1 + 30 * 4) / 40))
    # Only `a` returned blocks.1.lora_B: b's weight does not dilute it.
    assert torch.equal(new["blocks.1.lora_B"], torch.full((8, 4), 5.0))
    assert report.contributors["head.weight"] == 2 and report.examples["head.weight"] == 40.0
    assert report.accepted == (0, 1) and report.rejected == ()


def test_lora_a_and_b_are_averaged_separately():
    glob = _state()
    u1 = {"blocks.0.lora_A": torch.full((4, 8), 1.0), "blocks.0.lora_B": torch.full((8, 4), 2.0)}
    u2 = {"blocks.0.lora_A": torch.full((4, 8), 3.0), "blocks.0.lora_B": torch.full((8, 4), 4.0)}
    new, _ = aggregate_per_key(glob, [(u1, 1), (u2, 1)])
    assert torch.equal(new["blocks.0.lora_A"], torch.full((4, 8), 2.0))
    assert torch.equal(new["blocks.0.lora_B"], torch.full((8, 4), 3.0))


@pytest.mark.parametrize("bad, fragment", [
    ({"head.weight": torch.full((2, 8), float("nan"))}, "non-finite"),
    ({"head.weight": torch.tensor([[float("inf")] + [0.0] * 7, [0.0] * 8])}, "1 non-finite value"),
    ({"head.weight": torch.zeros(8, 2)}, "shape (8, 2), expected (2, 8)"),
    ({"head.weight": torch.zeros(2, 8, dtype=torch.float16)}, "dtype torch.float16"),
    ({"nope": torch.zeros(1)}, "unexpected key 'nope'"),
    ({"head.weight": [[0.0] * 8] * 2}, "not a tensor"),
    ([1, 2], "not a mapping"),
])
def test_invalid_updates_are_rejected_and_the_rest_aggregated(bad, fragment):
    glob = _state()
    good = {"head.weight": torch.full((2, 8), 2.0)}
    new, report = aggregate_per_key(glob, [(good, 5), (bad, 5)])
    assert report.accepted == (0,)
    assert len(report.rejected) == 1 and report.rejected[0].index == 1
    assert any(fragment in r for r in report.rejected[0].reasons), report.rejected[0].reasons
    assert torch.equal(new["head.weight"], good["head.weight"])


@pytest.mark.parametrize("weight", [0, -3, float("nan"), True, "10"])
def test_bad_example_counts_are_rejected(weight):
    _, report = aggregate_per_key(_state(), [({"head.weight": torch.zeros(2, 8)}, weight)])
    assert report.accepted == () and "num_examples" in report.rejected[0].reasons[0]


def test_malformed_entry_is_rejected_not_raised():
    _, report = aggregate_per_key(_state(), [{"head.weight": torch.zeros(2, 8)}])
    assert "pair" in report.rejected[0].reasons[0]


def test_no_updates_or_all_rejected_leave_state_unchanged():
    glob = _state()
    for updates in ([], [({"head.weight": torch.full((2, 8), math.nan)}, 3)]):
        new, report = aggregate_per_key(glob, updates)
        assert all(new[k] is glob[k] for k in glob)
        assert set(report.untouched_keys) == set(glob)
    assert aggregate_per_key({}, [])[0] == {}
    # an empty update is valid (it trained nothing this round) and changes nothing
    new, report = aggregate_per_key(glob, [({}, 4)])
    assert report.accepted == (0,) and all(new[k] is glob[k] for k in glob)


def test_validate_update_lists_every_problem_and_accepts_subsets():
    spec = expected_spec(_state())
    assert validate_update({"head.weight": torch.zeros(2, 8)}, spec) == []
    assert validate_update({}, spec) == []
    reasons = validate_update({"x": torch.zeros(1), "head.weight": torch.zeros(3, 8, dtype=torch.float64)}, spec)
    assert len(reasons) == 3


def test_report_is_json_ready():
    import json
    _, report = aggregate_per_key(_state(), [({"head.weight": torch.zeros(2, 8)}, 2), ({"x": 1}, 1)])
    assert isinstance(report, AggregationReport)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rejected"][0]["index"] == 1 and data["contributors"]["head.weight"] == 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), data=st.data())
def test_order_independent_up_to_float_tolerance(seed, n, data):
    g = torch.Generator().manual_seed(seed)
    glob = _state(seed)
    keys = list(glob)
    updates = []
    for _ in range(n):
        chosen = data.draw(st.lists(st.sampled_from(keys), unique=True))
        upd = {k: (torch.randn(glob[k].shape, generator=g) * 10).to(glob[k].dtype) for k in chosen}
        updates.append((upd, data.draw(st.integers(1, 10_000))))
    perm = data.draw(st.permutations(range(n)))
    a, _ = aggregate_per_key(glob, updates)
    b, _ = aggregate_per_key(glob, [updates[i] for i in perm])
    for k in keys:
        assert a[k].dtype == glob[k].dtype
        tol = 1e-2 if glob[k].dtype == torch.bfloat16 else 1e-6
        assert torch.allclose(a[k].float(), b[k].float(), rtol=tol, atol=tol)


def test_weighted_mean_variants():
    x, y = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 6.0, 9.0])
    assert torch.allclose(weighted_mean([x, y], [1, 3]), torch.tensor([2.5, 5.0, 7.5]))
    # per-element weights (heterogeneous ranks: y covers only its first two elements)
    out = weighted_mean([x, y], [torch.ones(3), torch.tensor([1.0, 1.0, 0.0])])
    assert torch.allclose(out, torch.tensor([2.0, 4.0, 3.0]))
    # elements nobody covers take the fallback
    out = weighted_mean([x], [torch.tensor([1.0, 0.0, 1.0])], fallback=torch.tensor([9.0, 9.0, 9.0]))
    assert torch.equal(out, torch.tensor([1.0, 9.0, 3.0]))
    with pytest.raises(ValueError, match="fallback"):
        weighted_mean([x], [torch.tensor([1.0, 0.0, 1.0])])
    with pytest.raises(ValueError):
        weighted_mean([], [])
    with pytest.raises(ValueError):
        weighted_mean([x], [-1.0])
    with pytest.raises(ValueError, match="broadcast"):
        weighted_mean([x], [torch.ones(2, 3)])
    # integer tensors are rounded, float64 accumulation keeps float32 exact for equal inputs
    assert weighted_mean([torch.tensor([1, 2]), torch.tensor([2, 3])], [1, 1]).tolist() == [2, 2]
    z = torch.randn(5)
    assert torch.equal(weighted_mean([z, z, z], [1, 2, 3]), z)


# -- guards (issue 13 item 9): exact values --------------------------------------------------------


def test_aggregation_config_defaults_and_validation():
    c = AggregationConfig()
    assert (c.max_norm_ratio, c.norm_floor_rms, c.max_examples) == (10.0, 1.0, 10**9)
    assert AggregationConfig(max_norm_ratio=math.inf).max_norm_ratio == math.inf  # relative bound off
    for bad in ({"max_norm_ratio": 0}, {"max_norm_ratio": math.nan}, {"max_norm_ratio": "10"},
                {"norm_floor_rms": -1.0}, {"max_examples": 0}, {"max_examples": 2.0}, {"max_examples": 2**54}):
        with pytest.raises(FedquadError, match="aggregation setting"):
            AggregationConfig(**bad)


def test_norm_bound_is_relative_with_a_floor_and_the_norm_cannot_overflow():
    c = AggregationConfig()
    assert norm_bound(torch.full((4,), 2.0), c) == 40.0  # 10 x ||g|| = 10 x 4
    assert norm_bound(torch.zeros(4, 4), c) == 4.0  # LoRA B at zero: 1.0 x sqrt(16)
    assert norm_bound(torch.full((16,), 0.01), c) == 4.0  # 10 x 0.04 is below the floor
    assert norm_bound(torch.tensor([math.nan, 0.0, 0.0, 0.0]), c) == 2.0  # a non-finite global: floor only
    assert tensor_norm(torch.full((4,), 1e300, dtype=torch.float64)) == 2e300
    assert tensor_norm(torch.full((4,), 3e38)) == pytest.approx(6e38)
    assert tensor_norm(torch.zeros(0)) == 0.0


def test_norm_guard_rejects_just_above_the_bound():
    glob = {"w": torch.full((4,), 2.0), "b": torch.zeros(16)}
    at = {"w": torch.full((4,), 20.0), "b": torch.full((16,), 1.0)}  # norms 40 and 4: exactly at the bounds
    new, report = aggregate_per_key(glob, [(at, 1)])
    assert report.accepted == (0,) and torch.equal(new["w"], at["w"])
    _, report = aggregate_per_key(glob, [({"w": torch.full((4,), 20.2)}, 1), ({"b": torch.full((16,), 1.01)}, 1)])
    assert [r.reasons for r in report.rejected] == [
        ("w: norm 40.4 exceeds the bound 40 (max_norm_ratio x the global tensor's norm, at least "
         "norm_floor_rms x sqrt(elements))",),
        ("b: norm 4.04 exceeds the bound 4 (max_norm_ratio x the global tensor's norm, at least "
         "norm_floor_rms x sqrt(elements))",)]
    wide = AggregationConfig(max_norm_ratio=100.0)  # configurable
    assert aggregate_per_key(glob, [({"w": torch.full((4,), 20.2)}, 1)], config=wide)[1].accepted == (0,)


def test_huge_finite_values_no_longer_move_the_aggregate():
    glob = _state()
    good = {"head.weight": torch.full((2, 8), 0.5)}
    for value in (1e30, 1e35, 3.4e38):
        bad = {"head.weight": torch.full((2, 8), 0.5).index_put_((torch.tensor([0]), torch.tensor([0])),
                                                                  torch.tensor(value))}
        new, report = aggregate_per_key(glob, [(good, 4), (bad, 4)])
        assert report.accepted == (0,) and "exceeds the bound" in report.rejected[0].reasons[0]
        assert torch.equal(new["head.weight"], good["head.weight"])


class _Sub(torch.Tensor):
    pass


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("make, reason", [
    (lambda t: t.to_sparse(), "head.weight: layout torch.sparse_coo, expected a dense (strided) tensor"),
    (lambda t: t.to_sparse_csr(), "head.weight: layout torch.sparse_csr, expected a dense (strided) tensor"),
    (lambda t: t.to_sparse_bsr((1, 1)), "head.weight: layout torch.sparse_bsr, expected a dense (strided) tensor"),
    (lambda t: torch.empty(2, 8, device="meta"), "head.weight: on device 'meta', which holds no data to merge"),
    (lambda t: torch.nested.nested_tensor([t]), "head.weight: a nested tensor"),
    (lambda t: torch.nested.nested_tensor([t, t[:1]], layout=torch.jagged), "head.weight: a nested tensor"),
    (lambda t: t.as_subclass(_Sub), "head.weight: a tensor subclass (_Sub)"),
    (lambda t: t.bool(), "head.weight: dtype torch.bool, expected torch.float32"),
    (lambda t: t.to(torch.complex64), "head.weight: dtype torch.complex64, expected torch.float32"),
    (lambda t: t.numpy(), "head.weight: not a tensor (ndarray)"),
])
def test_layout_device_and_type_guards(make, reason):
    t = torch.full((2, 8), 0.5)
    new, report = aggregate_per_key(_state(), [({"head.weight": make(t)}, 3)])
    assert report.accepted == () and report.rejected[0].reasons == (reason,)


def test_odd_but_sound_tensors_are_accepted():
    glob = _state()
    value = torch.full((8, 2), 0.25).t()  # non-contiguous
    base = torch.zeros(23)
    base[7:] = 0.75
    offset = base[7:].view(2, 8)  # a view with a storage offset
    grad = torch.full((2, 8), 0.5, requires_grad=True)
    for update, expect in (({"head.weight": value}, 0.25), ({"head.weight": offset}, 0.75),
                           ({"head.weight": grad}, 0.5), ({"head.weight": torch.nn.Parameter(grad.detach())}, 0.5)):
        new, report = aggregate_per_key(glob, [(update, 2)])
        assert report.accepted == (0,)
        assert torch.equal(new["head.weight"], torch.full((2, 8), expect)) and not new["head.weight"].requires_grad


@pytest.mark.parametrize("value, expected", [
    (10, (10, None)), (np.int64(7), (7, None)), (np.uint8(200), (200, None)), (10.0, (10, None)),
    (np.float32(12.0), (12, None)), (Fraction(20, 2), (10, None)), (10**9, (10**9, None)),
    (10**9 + 1, (None, "num_examples must be between 1 and 1000000000, got 1000000001")),
    (2**63, (None, "num_examples must be between 1 and 1000000000, got about 10**18")),
    (10**400, (None, "num_examples must be between 1 and 1000000000, got about 10**400")),
    (-10**400, (None, "num_examples must be between 1 and 1000000000, got about 10**400")),
    (1e308, (None, "num_examples must be between 1 and 1000000000, got about 10**308")),
    (0, (None, "num_examples must be between 1 and 1000000000, got 0")),
    (-3, (None, "num_examples must be between 1 and 1000000000, got -3")),
    (math.nan, (None, "num_examples must be a finite whole number, got nan")),
    (math.inf, (None, "num_examples must be a finite whole number, got inf")),
    (2.5, (None, "num_examples must be a finite whole number, got 2.5")),
    (Fraction(5, 2), (None, "num_examples must be a finite whole number, got Fraction(5, 2)")),
    (True, (None, "num_examples is bool, not a number")),
    (np.bool_(True), (None, "num_examples is bool, not a number")),
    ("10", (None, "num_examples is str, not a number")),
    ([16], (None, "num_examples is list, not a number")),
    (None, (None, "num_examples is NoneType, not a number")),
    (torch.tensor(5), (None, "num_examples is Tensor, not a number")),
])
def test_example_counts(value, expected):
    assert check_examples(value) == expected


def test_example_counts_cannot_dominate_or_overflow():
    glob = _state()
    a, b = {"head.weight": torch.full((2, 8), 1.0)}, {"head.weight": torch.full((2, 8), 3.0)}
    # the issue's case: two clients claiming 1e308 examples made the mean 0.0 (and one, inf)
    new, report = aggregate_per_key(glob, [(a, 1e308), (b, 1e308)])
    assert report.accepted == () and all(new[k] is glob[k] for k in glob)
    new, report = aggregate_per_key(glob, [(a, 2**63), (b, 1)])
    assert report.accepted == (1,) and torch.equal(new["head.weight"], b["head.weight"])
    new, _ = aggregate_per_key(glob, [(a, 10**9), (b, 10**9)])  # the largest counts: exact mean
    assert torch.equal(new["head.weight"], torch.full((2, 8), 2.0))
    # the cap is a setting
    assert aggregate_per_key(glob, [(a, 11)], config=AggregationConfig(max_examples=10))[1].accepted == ()


def test_one_update_per_client_and_round():
    glob = _state()
    a, b = {"head.weight": torch.full((2, 8), 1.0)}, {"head.weight": torch.full((2, 8), 3.0)}
    new, report = aggregate_per_key(glob, [(a, 5), (a, 5), (b, 5)], client_ids=["d1", "d1", "d2"])
    assert report.accepted == (0, 2) and report.rejected[0].client_id == "d1"
    assert report.rejected[0].reasons == ("client 'd1' already sent update 0 this round",)
    assert torch.equal(new["head.weight"], torch.full((2, 8), 2.0))  # not (1 + 1 + 3) / 3
    # an invalid first update does not block the client's valid one: as if it had never been sent
    bad = {"head.weight": torch.full((2, 8), math.nan)}
    _, report = aggregate_per_key(glob, [(bad, 5), (a, 5)], client_ids=["d1", "d1"])
    assert report.accepted == (1,)
    _, report = aggregate_ranked(glob, [(a, 5, 8), (a, 5, 8)], client_ids=["d1", "d1"])
    assert report.accepted == (0,) and "already sent" in report.rejected[0].reasons[0]


def test_a_non_finite_merge_keeps_the_previous_tensor_and_is_reported():
    # a float32 update that is finite and within the bound, merged into a float16 global tensor
    # (a custom `expected`): the cast overflows, so the previous tensor stays
    glob = {"h": torch.zeros(4, dtype=torch.float16), "k": torch.zeros(4)}
    update = {"h": torch.full((4,), 1e5), "k": torch.full((4,), 0.5)}
    expected = {"h": ((4,), torch.float32), "k": ((4,), torch.float32)}
    new, report = aggregate_per_key(glob, [(update, 1)], expected=expected,
                                    config=AggregationConfig(norm_floor_rms=1e6))
    assert report.unmerged_keys == ("h",) and new["h"] is glob["h"]
    assert torch.equal(new["k"], update["k"]) and report.to_dict()["unmerged_keys"] == ["h"]
    # HetLoRA: components nobody trained keep the previous value; a NaN there stays out of the result
    g = {"m.lora_A.weight": torch.tensor([[0.5, 0.5], [math.nan, 0.5]]), "m.lora_B.weight": torch.ones(3, 2)}
    low = {"m.lora_A.weight": torch.tensor([[1.0, 1.0], [0.0, 0.0]]), "m.lora_B.weight": torch.ones(3, 2)}
    new, report = aggregate_ranked(g, [(low, 4, 1)])
    assert report.accepted == (0,) and report.unmerged_keys == ("m.lora_A.weight",)
    assert new["m.lora_A.weight"] is g["m.lora_A.weight"]


def test_unreadable_updates_are_rejected():
    class Broken(dict):
        def items(self):
            raise RuntimeError("boom")

    class Twice(dict):
        def items(self):
            return list(super().items()) * 2

    glob = _state()
    t = torch.zeros(2, 8)
    _, report = aggregate_per_key(glob, [(Broken(), 1), (Twice({"head.weight": t}), 1), ({0: t}, 1),
                                         ({"head.weight": t}, 1, 2)])
    assert [r.reasons for r in report.rejected] == [
        ("update cannot be read (RuntimeError)",), ("key 'head.weight' given twice",), ("key 0 is not a string",),
        ("expected a (state_dict, num_examples) pair, got tuple",)]
    _, report = aggregate_ranked(glob, [({"head.weight": t}, 1, 0), ({"head.weight": t}, 1, "2")])
    assert [r.reasons for r in report.rejected] == [("rank must be a positive integer, got 0",),
                                                    ("rank must be a positive integer, got '2'",)]


def test_every_strategy_passes_its_aggregation_settings_and_client_ids():
    from fedquad.plan import ClientPlan
    from fedquad.sim.config import SimConfig
    from fedquad.sim.runner import make_strategy
    from fedquad.strategies import STRATEGIES, Assignment, ClientOutcome, RoundContext
    from tests._profiles import synthetic_profile
    from fedquad.costmodel import profile_from_dict

    ctx = RoundContext(0, profile_from_dict(synthetic_profile(2)), seed=1, lora_rank=8)
    glob = {"head.weight": torch.full((2, 8), 0.5)}
    big = {"head.weight": torch.full((2, 8), 20.0)}  # 40 x the global norm
    outcome = ClientOutcome(Assignment("d1", ClientPlan(2)), "ok", update=big, examples=4)
    for name in STRATEGIES:
        default = make_strategy(SimConfig(strategy=name))
        wide = make_strategy(SimConfig(strategy=name, max_update_norm_ratio=50.0))
        assert wide.aggregation.max_norm_ratio == 50.0, name
        assert default.aggregate(ctx, glob, [outcome], default.init_state(2))[1].accepted == (), name
        new, report = wide.aggregate(ctx, glob, [outcome, outcome], wide.init_state(2))
        assert report.accepted == (0,) and "already sent" in report.rejected[0].reasons[0], name
        assert torch.equal(new["head.weight"], big["head.weight"]), name


# -- the Flower server's reply parsing (no Flower run: the parsing functions directly) -------------

@pytest.mark.parametrize("text, problem", [
    ('{"examples": NaN}', "num_examples must be a finite whole number, got nan"),
    ('{"examples": 1e400}', "num_examples must be a finite whole number, got inf"),
    ('{"examples": "x"}', "num_examples is str, not a number"),
    ('{"examples": [16]}', "num_examples is list, not a number"),
    ('{"examples": 1' + "0" * 400 + '}', "num_examples must be between 1 and 1000000000, got about 10**400"),
    ('{"examples": true}', "num_examples is bool, not a number"),
    ('{}', "num_examples is NoneType, not a number"),
    ('{"examples": 16}', None),
    ('{"examples": 16.0}', None),
])
def test_server_reply_example_counts(text, problem):
    import json
    pytest.importorskip("flwr")
    from fedquad.flower.replies import reply_examples
    count, why = reply_examples(json.loads(text))
    assert why == problem and (count == 16) == (problem is None)


def test_server_reply_numbers():
    import json
    pytest.importorskip("flwr")
    from fedquad.flower.replies import reply_numbers
    ok = reply_numbers(json.loads('{"budget_bytes": 4e9, "time_s": 0.2, "loss": -0.5}'))
    assert ok == {"budget_bytes": 4e9, "measured_bytes": None, "time_s": 0.2, "loss": -0.5}
    for text, fragment in (('{"budget_bytes": NaN}', "budget_bytes is 'nan', not a finite number >= 0"),
                           ('{"time_s": 1e400}', "time_s is 'inf', not a finite number >= 0"),
                           ('{"measured_bytes": "x"}', "measured_bytes is 'x', not a finite number >= 0"),
                           ('{"measured_bytes": -1}', "measured_bytes is '-1', not a finite number >= 0"),
                           ('{"budget_bytes": [16]}', "budget_bytes is '[16]', not a finite number >= 0"),
                           ('{"loss": NaN}', "loss is 'nan', not a finite number")):
        with pytest.raises(ValueError) as info:
            reply_numbers(json.loads(text))
        assert str(info.value) == fragment


@pytest.mark.integration
def test_server_round_rejects_replies_with_bad_numbers(tmp_path, monkeypatch):
    """The server's round (in process, a stand-in grid, no Flower run): a reply whose example
    count or timing is NaN, 1e400, "x" or [16] is rejected with a reason, the round goes on."""
    import uuid

    pytest.importorskip("flwr")
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedquad.flower.codec import config_to_data, data_to_config, state_to_record
    from fedquad.flower.node import describe_node
    from fedquad.flower.serverapp import FedquadServer
    from fedquad.flower.settings import ServerSettings
    from fedquad.plan import ClientPlan
    from fedquad.sim.config import SimConfig
    from tests._profiles import synthetic_profile, write_profile

    def push(messages):  # what Grid.push_messages does: give each message its id
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex

    class Grid:
        def __init__(self, nodes):
            self.nodes = nodes

        def get_node_ids(self):
            return list(self.nodes)

        def send_and_receive(self, messages, *, timeout=None):
            push(messages)
            return [Message(RecordDict({"profile": data_to_config(describe_node(
                self.nodes[m.metadata.dst_node_id], calibrate=False))}), reply_to=m) for m in messages]

    for name, value in (("_run_id", 7), ("_node_id", 1), ("_task_id", 1)):  # what a ServerApp process has
        monkeypatch.setattr(TaskIdentity, name, value)
    config = SimConfig(model="tiny-bert", task="synthetic", train_examples=120, eval_examples=32, max_len=16,
                       batch_size=4, local_steps=1, rounds=2, strategy="fedlora",
                       profile=write_profile(tmp_path, data=synthetic_profile(num_blocks=4)))
    server = FedquadServer(config, ServerSettings(round_timeout=30.0), str(tmp_path / "run"))
    full = 1.2 * server.profile.frozen_weight_bytes / 2**20 + 200
    bad = {"nan": {"examples": math.nan}, "inf": {"examples": math.inf}, "str": {"examples": "x"},
           "list": {"examples": [16]}, "huge": {"examples": 10**400}, "time": {"examples": 8, "time_s": "x"},
           "budget": {"examples": 8, "budget_bytes": [16]}}
    ids = ["good", *bad]
    nodes = {20 + i: {"partition-id": i, "num-partitions": len(ids), "memory-budget-mb": full, "speed": 1.0,
                      "device-id": d} for i, d in enumerate(ids)}
    sent = server.configure_round(Grid(nodes))
    push(sent)
    messages = {m.metadata.dst_node_id: m for m in sent}

    def reply(node_id, result):
        plan = ClientPlan.from_dict(config_to_data(messages[node_id].content["plan"])["assignment"]["plan"])
        update = {k: server.state.global_state[k] + 0.01 for k in server.adapted.keys_for_plan(plan)}
        ok = {"status": "ok", "examples": 8, "loss": 0.5, "measured_bytes": 1e6, "time_s": 0.2, **result}
        return Message(RecordDict({"result": data_to_config(ok), "update": state_to_record(update)}),
                       reply_to=messages[node_id])

    before = dict(server.state.global_state)
    new_global = server.aggregate_round([reply(20, {})] + [reply(21 + i, bad[d]) for i, d in enumerate(bad)])
    devices = {d["device_id"]: d for d in server.pending_report["devices"]}
    assert devices["good"]["status"] == "ok"
    for d in ("nan", "inf", "str", "list", "huge"):
        assert devices[d]["status"] == "rejected" and "num_examples" in devices[d]["failure"], devices[d]
    assert devices["time"]["status"] == "rejected" and "time_s is 'x'" in devices["time"]["failure"]
    assert devices["budget"]["status"] == "rejected" and "budget_bytes is '[16]'" in devices["budget"]["failure"]
    assert all(torch.isfinite(v).all() for v in new_global.values())
    assert {k for k in before if not torch.equal(before[k], new_global[k])}  # the good update was merged
