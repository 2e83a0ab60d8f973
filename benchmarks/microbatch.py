"""What a micro-batched step costs: one local step of a batch run whole vs as k micro-batches.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/microbatch.py [--model minilm] [--batch-size 16]
        [--seq-len 64] [--splits 1 2 4] [--repeats 10] [--json]

Per plan (full depth unquantized, full depth int8) and split count k, one training step as the
client runs it (`accumulated_step` -- forward and backward per micro-batch, gradients
accumulated -- then clipping and the AdamW step), timed `--repeats` times with the split counts
interleaved (so drift on a shared machine hits each alike); medians and minima are reported, with
the ratio to the unsplit step and the step's saved activations (kept bytes of the largest
micro-batch: what splitting saves). Also timed: the client's split decision from the shipped
profile's predictor (`StepMemory.from_profile(...).micro_batch_sizes`) for a new shape and a
seen one, i.e. what the client pays per step when nothing is split.

The question it answers (issue 10, item 4): should the simulator's clock charge a split step
more than an unsplit one? The compute is the same; what differs is per-forward overhead (kernel
launches, hooks, Python) paid k times, and smaller matrix products.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fedquad.client import PlanRuntime, QuantSettings, StepMemory
from fedquad.client.train import _clear_grads, accumulated_step
from fedquad.diagnostics.memory import generated_batch, perturb_adapters
from fedquad.models import load_model
from fedquad.plan import ClientPlan


def _sizes(batch_size: int, k: int) -> list[int]:
    base, extra = divmod(batch_size, k)
    return [base + 1] * extra + [base] * (k - extra)


def time_plan(adapted, plan: ClientPlan, batch: dict, splits: list[int], repeats: int) -> dict:
    quant = QuantSettings(bits=plan.bits)
    adapted.model.train()
    out = {}
    with PlanRuntime(adapted, plan, quant) as runtime:
        params = runtime.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        saved = {}

        def step(k: int) -> float:
            start = time.perf_counter()
            accumulated_step(adapted, runtime, batch, _sizes(batch["input_ids"].shape[0], k))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            saved[k] = sum(b.kept_bytes for b in runtime.block_bytes()) + runtime.outside_bytes().kept_bytes
            return elapsed

        for k in splits:  # warm-up: allocator, quantizer build, first-call paths
            step(k)
        times = {k: [] for k in splits}
        for _ in range(repeats):
            for k in splits:
                times[k].append(step(k))
        _clear_grads(adapted)
    base = statistics.median(times[splits[0]])
    for k in splits:
        med = statistics.median(times[k])
        out[str(k)] = {"micro_batches": k, "median_s": med, "min_s": min(times[k]),
                       "ratio_to_unsplit": med / base, "saved_kept_bytes_per_micro_batch": saved[k]}
    return out


def time_decision(plan: ClientPlan, batch_size: int, seq_len: int) -> dict:
    from fedquad.costmodel import load_profile, predict_step_peak_bytes
    profile = load_profile("minilm-b16-s64")
    budget = predict_step_peak_bytes(profile, plan, batch_size, seq_len)  # fits exactly: no split
    memory = StepMemory.from_profile(profile, plan, budget)
    start = time.perf_counter()
    memory.micro_batch_sizes(batch_size, seq_len + 7)  # an unseen length: builds that shape's cost model
    new_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(100):
        memory.micro_batch_sizes(batch_size, seq_len)
    seen_s = (time.perf_counter() - start) / 100
    return {"decision_new_shape_s": new_s, "decision_seen_shape_s": seen_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.splits[0] != 1:
        args.splits = [1] + [k for k in args.splits if k != 1]
    adapted = load_model(args.model, task="seq-cls", with_tokenizer=False)
    perturb_adapters(adapted)
    batch = generated_batch(adapted, args.batch_size, args.seq_len, seed=0)
    L = adapted.num_blocks
    result = {"model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "plans": {}}
    for plan in (ClientPlan(L), ClientPlan(L, L, 8)):
        result["plans"][plan.describe()] = time_plan(adapted, plan, batch, args.splits, args.repeats)
    if args.model == "minilm":
        result["decision"] = time_decision(ClientPlan(L), args.batch_size, args.seq_len)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model} {args.batch_size}x{args.seq_len}, {result['threads']} thread(s), {args.repeats} repeats")
    for name, rows in result["plans"].items():
        for row in rows.values():
            print(f"  {name:>28}  k={row['micro_batches']}: median {row['median_s'] * 1e3:7.1f} ms "
                  f"(min {row['min_s'] * 1e3:7.1f}), x{row['ratio_to_unsplit']:.3f}, "
                  f"saved {row['saved_kept_bytes_per_micro_batch'] / 2**20:6.1f} MiB per micro-batch")
    if "decision" in result:
        d = result["decision"]
        print(f"  split decision: new shape {d['decision_new_shape_s'] * 1e3:.2f} ms, "
              f"seen shape {d['decision_seen_shape_s'] * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
