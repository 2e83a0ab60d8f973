"""`compare --seeds`: the same comparison under several seeds, and medians across them.

One seed draws one data split, one set of devices and one client sampling; a time-to-accuracy
ratio from a single draw can be luck. Each seed's comparison is a full `compare` in its own
folder (`seed-<n>/`); this module only reads their reports and summarizes them:

- per strategy: time to target in every seed (held, and first touch; see `fedquad.sim.stats`),
  how many seeds reach it, the median with a seeded bootstrap 95% interval (a seed that never
  reaches the target counts as +inf: censored, so the median is "never" when half or more never
  do, and an interval end may be), and the medians of final accuracy and accuracy at equal time;
- FedQuad's speedup over the strongest baseline (the lowest median time): the median of the
  per-seed paired ratios with its bootstrap interval (`speedup_vs_strongest_baseline`), for the
  held target and for first touch;
- the earlier statistic beside it: per seed, FedQuad over the fastest baseline of that seed.
"""

from __future__ import annotations

import math
import os
import statistics
import sys

from fedquad.errors import FedquadError
from fedquad.sim.files import write_json_atomic
from fedquad.sim.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, INF, TARGET_HOLD_EVALS, bootstrap_median_ci,
                               check_hold_evals, median_inf, paired_ratio, paired_speedup, strongest)


def seed_dir(out_dir: str, seed: int) -> str:
    return os.path.join(out_dir, f"seed-{seed}")


def compare_seeds(config, strategies: list[str], out_dir: str, seeds: list[int], target: float | None = None,
                  show_progress: bool = True, *, resume: bool = False, overwrite: bool = False,
                  changes: dict | None = None, hold_evals: int | None = None, fanout=None) -> dict:
    """Run `compare` once per seed (each into seed-<n>/), then write seeds.json/.md and the plots.

    A (strategy, seed) run already there is refused unless `overwrite`; `resume` keeps every
    finished one and continues the others (`changes`: e.g. {"rounds": 40}, see `compare`). Other
    processes may run other seeds into the same folder at the same time. `fanout` (a
    `fedquad.sim.workers.Fanout`): every (strategy, seed) run of every seed goes to its workers
    at once; the results equal the serial loop's."""
    from fedquad.sim.compare import (check_existing, check_leftover_profile, clear_comparison, compare,
                                     open_comparison, plan_differences, scan_runs, write_plan)
    from fedquad.sim.recorder import pinned_profile, prepare_out_dir, remove_created
    hold = check_hold_evals(TARGET_HOLD_EVALS if hold_evals is None else hold_evals)
    if target is None and config.target_accuracy is None:
        raise FedquadError("a multi-seed comparison needs a target accuracy (--target-accuracy)")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad or not seeds or len(set(seeds)) != len(seeds):
        raise FedquadError(f"seeds must be distinct non-negative integers, got {seeds}")
    created = prepare_out_dir(out_dir)
    if changes:
        config = config.replace(**changes)
    on_disk = [int(n[5:]) for n in sorted(os.listdir(out_dir)) if n.startswith("seed-") and n[5:].isdigit()]
    scans = [(out_dir, [], plan_differences(out_dir, config))]
    for seed in dict.fromkeys([*seeds, *on_disk]):
        folder = seed_dir(out_dir, seed)
        if os.path.isdir(folder):
            present, other = scan_runs(folder, pinned_profile(config.replace(seed=seed), folder),
                                       strategies if seed in seeds else [])
            scans.append((folder, present, other))
    check_existing(out_dir, scans, resume=resume, overwrite=overwrite,
                   clear_all=lambda: clear_comparison(out_dir, keep_profile=config.profile))
    for seed in seeds:  # before anything is written: a seed folder holding only an old profile.json
        if os.path.isdir(seed_dir(out_dir, seed)):
            check_leftover_profile(seed_dir(out_dir, seed), config.replace(seed=seed), resume=resume,
                                   overwrite=overwrite)
    write_plan(out_dir, config, strategies, target, list(seeds), hold)
    reports, opened = {}, []
    try:
        if fanout is not None and fanout.parallel:
            from fedquad.sim.workers import run_jobs
            for seed in seeds:  # checks, plans and any profile to measure first, here; then every run at once
                opened.append(open_comparison(config.replace(seed=seed), strategies, seed_dir(out_dir, seed), target,
                                              resume=resume, hold_evals=hold))
                opened[-1].build(show_progress, keep=False)
            done = run_jobs([j for o in opened for j in o.jobs(fanout.threads)], fanout.workers, fanout.ray_address,
                            show_progress)
            for o in opened:
                wall = {r["strategy"]: r["wall_s"] for r in done
                        if not r["continued"] and os.path.dirname(r["run_dir"]) == o.out_dir}
                reports[o.config.seed] = o.report(None, wall)
        else:
            for n, seed in enumerate(seeds, 1):
                if show_progress:
                    print(f"seed {seed} ({n}/{len(seeds)}) -> {seed_dir(out_dir, seed)}", file=sys.stderr, flush=True)
                reports[seed] = compare(config.replace(seed=seed), strategies, seed_dir(out_dir, seed), target,
                                        show_progress=show_progress, resume=resume, hold_evals=hold)
    except Exception:
        for o in opened:
            o.abandon()
        if not any(n.startswith("seed-") for n in os.listdir(out_dir)):  # nothing worth keeping
            os.remove(os.path.join(out_dir, "compare.json"))
            remove_created(created)
        raise
    return write_seed_report(reports, out_dir)


