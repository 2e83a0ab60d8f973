"""Plots of runs: accuracy vs simulated time, per-device memory against budget, and time to target
over seeds (matplotlib, files only).

Every strategy has one colour in every plot (`strategy_colour`), so a reader who learnt that
FedQuad is red in one figure finds it red in the next. Each `*_figure` function builds the figure
and returns it (tests inspect legends and sizes); the `plot_*` functions save and close it.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

MiB = 2 ** 20
DPI = 120

# tab10 colours, fixed per strategy; fedquad gets the red that stands out. Names not listed here
# (a user's own strategy) take the remaining colours in order of first use within one figure.
STRATEGY_COLOURS = {
    "fedquad": "#d62728",
    "fedlora": "#1f77b4",
    "fedlora-uniform": "#17becf",
    "hetlora": "#ff7f0e",
    "fedra": "#2ca02c",
    "depth-only": "#9467bd",
    "quant-only": "#8c564b",
}
_SPARE_COLOURS = ("#e377c2", "#bcbd22", "#7f7f7f", "#000000")
OUT_OF_MEMORY_COLOUR = "black"


def strategy_colours(names) -> dict[str, str]:
    """Colour of each name: the fixed one, or a spare colour for a strategy without one."""
    names = list(names)
    spare = iter(_SPARE_COLOURS * (1 + len(names) // len(_SPARE_COLOURS)))
    return {n: STRATEGY_COLOURS[n] if n in STRATEGY_COLOURS else next(spare) for n in names}


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def accuracy_figure(histories: dict[str, list[dict]], target: float | None = None):
    colours = strategy_colours(histories)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, history in histories.items():
        points = [(h["clock_s"], h["accuracy"]) for h in history if h.get("accuracy") is not None]
        xs, ys = zip(*points) if points else ((), ())
        # drawn even when empty, so the legend still names every strategy that ran
        ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, lw=2 if name == "fedquad" else 1.2,
                color=colours[name], label=name)
    if target is not None:
        ax.axhline(100 * target, color="grey", ls="--", lw=1, label=f"target {100 * target:.1f}%")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs simulated wall-clock time")
    ax.grid(alpha=0.3)
    if histories or target is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_time(histories: dict[str, list[dict]], path: str, target: float | None = None) -> None:
    _save(accuracy_figure(histories, target), path)


def _memory_points(history: list[dict]) -> tuple[list, list]:
    ok, oom = [], []
    for h in history:
        for d in h.get("devices", []):
            if d.get("measured_bytes") and d.get("budget_bytes"):
                point = (d["budget_bytes"] / MiB, d["measured_bytes"] / d["budget_bytes"])
                (ok if d["status"] == "ok" else oom).append(point)
    return ok, oom


def memory_figure(histories: dict[str, list[dict]], max_columns: int = 4):
    """Per strategy a panel of every device-round's measured memory over its budget (1.0 = exactly
    full), on a grid of at most `max_columns` columns, with one legend for the whole figure."""
    names = list(histories)
    colours = strategy_colours(names)
    cols = max(1, min(len(names), max_columns))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.8, 3.3 * cols + 0.6), 2.9 * rows + 0.9), squeeze=False,
                             sharey=True)
    flat = [ax for row in axes for ax in row]
    for ax, name in zip(flat, names):
        ok, oom = _memory_points(histories[name])
        if ok:
            ax.scatter(*zip(*ok), s=8, alpha=0.5, color=colours[name])
        if oom:
            ax.scatter(*zip(*oom), s=16, marker="x", color=OUT_OF_MEMORY_COLOUR)
        if not ok and not oom:
            ax.text(0.5, 0.5, "no device-round\nwas measured", transform=ax.transAxes, ha="center",
                    va="center", fontsize=9, color="grey")
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        ax.set_title(name, fontsize=10, color=colours[name])
        ax.set_xlabel("budget (MiB)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in flat[len(names):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("measured memory / budget", fontsize=9)
    # One key for every panel, with every category whether or not a panel has points of it.
    handles = [Line2D([], [], ls="", marker="o", color="grey", alpha=0.6, label="trained (strategy's colour)"),
               Line2D([], [], ls="", marker="x", color=OUT_OF_MEMORY_COLOUR, label="out of memory"),
               Line2D([], [], ls="--", lw=1, color="grey", label="budget (1.0)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Measured memory of every device-round, relative to its budget", fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if rows == 1 else 0.045, 1, 1))
    return fig


def plot_memory(histories: dict[str, list[dict]], path: str) -> None:
    _save(memory_figure(histories), path)


def time_to_target_figure(summary: dict):
    """Time to target per strategy: one dot per seed, a bar at the median, 'never' drawn on top."""
    names = list(summary["strategies"])
    colours = strategy_colours(names)
    reached = [t for s in summary["strategies"].values() for t in s["time_to_target_s"].values() if t is not None]
    never_y = 1.1 * max(reached) if reached and max(reached) > 0 else 1.0  # all-zero: target met at start
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 4.2, 3.8))
    for x, name in enumerate(names):
        s = summary["strategies"][name]
        times = list(s["time_to_target_s"].values())
        hits = [t for t in times if t is not None]
        misses = len(times) - len(hits)
        ax.scatter([x] * len(hits), hits, color=colours[name], s=22, zorder=3)
        if misses:
            ax.scatter([x], [never_y], marker="x", color=colours[name], s=30, zorder=3)
            ax.annotate(f"{misses} never", (x, never_y), textcoords="offset points", xytext=(6, -3), fontsize=7)
        if s["median_time_to_target_s"] is not None:
            ax.hlines(s["median_time_to_target_s"], x - 0.3, x + 0.3, color=colours[name], lw=2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    for label, name in zip(ax.get_xticklabels(), names):
        label.set_color(colours[name])
    ax.set_ylim(bottom=0, top=never_y * 1.08)
    ticks = [float(t) for t in ax.get_yticks() if 0 <= t <= 0.9 * never_y]  # keep clear of 'never'
    ax.set_yticks(ticks + [never_y], [f"{t:g}" for t in ticks] + ["never"])
    ax.set_ylabel("simulated time to target (s)")
    ax.set_title(f"Time to {100 * summary['target_accuracy']:.1f}% over seeds {summary['seeds']}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    # Key: the strategies' colours, then what each mark means.
    handles = [Line2D([], [], ls="", marker="s", color=colours[n], label=n) for n in names]
    handles += [Line2D([], [], ls="", marker="o", color="grey", label="one seed"),
                Line2D([], [], ls="-", lw=2, color="grey", label="median over seeds"),
                Line2D([], [], ls="", marker="x", color="grey", label="seeds that never reach it")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot_time_to_target(summary: dict, path: str) -> None:
    _save(time_to_target_figure(summary), path)
