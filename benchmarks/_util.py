"""Small helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
import sys

import torch

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")


def machine_line() -> str:
    threads = torch.get_num_threads()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{threads} thread{'' if threads == 1 else 's'}, python {platform.python_version()}")


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_doc(name: str, title: str, body: str) -> str:
    path = os.path.join(DOCS, name)
    with open(path, "w") as f:
        f.write(f"# {title}\n\nProduced by `{command_line()}` on {machine_line()}.\n\n{body}\n")
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
