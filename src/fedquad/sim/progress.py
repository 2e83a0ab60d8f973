"""Progress output of long steps, always on stderr (stdout stays for results and --json).

On a terminal: a rich progress bar. Elsewhere (CI logs, pipes, `2> log`): plain lines, few enough
to read: one when a step starts and then one per tenth of the work or per `PLAIN_EVERY_S`.

- `RoundProgress`: a simulated run, round by round (simulated time, accuracy, dropped devices).
- `StepProgress`: any counted loop (profiling plans, a memory sweep). It is itself the
  zero-argument callback the measuring functions take (`progress=bar`), so those core modules
  only ever call a function and never import this module or the CLI.
- `note`: one line on stderr, or nothing when output is off.
"""

from __future__ import annotations

import sys
import time

from fedquad.sim.config import SimConfig

PLAIN_EVERY_S = 30.0  # at most this long between two plain lines while work is progressing


def note(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


class StepProgress:
    """`with StepProgress("profiling minilm", total=456) as bar: work(progress=bar)`."""

    def __init__(self, description: str, total: int, enabled: bool = True, unit: str = "steps"):
        self.description, self.total, self.enabled, self.unit = description, max(int(total), 1), enabled, unit
        self.done = 0
        self._progress = None
        self._start = self._last_line = 0.0
        self._last_tenth = 0

    def __enter__(self) -> "StepProgress":
        self._start = self._last_line = time.perf_counter()
        if not self.enabled:
            return self
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        else:
            note(f"{self.description}: {self.total} {self.unit}")
        return self

    def __call__(self, n: int = 1) -> None:
        self.advance(n)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n)
            return
        if not self.enabled:
            return
        now = time.perf_counter()
        tenth = 10 * self.done // self.total
        if tenth > self._last_tenth or now - self._last_line >= PLAIN_EVERY_S:
            self._last_tenth, self._last_line = tenth, now
            note(f"{self.description}: {self.done}/{self.total} {self.unit}, {now - self._start:.0f} s")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None


class RoundProgress:
    def __init__(self, config: SimConfig, enabled: bool = True, start_round: int = 0, label: str | None = None):
        self.config, self.enabled = config, enabled
        self.tty = sys.stderr.isatty()
        self.start_round, self.label = start_round, label or config.strategy
        self.dropped, self.accuracy = 0, None
        self._progress = None

    def __enter__(self) -> "RoundProgress":
        if self.enabled and self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.config.rounds, completed=self.start_round,
                                                 status="")
        return self

    def client_done(self) -> None:
        pass

    def round_done(self, report: dict) -> None:
        self.dropped += report["dropped"]
        if report.get("accuracy") is not None:
            self.accuracy = report["accuracy"]
        acc = "-" if self.accuracy is None else f"{100 * self.accuracy:.1f}%"
        status = f"sim {report['clock_s']:.0f} s  acc {acc}  dropped {self.dropped}"
        if self._progress is not None:
            self._progress.update(self._task, advance=1, status=status)
        elif self.enabled:  # not a terminal (CI logs, pipes): one plain line per round
            print(f"{self.label}: round {report['round'] + 1}/{self.config.rounds}  {status}", file=sys.stderr,
                  flush=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
