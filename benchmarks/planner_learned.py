"""Speed of `fedquad`'s planning step: learned utility + sit-out, 10,000 devices x 32 blocks.

    .venv/bin/python benchmarks/planner_learned.py [--repeats 3]

The same devices and stretched profile as benchmarks/planner.py (jetson-mixed mix, round 1), a
PlannerState with a measured value per block (falling towards the input: the shape that makes
shallow plans pay), timed cold (fresh profile: menu and efficient sets rebuilt). Prints one line
per configuration: plain plan_round with the fixed utility (fedquad-paper), the learned
utility, and the learned utility with sit-out (fedquad); the goal is < 1 s each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from planner import NUM_BLOCKS, mixed_devices, profile_dict  # noqa: E402

from fedquad.costmodel import profile_from_dict  # noqa: E402
from fedquad.planner import PlannerConfig, PlannerState  # noqa: E402
from fedquad.planner.participation import plan_with_sit_out  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args(argv)
    configs = {"fixed utility (fedquad-paper)": PlannerConfig(),
               "learned utility": PlannerConfig(value="learned"),
               "learned + sit-out (fedquad)": PlannerConfig(value="learned", sit_out=True)}
    for name, config in configs.items():
        times, result = [], None
        for _ in range(args.repeats):
            profile = profile_from_dict(profile_dict())
            devices = mixed_devices(args.devices, profile)
            state = PlannerState(NUM_BLOCKS)
            state.observe_gains([0.2 + 0.8 * b / (NUM_BLOCKS - 1) for b in range(NUM_BLOCKS)], 1.0)
            start = time.perf_counter()
            result = plan_with_sit_out(devices, profile, config.for_state(state), state)
            times.append(time.perf_counter() - start)
        parts = result.participants
        print(f"{name}: {args.devices} devices x {NUM_BLOCKS} blocks: {statistics.median(times):.3f} s "
              f"(median of {args.repeats}); {len(parts)} train, mean depth "
              f"{sum(d.plan.depth for d in parts) / max(len(parts), 1):.1f}, round {result.round_time_s:.2f} s, "
              f"method {result.method}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