def reports_from_seed_runs(out_dir: str, strategies: list[str] | None, seeds: list[int], target: float | None,
                           hold_evals: int = TARGET_HOLD_EVALS) -> dict:
    """Rebuild every seed's comparison (e.g. at another target) and the summary, without training."""
    from fedquad.sim.compare import report_from_runs
    return write_seed_report({s: report_from_runs(seed_dir(out_dir, s), strategies, target, hold_evals)
                              for s in seeds}, out_dir)


def _median_or_never(values: list[float | None]) -> float | None:
    m = median_inf(values)
    return None if m == INF or math.isnan(m) else m


def _per_strategy(rows: list[dict], seeds: list[int]) -> dict:
    times = [r["time_to_target_s"] for r in rows]
    touches = [r.get("first_touch_s", r["time_to_target_s"]) for r in rows]
    legacy = lambda t: None if t is None else [t, t]  # noqa: E731  (reports written before intervals)
    return {
        "time_to_target_s": dict(zip(map(str, seeds), times)),
        "time_to_target_interval_s": {str(s): r.get("time_to_target_interval_s", legacy(r["time_to_target_s"]))
                                      for s, r in zip(seeds, rows)},
        "first_touch_s": dict(zip(map(str, seeds), touches)),
        "seeds_reaching_target": sum(t is not None for t in times),
        "seeds_touching_target": sum(t is not None for t in touches),
        "median_time_to_target_s": _median_or_never(times),
        "median_time_to_target_ci95": list(bootstrap_median_ci(times)),
        "median_first_touch_s": _median_or_never(touches),
        "median_first_touch_ci95": list(bootstrap_median_ci(touches)),
        "median_final_accuracy": _median_or_never([r["final_accuracy"] for r in rows
                                                   if r["final_accuracy"] is not None]),
        "median_accuracy_at_common_time": _median_or_never([r["accuracy_at_common_time"] for r in rows
                                                            if r["accuracy_at_common_time"] is not None]),
        "dropped_device_rounds": sum(r["dropped_device_rounds"] for r in rows),
        "failed_device_rounds": _sum_or_none([r.get("failed_device_rounds") for r in rows]),
        "device_rounds": sum(r["device_rounds"] for r in rows),
    }


def _sum_or_none(counts: list[int | None]) -> int | None:
    """A total over seeds, or None where a report predates the count (it is not zero then)."""
    return None if any(c is None for c in counts) else sum(counts)


