"""Figures that read right: whole-number epochs, legends off the curves, PTQ vs QAT by style,
labels that do not collide, one colour per graph opcode."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch.nn as nn  # noqa: E402

from labkit.plots import label_widths, plot_accuracy_vs_cost, plot_histories  # noqa: E402
from labkit.quantize.compare import plot_accuracy_vs_bits  # noqa: E402
from labkit.widgets import curves_figure  # noqa: E402


def _histories(n_epochs=3, runs=4):
    return {f"lr={10 ** -k:g}": pd.DataFrame({"epoch": range(1, n_epochs + 1),
                                             "val_acc": [0.5 + 0.05 * e + 0.01 * k for e in range(n_epochs)]})
            for k in range(runs)}


def _legend_clear_of_axes(ax):
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend is not None
    return not legend.get_window_extent().overlaps(ax.get_window_extent())


def _integer_ticks(ax):
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]
    return shown and all(float(t).is_integer() for t in shown)


def test_histories_have_whole_epoch_ticks_and_the_legend_beside_the_plot():
    ax = plot_histories(_histories(3), "val_acc", "t")
    assert _integer_ticks(ax)  # 3 epochs: matplotlib alone would tick 1.0, 1.25, 1.5, ...
    assert _legend_clear_of_axes(ax)
    plt.close(ax.figure)


def test_the_explorers_curves_too():
    fig = curves_figure({k: (list(h["epoch"]), list(h["val_acc"])) for k, h in _histories(2).items()}, "t")
    ax = fig.axes[0]
    assert _integer_ticks(ax) and _legend_clear_of_axes(ax)


def _compare_table(costs):
    rows = [{"format": "float", "mode": "float", "width": 32, "test_acc": 0.72, "bitops": 2 ** 20, "size_bits": 40000}]
    for fmt in ("integer", "minifloat"):
        for mode, shift in (("ptq", 0.0), ("qat", 0.01)):
            for w, c in costs.items():
                rows.append({"format": fmt, "mode": mode, "width": w, "test_acc": 0.5 + w / 40 + shift,
                             "bitops": c, "size_bits": 1300 * w})
    return pd.DataFrame(rows)


def test_ptq_and_qat_differ_by_line_style_and_marker_in_both_plots():
    df = _compare_table({8: 2 ** 16, 4: 2 ** 13, 2: 2 ** 11})
    ax = plot_accuracy_vs_cost(df, "bitops")
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    fig = plot_accuracy_vs_bits(df)
    lines_bits = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    for found in (lines, lines_bits):
        for fmt in ("integer", "minifloat"):
            ptq, qat = found[f"{fmt} PTQ"], found[f"{fmt} QAT"]
            assert ptq.get_linestyle() != qat.get_linestyle()
            assert ptq.get_marker() != qat.get_marker()
            assert ptq.get_color() == qat.get_color()  # colour is the format
        assert found["integer PTQ"].get_color() != found["minifloat PTQ"].get_color()
    assert _legend_clear_of_axes(ax)
    plt.close("all")


def test_width_labels_never_overlap_and_each_width_is_named_once():
    # 3, 2 and 1 bits cost almost the same (the float batch norms dominate): labels would collide
    df = _compare_table({8: 2 ** 16, 4: 2 ** 14, 3: 8000, 2: 7950, 1: 7900})
    ax = plot_accuracy_vs_cost(df, "bitops")
    texts = [t for t in ax.texts if t.get_text().endswith("b")]
    names = [t.get_text() for t in texts]
    assert len(names) == len(set(names)) and {"8b", "4b"} <= set(names)
    renderer = ax.figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert len(names) < 5  # some of the three crowded widths had to be left out
    plt.close(ax.figure)


def test_label_widths_keeps_all_when_there_is_room():
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.set_xscale("log", base=2)
    ax.plot([2 ** 10, 2 ** 20], [0, 1])
    drawn = label_widths(ax, [2 ** 10, 2 ** 15, 2 ** 20, 2 ** 15], [2, 4, 8, 4])
    assert [t.get_text() for t in drawn] == ["2b", "4b", "8b"]
    plt.close(fig)


def test_sweep_summary_legend_stays_off_both_axes(tmp_path):
    from labkit.sweep import SweepResult
    table = pd.DataFrame({"batch_size": [64, 256, 1024], "final_val_acc": [0.7, 0.68, 0.6],
                          "test_acc": [0.69, 0.67, 0.6], "wall_time_s": [30.0, 10.0, 4.0]})
    ax = SweepResult("s", ["batch_size"], table).plot_summary()
    assert _legend_clear_of_axes(ax)
    plt.close(ax.figure)


def test_graph_legend_has_one_colour_per_opcode():
    from labkit import MaseGraph
    fig = MaseGraph(model=nn.Sequential(nn.Linear(4, 3), nn.ReLU())).draw()
    legend = fig.axes[0].get_legend()
    colours = {t.get_text(): tuple(h.get_facecolor()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert colours["placeholder"] != colours["output"]
    assert len(set(colours.values())) == len(colours)
    plt.close(fig)


@pytest.mark.parametrize("n_epochs", [1, 2, 5, 40])
def test_integer_ticks_for_any_length(n_epochs):
    ax = plot_histories(_histories(n_epochs, 1), "val_acc", "t")
    assert _integer_ticks(ax)
    plt.close(ax.figure)
