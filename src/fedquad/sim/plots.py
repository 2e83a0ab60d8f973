"""Plots of runs: accuracy vs simulated time, per-device memory against budget, and over seeds the
time to target and the accuracy curves with their band (matplotlib, files only).

Every strategy has one colour in every plot (`strategy_colour`), so a reader who learnt that
FedQuad is red in one figure finds it red in the next. Each `*_figure` function builds the figure
and returns it (tests inspect legends and sizes); the `plot_*` functions save and close it.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

MiB = 2 ** 20
DPI = 120

# tab10 colours, fixed per strategy; fedquad gets the red that stands out. A name not listed here
# (a user's own strategy) gets a colour from a hash of its name: the same in every figure,
# whatever else is plotted beside it.
STRATEGY_COLOURS = {
    "fedquad": "#d62728",
    "fedlora": "#1f77b4",
    "fedlora-uniform": "#17becf",
    "hetlora": "#ff7f0e",
    "fedra": "#2ca02c",
    "depth-only": "#9467bd",
    "quant-only": "#8c564b",
    "fedquad-paper": "#e377c2",
    "fedlora-ckpt": "#bcbd22",
    "fedquad-no-recompute": "#ff9896",  # FedQuad's ablation: a lighter red
}
OUT_OF_MEMORY_COLOUR = "black"


def strategy_colour(name: str) -> str:
    """The colour of `name`: the fixed one, or a stable hue from a hash of the name (zlib's crc32,
    not Python's salted hash), so an unknown strategy keeps one colour across figures and runs."""
    if name in STRATEGY_COLOURS:
        return STRATEGY_COLOURS[name]
    import colorsys
    import zlib
    hue = (zlib.crc32(name.encode()) % 360) / 360
    r, g, b = colorsys.hls_to_rgb(hue, 0.42, 0.55)
    return "#{:02x}{:02x}{:02x}".format(round(255 * r), round(255 * g), round(255 * b))


def strategy_colours(names) -> dict[str, str]:
    """Colour of each name (`strategy_colour`): independent of which other names are plotted."""
    return {n: strategy_colour(n) for n in names}


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


def _panel_grid(panels: int, max_columns: int):
    """A figure of `panels` small panels sharing a y axis, at most `max_columns` per row: (fig, axes
    as rows of panels). Both per-strategy figures use it, so their panels line up."""
    cols = max(1, min(panels, max_columns))
    rows = max(1, math.ceil(panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.8, 3.3 * cols + 0.6), 2.9 * rows + 0.9), squeeze=False,
                             sharey=True)
    return fig, axes


def memory_figure(histories: dict[str, list[dict]], max_columns: int = 4):
    """Per strategy a panel of every device-round's measured memory over its budget (1.0 = exactly
    full), on a grid of at most `max_columns` columns, with one legend for the whole figure."""
    names = list(histories)
    colours = strategy_colours(names)
    fig, axes = _panel_grid(len(names), max_columns)
    rows, flat = len(axes), [ax for row in axes for ax in row]
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


def _finite(v) -> bool:
    return v is not None and v != math.inf


