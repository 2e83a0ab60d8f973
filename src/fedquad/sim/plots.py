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


def plot_time_to_target(summary: dict, path: str) -> None:
    """Time to target per strategy: one dot per seed, a bar at the median, 'never' drawn on top."""
    names = list(summary["strategies"])
    reached = [t for s in summary["strategies"].values() for t in s["time_to_target_s"].values() if t is not None]
    never_y = 1.1 * max(reached) if reached and max(reached) > 0 else 1.0  # all-zero: target met at start
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 3.8))
    for x, name in enumerate(names):
        s = summary["strategies"][name]
        times = list(s["time_to_target_s"].values())
        hits = [t for t in times if t is not None]
        misses = len(times) - len(hits)
        color = "C3" if name == "fedquad" else "C0"
        ax.scatter([x] * len(hits), hits, color=color, s=22, zorder=3)
        if misses:
            ax.scatter([x], [never_y], marker="x", color="grey", s=30, zorder=3)
            ax.annotate(f"{misses} never", (x, never_y), textcoords="offset points", xytext=(6, -3), fontsize=7)
        if s["median_time_to_target_s"] is not None:
            ax.hlines(s["median_time_to_target_s"], x - 0.3, x + 0.3, color=color, lw=2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(bottom=0, top=never_y * 1.08)
    ticks = [float(t) for t in ax.get_yticks() if 0 <= t <= 0.9 * never_y]  # keep clear of 'never'
    ax.set_yticks(ticks + [never_y], [f"{t:g}" for t in ticks] + ["never"])
    ax.set_ylabel("simulated time to target (s)")
    ax.set_title(f"Time to {100 * summary['target_accuracy']:.1f}% over seeds {summary['seeds']} (bar: median)",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
