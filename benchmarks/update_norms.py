"""How close real LoRA updates come to the aggregation's norm bound (issue 13 item 9).

    .venv/bin/python benchmarks/update_norms.py [--models tiny-bert,minilm] [--task sst2]
        [--strategies fedlora,hetlora,fedquad] [--rounds 6] [--learning-rate 1e-3] [--json]

Runs short real federated runs (the simulator's round step, real training on this machine) and,
before every merge, measures each returned tensor against its bound max(max_norm_ratio x
||global||, norm_floor_rms x sqrt(elements)) with the default `AggregationConfig`. Prints, per
model and strategy, how many tensors were checked, how many the guards rejected, the largest
use of the bound (||update|| / bound; 1.0 = at the bound), the largest ||update|| / ||global||
where the global tensor is non-zero and the largest root-mean-square of an update whose global
tensor is zero (LoRA B in the first round: what the floor must allow).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

from fedquad.aggregation import AggregationConfig, norm_bound, tensor_norm
from fedquad.sim.config import SimConfig
from fedquad.sim.round import FederatedAlgorithm
from fedquad.sim.runner import make_strategy
from fedquad.sim.workload import build_workload


def recording(strategy, stats: dict):
    """The strategy with its merge wrapped: every returned tensor measured first."""
    merge = strategy.aggregate
    config = strategy.aggregation_config()

    def aggregate(ctx, global_state, outcomes, state):
        for o in outcomes:
            if o.status != "ok":
                continue
            for key, value in o.update.items():
                g, u = tensor_norm(global_state[key]), tensor_norm(value)
                stats["tensors"] += 1
                stats["max_bound_use"] = max(stats["max_bound_use"], u / norm_bound(global_state[key], config))
                if g > 0:
                    stats["max_ratio_to_global"] = max(stats["max_ratio_to_global"], u / g)
                else:
                    stats["max_rms_from_zero"] = max(stats["max_rms_from_zero"], u / math.sqrt(value.numel()))
        new, report = merge(ctx, global_state, outcomes, state)
        stats["rejected"] += len(report.rejected)
        stats["reasons"] += [list(r.reasons) for r in report.rejected]
        return new, report

    strategy.aggregate = aggregate
    return strategy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny-bert,minilm")
    p.add_argument("--task", default="sst2")
    p.add_argument("--strategies", default="fedlora,hetlora,fedquad")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--clients-per-round", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()

    defaults = AggregationConfig()
    results = []
    for model in args.models.split(","):
        profile = "minilm-b16-s64" if model == "minilm" else None  # tiny-bert: measured at start (seconds)
        with tempfile.TemporaryDirectory() as out_dir:
            base = SimConfig(model=model, task=args.task, train_examples=1000, eval_examples=64, max_len=64,
                             rounds=args.rounds, clients_per_round=args.clients_per_round,
                             local_steps=args.local_steps, learning_rate=args.learning_rate, profile=profile,
                             scenario="jetson-headroom")
            workload = build_workload(base, out_dir, show_progress=False)
            for name in args.strategies.split(","):
                config = base.replace(strategy=name)
                stats = {"model": model, "strategy": name, "tensors": 0, "rejected": 0, "max_bound_use": 0.0,
                         "max_ratio_to_global": 0.0, "max_rms_from_zero": 0.0, "reasons": []}
                algo = FederatedAlgorithm(workload, recording(make_strategy(config), stats))
                state, start = algo.init(), time.perf_counter()
                for _ in range(args.rounds):
                    state, _ = algo.apply(state, algo.sample_clients(state.round_index))
                stats["seconds"] = round(time.perf_counter() - start, 1)
                results.append(stats)
                if not args.json:
                    print(f"{model:10s} {name:9s} tensors {stats['tensors']:5d}  rejected {stats['rejected']}  "
                          f"max bound use {stats['max_bound_use']:.4f}  max |u|/|g| "
                          f"{stats['max_ratio_to_global']:.3f}  max rms from zero {stats['max_rms_from_zero']:.5f}  "
                          f"({stats['seconds']} s)", flush=True)
    if args.json:
        print(json.dumps({"config": {**vars(args), "max_norm_ratio": defaults.max_norm_ratio,
                                     "norm_floor_rms": defaults.norm_floor_rms}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
