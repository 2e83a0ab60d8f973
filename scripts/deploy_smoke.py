#!/usr/bin/env python3
"""Deployment smoke: a real Flower SuperLink and three SuperNodes with different memory budgets on
loopback run fedquad for three rounds on a tiny model. Prints each node's plan per round, stops
every process it started by its PID (also on failure or Ctrl-C) and prints its wall time.

    python scripts/deploy_smoke.py [--rounds 3] [--strategy fedquad] [--workdir DIR] [--keep]

Exit status 0 when every round completed, the run finished and no process is left behind.
Insecure transport (loopback only); docs/deployment.md shows TLS and SuperNode authentication.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the local-federation tooling lives there
from local_federation import LocalFederation, write_app_dir  # noqa: E402

# Three devices of different classes and memory budgets (fraction of the model's full-depth
# footprint, the cost model's unit: 1.0 fits full-depth LoRA without quantization).
NODES = [
    {"device-class": "jetson-tx2", "memory-budget-fraction": 0.72},
    {"device-class": "jetson-orin-nano", "memory-budget-fraction": 0.8},
    {"device-class": "jetson-agx-orin", "memory-budget-fraction": 1.1},
]


def describe_round(report: dict) -> list[str]:
    lines = []
    for d in report["devices"]:
        plan = d.get("plan")
        if plan is None:
            text = "sits out"
        else:
            text = f"d={plan['depth']}" + (f" q={plan['quant_layers']}@int{plan['bits']}" if plan["quant_layers"] else "")
        measured = "" if d.get("measured_bytes") is None else f", measured {d['measured_bytes'] / 2**20:.2f} MiB"
        loss = "" if d.get("loss") is None else f", loss {d['loss']:.4f}"
        failure = f" ({d['failure']})" if d.get("failure") else ""
        lines.append(f"  node {d.get('node_id')} {d['device_id']:<22} budget {d['budget_bytes'] / 2**20:6.2f} MiB  "
                     f"plan {text:<14} -> {d['status']}{failure}{loss}{measured}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategy", default="fedquad")
    parser.add_argument("--model", default="tiny-bert")
    parser.add_argument("--workdir", help="work folder (default: a new temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, checkpoint, adapter)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the run may take at most")
    parser.add_argument("--compile", action="store_true",
                        help="let each ClientApp process compile the quantizer (slower start, faster steps)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix="fedquad-smoke-")
    run_dir = os.path.join(workdir, "run")
    ok = False
    extra_env = {} if args.compile else {"FEDQUAD_QUANT_COMPILE": "0"}
    fed = LocalFederation(workdir, extra_env=extra_env)
    try:
        fed.start_superlink()
        print(f"SuperLink on {fed.address} (pid {fed.procs[0].pid})")
        for i, node in enumerate(NODES):
            config = {"partition-id": i, "num-partitions": len(NODES), **node}
            proc = fed.start_supernode(f"n{i}", config)
            print(f"SuperNode {i} (pid {proc.pid}): {config}")
        app_dir = write_app_dir(os.path.join(workdir, "app"))
        run_id = fed.run_app(app_dir, {
            "strategy": args.strategy, "model": args.model, "task": "synthetic", "rounds": args.rounds,
            "train-examples": 600, "eval-examples": 128, "max-len": 24, "batch-size": 8, "local-steps": 2,
            "eval-every": 1, "run-dir": run_dir, "min-nodes": len(NODES), "profile-repeats": 1,
            "round-timeout": 300.0})
        print(f"run {run_id} started; run dir {run_dir}")
        printed = set()

        def show_rounds() -> None:
            try:
                with open(os.path.join(run_dir, "history.json")) as f:
                    history = json.load(f)
            except (OSError, json.JSONDecodeError):
                return
            for h in history:
                if h["round"] >= 0 and h["round"] not in printed:
                    printed.add(h["round"])
                    acc = "" if h.get("accuracy") is None else f", accuracy {h['accuracy']:.4f}"
                    print(f"round {h['round']}: {h['round_time_s']:.1f} s{acc}")
                    print("\n".join(describe_round(h)), flush=True)
            for proc in fed.procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")

        status = fed.wait_run(run_id, timeout=args.timeout, on_poll=show_rounds)
        show_rounds()
        print(f"run {run_id}: {status}")
        server_log = fed.run_log(run_id)
        with open(os.path.join(workdir, "logs", "serverapp.log"), "w") as f:
            f.write(server_log)
        if status != "finished:completed" or len(printed) != args.rounds:
            print(server_log[-6000:], file=sys.stderr)
            raise RuntimeError(f"run ended {status} after {len(printed)} of {args.rounds} rounds")
        with open(os.path.join(run_dir, "final.json")) as f:
            final = json.load(f)
        print(f"final accuracy {final['accuracy']}, adapter in {final['adapter']}")
        ok = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except Exception as exc:
        print(f"smoke failed: {exc}", file=sys.stderr)
    finally:
        fed.stop()
        left = fed.leftover_pids()
        print(f"stopped {len(fed.procs)} processes by PID: "
              + ", ".join(f"{p.name}={p.pid}" for p in fed.procs) + ("" if not left else f"; STILL RUNNING: {left}"))
        ok = ok and not left
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif ok or args.keep:
            print(f"work folder kept: {workdir}")
        print(f"smoke {'passed' if ok else 'FAILED'}: wall time {time.perf_counter() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
