"""`compare`: several strategies on one config -- same partition, device draw, client sampling and
seeds -- and the time-to-accuracy table and plots of docs/design.md, "Evaluation"."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields

from fedquad.errors import FedquadError
from fedquad.sim.files import write_json_atomic
from fedquad.sim.config import SimConfig, run_config_from_dict
from fedquad.sim.recorder import (PROFILE_FILE, RESUMABLE_SETTINGS, clear_run, pinned_profile, prepare_out_dir,
                                  refuse_leftover_profile, remove_created, run_markers)
from fedquad.sim.report import accuracy_at, markdown_table, summarize_history, write_report
from fedquad.sim.runner import simulate
from fedquad.sim.stats import TARGET_HOLD_EVALS, check_hold_evals, time_to_target
from fedquad.sim.workers import Fanout, RunJob, run_jobs
from fedquad.sim.workload import build_workload
from fedquad.strategies import STRATEGIES

# the report's names, kept importable from here (callers predate sim/report.py and sim/stats.py)
__all__ = ["COMPARE_PLAN", "OpenComparison", "accuracy_at", "compare", "load_plan", "markdown_table",
           "open_comparison", "report_from_runs", "summarize_history", "time_to_target", "write_report"]

COMPARE_PLAN = "compare.json"  # what a comparison was asked to do: its resume reads it
COMPARE_FILES = (COMPARE_PLAN, "comparison.json", "comparison.md", "accuracy_vs_time.png", "memory.png",
                 "seeds.json", "seeds.md", "time_to_target.png", "accuracy_over_seeds.png")


# -- the output folder: earlier runs are kept, refused, continued or (asked) replaced -------------
# Several processes may share one folder (disjoint strategies side by side, one `--seeds N` each):
# what conflicts is a run this call would write, or runs made with other settings.
def _saved_config(run_dir: str) -> SimConfig | None:
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            return run_config_from_dict(json.load(f), path)
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
        plan = {"config": run_config_from_dict(data["config"], path), "strategies": [str(n) for n in data["strategies"]],
                "target_accuracy": data["target_accuracy"], "seeds": data["seeds"],
                "target_hold_evals": data.get("target_hold_evals", TARGET_HOLD_EVALS)}
    except (OSError, ValueError, KeyError, TypeError, FedquadError) as exc:
        raise FedquadError(f"{path} is damaged: {exc}") from None
    if not plan["strategies"] or any(n not in STRATEGIES for n in plan["strategies"]):
        raise FedquadError(f"{path} is damaged: strategies {plan['strategies']}")
    if plan["seeds"] is not None and not all(isinstance(x, int) and x >= 0 for x in plan["seeds"]):
        raise FedquadError(f"{path} is damaged: seeds {plan['seeds']}")
    hold = plan["target_hold_evals"]
    if isinstance(hold, bool) or not isinstance(hold, int) or hold < 1:
        raise FedquadError(f"{path} is damaged: target_hold_evals {hold!r}")
    return plan


def write_plan(out_dir: str, config: SimConfig, strategies: list[str], target: float | None,
               seeds: list[int] | None, hold_evals: int = TARGET_HOLD_EVALS) -> None:
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
                                                            "target_accuracy": target, "seeds": seeds,
                                                            "target_hold_evals": hold_evals})


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


@dataclass
class OpenComparison:
    """A comparison folder checked and ready to run in (`open_comparison`); `config` names the
    profile every run uses (`config_in`: as asked, before pinning)."""

    out_dir: str
    strategies: list[str]
    config_in: SimConfig
    config: SimConfig
    target_accuracy: float | None  # as asked (the plan keeps it)
    target: float | None  # what the report uses
    hold_evals: int
    created: list[str]
    had_profile: bool
    own_profile: bool
    resume: bool

    def run_dirs(self) -> list[tuple[str, str, bool]]:
        """(strategy, run folder, continues an earlier run) of every run of this comparison."""
        return [(n, os.path.join(self.out_dir, n), self.resume and bool(run_markers(os.path.join(self.out_dir, n))))
                for n in self.strategies]

    def build(self, show_progress: bool, *, keep: bool = True):
        """One model, data and profile for all: the comparison's own profile.json when it has one
        (continued or joined; runs being continued need it even if it is gone: a one-line error),
        else the configured one or one measured into out_dir now; then the plan. `keep` False:
        only make sure the profile exists (runs fanned out build their own workloads)."""
        workload = None
        if keep or not (self.own_profile or self.config_in.profile is not None):
            workload = build_workload(self.config if self.own_profile else self.config_in, self.out_dir,
                                      show_progress=show_progress)
        write_plan(self.out_dir, self.config, self.strategies, self.target_accuracy, None, self.hold_evals)
        return workload

    def jobs(self, threads: int = 1) -> list[RunJob]:
        return [RunJob(self.config.replace(strategy=n), run_dir, again, threads)
                for n, run_dir, again in self.run_dirs()]

    def abandon(self) -> None:
        """After a failure: a comparison with no run worth keeping leaves nothing behind."""
        out_dir = self.out_dir
        if any(run_markers(os.path.join(out_dir, n)) for n in STRATEGIES):
            return
        plan = os.path.join(out_dir, COMPARE_PLAN)
        if os.path.isfile(plan):
            os.remove(plan)
        measured = os.path.join(out_dir, PROFILE_FILE)
        if not self.had_profile and os.path.isfile(measured) and self.config.profile != self.config_in.profile:
            os.remove(measured)  # measured by this call for a comparison that never started
        remove_created(self.created)

    def report(self, histories: dict[str, list[dict]] | None = None, wall: dict[str, float] | None = None) -> dict:
        """comparison.json/.md and plots; `histories` None: read from the run folders."""
        if histories is None:
            histories = {n: _read_history(self.out_dir, n) for n in self.strategies}
        return write_report(self.config, histories, self.out_dir, self.target, wall, self.hold_evals)


def open_comparison(config: SimConfig, strategies: list[str], out_dir: str, target_accuracy: float | None = None,
                    *, resume: bool = False, overwrite: bool = False, changes: dict | None = None,
                    hold_evals: int | None = None) -> OpenComparison:
    """Check `out_dir` for `compare` (see there) and return what running in it needs."""
    hold_evals = check_hold_evals(TARGET_HOLD_EVALS if hold_evals is None else hold_evals)
    created = prepare_out_dir(out_dir)
    if changes:
        config = config.replace(**changes)
    pinned = pinned_profile(config, out_dir)
    present, other = scan_runs(out_dir, pinned, strategies)
    other += plan_differences(out_dir, pinned)
    check_existing(out_dir, [(out_dir, present, other)], resume=resume, overwrite=overwrite,
                   clear_all=lambda: clear_comparison(out_dir, keep_profile=config.profile))
    check_leftover_profile(out_dir, config, resume=resume, overwrite=overwrite)
    had_profile = os.path.isfile(os.path.join(out_dir, PROFILE_FILE))
    own = had_profile or (resume and any(run_markers(os.path.join(out_dir, n)) for n in STRATEGIES))
    target = target_accuracy if target_accuracy is not None else config.target_accuracy
    return OpenComparison(out_dir, list(strategies), config, pinned, target_accuracy, target,
                          hold_evals, created, had_profile, own, resume)


def compare(config: SimConfig, strategies: list[str], out_dir: str, target_accuracy: float | None = None,
            show_progress: bool = True, *, resume: bool = False, overwrite: bool = False,
            changes: dict | None = None, hold_evals: int | None = None, fanout: Fanout | None = None) -> dict:
    """Run every strategy on `config`, write comparison.json/.md and the plots; returns the summary.

    A strategy whose run is already in `out_dir` is refused unless `overwrite` (replace it) or
    `resume` (a finished run is kept, an interrupted one continues from its checkpoint); runs
    there made with other settings are refused even so. `changes` (with `resume`): settings a
    resume may change, e.g. {"rounds": 40}. `hold_evals`: evaluations in a row the target must
    hold (default TARGET_HOLD_EVALS). `fanout`: run the strategies in worker processes or on Ray
    (same results as the serial loop)."""
    opened = open_comparison(config, strategies, out_dir, target_accuracy, resume=resume, overwrite=overwrite,
                             changes=changes, hold_evals=hold_evals)
    try:
        if fanout is not None and fanout.parallel:
            opened.build(show_progress, keep=False)
            done = run_jobs(opened.jobs(fanout.threads), fanout.workers, fanout.ray_address, show_progress)
            return opened.report(None, {r["strategy"]: r["wall_s"] for r in done if not r["continued"]})
        histories, wall = _run_serial(opened, show_progress)
    except Exception:
        opened.abandon()
        raise
    return opened.report(histories, wall)


def _run_serial(opened: OpenComparison, show_progress: bool) -> tuple[dict[str, list[dict]], dict[str, float]]:
    workload = opened.build(show_progress)
    histories, wall = {}, {}
    for name, run_dir, again in opened.run_dirs():
        start = time.perf_counter()
        histories[name] = simulate(opened.config.replace(strategy=name), run_dir, resume=again, workload=workload,
                                   show_progress=show_progress, plots=False).history
        if not again:  # a continued run's wall time is spread over sessions: its history has it
            wall[name] = time.perf_counter() - start
    return histories, wall


def _read_history(out_dir: str, name: str) -> list[dict]:
    path = os.path.join(out_dir, name, "history.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise FedquadError(f"cannot read the run of {name} in {out_dir}: {exc}") from None


def strategies_that_ran(out_dir: str) -> list[str]:
    """The strategies with a run in `out_dir`, in the saved plan's order (then the catalogue's)."""
    order = load_plan(out_dir)["strategies"] if os.path.isfile(os.path.join(out_dir, COMPARE_PLAN)) else []
    names = [n for n in dict.fromkeys([*order, *STRATEGIES])
             if os.path.isfile(os.path.join(out_dir, n, "history.json"))]
    if not names:
        raise FedquadError(f"no finished runs in {out_dir} to report on")
    return names


def report_from_runs(out_dir: str, strategies: list[str] | None, target: float | None,
                     hold_evals: int = TARGET_HOLD_EVALS) -> dict:
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
                config = run_config_from_dict(json.load(f), config_path)
        except (OSError, ValueError) as exc:
            raise FedquadError(f"cannot read the run of {name} in {out_dir}: {exc}") from None
    return write_report(config, histories, out_dir, target, None, hold_evals)
