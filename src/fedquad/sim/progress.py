"""Progress bar of a simulated run: round, simulated time, accuracy, dropped devices (rich)."""

from __future__ import annotations

import sys

from fedquad.sim.config import SimConfig


class RoundProgress:
    def __init__(self, config: SimConfig, enabled: bool = True, start_round: int = 0, label: str | None = None):
        self.config, self.enabled = config, enabled
        self.tty = sys.stderr.isatty()
        self.start_round, self.label = start_round, label or config.strategy
        self.dropped, self.accuracy = 0, None
        self._progress = None

    def __enter__(self) -> "RoundProgress":
        if self.enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False)
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
