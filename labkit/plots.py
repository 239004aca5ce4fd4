"""Figures for the notebooks: consistent titles, the SYNTHETIC mark, saving to ``figures/``.

Results made from the ``jsc-synthetic`` stand-in must never pass for real ones, so every
figure title made through :func:`titled` names the data, and :func:`save_figure` stamps a
watermark on figures from synthetic data.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from .paths import figures_dir


def _info(data_or_info):
    return getattr(data_or_info, "info", data_or_info)


def is_synthetic(data_or_info) -> bool:
    return bool(getattr(_info(data_or_info), "synthetic", False))


def titled(title: str, data_or_info) -> str:
    """``title`` plus the data it came from; synthetic data is named loudly."""
    info = _info(data_or_info)
    if info is None:
        return title
    if is_synthetic(info):
        return f"{title}\nSYNTHETIC data ({info.name}), not real JSC results"
    return f"{title}\n{info.name} (real JSC data)"


def save_figure(fig, name: str, data_or_info=None, directory=None) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` (watermarked when the data is synthetic)."""
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


def plot_histories(histories: dict, metric: str = "val_acc", title: str = "", data_or_info=None,
                   ax=None, xlabel: str = "epoch", ylabel: str | None = None):
    """One curve per run: ``histories`` maps a label to a per-epoch DataFrame (with ``epoch``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    for label, hist in histories.items():
        if hist is None or len(hist) == 0:
            continue
        ax.plot(hist["epoch"], hist[metric], marker="o" if len(hist) <= 25 else None, ms=3, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    ax.set_title(titled(title, data_or_info) if data_or_info is not None else title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
