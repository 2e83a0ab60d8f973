"""A variant of one strategy (other settings, same seeds) against a committed multi-seed reference.

`fedquad compare --seeds` runs into OUT/seed-N/<strategy>/; a variant made with a changed setting
(`--set planner_value_exponent=0.5`, ...) cannot share a folder with the reference (its settings
differ, and compare refuses to mix them). This reads both, and reports per strategy the median
time to the target (held, censored, bootstrap 95% interval: `fedquad.sim.stats`) and the variant's
paired speedups over the named reference strategies, seed by seed.

    python benchmarks/variant_vs_reference.py --variant /tmp/exp --reference benchmarks/sst2_reference/seeds \
        --strategy fedquad --against fedquad,fedlora-uniform,depth-only --target 0.75 [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from fedquad.sim.stats import TARGET_HOLD_EVALS, bootstrap_median_ci, median_inf, paired_speedup, time_to_target


def times(folder: str, strategy: str, target: float, hold: int) -> dict[int, float | None]:
    """Seed -> time to target of `strategy`'s finished runs under `folder`/seed-N/."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "seed-*", strategy, "history.json"))):
        seed = int(re.search(r"seed-(\d+)", path).group(1))
        with open(path) as f:
            out[seed] = time_to_target(json.load(f), target, hold)
    return out


def summary(values: dict[int, float | None]) -> dict:
    vals = list(values.values())
    lo, hi = bootstrap_median_ci(vals) if vals else (None, None)
    return {"per_seed": values, "median_s": median_inf(vals) if vals else None, "ci95": [lo, hi],
            "reached": sum(v is not None for v in vals), "seeds": len(vals)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, help="the variant's compare --seeds folder")
    ap.add_argument("--reference", required=True, help="the reference's compare --seeds folder")
    ap.add_argument("--strategy", default="fedquad", help="the strategy the variant ran")
    ap.add_argument("--against", default="fedquad,fedlora-uniform", help="reference strategies to pair with")
    ap.add_argument("--target", type=float, required=True, help="target accuracy (0-1)")
    ap.add_argument("--hold", type=int, default=TARGET_HOLD_EVALS, help="evaluations the target must hold")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    ours = times(args.variant, args.strategy, args.target, args.hold)
    if not ours:
        print(f"no finished {args.strategy} runs under {args.variant}/seed-*/", file=sys.stderr)
        return 2
    result = {"variant": summary(ours), "reference": {}, "speedup": {}}
    fmt = lambda x: "never" if x is None or x == float("inf") else f"{x:.3g}"  # noqa: E731
    print(f"target {args.target:.3f} held at {args.hold} evaluations; variant {args.strategy} in {args.variant}")
    v = result["variant"]
    print(f"  variant {args.strategy}: median {fmt(v['median_s'])} s [{fmt(v['ci95'][0])}, {fmt(v['ci95'][1])}], "
          f"{v['reached']}/{v['seeds']} seeds; per seed {[fmt(ours[s]) for s in sorted(ours)]}")
    for name in [n for n in args.against.split(",") if n]:
        ref = {s: t for s, t in times(args.reference, name, args.target, args.hold).items() if s in ours}
        if not ref:
            print(f"  reference {name}: no runs for the variant's seeds")
            continue
        result["reference"][name] = r = summary(ref)
        result["speedup"][name] = sp = paired_speedup(ours, ref)
        print(f"  reference {name}: median {fmt(r['median_s'])} s [{fmt(r['ci95'][0])}, {fmt(r['ci95'][1])}], "
              f"{r['reached']}/{r['seeds']}; variant's paired speedup {fmt(sp['median'])}x "
              f"[{fmt(sp['ci95'][0])}, {fmt(sp['ci95'][1])}] per seed "
              f"{[fmt(sp['per_seed'][s]) for s in sorted(sp['per_seed'])]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=lambda x: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
