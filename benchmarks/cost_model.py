"""Cost model against measurement on MiniLM: saved bytes and step time for every plan.

    .venv/bin/python benchmarks/cost_model.py [--batch-size 16] [--seq-len 64] [--repeats 5]

1. Profile MiniLM at this shape (`fedquad profile`'s code path).
2. For every plan (depth 0..L, quant_layers 0..depth, bits 8 and 4; bottom placement):
   * saved bytes as `fedquad memory` measures them (probe_memory: kept bytes of the blocks plus
     bytes saved outside them), against the cost model's prediction from the profile;
   * step time (forward + backward + AdamW step), median of `--repeats` steps, the plans stepped
     round-robin in a shuffled order (a separate run from the profile's own steps), against the
     cost model's step time at speed 1.
3. Print the table and the worst errors; write docs/bench_cost_model.md.

Goals (docs/design.md, "Cost model"): bytes within 5%, step time within 25%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _util import machine_line, markdown_table, write_doc  # noqa: E402

from fedquad.client.saved_activations import QuantSettings  # noqa: E402
from fedquad.costmodel import cost_model, profile_from_dict  # noqa: E402
from fedquad.diagnostics.memory import generated_batch, perturb_adapters, sweep  # noqa: E402
from fedquad.diagnostics.profile import measure_plans, profile_model  # noqa: E402
from fedquad.models import load_model  # noqa: E402
from fedquad.plan import DEFAULT_GROUP_SIZE, ClientPlan  # noqa: E402

BYTES_GOAL, TIME_GOAL = 0.05, 0.25


def all_plans(L: int) -> list[ClientPlan]:
    plans = [ClientPlan(d, q, 8) for d in range(L + 1) for q in range(d + 1)]
    plans += [ClientPlan(d, q, 4) for d in range(1, L + 1) for q in range(1, d + 1)]
    return plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, help="as `fedquad profile`'s default")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per plan in the check (median)")
    ap.add_argument("--profile-repeats", type=int, default=7, help="timed steps per plan in the profile")
    ap.add_argument("--statistic", default="median", choices=["median", "min"],
                    help="per-plan summary the profile fits (`fedquad profile --statistic`)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for the whole run")
    ap.add_argument("--save-profile", default=None, metavar="PATH",
                    help="also write the profile JSON (what `fedquad profile` with the same options writes)")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/bench_cost_model.md")
    args = ap.parse_args()

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    adapted = load_model(args.model, with_tokenizer=False)
    perturb_adapters(adapted)
    batch = generated_batch(adapted, args.batch_size, args.seq_len)
    quant = QuantSettings(group_size=args.group_size)
    L = adapted.num_blocks

    t0 = time.perf_counter()
    data = profile_model(adapted, batch, quant=quant, repeats=args.profile_repeats, warmup=1, seed=0,
                         statistic=args.statistic)
    profile_s = time.perf_counter() - t0
    profile = profile_from_dict(data)
    cm = cost_model(profile)
    if args.save_profile:
        with open(args.save_profile, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        print(f"wrote {args.save_profile}")
    print(f"profiled in {profile_s:.0f} s; fit residual max {data['timing']['max_abs_rel_residual']:.1%}",
          flush=True)

    # bytes: the `fedquad memory` probe
    t0 = time.perf_counter()
    measured_bytes = {}
    for bits in (8, 4):
        for report in sweep(adapted, bits, batch, quant):
            measured_bytes[report.plan] = report.kept_bytes + report.outside_bytes
    # times: a fresh interleaved run over every plan (seed 1: another order than the profile's)
    plans = all_plans(L)
    timed = measure_plans(adapted, batch, plans, quant=quant, repeats=args.repeats, warmup=1, seed=1)
    check_s = time.perf_counter() - t0

    rows, byte_err, time_err = [], [], []
    for plan in plans:
        mb = measured_bytes[plan]
        pb = cm.saved_bytes(plan)
        m = timed[plan]
        mt = m.median_s
        pt = cm.step_time_s(plan)
        q1, _, q3 = statistics.quantiles(m.times_s, n=4) if len(m.times_s) > 1 else (mt, mt, mt)
        eb, et = (pb - mb) / mb if mb else 0.0, (pt - mt) / mt
        byte_err.append((abs(eb), plan))
        time_err.append((abs(et), plan))
        rows.append([plan.describe(), f"{mb / 2**20:,.3f}", f"{pb / 2**20:,.3f}", f"{eb:+.2%}",
                     f"{mt * 1e3:,.0f}", f"{(q3 - q1) / mt:.0%}", f"{pt * 1e3:,.0f}", f"{et:+.1%}"])
    header = ["plan", "measured MiB", "predicted MiB", "bytes err", "measured ms", "IQR/median", "predicted ms",
              "time err"]
    table = markdown_table(header, rows)

    # one speed factor for all plans: separates a machine that got slower or faster between the
    # profile and the check (shared cores) from errors in how time is split over plans
    ratios = sorted(timed[p].median_s / cm.step_time_s(p) for p in plans)
    scale = statistics.median(ratios)
    scaled = max((abs(cm.step_time_s(p) * scale - timed[p].median_s) / timed[p].median_s, p) for p in plans)
    worst_min = max((abs(cm.step_time_s(p) - min(timed[p].times_s)) / min(timed[p].times_s), p) for p in plans)
    worst_b, worst_t = max(byte_err), max(time_err)
    within_t = sum(e <= TIME_GOAL for e, _ in time_err)
    mean_t = sum(e for e, _ in time_err) / len(time_err)
    summary = [
        f"plans: {len(plans)} (depth 0..{L}, quant_layers 0..depth, int8 and int4; bottom placement)",
        f"worst bytes error: {worst_b[0]:.3%} at {worst_b[1].describe()} (goal {BYTES_GOAL:.0%}: "
        f"{'met' if worst_b[0] <= BYTES_GOAL else 'MISSED'})",
        f"worst step-time error: {worst_t[0]:.1%} at {worst_t[1].describe()} (goal {TIME_GOAL:.0%}: "
        f"{'met' if worst_t[0] <= TIME_GOAL else 'MISSED'}); mean {mean_t:.1%}; "
        f"{within_t} of {len(plans)} plans within {TIME_GOAL:.0%}",
        f"measured/predicted step time: median {scale:.3f}, range {ratios[0]:.3f}..{ratios[-1]:.3f}; after one "
        f"common speed factor the worst error is {scaled[0]:.1%} at {scaled[1].describe()}",
        f"against the fastest of the {args.repeats} steps instead of the median: worst error {worst_min[0]:.1%} "
        f"at {worst_min[1].describe()}",
        f"profile fit ({args.statistic} per plan, {torch.get_num_threads()} threads): "
        f"{len(data['timing']['plans'])} plans, residual max "
        f"{data['timing']['max_abs_rel_residual']:.1%}, mean {data['timing']['mean_abs_rel_residual']:.1%}",
        f"time: profile {profile_s:.0f} s, check {check_s:.0f} s, total {time.perf_counter() - t_start:.0f} s; "
        f"load average (1 min) {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after",
    ]
    print(table)
    print()
    print("\n".join(summary))

    if args.no_doc:
        return
    blocks = markdown_table(
        ["block", "saved MiB", "lowest saved MiB", "int8 kept MiB", "int4 kept MiB", "forward ms", "backward ms",
         "int8 quant ms", "int4 quant ms"],
        [[b.index, f"{b.saved_bytes / 2**20:.3f}", f"{b.saved_bytes_lowest / 2**20:.3f}",
          f"{b.kept_bytes[8] / 2**20:.3f}", f"{b.kept_bytes[4] / 2**20:.3f}", f"{b.forward_s * 1e3:.1f}",
          f"{b.backward_s * 1e3:.1f}", f"{b.quant_s[8] * 1e3:.1f}", f"{b.quant_s[4] * 1e3:.1f}"]
         for b in profile.blocks])
    body = f"""Model {args.model}, batch {args.batch_size} x seq {args.seq_len}, group size {args.group_size}, float32 on CPU.
