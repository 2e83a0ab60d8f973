"""One comparison's report: per strategy the time to target (held, and first touch, each with the
evaluation interval that resolves it), accuracy at equal time, drops, bytes and host time;
comparison.json, comparison.md and the plots. `compare` and `--report-only` both write it here.

A time to target is only known to one evaluation interval: the target was crossed after the
evaluation before (`*_interval_s[0]`) and by the one that saw it (`[1]`, the time reported).
With `eval_every` 2 that interval is two rounds, so two strategies whose times differ by less
than it are not told apart; evaluate every round (`--set eval_every=1`) to resolve them.
"""

from __future__ import annotations

import json
import os

from fedquad.sim.config import SimConfig
from fedquad.sim.stats import TARGET_HOLD_EVALS, target_reached


def accuracy_at(history: list[dict], time_s: float) -> float | None:
    """Accuracy of the last evaluation at or before simulated time `time_s`."""
    evals = [h["accuracy"] for h in history if h.get("accuracy") is not None and h["clock_s"] <= time_s + 1e-9]
    return evals[-1] if evals else None


def summarize_history(history: list[dict], clock_s: float, target: float | None,
                      hold_evals: int = TARGET_HOLD_EVALS) -> dict:
    rounds = [h for h in history if h["round"] >= 0]
    host = [h["host"] for h in history]
    train_s = sum(h["train_s"] for h in host)
    total_s = sum(h["total_s"] for h in host) + host[0]["eval_s"]  # rounds + the initial evaluation
    evals = [h["accuracy"] for h in history if h.get("accuracy") is not None]
    held = target_reached(history, target, hold_evals)
    touch = target_reached(history, target, 1)
    return {
        "time_to_target_s": None if held is None else held[1],
        "time_to_target_interval_s": None if held is None else list(held),
        "first_touch_s": None if touch is None else touch[1],
        "first_touch_interval_s": None if touch is None else list(touch),
        "final_accuracy": evals[-1] if evals else None,
        "best_accuracy": max(evals) if evals else None,
        "rounds": len(rounds),
        "evaluations": len(evals),
        "simulated_time_s": clock_s,
        "mean_round_time_s": sum(h["round_time_s"] for h in rounds) / max(len(rounds), 1),
        "mean_idle_time_s": sum(h["idle_s"] for h in rounds) / max(len(rounds), 1),
        "dropped_device_rounds": sum(h["dropped"] for h in rounds),
        # dropped = sat out (planned to skip the round) + failed (out of memory, crash): the no-OOM promise is on failed
        "sat_out_device_rounds": sum(h.get("sat_out", 0) for h in rounds),
        "failed_device_rounds": sum(h["dropped"] - h.get("sat_out", 0) for h in rounds),
        "device_rounds": sum(h["participants"] + h["dropped"] for h in rounds),
        "bytes_up": sum(h["bytes_up"] for h in rounds),
        "bytes_down": sum(h["bytes_down"] for h in rounds),
        "host_train_s": train_s,
        "host_total_s": total_s,
        "host_s_per_round": total_s / max(len(rounds), 1),
        "host_overhead_share": (total_s - train_s) / total_s if total_s > 0 else None,
    }


def build_report(config: SimConfig, histories: dict[str, list[dict]], target: float | None,
                 wall_s: dict[str, float] | None = None, hold_evals: int = TARGET_HOLD_EVALS) -> dict:
    """Pure: the runs' histories -> comparison.json's content."""
    summary = {}
    for name, history in histories.items():
        rounds = [h for h in history if h["round"] >= 0]
        clock = rounds[-1]["clock_s"] if rounds else 0.0
        summary[name] = summarize_history(history, clock, target, hold_evals)
        summary[name]["host_wall_s"] = (wall_s or {}).get(name, summary[name]["host_total_s"])
    common_time = min(s["simulated_time_s"] for s in summary.values())
    for name, s in summary.items():
        s["accuracy_at_common_time"] = accuracy_at(histories[name], common_time)
    ours = summary.get("fedquad", {}).get("time_to_target_s")
    for name, s in summary.items():
        s["fedquad_speedup"] = (s["time_to_target_s"] / ours
                                if ours and s["time_to_target_s"] else None)
    eval_source = next((h[0]["eval_source"] for h in histories.values() if h and h[0].get("eval_source")), None)
    return {"target_accuracy": target, "target_hold_evals": hold_evals, "common_time_s": common_time,
            "eval_source": eval_source, "config": config.to_dict(), "strategies": summary}


