"""Hyperparameter sweeps: one training per setting, cached on disk, spread over CPU cores.

The lab's bash loop (``for b in 64 128 ...; do ch train jsc-tiny jsc --batch-size $b; done``)
becomes one call that returns a table and the learning curves::

    res = sweep("jsc-tiny", data, "batch_size", [64, 128, 256], max_epochs=10)
    res.table                 # one row per run: setting, val/test accuracy, epochs, time, ckpt
    res.histories             # label -> per-epoch DataFrame (epoch, val_acc, ...)
    res.plot()                # val accuracy per epoch, one curve per value

    both = sweeps("jsc-tiny", data, {"batch_size": [64, 128], "max_epochs": [10, 50]}, max_epochs=10)
    both["max_epochs"].table  # several one-setting sweeps planned as one (a shared run trains once)

Every finished run is written at once to ``outputs/sweeps/<name>/<hash>.json`` (a
:class:`~labkit.cache.ResultCache`), keyed by *everything that decides its result*: the
model (name and architecture), the dataset identity, each training setting and the recipe
version. So a re-run is instant, an interrupted sweep (Ctrl-C, a dead kernel) resumes with
only the missing runs, and changing one setting retrains only the runs it touches.

Runs are spread over CPU cores with worker processes (one thread each; each worker loads
the dataset once from the processed cache and imports the modules that define the swept
models), or run one after another in this process with ``workers=1``, on a GPU
(``accelerator="gpu"``), or when a model was defined where a fresh process cannot import
it (a notebook cell, inside a function). With ``cluster="tcp://host:8786"`` (or a
``distributed.Client``, or ``$LABKIT_CLUSTER``) they run on a Dask cluster instead: the data
are scattered once to each worker, notebook-defined models travel by value, and each result
is stored here as it arrives, in the same cache entries a local run uses
(:mod:`labkit.executor`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import checks, executor
from .cache import ResultCache, settings_hash
from .data import JSCData, load_dataset
from .data.base import tensor_digest
from .models import MODELS, get_model
from .paths import check_name, outputs_dir
from .prefix import Snapshots, split as split_prefixes
from .schedule import check_flags, plan as plan_runs, planned_epochs
from .stack import STACKED, run_in_sweep, split as split_stacked
from .progress import EpochCounter, epoch_callback, install as install_progress
from .runtime import check_usable, device_kind
from .settings import TrainSettings
from .training import TrainingDiverged, evaluate, load_model, read_checkpoint, torch_threads, train

# Bump when the training recipe changes in a way that changes results: old entries then miss.
RECIPE_VERSION = 1

# The settings a sweep may vary or fix (the model, and the training settings that decide a run's
# result: these make its cache key), with train()'s defaults.
SETTINGS = {"model": None, **{k: getattr(TrainSettings(), k) for k in (
    "max_epochs", "batch_size", "learning_rate", "seed", "weight_decay", "scheduler", "early_stopping", "max_time")}}
RESULT_COLUMNS = ["final_val_acc", "best_val_acc", "test_acc", "epochs", "wall_time_s", "cached",
                  "best_ckpt"]


# -- checking settings before anything runs --------------------------------------------------


def check_value(name: str, value):
    """One setting value, normalised (``ValueError`` names the bad one): a model, or a training
    setting checked by :class:`~labkit.settings.TrainSettings`."""
    if name not in SETTINGS:
        raise ValueError(f"cannot sweep or fix {name!r}; the settings are {', '.join(SETTINGS)}")
    if name != "model":
        return getattr(TrainSettings(**{name: value}), name)
    if isinstance(value, nn.Module):
        return value
    if not isinstance(value, str):
        raise TypeError(f"model must be a registered model name or an nn.Module, got {value!r}")
    MODELS.get(value)  # ValueError listing the registered names
    return value


def _check_grid(grid) -> dict:
    if not isinstance(grid, dict) or not grid:
        raise TypeError(f"grid must be a non-empty dict of setting -> list of values, got {grid!r}")
    out = {}
    for name, values in grid.items():
        if name not in SETTINGS:
            raise ValueError(f"cannot sweep {name!r}; sweepable settings: {', '.join(SETTINGS)}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"values for {name} must be a list, got {values!r}")
        values = [check_value(name, v) for v in values]
        if not values:
            raise ValueError(f"no values given for {name}")
        keys = [_jsonable(v) for v in values]
        if len(set(map(str, keys))) != len(keys):
            raise ValueError(f"repeated values for {name}: {keys}")
        out[name] = values
    return out


# -- what identifies a run -------------------------------------------------------------------


def _jsonable(v):
    return module_name(v) if isinstance(v, nn.Module) else v


def _architecture(module: nn.Module) -> str:
    return hashlib.sha256(repr(module).encode()).hexdigest()[:16]


def module_name(module: nn.Module) -> str:
    """How a sweep names a module: its registry name (``get_model`` sets ``labkit_name``), else
    its class and a hash of its layers, so two different ``nn.Sequential`` stay apart."""
    return getattr(module, "labkit_name", None) or f"{type(module).__name__}-{_architecture(module)[:8]}"


def _module_identity(module: nn.Module) -> dict:
    state = module.state_dict()
    return {"model": module_name(module), "architecture": _architecture(module),
            "initial_weights": tensor_digest([state[k] for k in sorted(state)])}


def model_identity(model, info) -> dict:
    """A registry name plus a hash of the architecture it builds (re-registering a different
    network under the same name must not reuse old results); for a module, its name
    (:func:`module_name`), architecture and initial weights."""
    if isinstance(model, nn.Module):
        return _module_identity(model)
    return {"model": model, "architecture": _architecture(get_model(model, info))}


def label_of(setting: dict) -> str:
    """``{"batch_size": 64}`` -> ``"batch_size=64"`` (floats in short form: ``1e-05``)."""
    parts = []
    for k, v in setting.items():
        v = _jsonable(v)
        parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


# -- running one training (in this process or in a worker) -----------------------------------


def _run_one(settings: dict, data: JSCData, project: str, accelerator: str) -> dict:
    """Train with ``settings``, test the best checkpoint, return plain JSON-able values."""
    if settings.get(STACKED):  # several runs as one stacked model (labkit.stack)
        return run_in_sweep(settings, data, project, accelerator)
    model = settings["model"]
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model)  # every run starts from the same weights
    kwargs = {k: settings[k] for k in SETTINGS if k != "model"}
    snaps = Snapshots(settings, project)  # the shorter runs this one carries (labkit.prefix), if any
    try:
        r = train(model, data.info.name, data=data, project=project, accelerator=accelerator, progress=False,
                  verbose=False, callbacks=[epoch_callback(), *snaps.callbacks()], **kwargs)  # epochs -> EpochCounter
    except TrainingDiverged as e:  # a result of these settings like any other: recorded, not raised
        return snaps.derive(_diverged_result(e), lambda ckpt: _test_acc(model, ckpt, data))
    out = {k: r[k] for k in ("best_val_acc", "final_val_acc", "final_train_acc", "epochs", "steps",
                             "wall_time_s", "stopped_early", "best_ckpt", "last_ckpt")}
    out["test_acc"] = _test_acc(model, r["best_ckpt"], data) if r["best_ckpt"] else float("nan")
    out["history"] = r["history"].to_dict(orient="records")
    out["diverged"] = None
    return snaps.derive(out, lambda ckpt: _test_acc(model, ckpt, data))


def _test_acc(model, best_ckpt, data: JSCData) -> float:
    """Test accuracy of ``model`` (a name or a module) with the weights of ``best_ckpt``."""
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
        net.load_state_dict(read_checkpoint(best_ckpt)["state_dict"])
    else:
        net = load_model(model, best_ckpt, "pl", data.info)
    return evaluate(net, data, "test")["acc"]


def _diverged_result(e) -> dict:
    """A run whose loss became non-finite: its finite epochs' history, no accuracies, and why."""
    hist = e.result["history"]
    nan = float("nan")
    return {"best_val_acc": nan, "final_val_acc": nan, "final_train_acc": nan, "test_acc": nan,
            "epochs": e.result["epochs"], "steps": None, "wall_time_s": nan, "stopped_early": True,
            "best_ckpt": None, "last_ckpt": None, "history": hist.to_dict(orient="records"),
            "diverged": str(e)}


