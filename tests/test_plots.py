"""Plots: one colour per strategy everywhere, a full key in every figure, a grid instead of a strip,
and no matplotlib warnings (e.g. "No artists with labels") when a run measured no device."""

from __future__ import annotations

import warnings

import matplotlib.colors as mcolors
import pytest

from fedquad.sim import plots
from fedquad.strategies import STRATEGIES

MiB = 2 ** 20


def _history(trained: int, oom: int, accuracy: float = 0.6) -> list[dict]:
    """A run's history as the simulator writes it: an initial evaluation, then rounds."""
    devices = [{"status": "ok", "measured_bytes": 100 * MiB + i, "budget_bytes": 150 * MiB} for i in range(trained)]
    devices += [{"status": "out_of_memory", "measured_bytes": 200 * MiB, "budget_bytes": 150 * MiB}
                for _ in range(oom)]
    return [{"round": -1, "clock_s": 0.0, "accuracy": 0.5},
            {"round": 0, "clock_s": 2.0, "devices": devices, "accuracy": None},
            {"round": 1, "clock_s": 4.0, "devices": devices, "accuracy": accuracy}]


def _texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def test_every_strategy_has_its_own_fixed_colour():
    colours = plots.strategy_colours(list(STRATEGIES))
    assert set(colours) == set(STRATEGIES)
    assert len(set(colours.values())) == len(STRATEGIES)
    # the same colour whatever else is in the figure, and in whatever order
    assert plots.strategy_colours(["hetlora", "fedquad"]) == {"hetlora": colours["hetlora"],
                                                              "fedquad": colours["fedquad"]}
    mine = plots.strategy_colours(["fedquad", "my-own", "other"])
    assert mine["my-own"] != mine["other"] and mine["my-own"] not in colours.values()
    # an unknown name keeps its colour whatever is plotted beside it (hashed, not order of use)
    assert plots.strategy_colours(["other"])["other"] == mine["other"] == plots.strategy_colour("other")
    assert plots.strategy_colours(["zzz", "other", "my-own"])["my-own"] == mine["my-own"]


def test_names_of_other_issues_have_fixed_colours_of_their_own():
    named = ["fedquad", "fedlora", "fedlora-uniform", "hetlora", "fedra", "depth-only", "quant-only",
             "fedquad-paper", "fedlora-ckpt"]
    fixed = {n: plots.STRATEGY_COLOURS[n] for n in named}
    assert len(set(fixed.values())) == len(named)
    names = list(dict.fromkeys([*STRATEGIES, *named]))
    assert len(set(plots.strategy_colours(names).values())) == len(names)  # registered later: still distinct
    # depth-only is the same in a 4-strategy and in a 9-strategy figure
    small = plots.strategy_colours(["fedquad", "quant-only", "depth-only", "fedlora"])
    assert small["depth-only"] == plots.strategy_colours(names)["depth-only"] == fixed["depth-only"]


def test_memory_plot_has_one_figure_legend_with_every_category_even_without_oom():
    fig = plots.memory_figure({"fedlora-uniform": _history(trained=5, oom=0)})
    try:
        assert len(fig.legends) == 1  # on the figure, not inside one panel
        assert {"out of memory", "budget (1.0)"} <= set(_texts(fig.legends[0]))
        assert all(ax.get_legend() is None for ax in fig.axes)
    finally:
        plots.plt.close(fig)


def test_memory_plot_of_seven_strategies_is_a_grid_not_a_strip(tmp_path):
    seven = ["fedquad", "fedlora", "fedlora-uniform", "hetlora", "fedra", "depth-only", "quant-only"]
    histories = {name: _history(trained=4, oom=i % 2) for i, name in enumerate(seven)}
    fig = plots.memory_figure(histories)
    try:
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == 7
        rows = {round(ax.get_position().y0, 3) for ax in visible}
        assert len(rows) == 2
        width, height = fig.get_size_inches()
        assert width / height < 2.5  # the old 1 x 7 strip was 6.5 : 1
        # each panel's points and title in its strategy's colour
        colours = plots.strategy_colours(histories)
        for ax, name in zip(visible, histories):
            assert ax.get_title() == name
            assert mcolors.to_hex(ax.title.get_color()) == colours[name]
            assert mcolors.to_hex(ax.collections[0].get_facecolor()[0]) == colours[name]
    finally:
        plots.plt.close(fig)
    path = tmp_path / "memory.png"
    plots.plot_memory(histories, str(path))
    assert path.stat().st_size > 0


