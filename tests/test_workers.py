"""`compare --workers N` and `--ray-address`: (strategy, seed) runs fanned out over processes or a
Ray cluster give the serial loop's histories, in the usual run folders (so a resume works)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import quick_profile

from fedquad.errors import FedquadError
from fedquad.sim.workers import Fanout, run_histories, run_jobs


def _common(profile) -> list[str]:
    return ["--set", "model=tiny-bert", "--set", "task=synthetic", "--set", "train_examples=240",
            "--set", "eval_examples=32", "--set", "max_len=24", "--set", "batch_size=8", "--set", "rounds=2",
            "--set", "clients_per_round=3", "--set", "local_steps=1", "--set", "eval_every=1",
            "--set", "scenario=jetson-headroom", "--set", f"profile={profile}",
            "--strategies", "fedquad,fedlora", "--target-accuracy", "0.01", "--quiet"]


def test_fanout_settings_are_checked_in_one_line(capsys):
    for bad in ({"workers": 0}, {"threads": 0}, {"workers": True}, {"ray_address": " "}):
        with pytest.raises(FedquadError):
            Fanout(**bad)
    assert not Fanout().parallel and Fanout(workers=2).parallel and Fanout(ray_address="auto").parallel
    assert run_jobs([], workers=3) == []
    from fedquad.cli.main import main
    assert main(["compare", "--workers", "0", "--strategies", "fedquad", "--out", "/nonexistent/x", "--quiet"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["compare", "--report-only", "--workers", "2", "--out", "/nonexistent/x", "--quiet"]) == 2
    assert "--report-only" in capsys.readouterr().err


@pytest.mark.integration
def test_workers_give_the_serial_histories_and_resume(tmp_path):
    from fedquad.cli.main import main
    profile = quick_profile(tmp_path, "tiny-bert", 8, 24)
    common = _common(profile) + ["--seeds", "0,1"]
    assert main(["compare", *common, "--out", str(tmp_path / "serial")]) == 0
    assert main(["compare", *common, "--out", str(tmp_path / "par"), "--workers", "2"]) == 0
    serial, par = run_histories(tmp_path / "serial"), run_histories(tmp_path / "par")
    assert set(par) == {"seed-0/fedquad", "seed-0/fedlora", "seed-1/fedquad", "seed-1/fedlora"}
    assert par == serial
    for seed in (0, 1):  # the RunRecorder layout: a resume finds every run finished
        assert (tmp_path / "par" / f"seed-{seed}" / "fedquad" / "checkpoint" / "state.json").is_file()
    strip = lambda s: {n: {k: v for k, v in r.items() if k != "host"} for n, r in s["strategies"].items()}  # noqa
    summary = json.loads((tmp_path / "par" / "seeds.json").read_text())
    assert strip(summary) == strip(json.loads((tmp_path / "serial" / "seeds.json").read_text()))
    kept = (tmp_path / "par" / "seed-1" / "fedlora" / "checkpoint" / "state.json").stat().st_mtime_ns
    assert main(["compare", "--resume", str(tmp_path / "par"), "--workers", "2", "--quiet"]) == 0
    assert (tmp_path / "par" / "seed-1" / "fedlora" / "checkpoint" / "state.json").stat().st_mtime_ns == kept
    # a resume that extends the runs continues them in the workers, as the serial resume does
    assert main(["compare", "--resume", str(tmp_path / "serial"), "--set", "rounds=3", "--quiet"]) == 0
    assert main(["compare", "--resume", str(tmp_path / "par"), "--set", "rounds=3", "--workers", "2", "--quiet"]) == 0
    assert run_histories(tmp_path / "par") == run_histories(tmp_path / "serial")


@pytest.mark.integration
def test_ray_local_instance_gives_the_serialrun_histories(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fedquad[ray]')")
    from fedquad.cli.main import main
    profile = quick_profile(tmp_path, "tiny-bert", 8, 24)
    assert main(["compare", *_common(profile), "--out", str(tmp_path / "serial")]) == 0
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["compare", *_common(profile), "--out", str(tmp_path / "ray"), "--ray-address", "local"]) == 0
    finally:
        ray.shutdown()
    assert run_histories(tmp_path / "ray") == run_histories(tmp_path / "serial")
    assert set(run_histories(tmp_path / "ray")) == {"fedquad", "fedlora"}


_ORPHAN_SCRIPT = """
import multiprocessing, os, time
from concurrent.futures import ProcessPoolExecutor
from fedquad.sim.workers import exit_with_parent
if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent)
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def test_pool_workers_end_when_the_comparison_is_killed(tmp_path):
    """A `compare --workers N` killed by a signal must not leave workers writing into its folder."""
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(worker, 0)  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            _reap(worker)
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the pool worker outlived its killed parent")
    finally:
        parent.kill()


def _reap(pid: int) -> None:
    """An exited worker stays a zombie (and answers kill 0) until its new parent reaps it; where
    that is this process (pid 1 or a subreaper in a container), reap it here."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
