"""`fedquad plan`: what the FedQuad planner would give every device of a scenario in one round."""

from __future__ import annotations

from fedquad.cli.main import non_negative_int, seed_int
from fedquad.errors import FedquadError

MiB = 2 ** 20


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="plan one round for a device scenario (no training)",
                       description="Draw the devices of a scenario, apply its dynamics for one round, and show the "
                                   "plan (LoRA depth, quantized blocks, bits) the FedQuad planner gives each device, "
                                   "with predicted memory and time from a profile made by `fedquad profile`.")
    p.add_argument("--scenario", required=True,
                   help="shipped scenario name (jetson-small, jetson-mixed, laptops) or a scenario JSON file")
    p.add_argument("--profile", required=True, help="profile JSON written by `fedquad profile`, or a shipped profile name (minilm-b16-s64)")
    p.add_argument("--round", type=non_negative_int, default=0, help="round whose device state to plan for")
    p.add_argument("--seed", type=seed_int, default=None, help="seed of the device draw and dynamics (default: scenario's)")
    p.add_argument("--no-quant", action="store_true", help="never quantize saved activations (depth-only baseline)")
    p.add_argument("--no-recompute", action="store_true",
                   help="never recompute (checkpoint) blocks (the planner offers it when the profile has recompute bytes)")
    p.add_argument("--bits", default="8,4", help="bit widths the planner may use, comma-separated (default 8,4)")
    p.add_argument("--placement", default="bottom", choices=["bottom", "top"],
                   help="which trainable blocks to quantize")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _bits(text: str) -> tuple[int, ...]:
    try:
        bits = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise FedquadError(f"--bits must be a comma-separated list of 8 and/or 4, got {text!r}") from None
    return bits


def run(args) -> int:
    from fedquad.costmodel import load_profile
    from fedquad.devices import devices_at_round, draw_devices, load_scenario
    from fedquad.planner import PlannerConfig
    from fedquad.planner.participation import require_participants

    profile = load_profile(args.profile)
    scenario = load_scenario(args.scenario)
    config = PlannerConfig(allow_quant=not args.no_quant, bits=_bits(args.bits), placement=args.placement,
                           allow_recompute=not args.no_recompute)
    seed = scenario.seed if args.seed is None else args.seed
    devices = devices_at_round(draw_devices(scenario, profile, seed), scenario, args.round, seed)
    result = require_participants(devices, profile, scenario.name, f"in round {args.round}", config)
    if args.json:
        from fedquad.cli._common import print_json
        out = {"scenario": scenario.name, "profile": args.profile, "model": profile.model, "round": args.round,
               "seed": seed, **result.to_dict()}
        for entry, dev in zip(out["devices"], devices):
            entry.update(speed=dev.speed, power_mode=dev.power_mode, background_load=dev.background_load,
                         up_Bps=dev.up_Bps, down_Bps=dev.down_Bps, local_steps=dev.local_steps)
        print_json(out)
        return 0
    _print_table(scenario, profile, args.round, seed, devices, result)
    return 0


def _print_table(scenario, profile, round_index, seed, devices, result) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{scenario.name} round {round_index} (seed {seed})  {profile.model}, {profile.num_blocks} blocks, "
                    f"batch {profile.batch_size} x {profile.seq_len}")
    for col, justify in (("device", "left"), ("class", "left"), ("speed", "right"), ("budget MiB", "right"),
                         ("feasible", "right"), ("plan", "left"), ("memory MiB", "right"), ("time s", "right"),
                         ("reason", "left")):
        wide = col == "reason"  # the only column that may wrap
        t.add_column(col, justify=justify, overflow="fold", no_wrap=not wide, ratio=1 if wide else None)
    for d, dev in zip(result.decisions, devices):
        straggler = d.device_id == result.straggler_id
        plan = "-" if d.plan is None else d.plan.describe()
        memory = "-" if d.predicted_bytes is None else f"{d.predicted_bytes / MiB:,.1f}"
        time_s = "-" if d.predicted_time_s is None else f"{d.predicted_time_s:.3f}"
        mode = f" {dev.power_mode}" if dev.power_mode else ""
        t.add_row(d.device_id + (" *" if straggler else ""), d.device_class, f"{dev.speed:.2f}{mode}",
                  f"{d.budget_bytes / MiB:,.1f}", str(d.feasible_plans), plan, memory, time_s, d.reason,
                  style="bold" if straggler else ("dim" if d.plan is None else None))
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(t)
    out = len(result.decisions) - len(result.participants)
    console.print(f"round time {result.round_time_s:.3f} s, straggler {result.straggler_id} (*); "
                  f"{len(result.participants)} of {len(result.decisions)} devices take part"
                  + (f", {out} cannot" if out else "") + f"; utility {result.utility:.4g} ({result.method})")