_WORKER_DATA: JSCData | None = None


def data_fingerprint(ident: dict) -> str:
    """A short name for a data identity (``JSCData.identity()``), for messages."""
    return settings_hash(ident)


def _data_source(data: JSCData, scatter: bool = False):
    """How a worker gets the data: the processed cache file when there is one (a path this
    machine's worker processes share), else (or with ``scatter``: a cluster) the tensors.
    Either way with the identity the sweep expects, checked by the worker."""
    path = (data.manifest or {}).get("cache_path")
    if not scatter and path and Path(path).is_file():
        return ("cache", str(path), data.info, data.identity())
    return ("tensors", data, data.identity())


def _load_source(source) -> JSCData:
    if source[0] == "tensors":
        _, data, ident = source
        where = "the data sent to this worker"
    else:
        from .data.prepare import read_processed, to_jscdata
        _, path, info, ident = source
        payload = read_processed(Path(path))
        data = to_jscdata(payload, info) if payload is not None else None
        where = f"the processed data cache {path}"
        if data is None:
            raise RuntimeError(f"{where} cannot be read on this worker; rerun the sweep")
    got = data.identity()
    if got != ident:
        raise RuntimeError(f"{where} has fingerprint {data_fingerprint(got)}, but the sweep's data has "
                           f"{data_fingerprint(ident)}; the data changed under the sweep: rerun it")
    return data


