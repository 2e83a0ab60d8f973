"""`compare`: several strategies on one config -- same partition, device draw, client sampling and
seeds -- and the time-to-accuracy table and plots of DESIGN section 9."""

from __future__ import annotations

import json
import os
import time

from fedquad.sim.config import SimConfig
from fedquad.sim.runner import RunResult, simulate
from fedquad.sim.workload import build_workload


def time_to_target(history: list[dict], target: float | None) -> float | None:
    """Simulated time of the first evaluation at or above `target` (None: never)."""
    if target is None:
        return None
    return next((h["clock_s"] for h in history if h.get("accuracy") is not None and h["accuracy"] >= target), None)


def accuracy_at(history: list[dict], time_s: float) -> float | None:
    """Accuracy of the last evaluation at or before simulated time `time_s`."""
    evals = [h["accuracy"] for h in history if h.get("accuracy") is not None and h["clock_s"] <= time_s + 1e-9]
    return evals[-1] if evals else None


def summarize_history(history: list[dict], clock_s: float, target: float | None) -> dict:
    rounds = [h for h in history if h["round"] >= 0]
    host = [h["host"] for h in history]
    train_s = sum(h["train_s"] for h in host)
    total_s = sum(h["total_s"] for h in host) + host[0]["eval_s"]  # rounds + the initial evaluation
    evals = [h["accuracy"] for h in history if h.get("accuracy") is not None]
    return {
        "time_to_target_s": time_to_target(history, target),
        "final_accuracy": evals[-1] if evals else None,
        "best_accuracy": max(evals) if evals else None,
        "rounds": len(rounds),
        "simulated_time_s": clock_s,
        "mean_round_time_s": sum(h["round_time_s"] for h in rounds) / max(len(rounds), 1),
        "mean_idle_time_s": sum(h["idle_s"] for h in rounds) / max(len(rounds), 1),
        "dropped_device_rounds": sum(h["dropped"] for h in rounds),
        "device_rounds": sum(h["participants"] + h["dropped"] for h in rounds),
        "bytes_up": sum(h["bytes_up"] for h in rounds),
        "bytes_down": sum(h["bytes_down"] for h in rounds),
        "host_train_s": train_s,
        "host_total_s": total_s,
        "host_overhead_share": (total_s - train_s) / total_s if total_s > 0 else None,
    }


def compare(config: SimConfig, strategies: list[str], out_dir: str, target_accuracy: float | None = None,
            show_progress: bool = True) -> dict:
    """Run every strategy on `config`, write comparison.json/.md and the plots; returns the summary."""
    os.makedirs(out_dir, exist_ok=True)
    target = target_accuracy if target_accuracy is not None else config.target_accuracy
    workload = build_workload(config, out_dir)  # one model, one tokenization, one profile for all
    if config.profile is None:  # measured now: every strategy (and any resume) uses that file
        config = config.replace(profile=os.path.abspath(os.path.join(out_dir, "profile.json")))
    results: dict[str, RunResult] = {}
    wall = {}
    for name in strategies:
        start = time.perf_counter()
        results[name] = simulate(config.replace(strategy=name, profile=config.profile), os.path.join(out_dir, name),
                                 workload=workload, show_progress=show_progress, plots=False)
        wall[name] = time.perf_counter() - start
    histories = {name: r.history for name, r in results.items()}
    return write_report(config, histories, out_dir, target, wall)


def write_report(config: SimConfig, histories: dict[str, list[dict]], out_dir: str, target: float | None,
                 wall_s: dict[str, float] | None = None) -> dict:
    """comparison.json/.md and plots from finished runs' histories (also: re-report at another target)."""
    summary = {}
    for name, history in histories.items():
        rounds = [h for h in history if h["round"] >= 0]
        clock = rounds[-1]["clock_s"] if rounds else 0.0
        summary[name] = summarize_history(history, clock, target)
        summary[name]["host_wall_s"] = (wall_s or {}).get(name, summary[name]["host_total_s"])
    common_time = min(s["simulated_time_s"] for s in summary.values())
    for name, s in summary.items():
        s["accuracy_at_common_time"] = accuracy_at(histories[name], common_time)
    ours = summary.get("fedquad", {}).get("time_to_target_s")
    for name, s in summary.items():
        s["fedquad_speedup"] = (s["time_to_target_s"] / ours
                                if ours and s["time_to_target_s"] else None)
    report = {"target_accuracy": target, "common_time_s": common_time, "config": config.to_dict(),
              "strategies": summary}
    with open(os.path.join(out_dir, "comparison.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "comparison.md"), "w") as f:
        f.write(markdown_table(report))
    from fedquad.sim.plots import plot_accuracy_vs_time, plot_memory
    plot_accuracy_vs_time(histories, os.path.join(out_dir, "accuracy_vs_time.png"), target)
    plot_memory(histories, os.path.join(out_dir, "memory.png"))
    return report


def report_from_runs(out_dir: str, strategies: list[str], target: float | None) -> dict:
    """Rebuild the comparison of finished runs under `out_dir` (e.g. with another target accuracy)."""
    from fedquad.errors import FedquadError
    from fedquad.sim.config import from_dict
    histories, config = {}, None
    for name in strategies:
        path = os.path.join(out_dir, name, "history.json")
        if not os.path.isfile(path):
            raise FedquadError(f"no finished run of {name} in {out_dir} (missing {path})")
        with open(path) as f:
            histories[name] = json.load(f)
        with open(os.path.join(out_dir, name, "config.json")) as f:
            config = from_dict(json.load(f), path)
    return write_report(config, histories, out_dir, target)


def _fmt(value, spec: str, none: str = "never") -> str:
    return none if value is None else format(value, spec)


def markdown_table(report: dict) -> str:
    target = report["target_accuracy"]
    lines = [f"Target accuracy: {_fmt(target and 100 * target, '.1f', 'none')}%; accuracy at equal time is read at "
             f"{report['common_time_s']:.0f} s (the shortest run's simulated time).", "",
             "| strategy | time to target (s) | fedquad speedup | final acc. | acc. at equal time | best acc. | rounds "
             "| mean round (s) | mean idle (s) | dropped device-rounds | MB up | MB down |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["strategies"].items():
        pct = lambda v: _fmt(v if v is None else 100 * v, ".1f", "-")  # noqa: E731
        lines.append(
            f"| {name} | {_fmt(s['time_to_target_s'], '.0f', 'never' if target is not None else '-')} | {_fmt(s['fedquad_speedup'], '.2f', '-')}x | "
            f"{pct(s['final_accuracy'])} | {pct(s['accuracy_at_common_time'])} | {pct(s['best_accuracy'])} | "
            f"{s['rounds']} | {s['mean_round_time_s']:.1f} | {s['mean_idle_time_s']:.1f} | "
            f"{s['dropped_device_rounds']}/{s['device_rounds']} | {s['bytes_up'] / 1e6:.1f} | "
            f"{s['bytes_down'] / 1e6:.1f} |")
    lines += ["", "Host wall time per strategy (client training share; the rest is simulator overhead: "
                  "planning, aggregation, evaluation, checkpoints):", ""]
    for name, s in report["strategies"].items():
        share = s["host_overhead_share"]
        lines.append(f"- {name}: {s['host_wall_s']:.0f} s wall, training {s['host_train_s']:.0f} s, "
                     f"overhead {_fmt(share and 100 * share, '.1f', '-')}%")
    return "\n".join(lines) + "\n"
