"""`fedquad simulate` and `fedquad compare`: federated runs on simulated heterogeneous devices."""

from __future__ import annotations

import os

from fedquad.errors import FedquadError


def _add_common(p) -> None:
    p.add_argument("--config", default=None, help="JSON or TOML file of settings (see --help-config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set rounds=30 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--help-config", action="store_true", help="list every setting with its default and exit")


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="run one strategy on simulated devices, with real client training")
    _add_common(p)
    p.add_argument("--strategy", default=None, help="strategy (overrides the config's)")
    p.add_argument("--out", default="runs/simulate", help="run folder: history.json, plots, checkpoint")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the stopped run in DIR")
    p.set_defaults(func=run_simulate)

    c = sub.add_parser("compare", help="run several strategies on the same devices, data and seeds")
    _add_common(c)
    c.add_argument("--strategies", default="fedquad,fedlora,fedlora-uniform,hetlora,fedra,depth-only,quant-only",
                   help="comma-separated strategy names, or 'all'")
    c.add_argument("--target-accuracy", type=float, default=None, help="accuracy (0-1) time-to-target is measured at")
    c.add_argument("--out", default="runs/compare", help="output folder")
    c.add_argument("--seeds", default=None, metavar="N,N,...",
                   help="run the whole comparison once per seed (into OUT/seed-N/) and report medians across "
                        "seeds in OUT/seeds.md; needs --target-accuracy or target_accuracy in the config")
    c.add_argument("--report-only", action="store_true",
                   help="do not run: rebuild comparison.json/.md and plots from the runs already in --out")
    c.set_defaults(func=run_compare)


def _print_config_help() -> int:
    from fedquad.sim.config import field_help
    for name, default, text in field_help():
        print(f"{name:<20} {default:<16} {text}")
    return 0


def run_simulate(args) -> int:
    if args.help_config:
        return _print_config_help()
    from fedquad.sim.config import load_config
    from fedquad.sim.runner import simulate

    if args.resume:
        if args.config or args.overrides or args.strategy:
            raise FedquadError("--resume continues a run with its own saved settings; drop --config/--set/--strategy")
        result = simulate(None, args.resume, resume=True, show_progress=not args.quiet)
    else:
        overrides = list(args.overrides) + ([f"strategy={args.strategy}"] if args.strategy else [])
        config = load_config(args.config, overrides)
        result = simulate(config, args.out, show_progress=not args.quiet)
    evals = result.evaluations
    final = f"{100 * evals[-1][1]:.1f}%" if evals else "n/a"
    print(f"{result.config.strategy}: {result.state.round_index} rounds, simulated {result.state.clock_s:.1f} s, "
          f"final accuracy {final}; wrote {os.path.join(result.run_dir, 'history.json')}")
    return 0


def run_compare(args) -> int:
    if args.help_config:
        return _print_config_help()
    from fedquad.sim.compare import compare
    from fedquad.sim.config import load_config
    from fedquad.strategies import parse_strategy_list

    names = parse_strategy_list(args.strategies)
    config = load_config(args.config, args.overrides)
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise FedquadError(f"--target-accuracy must be in (0, 1], got {args.target_accuracy}")
    if args.seeds is not None:
        return _run_compare_seeds(args, config, names)
    if args.report_only:
        from fedquad.sim.compare import report_from_runs
        report = report_from_runs(args.out, names, args.target_accuracy)
    else:
        report = compare(config, names, args.out, args.target_accuracy, show_progress=not args.quiet)
    from fedquad.sim.compare import markdown_table
    print(markdown_table(report))
    print(f"wrote {args.out}/comparison.json, comparison.md, accuracy_vs_time.png, memory.png")
    return 0


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise FedquadError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise FedquadError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def _run_compare_seeds(args, config, names: list[str]) -> int:
    from fedquad.sim.seeds import compare_seeds, reports_from_seed_runs, seeds_markdown
    seeds = _parse_seeds(args.seeds)
    target = args.target_accuracy if args.target_accuracy is not None else config.target_accuracy
    if target is None:
        raise FedquadError("--seeds needs a target accuracy: pass --target-accuracy")
    if args.report_only:
        summary = reports_from_seed_runs(args.out, names, seeds, target)
    else:
        summary = compare_seeds(config, names, args.out, seeds, target, show_progress=not args.quiet)
    print(seeds_markdown(summary))
    print(f"wrote {args.out}/seeds.json, seeds.md, time_to_target.png and one comparison per seed in "
          f"{args.out}/seed-N/")
    return 0