def write_report(config: SimConfig, histories: dict[str, list[dict]], out_dir: str, target: float | None,
                 wall_s: dict[str, float] | None = None, hold_evals: int = TARGET_HOLD_EVALS) -> dict:
    """comparison.json/.md and the plots of `histories` (strategy -> history) at `target`
    (reached: held at `hold_evals` evaluations in a row; first touch is reported beside it)."""
    report = build_report(config, histories, target, wall_s, hold_evals)
    with open(os.path.join(out_dir, "comparison.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "comparison.md"), "w") as f:
        f.write(markdown_table(report))
    from fedquad.sim.plots import plot_accuracy_vs_time, plot_memory
    plot_accuracy_vs_time(histories, os.path.join(out_dir, "accuracy_vs_time.png"), target)
    plot_memory(histories, os.path.join(out_dir, "memory.png"))
    return report


def _fmt(value, spec: str, none: str = "never") -> str:
    return none if value is None else format(value, spec)


def fmt_reached(interval: list[float] | None, none: str = "never") -> str:
    """'52 (44-52]': reported at 52 s, crossed after the evaluation at 44 s and by the one at 52 s."""
    if interval is None:
        return none
    before, at = interval
    return f"{at:.0f}" if before == at else f"{at:.0f} ({before:.0f}-{at:.0f}]"


def markdown_table(report: dict) -> str:
    target = report["target_accuracy"]
    hold = report.get("target_hold_evals", 1)
    never = "never" if target is not None else "-"
    lines = [f"Target accuracy: {'none (pass --target-accuracy)' if target is None else f'{100 * target:.1f}%'}; "
             f"reached when held at {hold} evaluation{'s' if hold != 1 else ''} in a row (first touch beside it); "
             "a time is resolved to one evaluation interval, (before-at]; accuracy at equal time is read at "
             f"{report['common_time_s']:.0f} s (the shortest run's simulated time).", "",
             "| strategy | time to target (s) | first touch (s) | fedquad speedup | final acc. | acc. at equal time "
             "| best acc. | rounds | mean round (s) | mean idle (s) | dropped device-rounds | MB up | MB down |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if report.get("eval_source"):
        lines[1:1] = ["", f"Evaluated on: {report['eval_source']}."]
    for name, s in report["strategies"].items():
        pct = lambda v: _fmt(v if v is None else 100 * v, ".1f", "-")  # noqa: E731
        held = s.get("time_to_target_interval_s", _legacy_interval(s.get("time_to_target_s")))
        touch = s.get("first_touch_interval_s", held)
        lines.append(
            f"| {name} | {fmt_reached(held, never)} | {fmt_reached(touch, never)} | "
            f"{_fmt(s['fedquad_speedup'], '.2f', '-')}x | "
            f"{pct(s['final_accuracy'])} | {pct(s['accuracy_at_common_time'])} | {pct(s['best_accuracy'])} | "
            f"{s['rounds']} | {s['mean_round_time_s']:.1f} | {s['mean_idle_time_s']:.1f} | "
            f"{s['dropped_device_rounds']}/{s['device_rounds']} | {s['bytes_up'] / 1e6:.1f} | "
            f"{s['bytes_down'] / 1e6:.1f} |")
    lines += ["", "Host wall time per strategy (client training share; the rest is simulator overhead: "
                  "planning, aggregation, evaluation, checkpoints):", ""]
    for name, s in report["strategies"].items():
        share = s["host_overhead_share"]
        per_round = s.get("host_s_per_round")
        lines.append(f"- {name}: {s['host_wall_s']:.0f} s wall, training {s['host_train_s']:.0f} s, "
                     f"overhead {_fmt(share and 100 * share, '.1f', '-')}%"
                     + ("" if per_round is None else f", {per_round:.2f} host s per round"))
    return "\n".join(lines) + "\n"


def _legacy_interval(t: float | None) -> list[float] | None:
    return None if t is None else [t, t]
