"""What each strategy assigns, without training: the reference's devices and client sampling,
planned round by round (no measurements fed back, so `fedquad` plans with its prior values).

    .venv/bin/python benchmarks/baseline_plans.py [--config benchmarks/sst2_reference/config.json] [--rounds 16]

Per strategy: device-rounds assigned a plan, sat out, predicted to run out of memory (predicted
memory over the actual budget), mean depth of the assigned plans, rounds trained at depth 0
only, and the mean predicted round time; both with failures charged (download + first step for a
predicted out-of-memory client) and, as before, without. Data weights are equal (the real run
weights by the Dirichlet partition). Used for docs/simulation.md, "Baselines at their strongest".
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from fedquad.costmodel import load_profile
from fedquad.devices import devices_at_round, draw_devices, load_scenario
from fedquad.sim.config import load_config
from fedquad.sim.round import RoundState, begin_round, derive_seed
from fedquad.sim.runner import make_strategy
from fedquad.strategies import RoundContext

DEFAULT = ("fedquad-paper,fedquad,depth-only,fedlora,fedlora-uniform,fedlora-uniform-weakest,hetlora,"
           "hetlora-literal,fedlora-literal,fedra,quant-only")


def strategy_for(config, name):
    from fedquad.strategies import FedLoRA, FedLoRAUniform, HetLoRA
    literal = {"fedlora-uniform-weakest": lambda: FedLoRAUniform(weakest=True),
               "fedlora-literal": lambda: FedLoRA(fit_check=False), "hetlora-literal": lambda: HetLoRA(fit_check=False)}
    return literal[name]() if name in literal else make_strategy(config.replace(strategy=name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="benchmarks/sst2_reference/config.json")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--strategies", default=DEFAULT)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    profile = load_profile(config.profile)
    scenario = load_scenario(config.scenario)
    drawn = [dataclasses.replace(d, local_steps=config.local_steps, data_weight=1.0)
             for d in draw_devices(scenario, profile, seed=config.seed)]
    print("| strategy | trained | sat out | predicted OOM | mean depth | head-only rounds | mean round (s), "
          "failures charged | without |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.strategies.split(","):
        strategy = strategy_for(config, name)
        state = RoundState(0, 0.0, {}, strategy.init_state(profile.num_blocks))
        trained = sat = oom = head_only = 0
        depths, charged, plain = [], [], []
        for r in range(args.rounds):
            rng = torch.Generator().manual_seed(derive_seed("sample", config.seed, r))
            pick = sorted(torch.randperm(len(drawn), generator=rng)[: config.clients_per_round].tolist())
            clients = [drawn[i] for i in pick]
            reported = devices_at_round(clients, scenario, max(r - 1, 0), seed=config.seed)
            actual = devices_at_round(clients, scenario, r, seed=config.seed)
            ctx = RoundContext(r, profile, config.seed, 8, {d.device_id: 1.0 for d in drawn})
            plan = begin_round(strategy, ctx, RoundState(r, 0.0, {}, state.strategy_state), reported, actual)
            sat += sum(a.plan is None for a in plan.assignments)
            ok_t, fail_t = [], []
            for w in plan.work:
                _, t = strategy.costs(ctx, w.assignment, w.device)
                if w.predicted_bytes > w.device.budget_bytes:
                    oom += 1
                    fail_t.append(t.download_s + t.compute_s / w.device.local_steps)
                else:
                    trained += 1
                    depths.append(w.assignment.plan.depth)
                    ok_t.append(w.time_s)
            head_only += bool(ok_t) and max(w.assignment.plan.depth for w in plan.work) == 0
            plain.append(max(ok_t, default=0.0))
            charged.append(max(ok_t + fail_t, default=0.0))
        n = max(len(depths), 1)
        print(f"| {name} | {trained} | {sat} | {oom} | {sum(depths) / n:.2f} | {head_only}/{args.rounds} | "
              f"{sum(charged) / args.rounds:.2f} | {sum(plain) / args.rounds:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