def time_to_target_figure(summary: dict):
    """Time to target per strategy: one dot per seed (target held), a hollow ring at first touch
    where it differs, a bar at the median, a vertical line for its bootstrap 95% interval, and
    'never' drawn on top (an interval reaching it ends there)."""
    names = list(summary["strategies"])
    colours = strategy_colours(names)
    reached = [t for s in summary["strategies"].values()
               for t in [*s["time_to_target_s"].values(), *s.get("first_touch_s", {}).values()] if _finite(t)]
    never_y = 1.1 * max(reached) if reached and max(reached) > 0 else 1.0  # all-zero: target met at start
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 4.2, 3.8))
    for x, name in enumerate(names):
        s = summary["strategies"][name]
        times = list(s["time_to_target_s"].values())
        hits = [t for t in times if _finite(t)]
        misses = len(times) - len(hits)
        ax.scatter([x] * len(hits), hits, color=colours[name], s=22, zorder=3)
        touches = [t for seed, t in s.get("first_touch_s", {}).items()
                   if _finite(t) and t != s["time_to_target_s"].get(seed)]
        if touches:
            ax.scatter([x + 0.12] * len(touches), touches, facecolors="none", edgecolors=colours[name], s=22, zorder=3)
        if misses:
            ax.scatter([x], [never_y], marker="x", color=colours[name], s=30, zorder=3)
            ax.annotate(f"{misses} never", (x, never_y), textcoords="offset points", xytext=(6, -3), fontsize=7)
        ci = s.get("median_time_to_target_ci95")
        if ci and ci[0] is not None and not math.isnan(ci[0]):
            lo, hi = (never_y if not _finite(v) else v for v in ci)
            ax.vlines(x - 0.12, lo, hi, color=colours[name], lw=1, alpha=0.7)
        if s["median_time_to_target_s"] is not None:
            ax.hlines(s["median_time_to_target_s"], x - 0.3, x + 0.3, color=colours[name], lw=2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    for label, name in zip(ax.get_xticklabels(), names):
        label.set_color(colours[name])
    ax.set_ylim(bottom=0, top=never_y * 1.08)
    ticks = [float(t) for t in ax.get_yticks() if 0 <= t <= 0.9 * never_y]  # keep clear of 'never'
    ax.set_yticks(ticks + [never_y], [f"{t:g}" for t in ticks] + ["never"])
    ax.set_ylabel("simulated time to target (s)")
    hold = summary.get("target_hold_evals", 1)
    ax.set_title(f"Time to {100 * summary['target_accuracy']:.1f}% (held at {hold} evaluations) over seeds "
                 f"{summary['seeds']}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    # Key: the strategies' colours, then what each mark means.
    handles = [Line2D([], [], ls="", marker="s", color=colours[n], label=n) for n in names]
    handles += [Line2D([], [], ls="", marker="o", color="grey", label="one seed (held)"),
                Line2D([], [], ls="", marker="o", markerfacecolor="none", color="grey", label="first touch"),
                Line2D([], [], ls="-", lw=2, color="grey", label="median over seeds"),
                Line2D([], [], ls="-", lw=1, color="grey", label="95% interval of the median"),
                Line2D([], [], ls="", marker="x", color="grey", label="seeds that never reach it")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot_time_to_target(summary: dict, path: str) -> None:
    _save(time_to_target_figure(summary), path)


def accuracy_over_seeds_figure(histories: dict[str, dict[int, list[dict]]], target: float | None = None,
                               max_columns: int = 4):
    """Per strategy a panel: every seed's accuracy curve (thin), the median across seeds (thick)
    and the band between the lowest and highest seed, up to the shortest seed's last evaluation
    (beyond it the seeds no longer all have a value). Curves are steps: accuracy stays what the
    last evaluation measured until the next one."""
    from fedquad.sim.stats import seed_band
    names = list(histories)
    colours = strategy_colours(names)
    fig, axes = _panel_grid(len(names), max_columns)
    rows, flat = len(axes), [ax for row in axes for ax in row]
    for ax, name in zip(flat, names):
        curves = [[(h["clock_s"], 100 * h["accuracy"]) for h in history if h.get("accuracy") is not None]
                  for history in histories[name].values()]
        curves = [c for c in curves if c]
        for c in curves:
            ax.step(*zip(*c), where="post", color=colours[name], lw=0.7, alpha=0.45)
        if curves:
            end = min(c[-1][0] for c in curves)
            grid = sorted({t for c in curves for t, _ in c if t <= end + 1e-9})
            med, lo, hi = seed_band(curves, grid)
            ax.fill_between(grid, lo, hi, step="post", color=colours[name], alpha=0.18, lw=0)
            ax.step(grid, med, where="post", color=colours[name], lw=2)
        else:
            ax.text(0.5, 0.5, "no evaluation", transform=ax.transAxes, ha="center", va="center", fontsize=9,
                    color="grey")
        if target is not None:
            ax.axhline(100 * target, color="grey", ls="--", lw=1)
        ax.set_title(f"{name} ({len(curves)} seeds)", fontsize=10, color=colours[name])
        ax.set_xlabel("simulated time (s)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in flat[len(names):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("accuracy (%)", fontsize=9)
    handles = [Line2D([], [], lw=0.7, color="grey", alpha=0.6, label="one seed"),
               Line2D([], [], lw=2, color="grey", label="median over seeds"),
               matplotlib.patches.Patch(color="grey", alpha=0.25, label="lowest to highest seed")]
    if target is not None:
        handles.append(Line2D([], [], ls="--", lw=1, color="grey", label=f"target {100 * target:.1f}%"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle("Accuracy vs simulated time over seeds", fontsize=11)
    fig.tight_layout(rect=(0, 0.07 if rows == 1 else 0.045, 1, 1))
    return fig


def plot_accuracy_over_seeds(histories: dict[str, dict[int, list[dict]]], path: str,
                             target: float | None = None) -> None:
    _save(accuracy_over_seeds_figure(histories, target), path)
