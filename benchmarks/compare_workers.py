"""Host time of a small `fedquad compare` on the SST-2 reference settings, one process against
`--workers N` (issue 9, item 4): wall seconds, host seconds per strategy-round (wall / runs x
rounds), the runners' own host seconds per round, and whether the two give the same histories.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_workers.py --workers 2
    # smaller, for a loaded machine:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_workers.py --workers 2 --rounds 2 \
        --train-examples 1000 --eval-examples 200 --set clients_per_round=3 --set local_steps=4

Settings: benchmarks/sst2_reference/config.json with fewer rounds and examples (see --set below);
two strategies x two seeds. The numbers depend on how loaded the machine is (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from fedquad.sim.workers import run_histories

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "sst2_reference", "config.json")
FEDQUAD = os.path.join(os.path.dirname(sys.executable), "fedquad")


def _run(args, out: str, workers: int) -> dict:
    command = [FEDQUAD, "compare", "--config", REFERENCE, "--set", f"rounds={args.rounds}",
               "--set", f"train_examples={args.train_examples}", "--set", f"eval_examples={args.eval_examples}",
               "--set", "eval_every=1", "--strategies", args.strategies, "--seeds", args.seeds,
               "--target-accuracy", "0.6", "--out", out, "--quiet", "--workers", str(workers)]
    for item in args.set:
        command[4:4] = ["--set", item]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    runs = len(args.strategies.split(",")) * len(args.seeds.split(","))
    per_round = []
    for seed in args.seeds.split(","):
        with open(os.path.join(out, f"seed-{seed}", "comparison.json")) as f:
            per_round += [s["host_s_per_round"] for s in json.load(f)["strategies"].values()]
    return {"workers": workers, "wall_s": round(wall, 1), "runs": runs,
            "wall_s_per_strategy_round": round(wall / (runs * args.rounds), 2),
            "runner_host_s_per_round_mean": round(sum(per_round) / len(per_round), 2),
            "command": " ".join(command)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--strategies", default="fedquad,depth-only")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more settings for both runs, e.g. --set clients_per_round=3")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="compare_workers_")
    try:
        rows = [_run(args, os.path.join(tmp, "serial"), 1), _run(args, os.path.join(tmp, "workers"), args.workers)]
        same = run_histories(os.path.join(tmp, "serial")) == run_histories(os.path.join(tmp, "workers"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count(), "same_histories": same,
                      "rows": rows}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
