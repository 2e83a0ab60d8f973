"""`fedquad simulate` and `fedquad compare`: federated runs on simulated heterogeneous devices."""

from __future__ import annotations

import os

from fedquad.errors import FedquadError

DEFAULT_STRATEGIES = "fedquad,fedlora,fedlora-uniform,hetlora,fedra,depth-only,quant-only"


def _add_common(p) -> None:
    p.add_argument("--config", default=None, help="JSON or TOML file of settings (see --help-config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set rounds=30 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--help-config", action="store_true", help="list every setting with its default and exit")


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="run one strategy on simulated devices, with real client training",
                       description="Run one strategy for real (real model, real LoRA training) on simulated "
                                   "heterogeneous devices: each device's round time comes from the cost model. "
                                   "Writes history.json, plots and a checkpoint after every round to --out; "
                                   "--resume continues a stopped run.")
    _add_common(p)
    p.add_argument("--strategy", default=None, help="strategy (overrides the config's)")
    p.add_argument("--out", default=None, help="run folder: history.json, plots, checkpoint (default runs/simulate)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the stopped run in DIR with its saved settings; --set rounds=N (or "
                        "time_budget_s, target_accuracy) extends it")
    p.set_defaults(func=run_simulate)

    c = sub.add_parser("compare", help="run several strategies on the same devices, data and seeds",
                       description="Run several strategies on identical conditions (data split, devices, client "
                                   "sampling, initial adapter) and report time to a target accuracy, accuracy at "
                                   "equal time and dropped devices. --resume continues an interrupted comparison: "
                                   "finished runs are kept, the others continue from their checkpoints.")
    _add_common(c)
    c.add_argument("--strategies", default=None,
                   help=f"comma-separated strategy names, or 'all' (default: {DEFAULT_STRATEGIES}; with "
                        "--report-only: the strategies that ran)")
    c.add_argument("--target-accuracy", type=float, default=None, help="accuracy (0-1) time-to-target is measured at")
    c.add_argument("--out", default=None, help="output folder (default runs/compare)")
    c.add_argument("--overwrite", action="store_true", help="replace the comparison already in --out")
    c.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the interrupted comparison in DIR with its saved settings (strategies, seeds, "
                        "target); --set rounds=N extends every run")
    c.add_argument("--seeds", default=None, metavar="N,N,...",
                   help="run the whole comparison once per seed (into OUT/seed-N/) and report medians across "
                        "seeds in OUT/seeds.md; needs --target-accuracy or target_accuracy in the config")
    c.add_argument("--report-only", action="store_true",
                   help="do not run: rebuild comparison.json/.md and plots from the runs already in --out")
    c.add_argument("--target-hold", type=int, default=None, metavar="K",
                   help="the target counts as reached when held at K evaluations in a row (default 2; 1 = first "
                        "touch, which is reported beside it either way)")
    c.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run the (strategy, seed) runs in N local processes at once (same results as one process)")
    c.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                   help="torch/OpenMP threads of each worker with --workers or --ray-address (default 1)")
    c.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run the (strategy, seed) runs on the Ray cluster at ADDR (e.g. auto, host:6379, or local "
                        "for a new local instance; needs pip install 'fedquad[ray]' and --out on a file system every "
                        "node sees)")
    c.set_defaults(func=run_compare)


def _print_config_help() -> int:
    from fedquad.sim.config import field_help
    for name, default, text in field_help():
        print(f"{name:<20} {default:<16} {text}")
    return 0


def _resume_changes(args, what: str) -> dict:
    """The `--set`s a resume may take (when to stop, the target), as {setting: value}."""
    from fedquad.sim.config import parse_overrides
    from fedquad.sim.runner import RESUMABLE_SETTINGS
    if args.out is not None:
        raise FedquadError(f"--resume continues the {what} in its own folder; drop --out (or drop --resume to "
                           "start a new one in --out)")
    if args.overwrite:
        raise FedquadError("--resume and --overwrite contradict each other: choose one")
    changes = {}
    for item, key, value in parse_overrides(args.overrides):
        if key not in RESUMABLE_SETTINGS:
            raise FedquadError(f"--set {item}: a resume keeps the {what}'s saved settings; only "
                               f"{', '.join(RESUMABLE_SETTINGS)} may change (e.g. --set rounds=40 extends it)")
        changes[key] = value
    return changes


def run_simulate(args) -> int:
    if args.help_config:
        return _print_config_help()
    from fedquad.sim.config import load_config
    from fedquad.sim.runner import simulate

    if args.resume:
        if args.config or args.strategy:
            raise FedquadError("--resume continues a run with its own saved settings; drop --config/--strategy")
        changes = _resume_changes(args, "run")
        result = simulate(None, args.resume, resume=True, changes=changes, show_progress=not args.quiet)
        if result.already_finished:
            print(f"{args.resume} is already finished ({result.state.round_index} of {result.config.rounds} rounds, "
                  f"simulated {result.state.clock_s:.1f} s): nothing to resume; extend it with --resume "
                  f"{args.resume} --set rounds=N")
            return 0
    else:
        overrides = list(args.overrides) + ([f"strategy={args.strategy}"] if args.strategy else [])
        config = load_config(args.config, overrides)
        result = simulate(config, args.out or "runs/simulate", overwrite=args.overwrite, show_progress=not args.quiet)
    evals = result.evaluations
    final = f"{100 * evals[-1][1]:.1f}%" if evals else "n/a"
    print(f"{result.config.strategy}: {result.state.round_index} rounds, simulated {result.state.clock_s:.1f} s, "
          f"final accuracy {final}; wrote {os.path.join(result.run_dir, 'history.json')}")
    if result.history and result.history[0].get("eval_source"):  # docs/data.md: what accuracy is measured on
        print(f"evaluated on {result.history[0]['eval_source']}")
    return 0


