"""Fan (strategy, seed) runs of a comparison out over local processes (`--workers N`) or a Ray
cluster (`--ray-address ADDR`).

A run depends only on its config (seed included) and its profile file: every draw -- data split,
devices, sampling, batches, training noise -- is derived from the seed, and every run starts from
the workload's initial adapter. So a run gives the same history in a worker process as in the
serial loop (tests compare the two). Each worker writes its run into the usual run folder with
`simulate` (the RunRecorder layout: config.json, checkpoint and history.json after every round),
so an interrupted fan-out resumes like a serial comparison. The parent measures any missing
profile first (`compare` does), then only schedules and prints one line per finished run; the
workers show no progress of their own, so several processes never fight over one terminal.

Each worker trains with `threads` torch/OpenMP threads (1 by default: N single-threaded
workers on N cores beat one N-threaded process for these small models). On Ray, every node
must have fedquad installed and see the output folder at the same path (a shared file system).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from fedquad.errors import FedquadError
from fedquad.sim.config import SimConfig

_WORKLOAD: dict = {}  # per worker process: the last workload built (runs of one seed share it)


@dataclass(frozen=True)
class Fanout:
    """Where a comparison's runs go: this process one after another (the default), `workers`
    local processes, or the Ray cluster at `ray_address`; `threads` per worker."""

    workers: int = 1
    ray_address: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FedquadError(f"--{name.replace('threads', 'threads-per-worker')} must be a whole number >= 1, "
                                   f"got {value!r}")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise FedquadError("--ray-address is empty: give the cluster's address (e.g. auto, or host:6379)")

    @property
    def parallel(self) -> bool:
        return self.workers > 1 or self.ray_address is not None


@dataclass(frozen=True)
class RunJob:
    """One (strategy, seed) run: its full config (profile pinned), folder, and whether it continues."""

    config: SimConfig
    run_dir: str
    resume: bool = False
    threads: int = 1


def run_histories(folder: str | os.PathLike) -> dict[str, list[dict]]:
    """Every run's history under `folder` (relative run path -> rounds), host timings left out:
    they are the only part of a run that may differ between serial, process and Ray fan-outs, so
    this is what "the same results" compares."""
    found = {}
    for root, _, files in os.walk(folder):
        if "history.json" in files:
            with open(os.path.join(root, "history.json")) as f:
                found[os.path.relpath(root, folder)] = [{k: v for k, v in h.items() if k != "host"}
                                                        for h in json.load(f)]
    return found


def _workload_key(job: RunJob) -> str:
    data = job.config.to_dict()
    for name in ("strategy", "rounds", "time_budget_s", "target_accuracy"):
        data.pop(name, None)
    return json.dumps([os.path.dirname(os.path.abspath(job.run_dir)), data], sort_keys=True, default=str)


def run_job(job: RunJob) -> dict:
    """Run one job in this process (a pool worker, a Ray task, or the caller); returns a summary."""
    import torch

    from fedquad.sim.runner import simulate
    from fedquad.sim.workload import build_workload
    torch.set_num_threads(job.threads)
    key = _workload_key(job)
    if key not in _WORKLOAD:
        _WORKLOAD.clear()
        _WORKLOAD[key] = build_workload(job.config, os.path.dirname(job.run_dir), show_progress=False)
    start = time.perf_counter()
    result = simulate(job.config, job.run_dir, resume=job.resume, workload=_WORKLOAD[key], show_progress=False,
                      plots=False)
    evals = result.evaluations
    return {"run_dir": job.run_dir, "strategy": job.config.strategy, "seed": job.config.seed,
            "wall_s": time.perf_counter() - start, "rounds": result.state.round_index,
            "clock_s": result.state.clock_s, "final_accuracy": evals[-1][1] if evals else None,
            "continued": job.resume}


def _line(done: int, total: int, r: dict, started: float) -> str:
    acc = "-" if r["final_accuracy"] is None else f"{100 * r['final_accuracy']:.1f}%"
    return (f"[{done}/{total}] {r['strategy']} seed {r['seed']}: {r['rounds']} rounds, simulated "
            f"{r['clock_s']:.0f} s, final {acc}, {r['wall_s']:.0f} s host ({time.perf_counter() - started:.0f} s "
            "elapsed)")


def run_jobs(jobs: list[RunJob], workers: int = 1, ray_address: str | None = None,
             show_progress: bool = True) -> list[dict]:
    """Run every job, `workers` at a time (processes), or on the Ray cluster at `ray_address`;
    returns their summaries in job order. The first failure stops the rest (runs already done
    stay, resumable) and is raised here."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise FedquadError(f"--workers must be a whole number >= 1, got {workers!r}")
    if not jobs:
        return []
    started = time.perf_counter()
    where = f"the Ray cluster at {ray_address}" if ray_address else f"{min(workers, len(jobs))} worker processes"
    if show_progress:
        print(f"{len(jobs)} runs on {where}", file=sys.stderr, flush=True)
    done: dict[int, dict] = {}

    def finished(i: int, result: dict) -> None:
        done[i] = result
        if show_progress:
            print(_line(len(done), len(jobs), result, started), file=sys.stderr, flush=True)

    if ray_address:
        _run_ray(jobs, ray_address, finished)
    elif workers == 1:
        for i, job in enumerate(jobs):
            finished(i, run_job(job))
    else:
        _run_pool(jobs, workers, finished)
    return [done[i] for i in range(len(jobs))]


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Pool-worker initializer: end this process when the process that started it dies.

    A comparison killed by a signal (a scheduler's timeout, `kill`) runs no clean-up, and
    ProcessPoolExecutor's workers would go on training and writing into the output folder -- a
    folder the user may already be re-running into. On Linux the kernel delivers SIGTERM to the
    worker (prctl PR_SET_PDEATHSIG); elsewhere, and as a backstop, a daemon thread sees the parent
    change and exits."""
    import multiprocessing
    import threading

    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_pool(jobs: list[RunJob], workers: int, finished) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = str(max(j.threads for j in jobs))
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: threads for k in saved})  # spawned workers read them before torch starts
    try:
        # spawn, not fork: a forked copy of a process that already ran torch threads can deadlock
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent) as pool:
            futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
            pending = set(futures)
            while pending:
                ready, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    finished(futures[future], future.result())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_ray(jobs: list[RunJob], address: str, finished) -> None:
    try:
        import ray
    except ImportError:
        raise FedquadError("--ray-address needs Ray: pip install 'fedquad[ray]'") from None
    ours = not ray.is_initialized()
    if ours:
        try:
            ray.init(address=address, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(j.threads for j in jobs))}})
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise FedquadError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    try:
        remote = ray.remote(run_job)
        refs = {remote.options(num_cpus=job.threads).remote(job): i for i, job in enumerate(jobs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(ready[0])
            except Exception as exc:
                for ref in pending:
                    ray.cancel(ref)
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, FedquadError) else exc) from None
            finished(refs[ready[0]], result)
    finally:
        if ours:
            ray.shutdown()
