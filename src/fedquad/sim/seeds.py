"""`compare --seeds`: the same comparison under several seeds, and medians across them.

One seed draws one data split, one set of devices and one client sampling; a time-to-accuracy
ratio from a single draw can be luck. Each seed's comparison is a full `compare` in its own
folder (`seed-<n>/`); this module only reads their reports and summarizes them:

- per strategy: time to target in every seed, how many seeds reach it, the median (a seed that
  never reaches the target counts as +inf, so the median is "never" when half or more never do),
  and the medians of final accuracy and accuracy at equal time;
- per seed: FedQuad's speedup over the fastest baseline that reaches the target in that seed
  ("inf" when FedQuad reaches it and no baseline does), and the median of those ratios.
"""

from __future__ import annotations

import math
import os
import statistics
import sys

from fedquad.errors import FedquadError
from fedquad.sim.files import write_json_atomic

INF = math.inf


def seed_dir(out_dir: str, seed: int) -> str:
    return os.path.join(out_dir, f"seed-{seed}")


def compare_seeds(config, strategies: list[str], out_dir: str, seeds: list[int], target: float | None = None,
                  show_progress: bool = True, *, resume: bool = False, overwrite: bool = False,
                  changes: dict | None = None) -> dict:
    """Run `compare` once per seed (each into seed-<n>/), then write seeds.json/.md and the plot.

    A (strategy, seed) run already there is refused unless `overwrite`; `resume` keeps every
    finished one and continues the others (`changes`: e.g. {"rounds": 40}, see `compare`). Other
    processes may run other seeds into the same folder at the same time."""
    from fedquad.sim.compare import (check_existing, check_leftover_profile, clear_comparison, compare,
                                     plan_differences, scan_runs, write_plan)
    from fedquad.sim.recorder import pinned_profile, prepare_out_dir, remove_created
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
    write_plan(out_dir, config, strategies, target, list(seeds))
    reports = {}
    try:
        for n, seed in enumerate(seeds, 1):
            if show_progress:
                print(f"seed {seed} ({n}/{len(seeds)}) -> {seed_dir(out_dir, seed)}", file=sys.stderr, flush=True)
            reports[seed] = compare(config.replace(seed=seed), strategies, seed_dir(out_dir, seed), target,
                                    show_progress=show_progress, resume=resume)
    except Exception:
        if not any(n.startswith("seed-") for n in os.listdir(out_dir)):  # nothing worth keeping
            os.remove(os.path.join(out_dir, "compare.json"))
            remove_created(created)
        raise
    return write_seed_report(reports, out_dir)


def reports_from_seed_runs(out_dir: str, strategies: list[str] | None, seeds: list[int], target: float | None) -> dict:
    """Rebuild every seed's comparison (e.g. at another target) and the summary, without training."""
    from fedquad.sim.compare import report_from_runs
    return write_seed_report({s: report_from_runs(seed_dir(out_dir, s), strategies, target) for s in seeds}, out_dir)


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    m = statistics.median(values)
    return None if m == INF else m


def summarize_seeds(reports: dict[int, dict]) -> dict:
    """Pure: per-seed comparison reports (compare's output) -> the cross-seed summary."""
    if not reports:
        raise FedquadError("no seeds to summarize")
    seeds = sorted(reports)
    targets = {reports[s]["target_accuracy"] for s in seeds}
    if len(targets) != 1 or None in targets:
        raise FedquadError(f"every seed must be reported at one target accuracy, got {sorted(map(str, targets))}")
    names = list(reports[seeds[0]]["strategies"])
    per_strategy = {}
    for name in names:
        rows = [reports[s]["strategies"][name] for s in seeds]
        times = [r["time_to_target_s"] for r in rows]
        per_strategy[name] = {
            "time_to_target_s": dict(zip(map(str, seeds), times)),
            "seeds_reaching_target": sum(t is not None for t in times),
            "median_time_to_target_s": _median([INF if t is None else t for t in times]),
            "median_final_accuracy": _median([r["final_accuracy"] for r in rows if r["final_accuracy"] is not None]),
            "median_accuracy_at_common_time": _median([r["accuracy_at_common_time"] for r in rows
                                                       if r["accuracy_at_common_time"] is not None]),
            "dropped_device_rounds": sum(r["dropped_device_rounds"] for r in rows),
            "device_rounds": sum(r["device_rounds"] for r in rows),
        }
    speedups = {}
    if "fedquad" in names and len(names) > 1:
        for s in seeds:
            ours = reports[s]["strategies"]["fedquad"]["time_to_target_s"]
            baseline_times = [r["time_to_target_s"] for n, r in reports[s]["strategies"].items()
                              if n != "fedquad" and r["time_to_target_s"] is not None]
            if ours is None:
                speedups[str(s)] = 0.0 if baseline_times else None  # 0: a baseline got there, FedQuad did not
            elif not baseline_times:
                speedups[str(s)] = INF
            else:  # a target met by the initial model takes 0 s: equal zeros are a tie
                best = min(baseline_times)
                speedups[str(s)] = best / ours if ours > 0 else (1.0 if best == 0 else INF)
    finite = [v for v in speedups.values() if v is not None]
    return {"target_accuracy": targets.pop(), "seeds": seeds, "strategies": per_strategy,
            "fedquad_speedup_vs_best_baseline": speedups,
            "median_fedquad_speedup": statistics.median(finite) if finite else None}


def _fmt_time(t: float | None) -> str:
    return "never" if t is None else f"{t:.0f}"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else ("inf" if r == INF else f"{r:.2f}x")


def seeds_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"Target accuracy {100 * summary['target_accuracy']:.1f}%, seeds {', '.join(map(str, seeds))}. "
             "Medians across seeds; a seed that never reaches the target counts as infinitely slow.", "",
             "| strategy | time to target per seed (s) | reached | median time (s) | median final acc. "
             "| median acc. at equal time | dropped device-rounds |", "|---|---|---|---|---|---|---|"]
    for name, s in summary["strategies"].items():
        per_seed = " / ".join(_fmt_time(s["time_to_target_s"][str(k)]) for k in seeds)
        lines.append(f"| {name} | {per_seed} | {s['seeds_reaching_target']}/{len(seeds)} | "
                     f"{_fmt_time(s['median_time_to_target_s'])} | {pct(s['median_final_accuracy'])} | "
                     f"{pct(s['median_accuracy_at_common_time'])} | {s['dropped_device_rounds']}/{s['device_rounds']} |")
    if summary["fedquad_speedup_vs_best_baseline"]:
        per_seed = ", ".join(f"seed {k}: {_fmt_ratio(v)}" for k, v in summary["fedquad_speedup_vs_best_baseline"].items())
        lines += ["", f"FedQuad's speedup over the fastest baseline of each seed: {per_seed}; "
                      f"median {_fmt_ratio(summary['median_fedquad_speedup'])} over the seeds where anyone reached it "
                      "(inf: only FedQuad did; 0.00x: a baseline did and FedQuad did not; -: nobody did)."]
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """JSON has no infinity: write it as the string "inf"."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return "inf" if value == INF else value


def write_seed_report(reports: dict[int, dict], out_dir: str) -> dict:
    summary = summarize_seeds(reports)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, "seeds.json"), _json_safe(summary))
    with open(os.path.join(out_dir, "seeds.md"), "w") as f:
        f.write(seeds_markdown(summary))
    from fedquad.sim.plots import plot_time_to_target
    plot_time_to_target(summary, os.path.join(out_dir, "time_to_target.png"))
    return summary
