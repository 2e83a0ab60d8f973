"""`fedquad demo` (what `make run` runs): the FedQuad client on the default model.

Shows, for a handful of plans on all-MiniLM-L6-v2, what one real training step keeps for
backward, how long it takes, and how close its gradients are to an unquantized step.
"""

from __future__ import annotations

from fedquad.cli._common import mib


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="show the client's plans on the default model (what `make run` runs)")
    p.add_argument("--model", default="minilm", help="preset or model directory")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from fedquad.client.saved_activations import QuantSettings
    from fedquad.diagnostics.memory import generated_batch, perturb_adapters, probe_memory
    from fedquad.models import load_model
    from fedquad.plan import ClientPlan

    console = Console()
    adapted = load_model(args.model, with_tokenizer=False)
    perturb_adapters(adapted)
    batch = generated_batch(adapted, args.batch_size, args.seq_len)
    L = adapted.num_blocks
    plans = [ClientPlan(L), ClientPlan(L, L, 8), ClientPlan(L, L, 4), ClientPlan(L // 2),
             ClientPlan(L // 2, L // 2, 8), ClientPlan(1), ClientPlan(0)]
    reports = [probe_memory(adapted, plan, batch, QuantSettings(bits=plan.bits))
               for plan in track(plans, description="measuring plans", transient=True, console=console)]
    t = Table(title=f"{adapted.name} ({L} blocks), one training step, batch {args.batch_size} x {args.seq_len}")
    for col in ("plan", "saved raw MiB", "kept MiB", "kept/raw", "step ms", "grad cosine min"):
        t.add_column(col, justify="right")
    for r in reports:
        d = r.to_dict()
        cos = "-" if d["grad_cosine_min"] is None else f"{d['grad_cosine_min']:.5f}"
        t.add_row(r.plan.describe(), mib(d["raw_bytes"]), mib(d["kept_bytes"]), f"{d['kept_ratio']:.3f}",
                  f"{d['step_s'] * 1e3:.0f}", cos)
    console.print(t)
    console.print("d = trained blocks from the output, q = blocks whose saved activations are int8/int4. "
                  "Try: fedquad memory --sweep, fedquad profile, fedquad plan.")
    return 0
