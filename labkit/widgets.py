"""Interactive explorers for notebooks: train with sliders, browse finished sweeps.

    from labkit.widgets import explore
    explore(data)          # two tabs: "Train" and "Sweep results"

:class:`TrainExplorer` has sliders for the learning rate (log scale), batch size and
maximum epochs, a model dropdown, a Train button, a progress bar and a validation-accuracy
plot redrawn after every epoch (a Lightning callback calls :meth:`TrainExplorer.on_epoch`).
:class:`SweepBrowser` reads finished sweeps from the cache in ``outputs/sweeps/`` and shows
a run's curve and table row instantly, without training.

All logic lives in plain methods (``run``, ``on_epoch``, ``select_sweep``, ``select_run``)
that update plain attributes (``curves``, ``plot_data``, ``row``), so tests drive them
without a browser. Plots are rendered to PNG bytes shown in an ``Image`` widget, which
works the same in JupyterLab, VS Code and papermill.
"""

from __future__ import annotations

import html
import io
import math
import threading

import ipywidgets as W
import pandas as pd
import pytorch_lightning as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .checks import integer, one_of
from .data import JSCData
from .models import MODELS
from .plots import integer_epochs, legend_outside, titled
from .sweep import list_sweeps, load_sweep
from .training import train

BATCH_SIZES = [2 ** k for k in range(4, 13)]  # 16 ... 4096
LR_EXPONENTS = (-6, -1)  # the learning-rate slider: 1e-6 ... 1e-1


# -- training with a per-epoch callback ------------------------------------------------------


class EpochReporter(pl.Callback):
    """Calls ``fn(epoch, metrics)`` after every training epoch, validation included, and ends
    training after that epoch when ``should_stop()`` says so (the explorer's Stop button)."""

    def __init__(self, fn, should_stop=None):
        self.fn, self.should_stop = fn, should_stop

    def on_train_epoch_end(self, trainer, lit):
        # Validation ran inside this epoch, so its logged metrics are already here.
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if self.fn is not None:
            self.fn(trainer.current_epoch + 1, metrics)
        if self.should_stop is not None and self.should_stop():
            trainer.should_stop = True


def fit_live(model: str, data: JSCData, *, max_epochs: int, batch_size: int, learning_rate: float,
             seed: int = 0, project: str = "explorer", on_epoch=None, should_stop=None) -> dict:
    """:func:`labkit.training.train`, reporting every epoch to ``on_epoch(epoch, metrics)`` and
    stopping after the epoch where ``should_stop()`` first returns True."""
    wanted = on_epoch is not None or should_stop is not None
    r = train(model, data, max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate,
              seed=seed, project=project, accelerator="cpu", progress=False, verbose=False,
              callbacks=[EpochReporter(on_epoch, should_stop)] if wanted else None)
    return {k: r[k] for k in ("history", "best_ckpt", "best_val_acc", "epochs")}


# -- plotting to PNG bytes -------------------------------------------------------------------


def render_curves(curves: dict, title: str, highlight=None, ylabel: str = "val acc") -> bytes:
    """``curves``: label -> (epochs, values), as PNG bytes. The ``highlight`` label is drawn thick."""
    fig = curves_figure(curves, title, highlight, ylabel)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_figure(curves: dict, title: str, highlight=None, ylabel: str = "val acc") -> Figure:
    """The figure :func:`render_curves` draws (no pyplot: safe in a thread)."""
    fig = Figure(figsize=(8.0, 3.6), dpi=90)  # wider: the legend sits right of the curves
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (x, y) in curves.items():
        thick = highlight is None or label == highlight
        ax.plot(x, y, marker="o" if len(x) <= 25 else None, ms=3, lw=2.2 if thick else 1.0,
                alpha=1.0 if thick else 0.35, label=str(label))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    integer_epochs(ax)
    if curves:
        legend_outside(ax, fontsize=7)
    fig.tight_layout()
    return fig


# -- the training explorer -------------------------------------------------------------------


def _check_start(model, learning_rate, batch_size, max_epochs, epochs_limit):
    """The explorer's starting values must be ones its controls can show (a slider would
    silently clamp them, a selection slider fail without naming the value)."""
    MODELS.get(model)  # ValueError listing the registered models
    lo, hi = 10.0 ** LR_EXPONENTS[0], 10.0 ** LR_EXPONENTS[1]
    if (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
            or not lo <= learning_rate <= hi):
        raise ValueError(f"learning_rate must be a number from {lo:g} to {hi:g} (the slider's range), "
                         f"got {learning_rate!r}")
    # the slider's stops: an int among them (1.0 or True would compare equal to one)
    one_of("batch_size", integer("batch_size", batch_size), BATCH_SIZES)
    integer("epochs_limit", epochs_limit, 1)
    integer(f"max_epochs (at most epochs_limit={epochs_limit})", max_epochs, 1, epochs_limit)