def _init_worker(source, threads: int, builders: dict, progress_sink=None):
    global _WORKER_DATA
    torch.set_num_threads(threads)
    install_progress(progress_sink)  # every finished epoch goes to the parent's EpochCounter
    for name, build in builders.items():  # unpickling each one imported the module defining it
        MODELS.register(name, build)
    _WORKER_DATA = _load_source(source)  # once per process, not per run


class _Task(tuple):
    """One run for the executor: ``(index, settings, project, accelerator, label)``; named by
    its label in messages."""

    def __repr__(self):
        return self[4]


def _run_in_worker(task):
    _, settings, project, accelerator, _ = task
    return _run_one(settings, _WORKER_DATA, project, accelerator)


def _importable(obj) -> bool:
    """Can a fresh process import ``obj`` by name (what pickling it by reference needs)?

    Not when it lives in ``__main__`` (a notebook), inside a function, or in a module that
    only this process can see (created in memory, or not on ``sys.path``)."""
    modname, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not modname or modname == "__main__" or "<locals>" in qualname:
        return False
    found = sys.modules.get(modname)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not obj:  # the module's name for it is something else now (e.g. redefined)
        return False
    top = modname.partition(".")[0]
    if top == __name__.partition(".")[0]:
        return True  # labkit itself: every worker imports it
    # Ask the import machinery afresh (importlib.util.find_spec would answer from sys.modules).
    for finder in sys.meta_path:
        try:
            if finder.find_spec(top, None) is not None:
                return True
        except Exception:  # a finder without find_spec, or one that fails on this name
            continue
    return False


def worker_builders(models, by_value: bool = False) -> dict | None:
    """What spawned workers need to build ``models`` (registry names or modules): the
    registered builder of every name, each importable by name (unpickling it in a worker
    imports the user's module that defines it). ``None`` when a model cannot be rebuilt in
    a fresh process; the sweep then runs in this process instead. ``by_value``: for a Dask
    cluster, whose cloudpickle sends what cannot be imported (a notebook's classes) by value."""
    builders = {}
    for model in models:
        target = type(model) if isinstance(model, nn.Module) else MODELS.get(model)
        if not by_value and not _importable(target):
            return None
        if isinstance(model, str):
            builders[model] = target
    return builders


def _spawn_works() -> bool:
    """Spawned workers re-run the parent's main script; code piped in on stdin has none to re-run."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _is_main_test(test) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    import ast
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def unguarded_main_line(source: str, lineno: int) -> bool:
    """Is line ``lineno`` of a script outside every ``if __name__ == "__main__":`` block?"""
    import ast
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_test(node.test):
            if node.body[0].lineno <= lineno <= node.body[-1].end_lineno:
                return False
    return True


def _unguarded_script() -> bool:
    """Was this sweep started by a script's top-level code outside an ``if __name__ ==
    "__main__":`` guard? Spawned workers re-run that code, so each would start a sweep of its
    own (multiprocessing then fails with a long traceback). Looked up on the call stack."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main_file or not os.path.isfile(main_file):
        return False
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            try:
                if os.path.samefile(code.co_filename, main_file):
                    return unguarded_main_line(Path(main_file).read_text(), frame.f_lineno)
            except (OSError, UnicodeDecodeError):
                return False
        frame = frame.f_back
    return False


_cpu_count = executor.cpu_count


def _run_cost(settings: dict) -> float:
    """Rough relative cost, to start the longest runs first (better packing over workers)."""
    return settings["max_epochs"] * (1.0 + 256.0 / settings["batch_size"])


