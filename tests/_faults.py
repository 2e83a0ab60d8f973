"""Crash injection for the checkpoint write: `sim.checkpoint` calls `_after_step(name)` after each
filesystem step, and a test replaces it to die at a chosen one."""

from __future__ import annotations


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no cleanup handler of the code under test runs."""


def kill_at(monkeypatch, step: str, n: int = 1) -> None:
    """Die right after the `n`-th time the checkpoint write finishes `step`."""
    from fedquad.sim import checkpoint
    seen = []

    def after(name):
        if name == step:
            seen.append(name)
            if len(seen) == n:
                raise Killed(f"{name} #{n}")
    monkeypatch.setattr(checkpoint, "_after_step", after)
