"""Figures for the notebooks: consistent titles, the SYNTHETIC mark, saving to ``figures/``.

Results made from the ``jsc-synthetic`` stand-in must never pass for real ones, so every
figure title made through :func:`titled` names the data, and :func:`save_figure` stamps a
watermark on figures from synthetic data.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from .checks import one_of
from .paths import check_name, figures_dir


def _info(data_or_info):
    return getattr(data_or_info, "info", data_or_info)


def is_synthetic(data_or_info) -> bool:
    return bool(getattr(_info(data_or_info), "synthetic", False))


def titled(title: str, data_or_info=None) -> str:
    """``title`` plus the data it came from, worded as everywhere else (``DatasetInfo.label``,
    which marks synthetic data loudly); just ``title`` when the data is not given."""
    info = _info(data_or_info)
    if info is None:
        return title
    label = getattr(info, "label", None)
    if not label:  # an info-like object of the user's: still never pass synthetic data for real
        name = getattr(info, "name", info)
        label = f"{name} (SYNTHETIC data)" if is_synthetic(info) else str(name)
    return f"{title}\n{label}"


def save_figure(fig, name: str, data_or_info=None, directory=None) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (watermarked when the data is synthetic); ``name``
    is a file name, never a path (see :func:`labkit.paths.check_name`)."""
    check_name(name, "figure name")
    if data_or_info is not None and is_synthetic(data_or_info):
        fig.text(0.99, 0.01, "SYNTHETIC DATA", ha="right", va="bottom", fontsize=9, color="crimson",
                 alpha=0.8, weight="bold")
    path = Path(directory) if directory else figures_dir()
    path.mkdir(parents=True, exist_ok=True)
    out = path / f"{name}.png"
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def data_banner(data_or_info):
    """A Markdown banner for the top of a notebook saying which data the results come from."""
    from IPython.display import Markdown
    info = _info(data_or_info)
    if is_synthetic(info):
        text = (f"> **SYNTHETIC DATA.** These results use `{info.name}`, a seeded stand-in with the "
                "schema of the real JSC dataset (see `data/README.md`). Numbers and figures show how "
                "the methods behave, not real jet-tagging performance.")
    else:
        text = f"> Results below use the real JSC dataset (`{info.name}`, source: {info.source or 'cache'})."
    return Markdown(text)


def integer_epochs(ax) -> None:
    """Epochs are whole numbers: no 2.5 on the x axis."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # one epoch: widen so that whole numbers fall inside the axis
        mid = round((lo + hi) / 2)
        ax.set_xlim(mid - 1, mid + 1)


def legend_outside(ax, handles=None, labels=None, *, fontsize: int = 8, title: str | None = None):
    """The legend to the right of the axes, where it cannot cover a curve."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                     fontsize=fontsize, title=title, title_fontsize=fontsize)