# -- results ---------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """A finished sweep: ``table`` (one row per run) and ``histories`` (label -> per-epoch table)."""

    name: str
    params: list
    table: pd.DataFrame
    histories: dict = field(default_factory=dict)
    info: object = None
    directory: Path | None = None
    elapsed_s: float = 0.0  # how long this call took (cached runs cost ~nothing)

    def _repr_html_(self):
        head = f"<b>sweep {self.name}</b> over {', '.join(self.params)}"
        if self.info is not None:
            head += f" &mdash; {getattr(self.info, 'label', self.info)}"
        cols = [c for c in self.table.columns if c not in ("best_ckpt", "label")]
        return head + self.table[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}")

    def __repr__(self):
        cols = [c for c in self.table.columns if c not in ("best_ckpt", "label")]
        return f"SweepResult({self.name!r})\n" + self.table[cols].to_string(index=False)

    def best(self, metric: str = "best_val_acc") -> pd.Series:
        """The row with the highest ``metric``."""
        return self.table.loc[self.table[metric].idxmax()]

    def plot(self, metric: str = "val_acc", title: str | None = None, ax=None):
        """One curve per run (``metric`` per epoch), titled with the data it came from."""
        from .plots import plot_histories
        title = title or f"{metric.replace('_', ' ')} per epoch, varying {' and '.join(self.params)}"
        shown = {k: h for k, h in self.histories.items() if len(h) and metric in h}
        before = len(ax.get_lines()) if ax is not None else 0
        ax = plot_histories(shown, metric=metric, title=title, data_or_info=self.info, ax=ax)
        longest = max((len(h) for h in shown.values()), default=1)
        for line, hist in zip(ax.get_lines()[before:], list(shown.values())):
            # Shorter runs on top (an epochs sweep's runs can coincide), each end marked.
            line.set_zorder(3 - len(hist) / longest)
            ax.plot(hist["epoch"].iloc[-1], hist[metric].iloc[-1], "o", ms=7, mfc="none",
                    color=line.get_color(), zorder=line.get_zorder())
        return ax

    def plot_summary(self, ax=None, title: str | None = None, logx: bool | None = None):
        """Final val / test accuracy (left axis) and wall time (right axis) against the swept value."""
        import matplotlib.pyplot as plt
        from .plots import titled
        if len(self.params) != 1:
            raise ValueError(f"plot_summary needs a one-setting sweep, this one varies {self.params}")
        p = self.params[0]
        numeric = pd.api.types.is_numeric_dtype(self.table[p]) and not pd.api.types.is_bool_dtype(self.table[p])
        # Numbers on a number line; names (models, schedulers) one per position, in sweep order.
        t = self.table.sort_values(p) if numeric else self.table
        x = t[p] if numeric else list(range(len(t)))
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot(x, t["final_val_acc"], "o-", label="final val acc")
        ax.plot(x, t["test_acc"], "s--", label="test acc (best ckpt)")
        ax.set_xlabel(p.replace("_", " "))
        ax.set_ylabel("accuracy")
        if not numeric:
            ax.set_xticks(x, ["None" if pd.isna(v) else str(v) for v in t[p]])  # as in the labels
            ax.set_xlim(-0.5, len(t) - 0.5)
        elif logx if logx is not None else (t[p].min() > 0 and t[p].max() / t[p].min() >= 8):
            ax.set_xscale("log")
            ax.set_xticks(list(t[p]), [f"{v:g}" for v in t[p]])  # the swept values, not powers
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        right = ax.twinx()
        right.plot(x, t["wall_time_s"], "^:", color="grey", label="wall time")
        right.set_ylabel("wall time per run (s)", color="grey")
        lines = ax.get_legend_handles_labels()
        extra = right.get_legend_handles_labels()
        # below the axes: "best" placement ignores the twin axis's line, so it could cover it
        ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
        ax.set_title(titled(title or f"varying {p.replace('_', ' ')}", self.info), fontsize=9)
        return ax


def _row(setting: dict, result: dict, cached: bool) -> dict:
    row = {k: _jsonable(v) for k, v in setting.items()}
    row.update({k: result.get(k) for k in RESULT_COLUMNS if k != "cached"})
    row["cached"] = cached
    row["diverged"] = bool(result.get("diverged"))  # its loss became NaN/inf: accuracies are NaN
    row["label"] = label_of(setting)
    return row


def _valid_result(result: dict) -> bool:
    """A stored run the table and plots can use (an entry edited by hand may not be)."""
    history = result.get("history", [])
    return isinstance(history, list) and all(isinstance(row, dict) for row in history)


def _history(result: dict) -> pd.DataFrame:
    return pd.DataFrame(result.get("history") or [])


# -- the sweep itself ------------------------------------------------------------------------


def _resolve_data(dataset, data) -> JSCData:
    if data is not None:
        if not isinstance(data, JSCData):
            raise TypeError(f"data must be a JSCData (from load_dataset), got {type(data).__name__}")
        return data
    if isinstance(dataset, JSCData):
        return dataset
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a dataset name or a JSCData, got {type(dataset).__name__}")
    return load_dataset(dataset)


def _model_key(model):
    return id(model) if isinstance(model, nn.Module) else model


def _default_name(model, params) -> str:
    m = model if isinstance(model, str) else "models" if model is None else module_name(model)
    return f"{m}-{'-'.join(params)}"


