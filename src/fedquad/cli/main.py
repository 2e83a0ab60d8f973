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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights never come from a hub here
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
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
