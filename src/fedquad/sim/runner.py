"""`simulate`: run one strategy for real on simulated devices, round by round, with a progress
bar, a checkpoint after every round, `history.json` and plots in the run folder.

Run folders are the user's: a new run never replaces an earlier one unless asked (`overwrite`),
a run that fails before its first checkpoint removes what it wrote (no folder holding only a
config.json), and `resume` continues a run from its checkpoint -- or from round 0 with its saved
config when it was killed before the first checkpoint. What a run keeps on disk (and those
rules) is `fedquad.sim.recorder.RunRecorder`'s, shared with `compare` and the Flower server.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

from fedquad.sim.config import SimConfig
from fedquad.sim.recorder import PROFILE_FILE, RESUMABLE_SETTINGS, RunRecorder
from fedquad.sim.round import FederatedAlgorithm, RoundState
from fedquad.sim.workload import Workload, build_workload
from fedquad.strategies import get_strategy

__all__ = ["PROFILE_FILE", "RESUMABLE_SETTINGS", "RunResult", "make_strategy", "planner_config",
           "require_participants", "simulate"]


@dataclass
class RunResult:
    config: SimConfig
    history: list[dict]
    state: RoundState
    run_dir: str | None
    rounds_run: int = 0  # rounds this call ran (0: a resume found the run finished)
    already_finished: bool = False

    @property
    def evaluations(self) -> list[tuple[float, float]]:
        """(simulated time, accuracy) of every central evaluation, in order."""
        return [(h["clock_s"], h["accuracy"]) for h in self.history if h.get("accuracy") is not None]


def planner_config(config: SimConfig):
    from fedquad.planner import PlannerConfig
    return PlannerConfig(int8_penalty=config.int8_penalty, int4_penalty=config.int4_penalty,
                         coverage_rounds=config.coverage_rounds, placement=config.placement,
                         bits=config.quant_bits, memory_margin=config.memory_margin,
                         value=config.planner_value, sit_out=config.sit_out,
                         sit_out_floor_rounds=config.sit_out_floor_rounds,
                         sit_out_max_fraction=config.sit_out_max_fraction,
                         value_exponent=config.planner_value_exponent)


def make_strategy(config: SimConfig):
    from fedquad.aggregation import AggregationConfig
    aggregation = AggregationConfig(max_norm_ratio=config.max_update_norm_ratio)
    if config.strategy in ("fedquad", "fedquad-paper", "fedquad-no-recompute", "depth-only"):
        return get_strategy(config.strategy, planner=planner_config(config), aggregation=aggregation)
    return get_strategy(config.strategy, aggregation=aggregation)


def require_participants(config: SimConfig, workload: Workload) -> None:
    """The rule `fedquad plan` applies: someone must fit, else every round would train nobody."""
    from fedquad.planner.participation import require_participants as require
    require(workload.devices, workload.profile, workload.scenario.name, "even at its full memory budget",
            planner_config(config))


def simulate(config: SimConfig | None, run_dir: str | None = None, *, resume: bool = False, overwrite: bool = False,
             changes: dict | None = None, workload: Workload | None = None, show_progress: bool = True,
             stop_after_rounds: int | None = None, plots: bool = True) -> RunResult:
    """Run (or, with `resume`, continue) `config.strategy` on `config.scenario`.

    A new run into a folder that holds one is refused unless `overwrite`. `resume` continues the
    run in `run_dir` with its saved config plus `changes` (only RESUMABLE_SETTINGS, e.g. more
    rounds); a `config` given with `resume` must match the saved one apart from those.
    `workload` lets `compare` share one model and tokenized data between strategies (it is not
    changed: this run's config goes into a copy); `stop_after_rounds` stops early (as if
    killed) -- tests use it to check resumes."""
    recorder = RunRecorder.open(run_dir, config, resume=resume, overwrite=overwrite, changes=changes)
    done = recorder.finished()
    if done is not None:
        history, state = done
        return RunResult(recorder.config, history, state, run_dir, 0, True)
    try:
        return _run(recorder, workload, show_progress, stop_after_rounds, plots)
    except Exception:
        recorder.discard()  # failed before anything worth keeping: no folder holding only a config.json
        raise


def _run(recorder: RunRecorder, workload: Workload | None, show_progress: bool, stop_after_rounds: int | None,
         plots: bool) -> RunResult:
    run_dir = recorder.run_dir
    if workload is None:
        workload = build_workload(recorder.config, run_dir, show_progress=show_progress)
        recorder.pin_profile()  # measured now: the run's config names that file from here on
    config = recorder.config
    require_participants(config, workload)
    recorder.start()  # config.json: from here on a kill resumes
    algo = FederatedAlgorithm(dataclasses.replace(workload, config=config), make_strategy(config))
    state = recorder.resume_state()  # after the workload is built: only the rounds' own draws follow
    history = recorder.history
    if state is None:
        state = algo.init()
        start = time.perf_counter()
        metrics = algo.evaluate(state)
        history.append({"round": -1, "clock_s": 0.0, "accuracy": metrics["accuracy"], "eval": metrics,
                        "eval_source": workload.eval_source,  # what accuracy is measured on (docs/data.md)
                        "host": {"eval_s": time.perf_counter() - start, "train_s": 0.0, "total_s": 0.0}})

    from fedquad.sim.progress import RoundProgress
    rounds_run = 0
    with RoundProgress(config, enabled=show_progress, start_round=state.round_index) as bar:
        while not recorder.is_finished(state) and (stop_after_rounds is None or rounds_run < stop_after_rounds):
            round_start = time.perf_counter()
            clients = algo.sample_clients(state.round_index)
            state, report = algo.apply(state, clients, progress=bar.client_done)
            train_s = report.pop("train_s", 0.0)
            evaluate_now = recorder.evaluation_due(report["round"], state)
            eval_start = time.perf_counter()
            if evaluate_now:
                metrics = algo.evaluate(state)
                report["accuracy"], report["eval"] = metrics["accuracy"], metrics
            eval_s = time.perf_counter() - eval_start if evaluate_now else 0.0
            report["host"] = {"train_s": train_s, "eval_s": eval_s, "total_s": time.perf_counter() - round_start}
            # checkpoint and history.json; their time counts in the final history.json's total
            report["host"]["total_s"] += recorder.record_round(state, report)
            bar.round_done(report)
            rounds_run += 1
    recorder.close()
    if run_dir is not None and plots:
        from fedquad.sim.plots import plot_accuracy_vs_time, plot_memory
        plot_accuracy_vs_time({config.strategy: history}, os.path.join(run_dir, "accuracy_vs_time.png"),
                              config.target_accuracy)
        plot_memory({config.strategy: history}, os.path.join(run_dir, "memory.png"))
    return RunResult(config, history, state, run_dir, rounds_run)