def grid_sweep(model, dataset, grid: dict, *, data: JSCData | None = None, workers: int | None = None,
               accelerator: str = "cpu", cache_dir=None, name: str | None = None, progress: bool = True,
               cluster=None, share_prefixes: bool = True, stack_runs: bool = True, **fixed) -> SweepResult:
    """Train once for every combination in ``grid`` (``{"batch_size": [64, 128], ...}``).

    ``fixed`` sets the other settings (``max_epochs``, ``learning_rate``, ``seed``, ...;
    defaults as in :func:`labkit.training.train`). Finished runs live in
    ``cache_dir`` (default ``outputs/sweeps/<name>``) and are reused. ``workers``: processes
    to use (default: one per CPU core, at most one per missing run; 1 = in this process).
    ``cluster``: a Dask scheduler address or ``Client`` to run on (default: ``$LABKIT_CLUSTER``
    when ``workers`` is not given); see :mod:`labkit.executor`.
    ``share_prefixes``: runs that differ only in ``max_epochs`` train once, to the largest
    (:mod:`labkit.prefix`; same results, bit for bit on the CPU). ``stack_runs``: on the CPU, runs of
    one model and batch size that differ in learning rate, weight decay, seed, max_epochs or early
    stopping train together as one stacked model (:mod:`labkit.stack`; the same runs to float
    rounding). The plan (:mod:`labkit.schedule`) is printed before training.
    """
    start = time.perf_counter()
    grid, base, name = _checked(model, grid, fixed, accelerator, name)
    _check_options(workers, share_prefixes, stack_runs)
    data = _resolve_data(dataset, data)
    device = device_kind(accelerator)
    one = _prepare(grid, base, name, Path(cache_dir) if cache_dir else outputs_dir() / "sweeps" / name, data, device)
    _train(one.runs, one.results, one.project, one.store, name=name, data=data, device=device,
           accelerator=accelerator, workers=workers, cluster=cluster, progress=progress,
           share_prefixes=share_prefixes, stack_runs=stack_runs)
    return one.result(data.info, time.perf_counter() - start)


def sweeps(model, dataset, grid: dict, *, data: JSCData | None = None, workers: int | None = None,
           accelerator: str = "cpu", progress: bool = True, cluster=None, share_prefixes: bool = True,
           stack_runs: bool = True, root=None, **fixed) -> dict[str, SweepResult]:
    """Several one-setting sweeps planned and trained as one: ``sweeps("jsc-tiny", data,
    {"batch_size": [64, 128], "max_epochs": [10, 50], "learning_rate": [1e-5, 1e-3]}, max_epochs=10)``.

    For each setting in ``grid``, the runs and results of ``sweep(model, dataset, setting,
    values, **fixed)`` with the others at ``fixed`` (or train()'s defaults). A setting that is
    both swept and in ``fixed`` is swept in its own sweep and fixed in the others' (above:
    ``max_epochs=10`` for the batch-size and learning-rate sweeps). Returns ``{setting:
    SweepResult}``; each sweep keeps its own cache folder, ``<root>/<model>-<setting>`` (``root``
    default: ``outputs/sweeps``, where :func:`sweep` puts it), so a later :func:`sweep` call
    finds its runs there. Unlike one call after another, a run that several sweeps contain
    trains once (or not at all when one of them has it cached) and is stored in each; all
    missing runs are planned together (:func:`labkit.schedule.plan`: a 10-epoch run can be the
    prefix of another sweep's 200-epoch run; the workers are shared out over all of them), with
    one plan table and one progress bar. A run's checkpoints live with the sweep that trained
    it (the first that contains it, in ``grid``'s order); a run one sweep had cached and another
    took from it shows ``cached`` in both tables. Each result's ``elapsed_s`` is the whole call's.
    Other options as in :func:`grid_sweep`.
    """
    start = time.perf_counter()
    grid = _check_grid(grid)
    _check_fixed(fixed)
    checked = [_checked(model, {p: v}, {k: x for k, x in fixed.items() if k != p}, accelerator, None)
               for p, v in grid.items()]
    _check_options(workers, share_prefixes, stack_runs)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder (a str or Path), got {root!r}")
    data = _resolve_data(dataset, data)
    device = device_kind(accelerator)
    root = Path(root) if root is not None else outputs_dir() / "sweeps"
    prepared = [_prepare(g, b, n, root / n, data, device) for g, b, n in checked]
    runs, results, owners = _combine(prepared, list(grid))

    def put(j, result):  # a run several sweeps contain goes into each one's cache
        for one, i in owners[j]:
            one.store(i, result)

    _train(runs, results, lambda j: owners[j][0][0].project(owners[j][0][1]), put,
           name=" + ".join(one.name for one in prepared), data=data, device=device, accelerator=accelerator,
           workers=workers, cluster=cluster, progress=progress, share_prefixes=share_prefixes, stack_runs=stack_runs)
    elapsed = time.perf_counter() - start
    return {p: one.result(data.info, elapsed) for p, one in zip(grid, prepared)}


