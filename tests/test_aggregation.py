"""Per-key weighted aggregation (DESIGN section 6)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquad.aggregation import (AggregationReport, aggregate_per_key, expected_spec, validate_update,
                                 weighted_mean)


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
