"""Statistics of comparisons: time to target (held and first touch, with the evaluation interval
that resolves it), medians with censoring, seeded bootstrap intervals and paired speedups.

Censoring rule (docs/simulation.md, "Statistics"): a run that never reaches the target has time
to target +inf. Medians and order statistics are taken with inf ordered above every number, so
a median is inf ("never") when half or more of the values are; an interval's upper end (or
both ends) may be inf. A paired ratio baseline / FedQuad is inf when only FedQuad reaches the
target, 0 when only the baseline does, and undefined (the seed is left out and counted) when
neither does. Everything here is pure (numpy only) and seeded: the same inputs give the same
interval in every run.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from fedquad.errors import FedquadError

INF = math.inf
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
TARGET_HOLD_EVALS = 2  # evaluations in a row at or above the target for it to count as reached


# -- time to target ------------------------------------------------------------------------------
def _evaluations(history: list[dict]) -> list[tuple[float, float]]:
    return [(h["clock_s"], h["accuracy"]) for h in history if h.get("accuracy") is not None]


def check_hold_evals(hold_evals) -> int:
    if isinstance(hold_evals, bool) or not isinstance(hold_evals, int) or hold_evals < 1:
        raise FedquadError(f"the target must be held at a whole number >= 1 of evaluations, got {hold_evals!r}")
    return hold_evals


def target_reached(history: list[dict], target: float | None, hold_evals: int = TARGET_HOLD_EVALS
                   ) -> tuple[float, float] | None:
    """(clock of the evaluation before, clock of the evaluation at which the target was reached)
    -- the target was crossed somewhere in that interval of simulated time -- or None (never).

    Reached means `hold_evals` evaluations in a row at or above `target` (1: first touch); the
    time is the first of them. A run that ends before the streak is complete has not held it.
    The initial evaluation (clock 0) meeting the target gives (0, 0)."""
    check_hold_evals(hold_evals)
    if target is None:
        return None
    evals = _evaluations(history)
    streak = 0
    for i, (_, accuracy) in enumerate(evals):
        streak = streak + 1 if accuracy >= target else 0
        if streak == hold_evals:
            first = i - hold_evals + 1
            return (evals[first - 1][0] if first > 0 else evals[first][0]), evals[first][0]
    return None


def time_to_target(history: list[dict], target: float | None, hold_evals: int = TARGET_HOLD_EVALS) -> float | None:
    """Simulated time at which the target was reached and then held (see `target_reached`)."""
    reached = target_reached(history, target, hold_evals)
    return None if reached is None else reached[1]


# -- medians and the bootstrap -------------------------------------------------------------------
def censored(values) -> np.ndarray:
    """Times or ratios as a float array, None (never) as +inf; NaN and negatives are refused."""
    arr = np.array([INF if v is None else float(v) for v in values], dtype=float)
    if np.isnan(arr).any() or (arr < 0).any():
        raise FedquadError(f"times and ratios must be >= 0 (None or inf: never), got {list(values)}")
    return arr


def median_inf(values) -> float:
    """Median with inf ordered above every number (even count: the mean of the middle two, inf if
    either is); an empty list has no median (NaN)."""
    arr = np.sort(censored(values))
    n = len(arr)
    if n == 0:
        return math.nan
    return float(arr[n // 2]) if n % 2 else float((arr[n // 2 - 1] + arr[n // 2]) / 2)


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0xB007]).integers(0, n, size=(resamples, n))


def _percentile_ends(stats: np.ndarray, level: float) -> tuple[float, float]:
    """Order statistics at (1-level)/2 and (1+level)/2 (no interpolation: inf stays inf, no NaN)."""
    s = np.sort(stats)
    b = len(s)
    lo = s[min(b - 1, int(math.floor((1 - level) / 2 * b)))]
    hi = s[max(0, int(math.ceil((1 + level) / 2 * b)) - 1)]
    return float(lo), float(hi)


def _check_level(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise FedquadError(f"a confidence level is in (0, 1), got {level}")
    if resamples < 1:
        raise FedquadError(f"the bootstrap needs at least one resample, got {resamples}")


def bootstrap_median_ci(values, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of the (censored) median of `values`: resample the values with
    replacement `resamples` times (seeded), take each resample's median, read the order
    statistics at the interval's ends. Vectorised; `bootstrap_median_ci_reference` is the plain
    loop it must equal. With few values the interval is coarse (it can only take values among
    the sample's medians of resamples) and may be wide; that is the honest answer."""
    _check_level(level, resamples)
    arr = censored(values)
    n = len(arr)
    if n == 0:
        return math.nan, math.nan
    draws = np.sort(arr[_resample_indices(n, resamples, seed)], axis=1)
    medians = draws[:, n // 2] if n % 2 else (draws[:, n // 2 - 1] + draws[:, n // 2]) / 2
    return _percentile_ends(medians, level)


def bootstrap_median_ci_reference(values, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                                  seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The same interval, one resample at a time with `statistics.median` (the plain reference)."""
    _check_level(level, resamples)
    arr = censored(values)
    if len(arr) == 0:
        return math.nan, math.nan
    medians = [statistics.median(sorted(float(arr[i]) for i in row))
               for row in _resample_indices(len(arr), resamples, seed)]
    return _percentile_ends(np.array(medians), level)


# -- paired speedups -----------------------------------------------------------------------------
def paired_ratio(baseline_s: float | None, ours_s: float | None) -> float | None:
    """baseline time / our time for one seed (> 1: we are faster), by the censoring rule above:
    inf when only we reach the target, 0 when only the baseline does, None when neither does.
    A target met by the initial model takes 0 s: equal zeros are a tie (1)."""
    b = INF if baseline_s is None else float(baseline_s)
    o = INF if ours_s is None else float(ours_s)
    if b == INF and o == INF:
        return None
    if o == INF:
        return 0.0
    if o == 0:
        return 1.0 if b == 0 else INF
    return b / o


def strongest(times_by_name: dict[str, list[float | None]]) -> str:
    """The name with the lowest median time (censored); ties by the sorted times (fewer nevers,
    then faster seeds win), then by name, so the choice never depends on dict order."""
    if not times_by_name:
        raise FedquadError("no baseline to compare against")
    return min(times_by_name, key=lambda n: (median_inf(times_by_name[n]), tuple(np.sort(censored(
        times_by_name[n]))), n))


def paired_speedup(ours: dict[str, float | None], baseline: dict[str, float | None], level: float = 0.95,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Per-seed ratios baseline / ours over the seeds both have, their median and its bootstrap
    interval (seeds resampled as pairs); seeds where neither reaches the target are left out
    (`excluded_seeds`). `median` and the interval are None when no seed is left."""
    seeds = [s for s in ours if s in baseline]
    ratios = {s: paired_ratio(baseline[s], ours[s]) for s in seeds}
    kept = [r for r in ratios.values() if r is not None]
    if not kept:
        return {"per_seed": ratios, "median": None, "ci95": [None, None], "pairs": 0,
                "excluded_seeds": [s for s in seeds if ratios[s] is None]}
    lo, hi = bootstrap_median_ci(kept, level, resamples, seed)
    return {"per_seed": ratios, "median": median_inf(kept), "ci95": [lo, hi], "pairs": len(kept),
            "excluded_seeds": [s for s in seeds if ratios[s] is None]}


# -- curves over seeds ---------------------------------------------------------------------------
def step_values(points: list[tuple[float, float]], grid) -> np.ndarray:
    """Accuracy at each time of `grid`: the last evaluation at or before it (NaN before the first)."""
    grid = np.asarray(grid, dtype=float)
    if not points:
        return np.full(len(grid), np.nan)
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    idx = np.searchsorted(xs, grid + 1e-9, side="right") - 1
    return np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan)


def seed_band(curves: list[list[tuple[float, float]]], grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, min, max) across seeds' step curves at each time of `grid` (NaN where a seed has no
    evaluation yet: such times are left out of the band)."""
    values = np.array([step_values(c, grid) for c in curves]) if curves else np.full((1, len(grid)), np.nan)
    with np.errstate(all="ignore"):
        complete = ~np.isnan(values).any(axis=0)
        med = np.where(complete, np.median(values, axis=0), np.nan)
        return med, np.where(complete, values.min(axis=0), np.nan), np.where(complete, values.max(axis=0), np.nan)
