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
    p.add_argument("--placement", default="bottom", choices=["bottom", "top"],
                   help="which trainable blocks are quantized (and recomputed)")
    p.add_argument("--recompute-layers", type=non_negative_int, default=0,
                   help="trainable blocks run under activation checkpointing (store their input, recompute in "
                        "backward); blocks also in --quant-layers store that input quantized")
    p.add_argument("--sweep", action="store_true",
                   help="measure every (depth, quant_layers) at --bits, and every recompute count per depth "
                        "(with full-precision and with quantized inputs)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed steps per plan, interleaved with the unquantized reference; medians reported")
    p.add_argument("--profile", default=None,
                   help="profile (path or shipped name) to predict the step's peak with (default: a shipped "
                        "profile of this model and dtype, else for a LLaMA-family decoder the config-only estimate)")
    p.add_argument("--no-step-peak", action="store_true",
                   help="skip measuring the plan's whole step peak (two extra steps per plan)")
    p.add_argument("--json", action="store_true", help="machine-readable output (no progress output)")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from fedquad.client.saved_activations import QuantSettings
    from fedquad.diagnostics.memory import generated_batch, perturb_adapters, probe_memory, sweep
    from fedquad.plan import ClientPlan

    # Check the plan's own consistency before the (slow) model load.
    # Without --depth the depth is L, unknown until the model is loaded: check q <= d only then.
    ClientPlan(max(args.quant_layers, args.recompute_layers) if args.depth is None else args.depth,
               args.quant_layers, args.bits, args.placement, args.recompute_layers)
    adapted = load_from_args(args)
    depth = adapted.num_blocks if args.depth is None else args.depth
    plan = ClientPlan(depth, args.quant_layers, args.bits, args.placement,
                      args.recompute_layers).validate_for(adapted.num_blocks)
    perturb_adapters(adapted, seed=args.seed)
    batch = generated_batch(adapted, args.batch_size, args.seq_len, args.seed)
    quant = QuantSettings(bits=args.bits, group_size=args.group_size, quantizer=args.quantizer)
    from fedquad.costmodel import load_profile
    from fedquad.diagnostics.memory import default_profile
    profile = (load_profile(args.profile) if args.profile is not None
               else default_profile(adapted, args.batch_size, args.seq_len, quant))
    peak = {"profile": profile, "step_peak": not args.no_step_peak}
    if args.sweep:
        from fedquad.sim.progress import StepProgress
        total = (adapted.num_blocks + 1) * (adapted.num_blocks + 2) // 2 + adapted.num_blocks * (adapted.num_blocks + 1)
        with StepProgress(f"measuring every plan of {adapted.name} at int{args.bits}", total,
                          enabled=not (args.quiet or args.json), unit="plans") as bar:
            reports = sweep(adapted, args.bits, batch, quant, args.seed, args.placement, progress=bar, recompute=True, **peak)
        if args.json:
            print_json({"model": adapted.name, "bits": args.bits, "plans": [r.to_dict() for r in reports]})
        else:
            _print_sweep(reports)
        return 0
    report = probe_memory(adapted, plan, batch, quant, args.seed, repeats=args.repeats, **peak)
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
                    f"recompute_layers={plan.get('recompute_layers', 0)} ({plan['placement']})  batch {r['batch_size']} x {r['seq_len']}  {r['device']} {r['dtype']}")
    for col in ("block", "trainable", "quantized", "recomputed", "raw MiB", "kept MiB", "kept/raw"):
        t.add_column(col, justify="right")
    for b in r["blocks"]:
        ratio = f"{b['kept_bytes'] / b['raw_bytes']:.3f}" if b["raw_bytes"] else "-"
        t.add_row(str(b["index"]), "yes" if b["trainable"] else "", "yes" if b["quantized"] else "",
                  "yes" if b.get("recomputed") else "", mib(b["raw_bytes"]), mib(b["kept_bytes"]), ratio)
    t.add_row("total", "", "", "", mib(r["raw_bytes"]), mib(r["kept_bytes"]), f"{r['kept_ratio']:.3f}", style="bold")
    console = Console()
    console.print(t)
    console.print(f"outside the blocks (embeddings, head): {mib(r['outside_bytes'])} MiB")
    if r.get("recompute_peak_bytes"):
        console.print(f"recompute: largest block's recomputed activations in backward (transient): "
                      f"{mib(r['recompute_peak_bytes'])} MiB")
    ratio = f", {r['step_s'] / r['reference_step_s']:.2f}x" if r["reference_step_s"] else ""
    console.print(f"step: {r['step_s'] * 1e3:.1f} ms (unquantized: {r['reference_step_s'] * 1e3:.1f} ms{ratio})   "
                  f"compile: {r['warmup_s']:.2f} s (untimed)   peak RSS: {mib(r['peak_rss_bytes'])} MiB")
    if r.get("measured_step_peak_bytes") is not None or r.get("predicted_step_peak_bytes") is not None:
        measured, predicted = r.get("measured_step_peak_bytes"), r.get("predicted_step_peak_bytes")
        line = "step peak above the resident model: "
        line += f"measured {mib(measured)} MiB" if measured is not None else "not measured"
        if predicted is not None:
            line += f", predicted {mib(predicted)} MiB ({r['predicted_from']})"
            if measured:
                line += f", {predicted / measured - 1:+.1%}"
        console.print(line)
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
    for col in ("depth", "quant", "recompute", "raw MiB", "kept MiB", "kept/raw", "step ms", "grad cos min"):
        t.add_column(col, justify="right")
    for r in reports:
        d = r.to_dict()
        cos = "-" if d["grad_cosine_min"] is None else f"{d['grad_cosine_min']:.5f}"
        t.add_row(str(r.plan.depth), str(r.plan.quant_layers), str(r.plan.recompute_layers),
                  mib(d["raw_bytes"]), mib(d["kept_bytes"]),
                  f"{d['kept_ratio']:.3f}", f"{d['step_s'] * 1e3:.1f}", cos)
    Console().print(t)