def _check_options(workers, share_prefixes, stack_runs):
    checks.optional_positive_int("workers", workers)
    check_flags(share_prefixes=share_prefixes, stack_runs=stack_runs)


def _checked(model, grid: dict, fixed: dict, accelerator: str, name) -> tuple:
    """``(grid, base settings, name)`` of one sweep, checked before anything loads or runs."""
    grid = _check_grid(grid)
    base = _base_settings(model, grid, fixed, accelerator)
    name = check_name(name or _default_name(model, list(grid)), "sweep name")  # a folder under outputs/sweeps
    return grid, base, name


@dataclass
class _Sweep:
    """One sweep made ready to train: its runs, the results it has, where it lives."""

    name: str
    params: list
    runs: list  # (setting shown in the table, full settings, cache key) per grid point
    directory: Path
    results: dict = field(default_factory=dict)  # run index -> result
    cached: set = field(default_factory=set)  # the runs this call did not train

    def project(self, i) -> Path:
        # A Path, which train() takes as the run's own directory: checkpoints next to the cache.
        return (self.directory / "runs" / settings_hash(self.runs[i][2])).resolve()

    def store(self, i, result: dict, cached: bool = False):
        """Keep run ``i``'s result, on disk at once."""
        ResultCache(self.directory).put(self.runs[i][2], result)
        self.results[i] = result
        if cached:
            self.cached.add(i)

    def result(self, info, elapsed_s: float) -> SweepResult:
        rows = [_row(shown, self.results[i], i in self.cached) for i, (shown, _, _) in enumerate(self.runs)]
        histories = {label_of(shown): _history(self.results[i]) for i, (shown, _, _) in enumerate(self.runs)}
        return SweepResult(self.name, self.params, pd.DataFrame(rows), histories, info, self.directory, elapsed_s)


def _prepare(grid: dict, base: dict, name: str, directory: Path, data: JSCData, device: str) -> _Sweep:
    """A checked sweep's runs, with those its cache folder holds."""
    one = _Sweep(name, list(grid), _grid_runs(grid, base, data, device), Path(directory))
    one.results = _cached_results(one.runs, ResultCache(one.directory))
    one.cached = set(one.results)
    return one


def _combine(prepared: list, params: list) -> tuple:
    """Every run of the ``prepared`` sweeps once per cache key: ``(runs, results, owners)``, the
    runs shown by all of ``params``, ``results`` those any sweep has cached (stored now into the
    other sweeps that contain them) and ``owners[j]`` the ``(sweep, index)`` pairs of run ``j``."""
    where, runs, results, owners = {}, [], {}, []
    for one in prepared:
        for i, (_, settings, key) in enumerate(one.runs):
            h = settings_hash(key)
            if h not in where:
                where[h] = len(runs)
                runs.append(({p: _jsonable(settings[p]) for p in params}, settings, key))
                owners.append([])
            owners[where[h]].append((one, i))
            if i in one.results:
                results.setdefault(where[h], one.results[i])
    for j, result in results.items():
        for one, i in owners[j]:
            if i not in one.results:
                one.store(i, result, cached=True)  # not trained now: taken from another sweep's cache
    return runs, results, owners


def _check_fixed(fixed: dict, grid=()) -> TrainSettings:
    """``fixed`` as one checked :class:`~labkit.settings.TrainSettings` (none of them swept in ``grid``)."""
    for k in fixed:
        if k not in SETTINGS or k == "model":
            raise TypeError(f"unknown setting {k!r} for a sweep; fixed settings can be "
                            f"{', '.join(s for s in SETTINGS if s != 'model')}")
        if k in grid:
            raise ValueError(f"{k!r} is both swept and fixed; drop one")
    return TrainSettings(**fixed)


def _base_settings(model, grid: dict, fixed: dict, accelerator: str) -> dict:
    """The settings every run shares: ``fixed`` over train()'s defaults, checked as one
    :class:`~labkit.settings.TrainSettings`, and the model unless the grid varies it."""
    settings = _check_fixed(fixed, grid)
    check_usable(TrainSettings(accelerator=accelerator).accelerator)
    base = {"model": check_value("model", model)} if "model" not in grid else {}
    return {**base, "settings": settings}


