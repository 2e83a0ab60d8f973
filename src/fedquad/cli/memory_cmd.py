"""`fedquad memory`: measure saved-activation memory, step time and gradient fidelity of a plan."""

from __future__ import annotations

from fedquad.cli._common import add_model_args, load_from_args, mib, print_json
from fedquad.cli.main import non_negative_int, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="measure one training step of a plan on this machine",
                       description="Run one real training step with a plan on generated input and report saved-activation "
                                   "bytes per block (raw and kept), step time, peak RSS and gradient fidelity.")
    add_model_args(p)
    p.add_argument("--depth", type=non_negative_int, default=None, help="trainable blocks from the output (default: all)")
    p.add_argument("--quant-layers", type=non_negative_int, default=0, help="trainable blocks with quantized saved activations")
    p.add_argument("--bits", type=int, default=8, help="4 or 8")
    p.add_argument("--placement", default="bottom", choices=["bottom", "top"], help="which trainable blocks are quantized")
    p.add_argument("--sweep", action="store_true", help="measure every (depth, quant_layers) at --bits")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed steps per plan, interleaved with the unquantized reference; medians reported")
    p.add_argument("--json", action="store_true", help="machine-readable output (no progress output)")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedquad.client.saved_activations import QuantSettings
    from fedquad.diagnostics.memory import generated_batch, perturb_adapters, probe_memory, sweep
    from fedquad.plan import ClientPlan

    # Check the plan's own consistency before the (slow) model load.
    # Without --depth the depth is L, unknown until the model is loaded: check q <= d only then.
    ClientPlan(args.quant_layers if args.depth is None else args.depth, args.quant_layers, args.bits, args.placement)
    adapted = load_from_args(args)
    depth = adapted.num_blocks if args.depth is None else args.depth
    plan = ClientPlan(depth, args.quant_layers, args.bits, args.placement).validate_for(adapted.num_blocks)
    perturb_adapters(adapted, seed=args.seed)
    batch = generated_batch(adapted, args.batch_size, args.seq_len, args.seed)
    quant = QuantSettings(bits=args.bits, group_size=args.group_size, quantizer=args.quantizer)
    if args.sweep:
        from fedquad.sim.progress import StepProgress
        total = (adapted.num_blocks + 1) * (adapted.num_blocks + 2) // 2
        with StepProgress(f"measuring every plan of {adapted.name} at int{args.bits}", total,
                          enabled=not (args.quiet or args.json), unit="plans") as bar:
            reports = sweep(adapted, args.bits, batch, quant, args.seed, args.placement, progress=bar)
        if args.json:
            print_json({"model": adapted.name, "bits": args.bits, "plans": [r.to_dict() for r in reports]})
        else:
            _print_sweep(reports)
        return 0
    report = probe_memory(adapted, plan, batch, quant, args.seed, repeats=args.repeats)
    if args.json:
        print_json(report.to_dict())
    else:
        _print_report(report.to_dict())
    return 0


def _print_report(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    plan = r["plan"]
    t = Table(title=f"{r['model']}  depth={plan['depth']} quant_layers={plan['quant_layers']} int{plan['bits']} "
                    f"({plan['placement']})  batch {r['batch_size']} x {r['seq_len']}  {r['device']} {r['dtype']}")
    for col in ("block", "trainable", "quantized", "raw MiB", "kept MiB", "kept/raw"):
        t.add_column(col, justify="right")
    for b in r["blocks"]:
        ratio = f"{b['kept_bytes'] / b['raw_bytes']:.3f}" if b["raw_bytes"] else "-"
        t.add_row(str(b["index"]), "yes" if b["trainable"] else "", "yes" if b["quantized"] else "",
                  mib(b["raw_bytes"]), mib(b["kept_bytes"]), ratio)
    t.add_row("total", "", "", mib(r["raw_bytes"]), mib(r["kept_bytes"]), f"{r['kept_ratio']:.3f}", style="bold")
    console = Console()
    console.print(t)
    console.print(f"outside the blocks (embeddings, head): {mib(r['outside_bytes'])} MiB")
    ratio = f", {r['step_s'] / r['reference_step_s']:.2f}x" if r["reference_step_s"] else ""
    console.print(f"step: {r['step_s'] * 1e3:.1f} ms (unquantized: {r['reference_step_s'] * 1e3:.1f} ms{ratio})   "
                  f"compile: {r['warmup_s']:.2f} s (untimed)   peak RSS: {mib(r['peak_rss_bytes'])} MiB")
    if "cuda_max_memory_allocated_bytes" in r:
        console.print(f"CUDA max memory allocated: {mib(r['cuda_max_memory_allocated_bytes'])} MiB")
    if r["grad_cosine_min"] is not None:
        console.print(f"gradient cosine vs unquantized over {r['trained_tensors']} trained tensors: "
                      f"min {r['grad_cosine_min']:.6f}  mean {r['grad_cosine_mean']:.6f}")


def _print_sweep(reports) -> None:
    from rich.console import Console
    from rich.table import Table

    first = reports[0]
    t = Table(title=f"{first.model}  int{first.plan.bits}  batch {first.batch_size} x {first.seq_len}  {first.device}")
    for col in ("depth", "quant", "raw MiB", "kept MiB", "kept/raw", "step ms", "grad cos min"):
        t.add_column(col, justify="right")
    for r in reports:
        d = r.to_dict()
        cos = "-" if d["grad_cosine_min"] is None else f"{d['grad_cosine_min']:.5f}"
        t.add_row(str(r.plan.depth), str(r.plan.quant_layers), mib(d["raw_bytes"]), mib(d["kept_bytes"]),
                  f"{d['kept_ratio']:.3f}", f"{d['step_s'] * 1e3:.1f}", cos)
    Console().print(t)
