"""Plots of runs: accuracy vs simulated time, and per-device memory against budget (matplotlib)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

MiB = 2 ** 20


def plot_accuracy_vs_time(histories: dict[str, list[dict]], path: str, target: float | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, history in histories.items():
        points = [(h["clock_s"], h["accuracy"]) for h in history if h.get("accuracy") is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, lw=2 if name == "fedquad" else 1.2,
                    label=name)
    if target is not None:
        ax.axhline(100 * target, color="grey", ls="--", lw=1, label=f"target {100 * target:.1f}%")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs simulated wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_memory(histories: dict[str, list[dict]], path: str) -> None:
    """Per strategy: every device-round's measured memory over its budget (1.0 = exactly full)."""
    names = list(histories)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 3.6), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        ok, oom = [], []
        for h in histories[name]:
            for d in h.get("devices", []):
                if d.get("measured_bytes") and d.get("budget_bytes"):
                    point = (d["budget_bytes"] / MiB, d["measured_bytes"] / d["budget_bytes"])
                    (ok if d["status"] == "ok" else oom).append(point)
        if ok:
            ax.scatter(*zip(*ok), s=8, alpha=0.5, label="trained")
        if oom:
            ax.scatter(*zip(*oom), s=14, marker="x", color="red", label="out of memory")
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("budget (MiB)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("measured memory / budget")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