def _grid_runs(grid: dict, base: dict, data: JSCData, device: str) -> list:
    """One ``(setting shown in the table: modules by name, full settings, cache key)`` per grid
    point; each point's training settings are the base's with ``dataclasses.replace``."""
    runs, model_ids = [], {}  # once per model: a module's weights digest is not free
    data_id = data.identity()
    for combo in itertools.product(*grid.values()):
        setting = dict(zip(grid, combo))
        point = dataclasses.replace(base["settings"], **{k: v for k, v in setting.items() if k != "model"})
        full = {"model": setting.get("model", base.get("model")),
                **{k: getattr(point, k) for k in SETTINGS if k != "model"}}
        mkey = _model_key(full["model"])
        if mkey not in model_ids:
            model_ids[mkey] = model_identity(full["model"], data.info)
        shown = {k: model_ids[mkey]["model"] if k == "model" else v for k, v in setting.items()}
        key = {"recipe": RECIPE_VERSION, "dataset": data_id, "device": device, **model_ids[mkey],
               **{k: v for k, v in full.items() if k != "model"}}
        runs.append((shown, full, key))
    return runs


def _cached_results(runs, cache: ResultCache) -> dict:
    """``{run index: stored result}`` for the runs ``cache`` already holds."""
    results = {}
    for i, (_, _, key) in enumerate(runs):
        hit = cache.get(key, valid=_valid_result)
        if hit is not None:
            results[i] = hit
    return results


def _train(runs, results: dict, project, put, *, name: str, data, device: str, accelerator: str, workers,
           cluster, progress: bool, share_prefixes: bool, stack_runs: bool):
    """Plan and train the runs (``(shown, settings, key)`` triples) that ``results`` lacks, handing
    each finished run, and each run trained with it, to ``put(index, result)`` as it arrives."""
    missing = sorted((i for i in range(len(runs)) if i not in results), key=lambda i: -_run_cost(runs[i][1]))
    # Runs that differ only in max_epochs: the longest trains and carries the others; runs that differ
    # in learning rate, seed, ...: one stacked training; longest first, balanced over the workers.
    missing = plan_runs(runs, missing, project, data=data, device=device, share_prefixes=share_prefixes,
                        stack_runs=stack_runs, name=name, show=progress and bool(missing),
                        workers=1 if device != "cpu" else workers or _cpu_count())
    target = executor.choose_cluster(cluster, workers)  # the address checked now, contacted if runs are missing
    _train_missing(missing, runs, put, len(results), progress=progress, name=name, data=data, project=project,
                   accelerator=accelerator, device=device, workers=workers, target=target)


def _train_missing(missing, runs, put, n_cached: int, *, progress: bool, name: str, data, project, accelerator,
                   device, workers, target):
    """Train the ``missing`` runs with a bar of runs and one of epochs, handing each result (and
    the runs stacked with it, and the shorter runs each carried) to ``put`` as it arrives."""
    epochs = EpochCounter(sum(planned_epochs(runs[i][1]) for i in missing), f"sweep {name}",
                          disable=not progress or not missing)
    bar = tqdm(total=len(runs), initial=n_cached, desc=f"sweep {name}", unit="run", disable=not progress)

    def store(i, result):
        for s, rs in split_stacked(i, result):  # the run, and the runs stacked with it
            for j, r in split_prefixes(s, rs):  # each, and the shorter runs it carried
                put(j, r)
                if j != i:
                    bar.update()
            epochs.run_finished(runs[s][1]["max_epochs"], int(rs.get("epochs") or 0))

    try:
        if missing:
            _run_missing(missing, runs, data, project, accelerator, device, workers, target, store, bar, epochs,
                         name)
    finally:
        install_progress(None)
        epochs.close()
        bar.close()


