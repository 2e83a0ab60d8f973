"""Planner speed: one round for 100, 1,000 and 10,000 devices on a 32-block model.

    .venv/bin/python benchmarks/planner.py [--repeats 5] [--out docs/bench_planner.md] [--json FILE]

Devices follow the jetson-mixed class mix, scaled to N, in round 1 (power modes, background load
and free-memory drops applied). The profile is synthetic: MiniLM's measured per-block byte
counts and smooth times, stretched to 32 blocks, with its measured recompute bytes (what a
checkpointed block stores: its input). Each repeat plans with a fresh profile object,
so building the plan menu and the efficient sets is part of the time (the cold, first-round
cost). A second table runs a deliberately bad case for the greedy: near-identical devices with
big budgets, where the straggler walk cannot stop early. The last line printed is
`10000 devices x 32 blocks: <seconds> s` (the default menu, recompute included), the goal
(docs/design.md, "Planner") being < 1 s; the jetson-mixed mix is also timed without recompute in
the menu (PlannerConfig.allow_recompute=False).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import statistics
import sys
import time

from fedquad.costmodel import BlockProfile, HeadProfile, Profile, profile_document, profile_from_dict
from fedquad.devices import Device, devices_at_round, draw_devices, load_scenario
from fedquad.planner import PlannerConfig, plan_round

SIZES = (100, 1_000, 10_000)
NUM_BLOCKS = 32
# MiniLM at batch 16 x 64, group 128: what a checkpointed block stores (measured by `fedquad memory
# --recompute-layers 6`, the numbers in the shipped profile minilm-b16-s64)
INPUT_BYTES = 1_576_960
INPUT_KEPT_BYTES = {8: 421_888, 4: 229_376}


def profile_dict(num_blocks: int = NUM_BLOCKS) -> dict:
    blocks = tuple(BlockProfile(index=i, saved_bytes=41_107_456, kept_bytes={8: 11_063_552, 4: 5_949_696},
                                adapter_bytes=221_184, forward_s=0.045, backward_s=0.02 + 0.001 * (i % 5),
                                quant_s={8: 0.01, 4: 0.012}, input_bytes=INPUT_BYTES,
                                input_kept_bytes=dict(INPUT_KEPT_BYTES)) for i in range(num_blocks))
    return profile_document(Profile(
        model="minilm-stretched", family="bert", num_blocks=num_blocks, batch_size=16, seq_len=64, dtype="float32",
        device="cpu", group_size=128, machine_gflops=200.0, frozen_weight_bytes=90_855_944 * num_blocks // 6,
        adapter_bytes=221_184 * num_blocks + 3_080, head_adapter_bytes=3_080, optimizer_bytes_per_trainable_byte=3.0,
        workspace_bytes=41_107_456, embedding_forward_s=0.0,
        head=HeadProfile(saved_bytes=73_988, forward_s=0.0074, backward_s=0.0), blocks=blocks))


def mixed_devices(n: int, profile) -> list[Device]:
    base = load_scenario("jetson-mixed")
    total = base.num_devices
    counts = [max(1, round(n * c.count / total)) for c in base.classes]
    counts[-1] += n - sum(counts)
    scenario = dataclasses.replace(base, classes=tuple(dataclasses.replace(c, count=k)
                                                       for c, k in zip(base.classes, counts)))
    return devices_at_round(draw_devices(scenario, profile), scenario, 1)


def similar_devices(n: int, profile) -> list[Device]:
    rng = random.Random(0)
    return [Device(f"d{i}", "bench", 10**12, rng.uniform(0.99, 1.01), 1e9, 1e9, 10) for i in range(n)]


def time_planning(make_devices, n: int, repeats: int, config: PlannerConfig = PlannerConfig()) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        profile = profile_from_dict(profile_dict())  # fresh object: menu and efficient sets rebuilt
        devices = make_devices(n, profile)
        start = time.perf_counter()
        result = plan_round(devices, profile, config)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per size (median reported)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "bench_planner.md"))
    parser.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    rows = {}
    for label, make in (("bad case: near-identical devices", similar_devices), ("jetson-mixed mix", mixed_devices)):
        for n in SIZES:
            seconds, result = time_planning(make, n, args.repeats)
            rows[label, n] = (seconds, result)
    for n in SIZES:
        rows["jetson-mixed mix, no recompute in the menu", n] = time_planning(
            mixed_devices, n, args.repeats, PlannerConfig(allow_recompute=False))
    lines = ["| devices | workload | median s | participants | greedy moves | recomputing | method |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for (label, n), (seconds, r) in rows.items():
        recomputing = sum(1 for d in r.decisions if d.plan is not None and d.plan.recompute_layers)
        lines.append(f"| {n:,} | {label} | {seconds:.4f} | {len(r.participants):,} | {r.greedy_steps:,} | "
                     f"{recomputing:,} | {r.method} |")
    summary = [f"{n} devices x {NUM_BLOCKS} blocks: {rows['jetson-mixed mix', n][0]:.4f} s" for n in SIZES]
    report = "\n".join([
        "# Planner benchmark", "",
        "Time of one `plan_round` (feasible and efficient sets, greedy, decisions with reasons) for a 32-block",
        "model; median of repeats, each with a fresh profile object so the cold first-round cost is measured.",
        "Generated by:", "", "    .venv/bin/python benchmarks/planner.py", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs visible (shared), "
        f"Python {platform.python_version()}; {args.repeats} repeats.", "",
        *lines, "",
        "\"greedy moves\" counts straggler moves until the greedy stopped (at the straggler's lowest plan, or",
        "earlier once no later state can beat the best one seen). Goal (docs/design.md, \"Planner\"): 10,000 devices x 32",
        "blocks in under 1 s.", "", "Printed summary (jetson-mixed mix):", "", "```", *summary, "```", ""])
    with open(args.out, "w") as f:
        f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"num_blocks": NUM_BLOCKS, "repeats": args.repeats, "rows": [
                {"devices": n, "workload": label, "median_s": seconds, "participants": len(r.participants),
                 "greedy_moves": r.greedy_steps, "method": r.method} for (label, n), (seconds, r) in rows.items()]},
                f, indent=2)
    print("\n".join(lines))
    print(f"wrote {os.path.normpath(args.out)}")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
