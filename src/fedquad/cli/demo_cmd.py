"""`fedquad demo` (what `make run` runs): a short time-to-accuracy comparison on the built-in default.

MiniLM on the generated text-classification task, 24 simulated Jetson boards (`jetson-mixed`),
FedQuad against the baselines, with the shipped MiniLM cost-model profile so the simulated
clock does not depend on this machine. Writes the comparison to `runs/demo` and prints the table.
`--client` shows the older single-client view instead: what one training step keeps per plan.
"""

from __future__ import annotations

from fedquad.cli._common import mib

DEMO_STRATEGIES = "fedquad,fedlora,depth-only"
# Small enough for a few minutes on a 2-core CPU; the reference benchmark (benchmarks/sst2_reference)
# is the full-size comparison.
DEMO_SETTINGS = {"model": "minilm", "task": "synthetic", "scenario": "jetson-mixed", "profile": "minilm-b16-s64",
                 "rounds": 10, "clients_per_round": 6, "local_steps": 5, "eval_every": 2, "train_examples": 2000,
                 "eval_examples": 300, "learning_rate": 0.001, "partition_alpha": 1.0}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a short FedQuad-vs-baselines comparison on the default (what `make run` runs)")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--strategies", default=DEMO_STRATEGIES, help="comma-separated strategies")
    p.add_argument("--rounds", type=int, default=DEMO_SETTINGS["rounds"], help="rounds per strategy")
    p.add_argument("--client", action="store_true", help="show one client's plans on the default model instead")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.client:
        return run_client_view()
    from rich.console import Console

    from fedquad.sim.compare import compare, markdown_table
    from fedquad.sim.config import SimConfig
    from fedquad.strategies import parse_strategy_list

    config = SimConfig(**{**DEMO_SETTINGS, "rounds": args.rounds})
    console = Console()
    console.print(f"[bold]fedquad demo[/]: {', '.join(parse_strategy_list(args.strategies))} on {config.model}, "
                  f"generated task, {config.scenario} scenario, {config.rounds} rounds each")
    report = compare(config, parse_strategy_list(args.strategies), args.out)
    best_baseline = max((s["best_accuracy"] or 0 for n, s in report["strategies"].items() if n != "fedquad"),
                        default=0.0)
    console.print(markdown_table(report))
    console.print(f"best baseline accuracy {100 * best_baseline:.1f}%. Plots: {args.out}/accuracy_vs_time.png, "
                  f"{args.out}/memory.png. Time to a target: fedquad compare --target-accuracy X.")
    return 0


def run_client_view() -> int:
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from fedquad.client.saved_activations import QuantSettings
    from fedquad.diagnostics.memory import generated_batch, perturb_adapters, probe_memory
    from fedquad.models import load_model
    from fedquad.plan import ClientPlan

    console = Console()
    adapted = load_model("minilm", with_tokenizer=False)
    perturb_adapters(adapted)
    batch = generated_batch(adapted, 16, 64)
    L = adapted.num_blocks
    plans = [ClientPlan(L), ClientPlan(L, L, 8), ClientPlan(L, L, 4), ClientPlan(L // 2),
             ClientPlan(L // 2, L // 2, 8), ClientPlan(1), ClientPlan(0)]
    reports = [probe_memory(adapted, plan, batch, QuantSettings(bits=plan.bits))
               for plan in track(plans, description="measuring plans", transient=True, console=console)]
    t = Table(title=f"{adapted.name} ({L} blocks), one training step, batch 16 x 64")
    for col in ("plan", "saved raw MiB", "kept MiB", "kept/raw", "step ms", "grad cosine min"):
        t.add_column(col, justify="right")
    for r in reports:
        d = r.to_dict()
        cos = "-" if d["grad_cosine_min"] is None else f"{d['grad_cosine_min']:.5f}"
        t.add_row(r.plan.describe(), mib(d["raw_bytes"]), mib(d["kept_bytes"]), f"{d['kept_ratio']:.3f}",
                  f"{d['step_s'] * 1e3:.0f}", cos)
    console.print(t)
    return 0