def _run_missing(missing, runs, data, project, accelerator, device, workers, target, store, bar, epochs, name):
    """Run the ``missing`` runs here, in local worker processes or on a Dask cluster
    (:func:`labkit.executor.map_unordered`), storing each result as soon as it arrives."""
    models = {_model_key(runs[i][1]["model"]): runs[i][1]["model"] for i in missing}.values()
    tasks = [_Task((i, runs[i][1], project(i), accelerator, label_of(runs[i][0]))) for i in missing]
    fn, init, initargs, n = _run_in_worker, _init_worker, (), 1
    if target is not None:  # a cluster: the data scattered once per worker, models by value
        # (epoch progress stays local: a multiprocessing queue cannot reach other machines)
        initargs = (_data_source(data, scatter=True), 1, worker_builders(models, by_value=True), None)
    else:
        n = workers or min(len(missing), _cpu_count())
        builders = worker_builders(models)
        in_process = n <= 1 or device != "cpu" or len(missing) <= 1 or not _spawn_works() or builders is None
        if not in_process and _unguarded_script():
            in_process = True
            print(f"[labkit] sweep {name}: this script calls sweep() outside `if __name__ == \"__main__\":`, "
                  f"which worker processes would re-run; running the {len(missing)} runs in this process "
                  f"instead (put the call under that guard to use {n} workers)", file=sys.stderr)
        if in_process:
            n, init = 1, None
            install_progress(epochs.sink())
            fn = lambda task: _run_one(task[1], data, task[2], task[3])  # noqa: E731 (never pickled)
        else:
            initargs = (_data_source(data), 1, builders, epochs.worker_sink(mp.get_context("spawn")))
    # Ctrl-C or a failed run stops the workers at once (closing the iterator); finished runs
    # are already stored, so the next call resumes with the missing ones.
    with torch_threads(1 if device == "cpu" else None), contextlib.closing(executor.map_unordered(
            fn, tasks, workers=n, cluster=target or False, initializer=init, initargs=initargs)) as done:
        for (i, *_), result in done:
            store(i, result)  # each run is on disk as soon as it finishes
            if target is not None:  # no epoch reports from a cluster: count a run's epochs when it arrives
                epochs.add(int(result.get("epochs") or 0))
            bar.set_postfix_str(label_of(runs[i][0]))
            bar.update()


def sweep(model, dataset, param: str, values, *, data: JSCData | None = None, workers: int | None = None,
          accelerator: str = "cpu", cache_dir=None, name: str | None = None, progress: bool = True,
          cluster=None, share_prefixes: bool = True, stack_runs: bool = True, **fixed) -> SweepResult:
    """Train ``model`` once per value of one setting, e.g. ``sweep("jsc-tiny", data,
    "batch_size", [64, 128, 256], max_epochs=10)``. See :func:`grid_sweep` for the options."""
    if not isinstance(param, str):
        raise TypeError(f"param must be a setting name (str), got {param!r}")
    return grid_sweep(model, dataset, {param: values}, data=data, workers=workers, accelerator=accelerator,
                      cache_dir=cache_dir, name=name or _default_name(model, [param]), progress=progress,
                      cluster=cluster, share_prefixes=share_prefixes, stack_runs=stack_runs, **fixed)


# -- browsing what is on disk ----------------------------------------------------------------


def sweeps_root() -> Path:
    return outputs_dir(write=False) / "sweeps"  # browsing only: a read-only outputs/ is fine


def list_sweeps(root=None) -> list[str]:
    """Names of the sweeps with at least one finished run under ``root`` (default outputs/sweeps)."""
    root = Path(root) if root else sweeps_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.json")))


def load_sweep(name_or_dir, root=None) -> SweepResult:
    """Every finished run stored for a sweep, without training anything.

    The table's setting columns are those that differ between the stored runs.
    """
    directory = Path(name_or_dir)
    if not directory.is_dir():
        directory = (Path(root) if root else sweeps_root()) / str(name_or_dir)
    if not directory.is_dir():
        raise ValueError(f"no sweep {name_or_dir!r}; stored sweeps: {', '.join(list_sweeps(root)) or 'none'}")
    entries = [e for e in ResultCache(directory).entries() if _valid_result(e["result"])]
    if not entries:
        raise ValueError(f"sweep {name_or_dir!r} has no finished runs in {directory}")
    flat = [{k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
             for k, v in e["settings"].items()} for e in entries]
    varying = [k for k in flat[0] if k not in ("recipe",) and len({str(f.get(k)) for f in flat}) > 1]
    if not varying:
        varying = [k for k in SETTINGS if k in flat[0]][:1] or ["model"]
    rows, histories = [], {}
    for e, f in zip(entries, flat):
        setting = {k: f.get(k) for k in varying}
        rows.append(_row(setting, e["result"], True))
        histories[label_of(setting)] = _history(e["result"])
    table = pd.DataFrame(rows)
    try:
        table = table.sort_values(varying, kind="stable").reset_index(drop=True)
    except TypeError:  # mixed types in a column: keep finishing order
        pass
    info = _info_from_settings(entries[0]["settings"])
    return SweepResult(directory.name, varying, table, histories, info, directory)


def _info_from_settings(settings):
    from .data import DatasetInfo
    ds = settings.get("dataset") or {}
    if isinstance(ds, dict) and ds.get("name"):
        return DatasetInfo(ds["name"], synthetic=bool(ds.get("synthetic")))
    return None


__all__ = ["sweep", "sweeps", "grid_sweep", "SweepResult", "load_sweep", "list_sweeps",
           "check_value", "label_of", "module_name", "RECIPE_VERSION"]