class TrainExplorer:
    """Pick a model, learning rate, batch size and epochs; train; watch val accuracy grow."""

    def __init__(self, data: JSCData, *, model: str = "jsc-tiny", learning_rate: float = 1e-3,
                 batch_size: int = 256, max_epochs: int = 10, epochs_limit: int = 100,
                 project: str = "explorer", threaded: bool = True):
        if not isinstance(data, JSCData):
            raise TypeError(f"data must be a JSCData (from load_dataset), got {type(data).__name__}")
        _check_start(model, learning_rate, batch_size, max_epochs, epochs_limit)
        self.data, self.project, self.threaded = data, project, threaded
        wide = {"style": {"description_width": "initial"}}  # the default width cuts "learning rate" short
        self.model = W.Dropdown(options=MODELS.names(), value=model, description="model", **wide)
        self.learning_rate = W.FloatLogSlider(value=learning_rate, base=10, min=LR_EXPONENTS[0],
                                              max=LR_EXPONENTS[1], step=0.25, description="learning rate",
                                              readout_format=".1e", **wide)
        self.batch_size = W.SelectionSlider(options=BATCH_SIZES, value=batch_size, description="batch size",
                                            **wide)
        self.max_epochs = W.IntSlider(value=max_epochs, min=1, max=epochs_limit, description="max epochs", **wide)
        self.button = W.Button(description="Train", button_style="primary", icon="play")
        # Training runs in a thread (threaded=True), so the kernel still hears this button.
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True,
                                    tooltip="stop after the current epoch")
        self.stop_requested = threading.Event()
        self.worker: threading.Thread | None = None
        self.progress = W.IntProgress(value=0, min=0, max=max_epochs, description="epoch", **wide)
        self.status = W.HTML("Pick settings and press <b>Train</b>.")
        self.image = W.Image(format="png")
        self.curves: dict[str, tuple[list, list]] = {}  # every run of this session, for comparison
        self.current: str | None = None
        self.last_result: dict | None = None
        self.button.on_click(self._on_click)
        self.stop_button.on_click(lambda _b: self.stop())
        self.redraw()

    def settings(self) -> dict:
        return {"model": self.model.value, "learning_rate": float(self.learning_rate.value),
                "batch_size": int(self.batch_size.value), "max_epochs": int(self.max_epochs.value)}

    @staticmethod
    def label(s: dict) -> str:
        return f"{s['model']}, lr={s['learning_rate']:.1e}, bs={s['batch_size']}"

    # the callbacks --------------------------------------------------------------------
    def on_start(self, s: dict):
        self.current = self.label(s)
        self.curves[self.current] = ([], [])
        self.progress.max, self.progress.value = s["max_epochs"], 0
        self.stop_requested.clear()
        self.button.disabled, self.stop_button.disabled = True, False
        self.status.value = f"training {html.escape(self.current)} ..."

    def on_epoch(self, epoch: int, metrics: dict):
        xs, ys = self.curves[self.current]
        xs.append(epoch)
        ys.append(metrics.get("val_acc", math.nan))
        self.progress.value = epoch
        self.status.value = (f"epoch {epoch}/{self.progress.max}: val acc {ys[-1]:.4f}, "
                             f"val loss {metrics.get('val_loss', math.nan):.4f}")
        self.redraw()

    def on_end(self, result: dict):
        self.last_result = result
        self.button.disabled, self.stop_button.disabled = False, True
        stopped = "stopped by you; " if result["epochs"] < self.progress.max and self.stop_requested.is_set() else ""
        self.status.value = (f"{stopped}done: best val acc <b>{result['best_val_acc']:.4f}</b> after "
                             f"{result['epochs']} epochs; checkpoint <code>{html.escape(str(result['best_ckpt']))}</code>")

    def redraw(self):
        title = titled("validation accuracy per epoch", self.data)
        self.plot_data = {k: (list(x), list(y)) for k, (x, y) in self.curves.items()}
        self.image.value = render_curves(self.plot_data, title, highlight=self.current)

    # the action -----------------------------------------------------------------------
    def run(self) -> dict:
        """Train with the current slider settings (what the Train button does)."""
        s = self.settings()
        self.on_start(s)
        try:
            result = fit_live(s["model"], self.data, max_epochs=s["max_epochs"], batch_size=s["batch_size"],
                              learning_rate=s["learning_rate"], project=self.project, on_epoch=self.on_epoch,
                              should_stop=self.stop_requested.is_set)
        except BaseException:
            self.button.disabled, self.stop_button.disabled = False, True
            raise
        self.on_end(result)
        return result

    def stop(self):
        """End the running training after its current epoch (what the Stop button does)."""
        self.stop_requested.set()
        if self.worker is not None and self.worker.is_alive():
            self.status.value += " &mdash; stopping after this epoch ..."

    def wait(self, timeout: float | None = None):
        """Wait for a training started by the Train button to finish."""
        if self.worker is not None:
            self.worker.join(timeout)

    def _run_reporting_errors(self):
        try:
            self.run()
        except (Exception, KeyboardInterrupt) as e:  # show it in the widget; the kernel lives on
            self.status.value = f"<span style='color:crimson'>stopped: {html.escape(f'{type(e).__name__}: {e}')}</span>"

    def _on_click(self, _button):
        if self.worker is not None and self.worker.is_alive():
            return  # one training at a time
        if not self.threaded:
            self._run_reporting_errors()
            return
        self.worker = threading.Thread(target=self._run_reporting_errors, daemon=True, name="labkit-explorer")
        self.worker.start()

    @property
    def widget(self) -> W.Widget:
        controls = W.VBox([self.model, self.learning_rate, self.batch_size, self.max_epochs,
                           W.HBox([self.button, self.stop_button, self.progress])])
        return W.VBox([controls, self.status, self.image])

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


