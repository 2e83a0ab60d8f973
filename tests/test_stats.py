"""Statistics of comparisons (pure): time to target held and at first touch with its evaluation
interval, censored medians, the seeded bootstrap (against its plain reference, and its
properties), paired speedups and the choice of the strongest baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquad.errors import FedquadError
from fedquad.sim import stats

INF = math.inf


def _history(*points):
    """An initial evaluation and rounds at (clock, accuracy or None)."""
    return [{"round": i - 1, "clock_s": t, "accuracy": a} for i, (t, a) in enumerate(points)]


def test_held_target_needs_consecutive_evaluations_and_first_touch_does_not():
    h = _history((0, 0.5), (2, 0.8), (4, 0.6), (6, 0.75), (8, None), (10, 0.9), (12, 0.5))
    assert stats.target_reached(h, 0.7, 1) == (0, 2)  # crossed between the evaluations at 0 and 2 s
    assert stats.target_reached(h, 0.7, 2) == (4, 6)  # 6 and 10 s in a row (8 s had no evaluation)
    assert stats.time_to_target(h, 0.7, 2) == 6
    assert stats.target_reached(h, 0.7, 3) is None  # the run ended before a third one
    assert stats.target_reached(h, 0.95, 1) is None and stats.target_reached(h, None, 2) is None
    assert stats.target_reached(_history((0, 0.9), (2, 0.9)), 0.7, 2) == (0, 0)  # met by the initial model
    for bad in (0, -1, 1.5, True):
        with pytest.raises(FedquadError, match="held"):
            stats.target_reached(h, 0.7, bad)


def test_censored_median_orders_never_above_every_time():
    assert stats.median_inf([3, 1, None]) == 3
    assert stats.median_inf([1, None]) == INF  # half never: the median is never
    assert stats.median_inf([4, 2, 10, None]) == 7
    assert stats.median_inf([INF, INF]) == INF
    assert math.isnan(stats.median_inf([]))
    with pytest.raises(FedquadError):
        stats.median_inf([1.0, float("nan")])
    with pytest.raises(FedquadError):
        stats.median_inf([-1.0])


def test_paired_ratio_by_the_censoring_rule():
    assert stats.paired_ratio(20, 10) == 2.0
    assert stats.paired_ratio(None, 10) == INF  # only ours reached it
    assert stats.paired_ratio(20, None) == 0.0  # only the baseline did
    assert stats.paired_ratio(None, None) is None  # neither: no information
    assert stats.paired_ratio(0, 0) == 1.0 and stats.paired_ratio(5, 0) == INF


def test_strongest_baseline_is_the_lowest_median_with_deterministic_ties():
    assert stats.strongest({"a": [10, 20, 30], "b": [5, 25, None], "c": [1, None, None]}) == "a"  # 20 < 25 < inf
    assert stats.strongest({"b": [5, None, None], "a": [7, None, None]}) == "b"  # all never: faster seeds win
    assert stats.strongest({"y": [3, 3], "x": [3, 3]}) == "x"  # full tie: by name, not dict order
    with pytest.raises(FedquadError):
        stats.strongest({})


def test_paired_speedup_leaves_out_seeds_nobody_reached_and_is_seeded():
    ours = {"0": 10.0, "1": 12.0, "2": None, "3": None, "4": 8.0}
    base = {"0": 20.0, "1": None, "2": 15.0, "3": None, "4": 16.0}
    sp = stats.paired_speedup(ours, base, resamples=2000)
    assert sp["per_seed"] == {"0": 2.0, "1": INF, "2": 0.0, "3": None, "4": 2.0}
    assert sp["excluded_seeds"] == ["3"] and sp["pairs"] == 4
    assert sp["median"] == 2.0  # of 0, 2, 2, inf
    lo, hi = sp["ci95"]
    assert lo <= 2.0 <= hi and lo >= 0.0
    assert stats.paired_speedup(ours, base, resamples=2000) == sp  # same seed, same interval
    nobody = stats.paired_speedup({"0": None}, {"0": None})
    assert nobody["median"] is None and nobody["pairs"] == 0


def test_bootstrap_matches_its_plain_reference():
    for values in ([3.0], [1.0, 2.0], [5.0, 1.0, None, 7.0, 2.5], [0.0, INF, 3.0, 3.0, 9.0, 1.0]):
        assert stats.bootstrap_median_ci(values, resamples=500, seed=3) == \
            stats.bootstrap_median_ci_reference(values, resamples=500, seed=3)


def test_bootstrap_interval_of_mostly_never_runs_ends_at_never():
    lo, hi = stats.bootstrap_median_ci([10.0, None, None, None, None], resamples=1000)
    assert hi == INF and lo >= 10.0
    assert stats.bootstrap_median_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    with pytest.raises(FedquadError):
        stats.bootstrap_median_ci([1.0], level=1.0)


times = st.lists(st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False)), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(values=times, seed=st.integers(0, 2**32 - 1))
def test_bootstrap_properties(values, seed):
    lo, hi = stats.bootstrap_median_ci(values, resamples=400, seed=seed)
    arr = stats.censored(values)
    assert min(arr) <= lo <= hi <= max(arr)  # within the data, ordered, never NaN
    assert (lo, hi) == stats.bootstrap_median_ci(values, resamples=400, seed=seed)  # reproducible
    assert (lo, hi) == stats.bootstrap_median_ci_reference(values, resamples=400, seed=seed)
    # censoring one more run never makes the interval faster (same draws, each median can only grow)
    i = int(np.argmin(arr))
    more = list(values)
    more[i] = None
    lo2, hi2 = stats.bootstrap_median_ci(more, resamples=400, seed=seed)
    assert lo2 >= lo and hi2 >= hi
    # scaling every time scales the interval (times in seconds or minutes give the same answer)
    lo3, hi3 = stats.bootstrap_median_ci([None if v is None else 60 * v for v in values], resamples=400, seed=seed)
    assert lo3 == pytest.approx(60 * lo) and hi3 == pytest.approx(60 * hi)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(0, 100, allow_nan=False), min_size=3, max_size=9))
def test_bootstrap_interval_holds_the_sample_median_of_finite_times(values):
    lo, hi = stats.bootstrap_median_ci(values, resamples=2000)
    assert lo <= stats.median_inf(values) <= hi


def test_seed_band_is_median_and_range_of_step_curves():
    curves = [[(0, 50), (2, 60), (4, 80)], [(0, 50), (3, 70)], [(0, 40), (1, 90)]]
    grid = [0, 1, 2, 3, 4]
    med, lo, hi = stats.seed_band(curves, grid)
    assert list(med) == [50, 50, 60, 70, 80] and list(lo) == [40, 50, 50, 60, 70] and list(hi) == [50, 90, 90, 90, 90]
    assert np.isnan(stats.step_values([(1, 5)], [0])[0])  # before the first evaluation: no value
