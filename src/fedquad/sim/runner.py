"""`simulate`: run one strategy for real on simulated devices, round by round, with a progress
bar, a checkpoint after every round, `history.json` and plots in the run folder."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from fedquad.errors import FedquadError
from fedquad.sim.checkpoint import load_checkpoint, save_checkpoint, write_json_atomic
from fedquad.sim.config import SimConfig, from_dict
from fedquad.sim.round import FederatedAlgorithm, RoundState
from fedquad.sim.workload import Workload, build_workload
from fedquad.strategies import get_strategy


@dataclass
class RunResult:
    config: SimConfig
    history: list[dict]
    state: RoundState
    run_dir: str | None

    @property
    def evaluations(self) -> list[tuple[float, float]]:
        """(simulated time, accuracy) of every central evaluation, in order."""
        return [(h["clock_s"], h["accuracy"]) for h in self.history if h.get("accuracy") is not None]


def make_strategy(config: SimConfig):
    from fedquad.planner import PlannerConfig
    if config.strategy in ("fedquad", "depth-only"):
        planner = PlannerConfig(int8_penalty=config.int8_penalty, int4_penalty=config.int4_penalty,
                                coverage_rounds=config.coverage_rounds, placement=config.placement,
                                bits=config.quant_bits, memory_margin=config.memory_margin)
        return get_strategy(config.strategy, planner=planner)
    return get_strategy(config.strategy)


def _finished(config: SimConfig, state: RoundState) -> bool:
    return state.round_index >= config.rounds or (
        config.time_budget_s is not None and state.clock_s >= config.time_budget_s)


def simulate(config: SimConfig, run_dir: str | None = None, *, resume: bool = False, workload: Workload | None = None,
             show_progress: bool = True, stop_after_rounds: int | None = None, plots: bool = True) -> RunResult:
    """Run (or, with `resume`, continue) `config.strategy` on `config.scenario`.

    `workload` lets `compare` share one model and tokenized data between strategies;
    `stop_after_rounds` stops early (as if killed) -- tests use it to check resumes."""
    history: list[dict] = []
    if resume:
        if run_dir is None:
            raise FedquadError("resume needs the run folder")
        state, saved_config, history = load_checkpoint(run_dir)
        config = from_dict(saved_config, f"{run_dir}/checkpoint")
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        write_json_atomic(os.path.join(run_dir, "config.json"), config.to_dict())
    if workload is None:
        workload = build_workload(config, run_dir)
        if config.profile is None and run_dir is not None:  # measured now: pin it for resumes
            config = config.replace(profile=os.path.abspath(os.path.join(run_dir, "profile.json")))
            write_json_atomic(os.path.join(run_dir, "config.json"), config.to_dict())
    workload.config = config
    algo = FederatedAlgorithm(workload, make_strategy(config))
    if not resume:
        state = algo.init()
        start = time.perf_counter()
        metrics = algo.evaluate(state)
        history.append({"round": -1, "clock_s": 0.0, "accuracy": metrics["accuracy"], "eval": metrics,
                        "host": {"eval_s": time.perf_counter() - start, "train_s": 0.0, "total_s": 0.0}})

    from fedquad.sim.progress import RoundProgress
    with RoundProgress(config, enabled=show_progress, start_round=state.round_index) as bar:
        rounds_run = 0
        while not _finished(config, state) and (stop_after_rounds is None or rounds_run < stop_after_rounds):
            round_start = time.perf_counter()
            clients = algo.sample_clients(state.round_index)
            state, report = algo.apply(state, clients, progress=bar.client_done)
            train_s = report.pop("train_s", 0.0)
            r = report["round"]
            evaluate_now = (r + 1) % config.eval_every == 0 or _finished(config, state)
            eval_start = time.perf_counter()
            if evaluate_now:
                metrics = algo.evaluate(state)
                report["accuracy"], report["eval"] = metrics["accuracy"], metrics
            eval_s = time.perf_counter() - eval_start if evaluate_now else 0.0
            report["host"] = {"train_s": train_s, "eval_s": eval_s, "total_s": time.perf_counter() - round_start}
            history.append(report)
            if run_dir is not None:
                ck_start = time.perf_counter()
                save_checkpoint(run_dir, state, config.to_dict(), history)
                write_json_atomic(os.path.join(run_dir, "history.json"), history)
                report["host"]["total_s"] += time.perf_counter() - ck_start  # in the final history.json
            bar.round_done(report)
            rounds_run += 1
    if run_dir is not None:
        write_json_atomic(os.path.join(run_dir, "history.json"), history)
        if plots:
            from fedquad.sim.plots import plot_accuracy_vs_time, plot_memory
            plot_accuracy_vs_time({config.strategy: history}, os.path.join(run_dir, "accuracy_vs_time.png"),
                                  config.target_accuracy)
            plot_memory({config.strategy: history}, os.path.join(run_dir, "memory.png"))
    return RunResult(config, history, state, run_dir)
