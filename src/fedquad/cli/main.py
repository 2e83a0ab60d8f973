"""`fedquad` console script: one sub-command per module, user mistakes exit 2 with one line.

Each command module exposes `add_parser(subparsers)` which registers its parser and sets
`func=run`, where `run(args) -> int` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from fedquad.errors import FedquadError

# name -> module under fedquad.cli; a module missing here is simply not offered
COMMAND_MODULES = ("demo_cmd", "simulate_cmd", "memory_cmd", "profile_cmd", "plan_cmd")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedquad", description="Federated LoRA fine-tuning on heterogeneous devices (FedQuad).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fedquad.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fedquad.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    for action in sub._choices_actions:  # a command without its own description shows its one-line help
        command = sub.choices[action.dest]
        if command.description is None:
            command.description = action.help
    return parser


def positive_int(text: str) -> int:
    """argparse type for sizes: a clear message instead of a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


MAX_SEED = 2**63 - 1  # the same bound as SimConfig.seed (fedquad.sim.config.MAX_SEED)


def seed_int(text: str) -> int:
    """argparse type for seeds: every command takes the same range (negatives crash numpy)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2**63 - 1], got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights never come from a hub here
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, already printed in one line)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except FedquadError as exc:
        print(f"fedquad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedquad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