def test_plots_of_runs_where_no_device_took_part_warn_nothing(tmp_path):
    empty = {"fedquad": [{"round": -1, "clock_s": 0.0, "accuracy": 0.5},
                         {"round": 0, "clock_s": 1.0, "devices": [], "accuracy": 0.5}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (matplotlib's "No artists with labels" among them) fails
        plots.plot_memory(empty, str(tmp_path / "memory.png"))
        plots.plot_accuracy_vs_time(empty, str(tmp_path / "acc.png"), 0.7)
        plots.plot_accuracy_vs_time({"fedquad": [{"round": -1, "clock_s": 0.0}]}, str(tmp_path / "acc2.png"))


def test_accuracy_plot_uses_the_strategy_colours_and_names_every_run():
    histories = {"depth-only": _history(3, 0, 0.55), "fedquad": _history(3, 0, 0.7)}
    fig = plots.accuracy_figure(histories, target=0.6)
    try:
        ax = fig.axes[0]
        assert _texts(ax.get_legend()) == ["depth-only", "fedquad", "target 60.0%"]
        for line in ax.get_lines()[:2]:
            assert mcolors.to_hex(line.get_color()) == plots.STRATEGY_COLOURS[line.get_label()]
    finally:
        plots.plt.close(fig)


@pytest.fixture
def seed_summary():
    return {"target_accuracy": 0.7, "seeds": [0, 1],
            "strategies": {"fedquad": {"time_to_target_s": {"0": 10.0, "1": None}, "median_time_to_target_s": None,
                                       "first_touch_s": {"0": 6.0, "1": 12.0},
                                       "median_time_to_target_ci95": [10.0, float("inf")]},
                           "fedlora": {"time_to_target_s": {"0": 20.0, "1": 30.0}, "median_time_to_target_s": 25.0}}}


def test_accuracy_over_seeds_draws_each_seed_and_a_band_in_the_strategy_colour(tmp_path):
    histories = {"fedquad": {0: _history(3, 0, 0.7), 1: _history(3, 0, 0.9)}, "my-own": {0: _history(2, 1, 0.6)},
                 "fedlora": {}}
    fig = plots.accuracy_over_seeds_figure(histories, target=0.65)
    try:
        ax = fig.axes[0]
        assert ax.get_title() == "fedquad (2 seeds)"
        lines = ax.get_lines()  # two seeds, the median, the target
        assert len(lines) == 4
        assert {mcolors.to_hex(line.get_color()) for line in lines[:3]} == {plots.STRATEGY_COLOURS["fedquad"]}
        assert list(lines[2].get_ydata()) == [50.0, 80.0]  # at 0 s and 4 s (the evaluations): median of 70 and 90
        assert len(ax.collections) == 1  # the band
        assert mcolors.to_hex(fig.axes[1].get_lines()[0].get_color()) == plots.strategy_colour("my-own")
        assert len(fig.legends) == 1
    finally:
        plots.plt.close(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_accuracy_over_seeds(histories, str(tmp_path / "band.png"), 0.65)


def test_time_to_target_plot_has_a_colour_key(seed_summary, tmp_path):
    fig = plots.time_to_target_figure(seed_summary)
    try:
        legend = fig.axes[0].get_legend()
        assert legend is not None
        texts = _texts(legend)
        assert {"fedquad", "fedlora", "median over seeds"} <= set(texts)
        handles = dict(zip(texts, legend.legend_handles))
        for name in ("fedquad", "fedlora"):
            assert mcolors.to_hex(handles[name].get_color()) == plots.STRATEGY_COLOURS[name]
    finally:
        plots.plt.close(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_time_to_target(seed_summary, str(tmp_path / "ttt.png"))
