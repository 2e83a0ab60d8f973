"""`compare`: several strategies on one config -- same partition, device draw, client sampling and
seeds -- and the time-to-accuracy table and plots of docs/design.md, "Evaluation"."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields

from fedquad.errors import FedquadError
from fedquad.sim.files import write_json_atomic
from fedquad.sim.config import SimConfig, from_dict
from fedquad.sim.recorder import (PROFILE_FILE, RESUMABLE_SETTINGS, clear_run, pinned_profile, prepare_out_dir,
                                  refuse_leftover_profile, remove_created, run_markers)
from fedquad.sim.runner import RunResult, simulate
from fedquad.sim.workload import build_workload
from fedquad.strategies import STRATEGIES


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


COMPARE_PLAN = "compare.json"  # what a comparison was asked to do: its resume reads it
COMPARE_FILES = (COMPARE_PLAN, "comparison.json", "comparison.md", "accuracy_vs_time.png", "memory.png",
                 "seeds.json", "seeds.md", "time_to_target.png")


# -- the output folder: earlier runs are kept, refused, continued or (asked) replaced -------------
# Several processes may share one folder (disjoint strategies side by side, one `--seeds N` each):
# what conflicts is a run this call would write, or runs made with other settings.
def _saved_config(run_dir: str) -> SimConfig | None:
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            return from_dict(json.load(f), path)
    except (OSError, ValueError, FedquadError):
        return None


def _differences(saved: SimConfig, now: SimConfig) -> list[str]:
    """Settings that make `saved` another experiment than `now` (strategy and stopping rules aside)."""
    skip = {"strategy", *RESUMABLE_SETTINGS}
    return [f"{f.name}: saved {getattr(saved, f.name)!r}, now {getattr(now, f.name)!r}" for f in fields(SimConfig)
            if f.name not in skip and getattr(saved, f.name) != getattr(now, f.name)]


def scan_runs(out_dir: str, config: SimConfig, strategies: list[str]) -> tuple[list[str], list[str]]:
    """(requested strategies that already have a run in `out_dir`, runs there made with other settings)."""
    present, other = [], []
    for name in STRATEGIES:
        run_dir = os.path.join(out_dir, name)
        if not run_markers(run_dir):
            continue
        if name in strategies:
            present.append(name)
        saved = _saved_config(run_dir)
        diffs = ["its config.json is unreadable"] if saved is None else _differences(saved, config)
        if diffs:
            other.append(f"{name}: {diffs[0]}")
    return present, other


def plan_differences(out_dir: str, config: SimConfig) -> list[str]:
    """A saved plan of another experiment in `out_dir` (its profile.json may be another model's)."""
    try:
        plan = _read_plan(out_dir)
    except FedquadError as exc:
        return [str(exc)]
    if plan is None:
        return []
    diffs = _differences(plan["config"].replace(seed=config.seed), config)
    return [f"{COMPARE_PLAN}: {diffs[0]}"] if diffs else []


def check_existing(out_dir: str, scans: list[tuple[str, list[str], list[str]]], *, resume: bool,
                   overwrite: bool, clear_all) -> None:
    """Refuse in one line, or clear what `overwrite` replaces; `scans`: (folder, present, other)."""
    present = [os.path.join(os.path.relpath(folder, out_dir), n).removeprefix("./") for folder, runs, _ in scans
               for n in runs]
    other = [f"{os.path.relpath(folder, out_dir)}/{o}".removeprefix("./") for folder, _, others in scans
             for o in others]
    if other:
        if resume or not overwrite:
            raise FedquadError(f"{out_dir} holds runs made with other settings ({other[0]}): choose another --out"
                               + ("" if resume else ", or replace the whole comparison with --overwrite"))
        clear_all()
    elif present and not resume:
        if not overwrite:
            raise FedquadError(f"{out_dir} already holds runs of {', '.join(present)}: continue them with "
                               f"--resume {out_dir}, or replace them with --overwrite")
        for folder, runs, _ in scans:
            for name in runs:
                clear_run(os.path.join(folder, name), keep_profile=os.path.join(folder, PROFILE_FILE))
                remove_created([os.path.join(folder, name)])


def check_leftover_profile(folder: str, config: SimConfig, *, resume: bool, overwrite: bool) -> None:
    """`folder`'s profile.json is the comparison's own when it is continued (`resume`) or joined (a
    plan or runs of the same experiment are there: `check_existing` refused any other); in a folder
    that holds neither it is a leftover, and a comparison naming no profile is refused rather than
    silently planning with it (`overwrite`: it is removed and measured again)."""
    joined = resume or os.path.isfile(os.path.join(folder, COMPARE_PLAN)) or any(
        run_markers(os.path.join(folder, n)) for n in STRATEGIES)
    if not joined:
        refuse_leftover_profile(config, folder, overwrite=overwrite)


def comparison_markers(out_dir: str) -> list[str]:
    """What in `out_dir` shows an earlier comparison there (empty: none)."""
    if not os.path.isdir(out_dir):
        return []
    found = [n for n in (COMPARE_PLAN, "comparison.json", "seeds.json") if os.path.isfile(os.path.join(out_dir, n))]
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and ((name in STRATEGIES and run_markers(path)) or
                                    (name.startswith("seed-") and comparison_markers(path))):
            found.append(name + "/")
    return found


def clear_comparison(out_dir: str, keep_profile: str | None = None) -> None:
    """Remove an earlier comparison's own files and run folders from `out_dir` (nothing else)."""
    for name in COMPARE_FILES:
        for path in (os.path.join(out_dir, name), os.path.join(out_dir, name + ".tmp")):
            if os.path.isfile(path):
                os.remove(path)
    clear_run(out_dir, keep_profile)  # its measured profile.json
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if not os.path.isdir(path):
            continue
        if name in STRATEGIES:
            clear_run(path, keep_profile)
        elif name.startswith("seed-"):
            clear_comparison(path, keep_profile)
        else:
            continue
        remove_created([path])


def _read_plan(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, COMPARE_PLAN)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
        plan = {"config": from_dict(data["config"], path), "strategies": [str(n) for n in data["strategies"]],
                "target_accuracy": data["target_accuracy"], "seeds": data["seeds"]}
    except (OSError, ValueError, KeyError, TypeError, FedquadError) as exc:
        raise FedquadError(f"{path} is damaged: {exc}") from None
    if not plan["strategies"] or any(n not in STRATEGIES for n in plan["strategies"]):
        raise FedquadError(f"{path} is damaged: strategies {plan['strategies']}")
    if plan["seeds"] is not None and not all(isinstance(x, int) and x >= 0 for x in plan["seeds"]):
        raise FedquadError(f"{path} is damaged: seeds {plan['seeds']}")
    return plan


def write_plan(out_dir: str, config: SimConfig, strategies: list[str], target: float | None,
               seeds: list[int] | None) -> None:
    """compare.json; a plan of the same experiment already there (another process sharing the
    folder) keeps its strategies and seeds: the file lists everything the folder holds."""
    try:
        old = _read_plan(out_dir)
    except FedquadError:
        old = None
    if old is not None and not _differences(old["config"].replace(seed=config.seed), config):
        strategies = list(dict.fromkeys([*old["strategies"], *strategies]))
        if seeds is not None and old["seeds"] is not None:
            seeds = list(dict.fromkeys([*old["seeds"], *seeds]))
    write_json_atomic(os.path.join(out_dir, COMPARE_PLAN), {"version": 1, "config": config.to_dict(),
                                                            "strategies": list(strategies),
                                                            "target_accuracy": target, "seeds": seeds})


def load_plan(out_dir: str) -> dict:
    """The saved plan of the comparison in `out_dir` (config, strategies, target, seeds), with the
    strategies and seeds whose folders are there (processes sharing the folder may race on it)."""
    if not os.path.isdir(out_dir):
        raise FedquadError(f"nothing to resume: {out_dir} " + ("is a file, not a folder" if os.path.exists(out_dir)
                                                              else "does not exist"))
    plan = _read_plan(out_dir)
    if plan is None:
        raise FedquadError(f"nothing to resume in {out_dir}: no {COMPARE_PLAN} (a comparison writes it as it starts)")
    if plan["seeds"] is not None:
        on_disk = [int(n[5:]) for n in sorted(os.listdir(out_dir)) if n.startswith("seed-") and n[5:].isdigit()
                   and os.path.isfile(os.path.join(out_dir, n, COMPARE_PLAN))]
        plan["seeds"] = list(dict.fromkeys([*plan["seeds"], *on_disk]))
        folders = [os.path.join(out_dir, f"seed-{s}") for s in plan["seeds"]]
    else:
        folders = [out_dir]
    ran = [n for n in STRATEGIES if any(run_markers(os.path.join(f, n)) for f in folders)]
    plan["strategies"] = list(dict.fromkeys([*plan["strategies"], *ran]))
    return plan


def compare(config: SimConfig, strategies: list[str], out_dir: str, target_accuracy: float | None = None,
            show_progress: bool = True, *, resume: bool = False, overwrite: bool = False,
            changes: dict | None = None) -> dict:
    """Run every strategy on `config`, write comparison.json/.md and the plots; returns the summary.

    A strategy whose run is already in `out_dir` is refused unless `overwrite` (replace it) or
    `resume` (a finished run is kept, an interrupted one continues from its checkpoint); runs
    there made with other settings are refused even so. `changes` (with `resume`): settings a
    resume may change, e.g. {"rounds": 40}."""
    created = prepare_out_dir(out_dir)
    if changes:
        config = config.replace(**changes)
    config_in, pinned = config, pinned_profile(config, out_dir)
    present, other = scan_runs(out_dir, pinned, strategies)
    other += plan_differences(out_dir, pinned)
    check_existing(out_dir, [(out_dir, present, other)], resume=resume, overwrite=overwrite,
                   clear_all=lambda: clear_comparison(out_dir, keep_profile=config.profile))
    check_leftover_profile(out_dir, config, resume=resume, overwrite=overwrite)
    had_profile = os.path.isfile(os.path.join(out_dir, PROFILE_FILE))
    target = target_accuracy if target_accuracy is not None else config.target_accuracy
    results: dict[str, RunResult] = {}
    wall = {}
    try:
        # one model, data and profile for all: the comparison's own profile.json when it has one
        # (continued or joined; runs being continued need it even if it is gone: a one-line error),
        # else the configured one or one measured into out_dir now
        own = had_profile or (resume and any(run_markers(os.path.join(out_dir, n)) for n in STRATEGIES))
        workload = build_workload(pinned if own else config, out_dir, show_progress=show_progress)
        config = pinned  # every strategy and resume uses that file from here on
        write_plan(out_dir, config, strategies, target_accuracy, None)
        for name in strategies:
            run_dir = os.path.join(out_dir, name)
            again = resume and bool(run_markers(run_dir))
            start = time.perf_counter()
            results[name] = simulate(config.replace(strategy=name), run_dir, resume=again, workload=workload,
                                     show_progress=show_progress, plots=False)
            if not again:  # a continued run's wall time is spread over sessions: its history has it
                wall[name] = time.perf_counter() - start
    except Exception:
        if not any(run_markers(os.path.join(out_dir, n)) for n in STRATEGIES):  # nothing worth keeping
            plan = os.path.join(out_dir, COMPARE_PLAN)
            if os.path.isfile(plan):
                os.remove(plan)
            measured = os.path.join(out_dir, PROFILE_FILE)
            if not had_profile and os.path.isfile(measured) and pinned.profile != config_in.profile:
                os.remove(measured)  # measured by this call for a comparison that never started
            remove_created(created)
        raise
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
    eval_source = next((h[0]["eval_source"] for h in histories.values() if h and h[0].get("eval_source")), None)
    report = {"target_accuracy": target, "common_time_s": common_time, "eval_source": eval_source,
              "config": config.to_dict(), "strategies": summary}
    with open(os.path.join(out_dir, "comparison.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "comparison.md"), "w") as f:
        f.write(markdown_table(report))
    from fedquad.sim.plots import plot_accuracy_vs_time, plot_memory
    plot_accuracy_vs_time(histories, os.path.join(out_dir, "accuracy_vs_time.png"), target)
    plot_memory(histories, os.path.join(out_dir, "memory.png"))
    return report


def strategies_that_ran(out_dir: str) -> list[str]:
    """The strategies with a run in `out_dir`, in the saved plan's order (then the catalogue's)."""
    order = load_plan(out_dir)["strategies"] if os.path.isfile(os.path.join(out_dir, COMPARE_PLAN)) else []
    names = [n for n in dict.fromkeys([*order, *STRATEGIES])
             if os.path.isfile(os.path.join(out_dir, n, "history.json"))]
    if not names:
        raise FedquadError(f"no finished runs in {out_dir} to report on")
    return names


def report_from_runs(out_dir: str, strategies: list[str] | None, target: float | None) -> dict:
    """Rebuild the comparison of finished runs under `out_dir` (e.g. with another target accuracy);
    `strategies` None: the ones that ran there."""
    if not os.path.isdir(out_dir):
        raise FedquadError(f"no comparison to report on: {out_dir} is not a folder")
    strategies = strategies_that_ran(out_dir) if strategies is None else strategies
    histories, config = {}, None
    for name in strategies:
        path = os.path.join(out_dir, name, "history.json")
        if not os.path.isfile(path):
            raise FedquadError(f"no finished run of {name} in {out_dir} (missing {path})")
        config_path = os.path.join(out_dir, name, "config.json")
        try:
            with open(path) as f:
                histories[name] = json.load(f)
            with open(config_path) as f:
                config = from_dict(json.load(f), config_path)
        except (OSError, ValueError) as exc:
            raise FedquadError(f"cannot read the run of {name} in {out_dir}: {exc}") from None
    return write_report(config, histories, out_dir, target)


def _fmt(value, spec: str, none: str = "never") -> str:
    return none if value is None else format(value, spec)


def markdown_table(report: dict) -> str:
    target = report["target_accuracy"]
    lines = [f"Target accuracy: {'none (pass --target-accuracy)' if target is None else f'{100 * target:.1f}%'}; "
             f"accuracy at equal time is read at "
             f"{report['common_time_s']:.0f} s (the shortest run's simulated time).", "",
             "| strategy | time to target (s) | fedquad speedup | final acc. | acc. at equal time | best acc. | rounds "
             "| mean round (s) | mean idle (s) | dropped device-rounds | MB up | MB down |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if report.get("eval_source"):
        lines[1:1] = ["", f"Evaluated on: {report['eval_source']}."]
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