# -- browsing finished sweeps ----------------------------------------------------------------


class SweepBrowser:
    """Pick a stored sweep and a run: see every curve (the run highlighted) and its table row."""

    ALL = "(all runs)"

    def __init__(self, root=None, metric: str = "val_acc"):
        self.root, self.metric = root, metric
        fit = {"style": {"description_width": "initial"}, "layout": W.Layout(width="auto")}  # whole names
        self.sweep_picker = W.Dropdown(description="sweep", **fit)
        self.run_picker = W.Dropdown(description="run", **fit)
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.table = W.HTML()
        self.image = W.Image(format="png")
        self.result = None
        self.row: pd.Series | None = None
        self.plot_data: dict = {}
        self.sweep_picker.observe(lambda c: self.select_sweep(c["new"]), names="value")
        self.run_picker.observe(lambda c: self.select_run(c["new"]), names="value")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.refresh()

    def refresh(self):
        """Re-read the list of stored sweeps (new ones appear as their first run finishes)."""
        names = list_sweeps(self.root)
        current = self.sweep_picker.value
        self.sweep_picker.options = names
        if names:
            target = current if current in names else names[0]
            if self.sweep_picker.value == target:
                self.select_sweep(target)  # reload: more runs may have finished
            else:
                self.sweep_picker.value = target
        else:
            self.table.value = "No finished sweeps yet: run one with <code>labkit.sweep.sweep(...)</code>."

    def select_sweep(self, name):
        if not name:
            return
        self.result = load_sweep(name, root=self.root)
        labels = list(self.result.table["label"])
        self.run_picker.options = [self.ALL, *labels]
        if self.run_picker.value == self.ALL:
            self.select_run(self.ALL)
        else:
            self.run_picker.value = self.ALL

    def select_run(self, label):
        if self.result is None or label is None:
            return
        t = self.result.table
        cols = [c for c in t.columns if c not in ("label",)]
        if label == self.ALL:
            self.row = None
            shown = t[cols]
        else:
            self.row = t.loc[t["label"] == label].iloc[0]
            shown = t.loc[t["label"] == label, cols]
        self.table.value = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}")
        self.plot_data = {k: (list(h["epoch"]), list(h[self.metric])) for k, h in self.result.histories.items()
                          if len(h) and self.metric in h}
        title = titled(f"sweep {self.result.name}: {self.metric.replace('_', ' ')} per epoch", self.result.info)
        self.image.value = render_curves(self.plot_data, title, highlight=None if label == self.ALL else label,
                                         ylabel=self.metric.replace("_", " "))

    @property
    def widget(self) -> W.Widget:
        return W.VBox([W.HBox([self.sweep_picker, self.run_picker, self.refresh_button]), self.image, self.table])

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def explore(data: JSCData, root=None, **explorer_options) -> W.Tab:
    """Both views in tabs: "Train" (sliders + live curve) and "Sweep results" (the cache)."""
    tab = W.Tab(children=[TrainExplorer(data, **explorer_options).widget, SweepBrowser(root).widget])
    tab.set_title(0, "Train")
    tab.set_title(1, "Sweep results")
    return tab


__all__ = ["TrainExplorer", "SweepBrowser", "explore", "fit_live", "EpochReporter", "render_curves"]