def _vs_strongest(per_strategy: dict, key: str) -> dict | None:
    """FedQuad's paired speedup over the baseline with the lowest median `key` time."""
    if "fedquad" not in per_strategy or len(per_strategy) < 2:
        return None
    baselines = {n: list(s[key].values()) for n, s in per_strategy.items() if n != "fedquad"}
    best = strongest(baselines)
    result = paired_speedup(per_strategy["fedquad"][key], per_strategy[best][key])
    return {"strongest": best, **result}


def _per_seed_fastest(reports: dict[int, dict], seeds: list[int]) -> dict[str, float | None]:
    """The earlier statistic, kept beside the new one: per seed, over the fastest baseline of that seed."""
    speedups = {}
    for s in seeds:
        rows = reports[s]["strategies"]
        times = [r["time_to_target_s"] for n, r in rows.items() if n != "fedquad" and r["time_to_target_s"] is not None]
        speedups[str(s)] = paired_ratio(min(times) if times else None, rows["fedquad"]["time_to_target_s"])
    return speedups


def summarize_seeds(reports: dict[int, dict]) -> dict:
    """Pure: per-seed comparison reports (compare's output) -> the cross-seed summary."""
    if not reports:
        raise FedquadError("no seeds to summarize")
    seeds = sorted(reports)
    targets = {reports[s]["target_accuracy"] for s in seeds}
    if len(targets) != 1 or None in targets:
        raise FedquadError(f"every seed must be reported at one target accuracy, got {sorted(map(str, targets))}")
    holds = {reports[s].get("target_hold_evals", 1) for s in seeds}
    if len(holds) != 1:
        raise FedquadError(f"every seed must be reported with one target hold, got {sorted(holds)}")
    names = list(reports[seeds[0]]["strategies"])
    missing = [(s, n) for s in seeds for n in names if n not in reports[s]["strategies"]]
    if missing:
        raise FedquadError(f"seed {missing[0][0]} has no run of {missing[0][1]}: every seed needs every strategy")
    per_strategy = {n: _per_strategy([reports[s]["strategies"][n] for s in seeds], seeds) for n in names}
    per_seed = _per_seed_fastest(reports, seeds) if "fedquad" in names and len(names) > 1 else {}
    finite = [v for v in per_seed.values() if v is not None]
    return {"target_accuracy": targets.pop(), "target_hold_evals": holds.pop(), "seeds": seeds,
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "level": 0.95},
            "strategies": per_strategy,
            "speedup_vs_strongest_baseline": _vs_strongest(per_strategy, "time_to_target_s"),
            "speedup_vs_strongest_baseline_first_touch": _vs_strongest(per_strategy, "first_touch_s"),
            "fedquad_speedup_vs_best_baseline": per_seed,
            "median_fedquad_speedup": statistics.median(finite) if finite else None}


def _fmt_count(n: int | None) -> str:
    return "-" if n is None else str(n)


def _fmt_time(t: float | None) -> str:
    return "never" if t is None or t == INF else f"{t:.0f}"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else ("inf" if r == INF else f"{r:.2f}x")


def _fmt_ci(ci, fmt) -> str:
    return "-" if ci is None or ci[0] is None or (isinstance(ci[0], float) and math.isnan(ci[0])) else \
        f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _speedup_line(label: str, sp: dict | None) -> list[str]:
    if not sp:
        return []
    per_seed = ", ".join(f"seed {k}: {_fmt_ratio(v)}" for k, v in sp["per_seed"].items())
    left = f"; left out (neither reached it): seeds {', '.join(map(str, sp['excluded_seeds']))}" \
        if sp["excluded_seeds"] else ""
    return ["", f"**FedQuad vs the strongest baseline ({sp['strongest']}, lowest median time), {label}:** median "
                f"paired speedup {_fmt_ratio(sp['median'])}, 95% interval {_fmt_ci(sp['ci95'], _fmt_ratio)} over "
                f"{sp['pairs']} seeds ({per_seed}{left})."]


