"""`fedquad profile`: measure the cost-model inputs on this machine and write them as JSON."""

from __future__ import annotations

import os

from fedquad.cli._common import add_model_args, load_from_args
from fedquad.cli.main import non_negative_int, positive_int
from fedquad.errors import FedquadError


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="measure per-block memory and time for the cost model",
                       description="Measure, on this machine, per-block saved-activation bytes (raw and int8/int4), "
                                   "forward/backward/quantization times and adapter sizes, and write a profile JSON "
                                   "that the planner reads.")
    add_model_args(p)
    p.add_argument("--repeats", type=positive_int, default=7,
                   help="timed steps per profiled plan (median); plans are stepped round-robin")
    p.add_argument("--warmup", type=non_negative_int, default=1,
                   help="untimed rounds over all plans before timing (0 = none)")
    p.add_argument("--statistic", default="median", choices=["median", "min"],
                   help="per-plan summary of the timed steps: median, or min on a machine shared with other "
                        "jobs (their load only ever slows a step down)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads while profiling (default: torch's choice); 1 is far steadier on "
                        "a small machine that other jobs are also using")
    p.add_argument("--extra-seq-lens", default="",
                   help="comma-separated further sequence lengths to measure (same batch size), e.g. 32,128: the "
                        "cost model then fits per-block terms linear and quadratic in the length; without, bytes "
                        "and times scale with the batch's tokens")
    p.add_argument("--no-step-peaks", action="store_true",
                   help="skip measuring each plan's whole step peak (two extra steps per plan); the workspace "
                        "is then estimated as one block's saved activations")
    p.add_argument("--out", required=True, help="where to write the profile JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=run)


def check_writable_file(path: str) -> None:
    """One-line error unless `path` names a file this process can create or replace."""
    if os.path.isdir(path):
        raise FedquadError(f"--out {path} is a directory; give a file path, e.g. {os.path.join(path, 'profile.json')}")
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(out_dir):
        raise FedquadError(f"cannot write {path}: folder {out_dir} does not exist")
    if not os.path.isdir(out_dir):
        raise FedquadError(f"cannot write {path}: {out_dir} is a file, not a folder")
    from fedquad.sim.files import probe_writable
    try:
        probe_writable(out_dir)
    except OSError as exc:
        raise FedquadError(f"cannot write {path}: folder {out_dir}: {exc.strerror or exc}") from None


def parse_lengths(text: str) -> tuple[int, ...]:
    """`--extra-seq-lens 32,128` as (32, 128); a one-line error for anything else."""
    if not text.strip():
        return ()
    try:
        lengths = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise FedquadError(f"--extra-seq-lens {text!r}: give comma-separated positive integers, e.g. 32,128") from None
    if any(x <= 0 for x in lengths):
        raise FedquadError(f"--extra-seq-lens {text!r}: lengths must be positive")
    return lengths


def run(args) -> int:
    from rich.console import Console

    from fedquad.client.saved_activations import QuantSettings
    from fedquad.diagnostics.memory import generated_batch, perturb_adapters
    from fedquad.diagnostics.profile import profile_model, profile_steps
    from fedquad.sim.files import write_json_atomic
    from fedquad.sim.progress import StepProgress

    check_writable_file(args.out)  # before minutes of measuring, not after
    extra = parse_lengths(args.extra_seq_lens)
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    adapted = load_from_args(args)
    perturb_adapters(adapted, seed=args.seed)
    batch = generated_batch(adapted, args.batch_size, args.seq_len, args.seed)
    quant = QuantSettings(group_size=args.group_size, quantizer=args.quantizer)
    total = profile_steps(adapted.num_blocks, args.repeats, args.warmup) * (1 + len(set(extra) - {args.seq_len}))
    with StepProgress(f"profiling {adapted.name}", total, enabled=not args.quiet) as bar:
        profile = profile_model(adapted, batch, quant=quant, repeats=args.repeats, warmup=args.warmup,
                                seed=args.seed, statistic=args.statistic, progress=bar,
                                extra_seq_lens=extra, step_peaks=not args.no_step_peaks)
    try:
        write_json_atomic(args.out, profile)
    except OSError as exc:
        raise FedquadError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    saved = sum(b["saved_bytes"] for b in profile["blocks"])
    Console().print(f"wrote {args.out}: {profile['num_blocks']} blocks, {saved / 2**20:.1f} MiB saved activations at "
                    f"full depth, int8 kept/raw {profile['kept_ratio']['8']:.3f}, int4 {profile['kept_ratio']['4']:.3f}, "
                    f"step {profile['measured_step_s']['by_depth'][-1] * 1e3:.0f} ms at full depth; per-block times "
                    f"fit the measured steps within {profile['timing']['max_abs_rel_residual']:.1%} "
                    f"({len(profile['timing']['plans'])} plans); quantizer compile "
                    f"{profile['timing'].get('quantizer_warmup_s', 0.0):.2f} s (untimed); step workspace "
                    f"{profile['workspace_bytes'] / 2**20:.1f} MiB; lengths "
                    f"{[profile['seq_len']] + [p['seq_len'] for p in profile['lengths']]}")
    return 0