def _check_target(target: float | None) -> None:
    if target is not None and not 0 < target <= 1:
        raise FedquadError(f"--target-accuracy must be in (0, 1], got {target}")


def run_compare(args) -> int:
    if args.help_config:
        return _print_config_help()
    from fedquad.sim.compare import compare, markdown_table
    from fedquad.sim.config import load_config
    from fedquad.strategies import parse_strategy_list

    _check_target(args.target_accuracy)
    if args.target_hold is not None and args.target_hold < 1:
        raise FedquadError(f"--target-hold must be >= 1 (evaluations in a row), got {args.target_hold}")
    if args.report_only and (args.workers != 1 or args.ray_address):
        raise FedquadError("--report-only trains nothing: drop --workers/--ray-address")
    if args.resume:
        return _resume_compare(args)
    out = args.out or "runs/compare"
    if args.report_only:
        names = None if args.strategies is None else parse_strategy_list(args.strategies)
        config = load_config(args.config, args.overrides)
        if args.seeds is not None:
            return _run_compare_seeds(args, config, names, out)
        from fedquad.sim.compare import report_from_runs
        report = report_from_runs(out, names, args.target_accuracy, _hold(args))
    else:
        names = parse_strategy_list(args.strategies or DEFAULT_STRATEGIES)
        config = load_config(args.config, args.overrides)
        if args.seeds is not None:
            return _run_compare_seeds(args, config, names, out)
        report = compare(config, names, out, args.target_accuracy, show_progress=not args.quiet,
                         overwrite=args.overwrite, hold_evals=args.target_hold, fanout=_fanout(args))
    print(markdown_table(report))
    print(f"wrote {out}/comparison.json, comparison.md, accuracy_vs_time.png, memory.png")
    return 0


def _resume_compare(args) -> int:
    from fedquad.sim.compare import compare, load_plan, markdown_table
    if args.config or args.strategies or args.seeds or args.report_only:
        raise FedquadError("--resume continues a comparison with its saved settings (strategies, seeds, target); "
                           "drop --config/--strategies/--seeds/--report-only")
    changes = _resume_changes(args, "comparison")
    plan = load_plan(args.resume)
    target = args.target_accuracy if args.target_accuracy is not None else plan["target_accuracy"]
    hold = args.target_hold if args.target_hold is not None else plan["target_hold_evals"]
    if plan["seeds"]:
        from fedquad.sim.seeds import compare_seeds, seeds_markdown
        summary = compare_seeds(plan["config"], plan["strategies"], args.resume, plan["seeds"], target,
                                show_progress=not args.quiet, resume=True, changes=changes, hold_evals=hold,
                                fanout=_fanout(args))
        print(seeds_markdown(summary))
        print(f"wrote {args.resume}/seeds.json, seeds.md, time_to_target.png, accuracy_over_seeds.png")
        return 0
    report = compare(plan["config"], plan["strategies"], args.resume, target, show_progress=not args.quiet,
                     resume=True, changes=changes, hold_evals=hold, fanout=_fanout(args))
    print(markdown_table(report))
    print(f"wrote {args.resume}/comparison.json, comparison.md, accuracy_vs_time.png, memory.png")
    return 0


def _hold(args) -> int:
    from fedquad.sim.stats import TARGET_HOLD_EVALS
    return TARGET_HOLD_EVALS if args.target_hold is None else args.target_hold


def _fanout(args):
    """Where the runs go (--workers, --ray-address, --threads-per-worker); checked in one line."""
    from fedquad.sim.workers import Fanout
    return Fanout(args.workers, args.ray_address, args.threads_per_worker)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise FedquadError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise FedquadError(f"--seeds needs distinct integers, got {text!r}")
    from fedquad.cli.main import MAX_SEED
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise FedquadError(f"--seeds: a seed must be in [0, 2**63 - 1], got {bad[0]}")
    return seeds


def _run_compare_seeds(args, config, names: list[str] | None, out: str) -> int:
    from fedquad.sim.seeds import compare_seeds, reports_from_seed_runs, seeds_markdown
    seeds = _parse_seeds(args.seeds)
    target = args.target_accuracy if args.target_accuracy is not None else config.target_accuracy
    if target is None:
        raise FedquadError("--seeds needs a target accuracy: pass --target-accuracy")
    if args.report_only:
        summary = reports_from_seed_runs(out, names, seeds, target, _hold(args))
    else:
        summary = compare_seeds(config, names, out, seeds, target, show_progress=not args.quiet,
                                overwrite=args.overwrite, hold_evals=args.target_hold, fanout=_fanout(args))
    print(seeds_markdown(summary))
    print(f"wrote {out}/seeds.json, seeds.md, time_to_target.png, accuracy_over_seeds.png and one comparison per "
          "seed in "
          f"{out}/seed-N/")
    return 0
