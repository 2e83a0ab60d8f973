"""Where host time goes in one simulated round of the SST-2 reference (issue 9, item 4).

Times, in one process on the reference's model and data (`benchmarks/sst2_reference/config.json`):

* central evaluation: the full dev split vs fixed seeded subsets, under `torch.no_grad` (the old
  evaluation) and `torch.inference_mode` (now), median of `--repeats` calls;
* one client's local training (8 steps of 16 at full depth, fp32), the unit a round repeats
  `clients_per_round` times;
* padding: the mean padded width of the training batches as the simulator builds them
  (dynamic: the batch's longest example) against `max_len`.

From those it prints host seconds per strategy-round = clients x client-train + eval (every round).
The numbers depend on how loaded the machine is; run it alone (OMP_NUM_THREADS=1).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/host_time.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "sst2_reference", "config.json")


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subsets", default="500,300", help="evaluation subset sizes to time")
    args = parser.parse_args(argv)
    from fedquad.client import LocalTrainConfig, train_local
    from fedquad.datasets.batching import BatchConfig, batch_order
    from fedquad.plan import ClientPlan
    from fedquad.sim.config import load_config
    from fedquad.sim.round import local_batches
    from fedquad.sim.workload import load_model_and_data
    from fedquad.tasks.classification import evaluate_classification

    config = load_config(REFERENCE)
    start = time.perf_counter()
    adapted, train_tokens, eval_tokens, labels = load_model_and_data(config)
    load_s = time.perf_counter() - start
    out = {"threads": torch.get_num_threads(), "load_model_and_data_s": round(load_s, 2), "eval_s": {}}
    plain = evaluate_classification.__wrapped__  # the undecorated body, run under no_grad for the old way
    for n in [None, *[int(x) for x in args.subsets.split(",") if x]]:
        size = len(eval_tokens) if n is None else n
        def old():
            with torch.no_grad():
                plain(adapted, eval_tokens, batch_size=64, max_examples=n, seed=config.seed)
        new = lambda: evaluate_classification(adapted, eval_tokens, batch_size=64, max_examples=n, seed=config.seed)
        out["eval_s"][str(size)] = {"no_grad": round(_timed(old, args.repeats), 2),
                                    "inference_mode": round(_timed(new, args.repeats), 2)}
    state = adapted.adapter_state()
    idx = np.arange(0, len(train_tokens), 24)[:400]  # one device's worth of examples
    plan = ClientPlan(depth=adapted.num_blocks)
    cfg = LocalTrainConfig(learning_rate=config.learning_rate, local_steps=config.local_steps)
    train = lambda: train_local(adapted, state, plan, local_batches(train_tokens, idx, config, "probe", 0), cfg)
    out["client_train_s_full_depth"] = round(_timed(train, args.repeats), 2)
    widths = [int(train_tokens.lengths[b].max()) for b in batch_order(train_tokens.lengths, np.arange(len(train_tokens)),
                                                                       BatchConfig(config.batch_size, seed=0))]
    out["padded_width"] = {"dynamic_mean": round(float(np.mean(widths)), 1), "fixed": config.max_len,
                           "mean_example_length": round(float(train_tokens.lengths.mean()), 1)}
    k = config.clients_per_round
    full, sub = out["eval_s"][str(len(eval_tokens))], out["eval_s"].get(args.subsets.split(",")[0])
    out["host_s_per_strategy_round"] = {
        "before (full dev split every 2nd round, no_grad)": round(k * out["client_train_s_full_depth"]
                                                                  + full["no_grad"] / 2, 2),
        "full dev split every round, no_grad": round(k * out["client_train_s_full_depth"] + full["no_grad"], 2),
    }
    if sub is not None:
        out["host_s_per_strategy_round"][f"after (subset {args.subsets.split(',')[0]} every round, inference_mode)"] = \
            round(k * out["client_train_s_full_depth"] + sub["inference_mode"], 2)
    out["command"] = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/host_time.py " + " ".join(sys.argv[1:])
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