Machine: {machine_line()}. The 2 cores are shared with other jobs, so step times include whatever else
ran at the time.

Method: `profile_model` (what `fedquad profile` runs: {len(data['timing']['plans'])} plans stepped round-robin,
{args.profile_repeats} timed rounds after 1 warm-up round, per-block times from a non-negative least-squares fit
of each plan's {args.statistic} step). Then, separately, every plan: saved bytes from `probe_memory` (what `fedquad memory`
reports: kept bytes of the blocks + bytes saved outside them) and the median of {args.repeats} step times
(forward + backward + AdamW step; all {len(plans)} plans stepped round-robin in another shuffled order), against
the cost model's `saved_bytes` and `step_time_s` at speed 1.

Goals (docs/design.md, "Cost model"): bytes within {BYTES_GOAL:.0%}, step time within {TIME_GOAL:.0%}.

## Summary

""" + "\n".join(f"* {line}" for line in summary) + f"""

## Profile (per block)

{blocks}

Head and everything outside the blocks: saved {profile.head.saved_bytes:,} bytes
({profile.head.saved_bytes_depth0:,} at depth 0), fixed time {(profile.head.forward_s + sum(b.forward_s for b in profile.blocks)) * 1e3:.1f} ms per step
(blocks' forward plus embeddings, head, loss and optimizer step).

## Every plan

{table}
"""
    print(f"\nwrote {write_doc('bench_cost_model.md', 'Cost model against measurement', body)}")


if __name__ == "__main__":
    main()