def seeds_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    hold = summary.get("target_hold_evals", 1)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"Target accuracy {100 * summary['target_accuracy']:.1f}%, reached when held at {hold} evaluation"
             f"{'s' if hold != 1 else ''} in a row; seeds {', '.join(map(str, seeds))}. Medians across seeds with "
             "bootstrap 95% intervals "
             f"({summary.get('bootstrap', {}).get('resamples', '-')} resamples, seeded); a seed that never reaches "
             "the target counts as infinitely slow (censored: inf), so a median or an interval end can be "
             "'never'. A time is resolved to one evaluation interval: (before, at].", "",
             "| strategy | time to target per seed (s) | reached | median time (s) [95% CI] "
             "| median first touch (s) [95% CI] | median final acc. | median acc. at equal time "
             "| dropped device-rounds (failed) |", "|---|---|---|---|---|---|---|---|"]
    for name, s in summary["strategies"].items():
        intervals = s.get("time_to_target_interval_s", {})
        per_seed = " / ".join(_fmt_interval(intervals.get(str(k)), s["time_to_target_s"][str(k)]) for k in seeds)
        held = f"{_fmt_time(s['median_time_to_target_s'])} {_fmt_ci(s.get('median_time_to_target_ci95'), _fmt_time)}"
        touch = f"{_fmt_time(s.get('median_first_touch_s'))} {_fmt_ci(s.get('median_first_touch_ci95'), _fmt_time)}"
        lines.append(f"| {name} | {per_seed} | {s['seeds_reaching_target']}/{len(seeds)} | {held} | {touch} | "
                     f"{pct(s['median_final_accuracy'])} | {pct(s['median_accuracy_at_common_time'])} | "
                     f"{s['dropped_device_rounds']}/{s['device_rounds']} ({_fmt_count(s.get('failed_device_rounds'))}) |")
    lines += _speedup_line("target held", summary.get("speedup_vs_strongest_baseline"))
    lines += _speedup_line("first touch", summary.get("speedup_vs_strongest_baseline_first_touch"))
    if summary["fedquad_speedup_vs_best_baseline"]:
        per_seed = ", ".join(f"seed {k}: {_fmt_ratio(v)}"
                             for k, v in summary["fedquad_speedup_vs_best_baseline"].items())
        lines += ["", f"FedQuad's speedup over the fastest baseline of each seed: {per_seed}; "
                      f"median {_fmt_ratio(summary['median_fedquad_speedup'])} over the seeds where anyone reached it "
                      "(inf: only FedQuad did; 0.00x: a baseline did and FedQuad did not; -: nobody did)."]
    return "\n".join(lines) + "\n"


def _fmt_interval(interval, t) -> str:
    if t is None:
        return "never"
    if not interval or interval[0] == interval[1]:
        return f"{t:.0f}"
    return f"({interval[0]:.0f}, {interval[1]:.0f}]"


def _json_safe(value):
    """JSON has no infinity: write it as the string "inf"."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return "inf" if value == INF else value


def _histories(out_dir: str, seeds: list[int], names: list[str]) -> dict[str, dict[int, list[dict]]]:
    """strategy -> seed -> history, for the runs whose history.json is there (the band plot)."""
    import json
    found: dict[str, dict[int, list[dict]]] = {}
    for name in names:
        for seed in seeds:
            path = os.path.join(seed_dir(out_dir, seed), name, "history.json")
            try:
                with open(path) as f:
                    found.setdefault(name, {})[seed] = json.load(f)
            except (OSError, ValueError):
                continue
    return found


def write_seed_report(reports: dict[int, dict], out_dir: str) -> dict:
    summary = summarize_seeds(reports)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "seeds.json"), _json_safe(summary))
    with open(os.path.join(out_dir, "seeds.md"), "w") as f:
        f.write(seeds_markdown(summary))
    from fedquad.sim.plots import plot_accuracy_over_seeds, plot_time_to_target
    plot_time_to_target(summary, os.path.join(out_dir, "time_to_target.png"))
    plot_accuracy_over_seeds(_histories(out_dir, summary["seeds"], list(summary["strategies"])),
                             os.path.join(out_dir, "accuracy_over_seeds.png"), summary["target_accuracy"])
    return summary