def plot_histories(histories: dict, metric: str = "val_acc", title: str = "", data_or_info=None,
                   ax=None, xlabel: str = "epoch", ylabel: str | None = None):
    """One curve per run: ``histories`` maps a label to a per-epoch DataFrame (with ``epoch``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    for label, hist in histories.items():
        if hist is None or len(hist) == 0:
            continue
        ax.plot(hist["epoch"], hist[metric], marker="o" if len(hist) <= 25 else None, ms=3, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    ax.set_title(titled(title, data_or_info), fontsize=10)
    ax.grid(alpha=0.3)
    if xlabel == "epoch":
        integer_epochs(ax)
    legend_outside(ax)
    return ax


# --- Lab 2: what the layers hold, what they cost ----------------------------------------------


def _layer_ops(gm, ops) -> dict:
    """``{call_module node: its op}`` for the layers ``ops`` asks for (None: every layer)."""
    from .passes.utils import get_mase_op

    def op_of(node):  # without metadata: the lower-case layer class name
        op = get_mase_op(node, None)
        return op if op is not None else type(gm.get_submodule(node.target)).__name__.lower()

    wanted = {n: op_of(n) for n in gm.graph.nodes if n.op == "call_module"}
    if ops is None:
        return wanted
    if isinstance(ops, str):
        ops = [ops]
    unknown = sorted(set(ops) - set(wanted.values()))
    if unknown:
        raise ValueError(f"layer_values: ops {unknown} match no layer; this graph has "
                         f"{sorted(set(wanted.values()))}")
    return {n: op for n, op in wanted.items() if op in ops}


def layer_values(graph, x, *, ops=None) -> dict:
    """Weights and input activations of every layer of a MaseGraph, for plotting.

    Runs ``x`` (one batch) through ``graph`` with the shared
    :class:`~labkit.passes.interpreter.NodeCapture` (eval mode, no grad, each layer's own
    training flag restored) and records, for each ``call_module`` node, a copy of its first
    tensor input (taken *before* the layer runs, so ``ReLU(inplace=True)`` cannot overwrite
    it) and its ``weight`` if it has one. ``ops`` keeps only nodes whose ``mase_op`` (or,
    without metadata, lower-case layer class name) is listed. Returns
    ``{node name: {"op": ..., "weight": tensor | None, "activation": tensor}}`` in graph order.
    """
    import torch
    import torch.fx as fx

    from .passes.interpreter import NodeCapture, first_tensor

    gm = getattr(graph, "model", None)
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"layer_values needs a MaseGraph, got {type(graph).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor batch, got {type(x).__name__}")
    wanted = _layer_ops(gm, ops)
    found = {}

    def before(n, args, kwargs):
        act = first_tensor(n, args, f"layer_values: node {n.name!r} has no tensor input")
        weight = getattr(gm.get_submodule(n.target), "weight", None)
        found[n.name] = {"op": wanted[n],
                         "weight": weight.detach().clone() if isinstance(weight, torch.Tensor) else None,
                         "activation": act.detach().clone()}

    NodeCapture(gm, before=before, nodes=wanted).run(x)
    return found


def plot_layer_distributions(values: dict, title: str = "Weights and activations per layer",
                             data_or_info=None, kind: str = "box", log_counts: bool = True):
    """Per-layer distributions from :func:`layer_values`: weights (left) and inputs (right).

    ``kind="box"``: one box per layer (whiskers at the 1st/99th percentile, so outliers show
    as points); ``kind="hist"``: a row of two histograms per layer, activation counts on a
    log scale when ``log_counts`` (ReLU outputs pile up at 0 and hide the tail otherwise).
    Returns the matplotlib Figure.
    """
    one_of("kind", kind, ("box", "hist"))
    if not values:
        raise ValueError("no layers to plot: layer_values returned nothing")
    suptitle = titled(title, data_or_info)
    fig = _layer_boxes(values) if kind == "box" else _layer_histograms(values, log_counts)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def _layer_boxes(values: dict):
    """Two panels, weights and inputs, one box per layer."""
    names = list(values)
    label = {n: f"{n}\n({values[n]['op']})" for n in names}
    weighted = [n for n in names if values[n]["weight"] is not None]
    fig, (aw, aa) = plt.subplots(1, 2, figsize=(12, 0.55 * len(names) + 2.0), gridspec_kw={"width_ratios": [1, 1]})
    for ax, keys, what in ((aw, weighted, "weight"), (aa, names, "activation")):
        data = [values[n][what].flatten().numpy() for n in keys]
        if data:
            ax.boxplot(data, vert=False, whis=(1, 99), flierprops={"markersize": 2, "alpha": 0.4})
            ax.set_yticks(range(1, len(keys) + 1), [label[n] for n in keys], fontsize=8)
            ax.invert_yaxis()  # first layer on top, like the graph
        ax.set_xlabel(f"{what} value" if what == "weight" else "input value (data_in_0)")
        ax.set_title("weights" if what == "weight" else "input activations", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    return fig


def _layer_histograms(values: dict, log_counts: bool):
    """A row of two histograms (weight, input) per layer."""
    import numpy as np

    fig, axes = plt.subplots(len(values), 2, figsize=(10, 1.7 * len(values) + 1.0), squeeze=False)
    for row, n in zip(axes, values):
        for ax, what in zip(row, ("weight", "activation")):
            t = values[n][what]
            if t is None:
                ax.text(0.5, 0.5, "no weight", ha="center", va="center", transform=ax.transAxes, color="grey")
                ax.set_xticks([]), ax.set_yticks([])
            else:
                v = t.flatten().numpy()
                ax.hist(v, bins=min(60, max(10, int(np.sqrt(v.size)))), color="#4a7ab5", alpha=0.85)
                if what == "activation" and log_counts:
                    ax.set_yscale("log")  # ReLU outputs pile up at 0 and would hide the tail
            ax.set_title(f"{n} ({values[n]['op']}): {'weight' if what == 'weight' else 'input'}", fontsize=8)
            ax.tick_params(labelsize=7)
    return fig


def plot_per_layer(tables: dict, column: str = "Forward bitops", title: str | None = None,
                   data_or_info=None, log: bool = True, ax=None):
    """Grouped bars: ``column`` per layer, one bar per table (e.g. float32 vs 8-bit vs 4-bit).

    ``tables`` maps a label to an :func:`~labkit.passes.flops.analyse_flops_pass` table
    (``info["table"]``); rows without a number (placeholder, output, total) are skipped.
    """
    import numpy as np

    if not tables:
        raise ValueError("tables is empty: pass {label: analyse_flops_pass(...)[1]['table']}")
    first = next(iter(tables.values()))
    if column not in first.columns:
        raise ValueError(f"column {column!r} is not in the table; columns: {list(first.columns)}")
    rows = first[(first["Node name"] != "total") & first[column].notna()]
    names = list(rows["Node name"])
    kinds = dict(zip(rows["Node name"], rows["Node type"]))
    if ax is None:
        _, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(names) * max(1, len(tables)) ** 0.5), 4.2))
    width = 0.8 / len(tables)
    pos = np.arange(len(names))
    top = 0.0
    for i, (lab, table) in enumerate(tables.items()):
        by_name = dict(zip(table["Node name"], table[column]))
        heights = [by_name.get(n, np.nan) for n in names]
        top = max(top, float(np.nanmax(heights)) if np.isfinite(heights).any() else 0.0)
        ax.bar(pos + (i - (len(tables) - 1) / 2) * width, heights, width, label=str(lab))
    ax.set_xticks(pos, [f"{n}\n{kinds[n]}" for n in names], rotation=45, ha="right", fontsize=7)
    if log:
        ax.set_yscale("symlog", linthresh=1)  # dropout's 0 stays on the axis
        ax.set_ylim(0, max(10.0, top * 3))    # symlog's autoscale clips the tallest bars
    ax.set_ylabel(column)
    text = title or f"{column} per layer"
    ax.set_title(titled(text, data_or_info), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax)
    ax.figure.tight_layout()
    return ax


def plot_accuracy_vs_cost(df, cost: str = "bitops", title: str | None = None, data_or_info=None,
                          ax=None, float_acc: float | None = None):
    """Test accuracy against a cost column (BitOPs, model bits ...), one line per (format, mode).

    ``df`` needs ``format``, ``mode``, ``width``, ``test_acc`` and ``cost``; each point is
    labelled with its bit width. A ``float`` row (or ``float_acc``) is drawn as a star.
    """
    need = {"format", "mode", "width", "test_acc", cost}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ValueError(f"df lacks columns {missing}; it needs {sorted(need)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    quant = df[df["format"] != "float"]
    floats = df[df["format"] == "float"]
    colours = format_colours(quant["format"])
    for (fmt, mode), group in quant.groupby(["format", "mode"], sort=True):
        g = group.sort_values(cost)
        ax.plot(g[cost], g["test_acc"], color=colours[fmt], ms=5, label=f"{fmt} {str(mode).upper()}",
                **MODE_STYLE.get(str(mode), {}))
    if len(floats):
        ax.plot(floats[cost], floats["test_acc"], "*", ms=12, color="black", label="float32")
    elif float_acc is not None:
        ax.axhline(float_acc, color="grey", ls=":", label="float32")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(cost)
    ax.set_ylabel("test accuracy")
    text = title or f"Test accuracy vs {cost}"
    ax.set_title(titled(text, data_or_info), fontsize=10, pad=14)  # room for the width labels
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.figure.tight_layout()
    label_widths(ax, quant[cost], quant["width"])
    return ax


# PTQ and QAT told apart by line style *and* marker (not colour alone: colour is the format)
MODE_STYLE = {"ptq": {"ls": "--", "marker": "o", "mfc": "none"}, "qat": {"ls": "-", "marker": "s"}}


def format_colours(formats) -> dict:
    return {fmt: f"C{i}" for i, fmt in enumerate(sorted(set(formats)))}


def label_widths(ax, costs, widths, min_gap_px: float = 4.0) -> list:
    """Name each point's bit width once, along the top of the axes, at its x position.

    Points of one width share an x (the same BitOPs or size whatever the format or mode), so
    labelling every point would stack labels; labels that would still touch a neighbour are
    left out (the table above the figure has every value). Returns the texts drawn.
    """
    pairs = sorted({(float(c), int(w)) for c, w in zip(costs, widths)})
    fig = ax.figure
    fig.canvas.draw()  # final limits and a renderer to measure text
    renderer = fig.canvas.get_renderer()
    drawn, last_right = [], -float("inf")
    for c, w in pairs:
        t = ax.text(c, 1.0, f"{w}b", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="dimgrey")
        box = t.get_window_extent(renderer)
        if box.x0 < last_right + min_gap_px:
            t.remove()
            continue
        drawn.append(t)
        last_right = box.x1
    return drawn


def plot_weight_quantisation(weights: dict, title: str = "Float weights and the values the forward pass uses",
                             data_or_info=None):
    """For each layer, float weights against their quantised values.

    ``weights`` maps a layer name to ``(float_weight, quantised_weight)`` tensors of the same
    shape (e.g. ``(m.weight, m.w_quantizer(m.weight))``). Each row has a histogram of both
    (the quantised ones pile up on a few levels) and the transfer curve: quantised against
    float value, a staircase whose flat ends are the clamped (saturated) weights.
    """
    import numpy as np

    if not weights:
        raise ValueError("weights is empty: pass {layer name: (float weight, quantised weight)}")
    for name, pair in weights.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"weights[{name!r}] must be a (float, quantised) pair of tensors")
        if tuple(pair[0].shape) != tuple(pair[1].shape):
            raise ValueError(f"weights[{name!r}]: float shape {tuple(pair[0].shape)} != "
                             f"quantised shape {tuple(pair[1].shape)}")
    fig, axes = plt.subplots(len(weights), 2, figsize=(11, 2.6 * len(weights) + 0.8), squeeze=False)
    for (hist_ax, curve_ax), (name, (w, q)) in zip(axes, weights.items()):
        w = w.detach().flatten().cpu().numpy()
        q = q.detach().flatten().cpu().numpy()
        levels = np.unique(q)
        bins = np.linspace(min(w.min(), q.min()), max(w.max(), q.max()), 50)
        hist_ax.hist(w, bins=bins, alpha=0.6, label="float32", color="#4a7ab5")
        hist_ax.hist(q, bins=bins, alpha=0.6, label=f"quantised ({len(levels)} distinct values)", color="#d9822b")
        hist_ax.set_title(f"{name}: weight values", fontsize=9)
        hist_ax.legend(fontsize=7)
        order = np.argsort(w)
        curve_ax.plot(w[order], q[order], ".", ms=3, color="#d9822b")
        lo, hi = float(w.min()), float(w.max())
        curve_ax.plot([lo, hi], [lo, hi], ":", color="grey", lw=1, label="y = x")
        curve_ax.set_xlabel("float weight", fontsize=8)
        curve_ax.set_ylabel("quantised weight", fontsize=8)
        curve_ax.set_title(f"{name}: quantised vs float", fontsize=9)
        curve_ax.legend(fontsize=7)
        for ax in (hist_ax, curve_ax):
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle(titled(title, data_or_info), fontsize=10)
    fig.tight_layout()
    return fig
