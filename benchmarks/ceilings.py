"""Ceilings for the SST-2 reference (issue 9, item 1): what accuracy is reachable at all.

Two accuracy-vs-steps curves on the reference's own model, training examples and evaluation
data (`benchmarks/sst2_reference/config.json`, with its seed):

* `central`: centralised LoRA fine-tuning, all blocks and the head trained, one AdamW run
  over the reference's training subset (IID batches of `batch_size`), no memory limit. x = optimizer steps.
* `iid-fedlora`: FedLoRA on an IID split of the same examples over the reference's number of
  devices, `clients_per_round` clients x `local_steps` steps per round, every client at full
  depth (no memory limits), updates averaged by examples (FedAvg; the simulator's own client
  code, `train_local`, and batch streams). x = rounds (and client steps = rounds x clients x steps).

Writes `<out>/<which>.json` (settings, curve, plateau) and `<out>/<which>.png`. The plateau is
the mean accuracy over the last `--plateau-points` evaluations. Keep each run under 10 minutes on
a shared 2-core box: the defaults evaluate on a fixed seeded subset (`--eval-examples`), and the
JSON names the evaluation data used.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ceilings.py central --steps 384 --eval-every 32
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ceilings.py iid-fedlora --rounds 24
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "sst2_reference", "config.json")
OUT = os.path.join(HERE, "sst2_reference", "ceilings")


def _load(args):
    from fedquad.datasets import load_task_data
    from fedquad.sim.config import load_config
    from fedquad.sim.workload import data_settings, load_model_and_data
    config = load_config(args.config, [f"eval_examples={json.dumps(args.eval_examples)}", *args.set])
    adapted, train_tokens, eval_tokens, labels = load_model_and_data(config)
    source = load_task_data(config.task, data_settings(config), data_root=config.data_root).eval_source
    return config, adapted, train_tokens, eval_tokens, labels, source


def _evaluate(adapted, eval_tokens, config) -> dict:
    from fedquad.evaluation import evaluate
    return evaluate(adapted, None, eval_tokens, batch_size=64, max_examples=config.eval_examples, seed=config.seed)


def _save_partial(which, args, config, source, curve, x, host_s, extra) -> None:
    """The result so far (`"partial": true`), rewritten after every evaluation: a run killed by a
    timeout on a loaded box keeps the curve it measured."""
    _write(args, {**_result(which, args, config, source, curve, x, host_s, extra), "partial": True})


def _write(args, result: dict) -> None:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{result['ceiling']}.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(args.out, f"{result['ceiling']}.png"))


def run_central(args) -> dict:
    from fedquad.datasets import BatchConfig, iterate_batches
    config, adapted, train_tokens, eval_tokens, _, source = _load(args)
    torch.manual_seed(config.seed)
    adapted.model.train()
    params = [p for p in adapted.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    curve = [{"step": 0, **_evaluate(adapted, eval_tokens, config)}]
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        for batch in iterate_batches(train_tokens, BatchConfig(config.batch_size, seed=config.seed), epoch=epoch):
            adapted.model.train()
            loss = adapted.model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # as the clients do (LocalTrainConfig.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                curve.append({"step": step, "train_loss": float(loss.detach()), **_evaluate(adapted, eval_tokens, config)})
                print(f"step {step}: acc {curve[-1]['accuracy']:.3f} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr)
                _save_partial("central", args, config, source, curve, "step", time.perf_counter() - start,
                              {"examples_seen": step * config.batch_size, "train_examples": len(train_tokens)})
            if step >= args.steps or (step % args.eval_every == 0 and time.perf_counter() - start > args.max_host_s):
                break
        epoch += 1
        if time.perf_counter() - start > args.max_host_s:
            break
    return _result("central", args, config, source, curve, "step", time.perf_counter() - start,
                   {"examples_seen": step * config.batch_size, "train_examples": len(train_tokens)})


def run_iid_fedlora(args) -> dict:
    from fedquad.aggregation import weighted_mean
    from fedquad.client import LocalTrainConfig, train_local
    from fedquad.plan import ClientPlan
    from fedquad.sim.round import derive_seed, local_batches
    from fedquad.sim.workload import partition_examples
    config, adapted, train_tokens, eval_tokens, labels, source = _load(args)
    config = config.replace(partition_alpha=None)
    devices = args.devices
    parts = partition_examples(config, labels, devices)
    plan = ClientPlan(depth=adapted.num_blocks)  # full depth, fp32: no memory limit
    state = adapted.adapter_state()
    curve = [{"round": 0, "client_steps": 0, **_evaluate(adapted, eval_tokens, config)}]
    start = time.perf_counter()
    for r in range(args.rounds):
        rng = np.random.default_rng([config.seed, r, 0x11D])
        picked = sorted(rng.choice(devices, config.clients_per_round, replace=False).tolist())
        updates, weights = [], []
        for d in picked:
            train_config = LocalTrainConfig(learning_rate=config.learning_rate, local_steps=config.local_steps,
                                            seed=derive_seed("train", config.seed, r, d) % 2**31)
            result = train_local(adapted, state, plan, local_batches(train_tokens, parts[d], config, f"iid-{d}", r),
                                 train_config)
            updates.append(result.update)
            weights.append(float(len(parts[d])))
        state = {k: weighted_mean([u[k] for u in updates], weights) if k in updates[0] else v
                 for k, v in state.items()}
        adapted.load_adapter_state(state)
        if (r + 1) % args.eval_every == 0 or r + 1 == args.rounds:
            steps = (r + 1) * config.clients_per_round * config.local_steps
            curve.append({"round": r + 1, "client_steps": steps, **_evaluate(adapted, eval_tokens, config)})
            print(f"round {r + 1}: acc {curve[-1]['accuracy']:.3f} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
            _save_partial("iid-fedlora", args, config, source, curve, "round", time.perf_counter() - start,
                          {"devices": devices, "partition": "IID", "depth": plan.depth})
            if time.perf_counter() - start > args.max_host_s:
                break
    return _result("iid-fedlora", args, config, source, curve, "round", time.perf_counter() - start,
                   {"devices": devices, "partition": "IID", "depth": plan.depth})


def _result(which, args, config, source, curve, x, host_s, extra) -> dict:
    tail = [c["accuracy"] for c in curve[1:]][-args.plateau_points:]
    keys = ("model", "task", "train_examples", "eval_examples", "max_len", "batch_size", "lora_rank",
            "learning_rate", "local_steps", "clients_per_round", "seed")
    return {"ceiling": which, "x": x, "settings": {k: getattr(config, k) for k in keys}, **extra,
            "eval_source": source + (f", fixed seeded subset of {config.eval_examples}" if config.eval_examples
                                     else ", all of it"),
            "plateau_accuracy": float(np.mean(tail)) if tail else None, "plateau_points": len(tail),
            "best_accuracy": max(c["accuracy"] for c in curve), "host_s": round(host_s, 1),
            "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ceilings.py " + " ".join(sys.argv[1:]),
            "curve": curve}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [c[result["x"]] for c in result["curve"]]
    ys = [100 * c["accuracy"] for c in result["curve"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, ys, marker="o", ms=3)
    if result["plateau_accuracy"] is not None:
        ax.axhline(100 * result["plateau_accuracy"], ls="--", c="grey",
                   label=f"plateau {100 * result['plateau_accuracy']:.1f}% (last {result['plateau_points']})")
        ax.legend(loc="lower right")
    ax.set_xlabel({"step": "optimizer steps", "round": "rounds"}[result["x"]])
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['ceiling']} ceiling: {result['settings']['model']} on {result['settings']['task']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=("central", "iid-fedlora"))
    parser.add_argument("--config", default=REFERENCE)
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--steps", type=int, default=384, help="central: optimizer steps")
    parser.add_argument("--rounds", type=int, default=24, help="iid-fedlora: rounds")
    parser.add_argument("--devices", type=int, default=24, help="iid-fedlora: devices the data is split over")
    parser.add_argument("--eval-every", type=int, default=None, help="steps (central) or rounds between evaluations")
    parser.add_argument("--eval-examples", type=int, default=500, help="fixed seeded evaluation subset (0 = all)")
    parser.add_argument("--plateau-points", type=int, default=3)
    parser.add_argument("--max-host-s", type=float, default=540.0,
                        help="stop at the first evaluation after this many host seconds (a shared box is slow)")
    args = parser.parse_args(argv)
    args.eval_examples = args.eval_examples or None
    if args.eval_every is None:
        args.eval_every = 32 if args.which == "central" else 2
    result = run_central(args) if args.which == "central" else run_iid_fedlora(args)
    _write(args, result)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
