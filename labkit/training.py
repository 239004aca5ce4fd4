"""Training and testing: :func:`train` (Lightning, with the chunked fast path of
:class:`labkit.lit.LitClassifier`), :func:`evaluate` and :func:`test` (plain torch).

    result = train("jsc-tiny", "jsc-synthetic", max_epochs=10, batch_size=256, learning_rate=1e-3)
    result["best_ckpt"], result["history"]           # a path, a pandas DataFrame
    test("jsc-tiny", "jsc-synthetic", load=result["best_ckpt"])["test_acc"]

The settings are a :class:`labkit.settings.TrainSettings` (checked when built); checkpoints are
read and archived by :mod:`labkit.checkpoints`; threads, devices, Lightning's quieting and its
Ctrl-C come from :mod:`labkit.runtime`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tqdm.auto import tqdm

from .checkpoints import (archive_previous, load_into, load_model, model_and_name, project_dir,  # noqa: F401
                          read_checkpoint, restore_previous)  # (load_model, read_checkpoint: also from here)
from .checks import instance_of, path_like, positive_int
from .config import TEST_BATCH_SIZE, default_project
from .data import JSCData, JSCDataModule, load_dataset
from .lit import EpochHistory, Interrupted, LitClassifier, NonFiniteLoss, StopOnInterrupt
from .lock import project_lock
from .paths import check_name
from .runtime import (check_usable, cpu_threads, eval_mode, interruptible, lightning_accelerator,  # noqa: F401
                      model_device, on_device, quiet_lightning, torch_flags_restored, torch_threads,
                      usable_accelerators)  # (interruptible, usable_accelerators: also from here)
from .settings import DEFAULTS, TrainSettings

def default_chunk(batch_size: int) -> int:
    """Mini-batches per Lightning step: ~32k samples, between 1 and 256 steps."""
    return max(1, min(256, 32768 // batch_size))


def _data(dataset, data):
    if data is not None:
        return instance_of("data", data, JSCData, "a JSCData (from labkit.load_dataset) or None")
    if isinstance(dataset, JSCData):
        return dataset
    instance_of("dataset", dataset, str, "a dataset name (e.g. 'jsc-synthetic') or a JSCData")
    return load_dataset(dataset)


def _check_project(project):
    """``None`` (the default folder), one safe folder name under outputs/, or -- from Python
    only, never from a flag or a config -- a ``pathlib.Path`` to a directory of your choice."""
    if project is None or isinstance(project, Path):
        return project
    return check_name(project, "project")


def _check_callbacks(callbacks) -> list:
    what = "a list of Lightning callbacks (pytorch_lightning.Callback instances) or None"
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    instance_of("callbacks", callbacks, (list, tuple), what)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be {what}, got an item {cb!r} ({type(cb).__name__})")
    return list(callbacks)


def _input_width(net: nn.Module):
    """How many features the model's first Linear/BatchNorm1d layer takes, if it has one."""
    for m in net.modules():
        if isinstance(m, nn.Linear) and m.in_features:
            return m.in_features
        if isinstance(m, nn.BatchNorm1d):
            return m.num_features
    return None


@torch.no_grad()
def check_fits(net: nn.Module, name: str, data: JSCData):
    """The model takes the data's features, gives one output per class, and every label is a
    class: a ValueError saying which does not fit, before Lightning starts (where it would be
    a shape error many frames down)."""
    info = data.info
    nf, nc = int(data.x_train.shape[-1]), int(info.num_classes)
    for split in data.SPLITS:
        y = data.split(split)[1]
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= nc):
            bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
            raise ValueError(f"the data's {split} split holds label {bad}, outside the classes [0, {nc}) "
                             f"of {info.name!r}; labels must be class indices")
    x = data.x_train[:2]
    device = model_device(net)
    try:
        with eval_mode(net):
            out = net(x.to(device))
    except RuntimeError as e:
        want = _input_width(net)
        takes = f"takes {want}" if want is not None else "does not take that many"
        detail = " ".join(str(e).split())[:200]
        raise ValueError(f"the data {info.name!r} has {nf} features per row but model {name!r} {takes} "
                         f"({detail}); build it for this data: get_model(name, data.info)") from None
    if out.ndim != 2 or out.shape[1] != nc:
        got = out.shape[1] if out.ndim == 2 else tuple(out.shape)
        raise ValueError(f"model {name!r} gives {got} outputs per row but the data {info.name!r} has {nc} "
                         f"classes; build it for this data: get_model(name, data.info)")


class TrainingDiverged(ValueError):
    """The training loss became non-finite (NaN or infinite): training stopped there.

    ``result`` holds what was finished: the per-epoch ``history`` (finite epochs only) and
    the checkpoints, which are those of the last finite epoch."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def diverged_error(e: NonFiniteLoss, learning_rate: float, ckpt_dir: Path, rows: list) -> TrainingDiverged:
    """The :class:`TrainingDiverged` for a run whose loss became non-finite (``e``) after the
    finite epochs ``rows``: it names the setting to change and the checkpoints that are kept."""
    done = len(rows)
    on_disk = any(ckpt_dir.glob("*.ckpt"))
    kept = (f"the checkpoints of epoch {done}, the last finite one, are kept in {ckpt_dir}" if done and on_disk
            else f"no epoch had finished; the previous run's checkpoints stay in {ckpt_dir}" if on_disk
            else "no epoch had finished, so no checkpoint was written")
    if e.before_any_update:
        why = (f"the loss was already non-finite before any update, so the data or the model produce "
               f"non-finite values (learning_rate={learning_rate:g} is not the cause)")
    else:
        why = f"learning_rate={learning_rate:g} is probably too large; try a smaller one"
    last = ckpt_dir / "last.ckpt"
    best = next(iter(ckpt_dir.glob("best*.ckpt")), None) if done else None
    return TrainingDiverged(
        f"training diverged: the training loss became {e.value} in epoch {e.epoch}; {why}; {kept}",
        {"history": pd.DataFrame(rows), "epochs": done, "best_ckpt": str(best) if best else None,
         "last_ckpt": str(last) if done and last.is_file() else None})


@contextlib.contextmanager
def _fit_outcome(history: EpochHistory, stop: StopOnInterrupt, ckpt_dir: Path, learning_rate: float,
                 archived: Path | None):
    """Turn how a fit ended into what the caller sees: a one-line KeyboardInterrupt saying
    where it stopped, or :class:`TrainingDiverged` naming the setting to change. A run that
    stopped before writing any checkpoint puts the previous run's back where they were."""
    try:
        try:
            yield
        except (Interrupted, NonFiniteLoss):
            restore_previous(ckpt_dir, archived)
            raise
    except Interrupted as e:
        raise KeyboardInterrupt(f"stopped {e}") from None
    except NonFiniteLoss as e:
        raise diverged_error(e, learning_rate, ckpt_dir, history.rows) from None
    if stop.requested:  # Ctrl-C after the last step: the run is complete, but stop here as asked
        raise KeyboardInterrupt(f"training had just finished; its checkpoints are complete in {ckpt_dir}")


def train(model="jsc-tiny", dataset="jsc-synthetic", *, settings: TrainSettings | None = None,
          project: str | None = None, data: JSCData | None = None, chunk: int | None = None,
          progress: bool = True, callbacks: list | None = None, verbose: bool = True, **overrides) -> dict:
    """Train ``model`` (a registry name or an ``nn.Module``) on ``dataset``.

    The training settings are ``settings`` (a :class:`~labkit.settings.TrainSettings`, default:
    its defaults) with ``overrides`` by keyword: ``max_epochs``, ``batch_size``, ``learning_rate``,
    ``seed``, ``weight_decay``, ``scheduler``, ``early_stopping``, ``max_time``, ``accelerator``,
    ``log_every_n_steps``, ``num_threads``.

    Checkpoints ``best.ckpt`` (highest val accuracy) and ``last.ckpt`` go to
    ``outputs/<project>/software/training_ckpts/``, CSV and TensorBoard logs to
    ``outputs/<project>/software/logs/``. ``early_stopping`` is a patience in epochs on val
    accuracy; ``max_time`` a limit in seconds. Returns a dict of plain values, with the
    per-epoch ``history`` as a DataFrame.
    """
    s = TrainSettings.build(settings, **overrides)
    check_usable(s.accelerator)
    project, callbacks, chunk = _check_arguments(model, dataset, data, project, callbacks, chunk)
    quiet_lightning()

    data = _data(dataset, data)
    pl.seed_everything(s.seed, verbose=False)  # before the model is built: weights depend on it
    net, model_name = model_and_name(model, data.info)
    check_fits(net, model_name, data)
    project = project or default_project(model_name, data.info.name)
    out = project_dir(project)
    lit = LitClassifier(net, learning_rate=s.learning_rate, weight_decay=s.weight_decay, scheduler=s.scheduler,
                        max_epochs=s.max_epochs, num_classes=data.info.num_classes, model_name=model_name,
                        dataset_name=data.info.name, dataset_fingerprint=data.fingerprint())
    dm = JSCDataModule(data.info.name, batch_size=s.batch_size, seed=s.seed, data=data,
                       chunk=chunk or default_chunk(s.batch_size))
    fit = _fit(lit, dm, s, out, callbacks, progress)
    result = {"model": model_name, "dataset": data.info.name, "synthetic": data.info.synthetic,
              "device": str(fit["trainer"].strategy.root_device), "project": project, "output_dir": str(out),
              **_outcome(fit, s, out / "training_ckpts")}
    if verbose:
        print(f"[labkit] trained {model_name} on {data.info.label}: best val acc {result['best_val_acc']:.4f} "
              f"after {result['epochs']} epochs in {result['wall_time_s']:.1f}s\n[labkit] outputs: {out}")
    return result


def _check_arguments(model, dataset, data, project, callbacks, chunk):
    """train()'s arguments other than the settings, checked before any data is loaded."""
    project = _check_project(project)
    callbacks = _check_callbacks(callbacks)
    chunk = None if chunk is None else positive_int("chunk", chunk)
    if not isinstance(model, nn.Module):
        model_and_name(model, None)  # a wrong type or an unknown name: before any data is loaded
        if project is None and isinstance(dataset, str) and data is None:
            default_project(model, dataset)  # a name unfit for a folder: before loading the data
    return project, callbacks, chunk


def _fit(lit: LitClassifier, dm: JSCDataModule, s: TrainSettings, out: Path, callbacks: list,
         progress: bool) -> dict:
    """Fit ``lit`` with checkpoints and logs under ``out``; returns the trainer, the checkpoint
    callback, the history, where the previous run's checkpoints went, and the wall time."""
    ckpt_dir = out / "training_ckpts"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_acc", mode="max",
                                 save_top_k=1, enable_version_counter=False)
    # last.ckpt is the final epoch's state. Not save_last=True: since Lightning 2.6 that writes
    # last.ckpt only in an epoch that also improved best.ckpt, so it held the best epoch's weights
    # whenever the final epoch was not the best (tests/test_train.py checks the epoch it holds).
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    stop, history = StopOnInterrupt(ckpt_dir / "last.ckpt"), EpochHistory()
    callbacks = [checkpoint, last, stop, history, *callbacks]
    if s.early_stopping:
        callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=s.early_stopping))
    accel = lightning_accelerator(s.accelerator)
    # Lightning's deterministic=True would stay on for the whole process; one run at a time
    # per project (see labkit.lock); Ctrl-C stops between steps.
    with torch_flags_restored(), project_lock(out.parent), stop.catching_sigint():
        trainer = pl.Trainer(
            max_epochs=s.max_epochs, accelerator=accel, devices=1, callbacks=callbacks,
            logger=[CSVLogger(out / "logs", name="csv"), TensorBoardLogger(out / "logs", name="tensorboard")],
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=s.log_every_n_steps, deterministic=True if accel == "cpu" else "warn",
            max_time=dt.timedelta(seconds=s.max_time) if s.max_time else None,
        )
        # Only now that the run is set up: a failure above leaves the old checkpoints in place.
        archived = archive_previous(ckpt_dir)
        start = time.perf_counter()
        with (interruptible(), torch_threads(cpu_threads(accel, s.num_threads)),
              _fit_outcome(history, stop, ckpt_dir, s.learning_rate, archived)):
            trainer.fit(lit, datamodule=dm)
        wall = time.perf_counter() - start
    return {"trainer": trainer, "checkpoint": checkpoint, "history": pd.DataFrame(history.rows),
            "archived": archived, "wall": wall}


def _outcome(fit: dict, s: TrainSettings, ckpt_dir: Path) -> dict:
    """What a finished fit gives the caller: checkpoints, scores, the history and its settings."""
    history, checkpoint = fit["history"], fit["checkpoint"]
    last = lambda column: float(history[column].iloc[-1]) if len(history) else float("nan")  # noqa: E731
    best = checkpoint.best_model_path
    return {
        "best_ckpt": str(Path(best)) if best else None,
        "last_ckpt": str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").exists() else None,
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan"),
        "final_val_acc": last("val_acc"), "final_val_loss": last("val_loss"), "final_train_acc": last("train_acc"),
        "epochs": len(history), "max_epochs": s.max_epochs, "batch_size": s.batch_size,
        "learning_rate": s.learning_rate, "seed": s.seed,
        "steps": int(fit["trainer"].global_step),
        "wall_time_s": fit["wall"], "stopped_early": len(history) < s.max_epochs,
        "archived_previous": str(fit["archived"]) if fit["archived"] else None,
        "history": history,
    }


# -- reusing a checkpoint, evaluating and testing --------------------------------------------


def checkpoint_or_train(model: str, data: JSCData, project: str, **train_kwargs) -> dict:
    """Reuse ``outputs/<project>/software/training_ckpts/best.ckpt`` when it holds ``model``
    trained on exactly this data (same dataset, size and splits: :meth:`JSCData.fingerprint`);
    otherwise train one now (``train_kwargs`` go to :func:`train`).

    Returns ``{"best_ckpt", "trained_now", "model", "dataset"}``. The Lab-2 notebooks use this to
    pick up the Lab-1 checkpoints, or make a quick one when those were never trained.
    """
    best = project_dir(project) / "training_ckpts" / "best.ckpt"
    if best.is_file():
        try:
            ckpt = read_checkpoint(best, "pl")
        except ValueError:
            ckpt = None  # unreadable: train a new one (the old file is archived, not deleted)
        if ckpt and ckpt["model_name"] == model and ckpt.get("dataset_fingerprint") == data.fingerprint():
            return {"best_ckpt": str(best), "trained_now": False, "model": model, "dataset": data.info.name}
    result = train(model, data, project=project, **train_kwargs)
    return {"best_ckpt": result["best_ckpt"], "trained_now": True, "model": model, "dataset": data.info.name}


@torch.no_grad()
def evaluate(model: nn.Module, data, split: str = "test", batch_size: int = 65536, *,
             progress: bool = False) -> dict:
    """Plain (no Lightning) evaluation: ``{"acc", "loss", "n"}`` on one split of ``data``
    (a JSCData, or an ``(x, y)`` pair), in eval mode, on the device the model is on."""
    x, y = data.split(split) if isinstance(data, JSCData) else data
    device = model_device(model)
    correct, loss, n = 0, 0.0, len(y)
    with eval_mode(model):
        for i in tqdm(range(0, n, batch_size), desc=f"evaluate {split}", unit="batch", disable=not progress):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb)
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return {"acc": correct / max(1, n), "loss": loss / max(1, n), "n": n}


def test(model="jsc-tiny", dataset="jsc-synthetic", *, load=None, load_type: str = "pl",
         batch_size: int = TEST_BATCH_SIZE, data: JSCData | None = None, accelerator: str = DEFAULTS["accelerator"],
         num_threads: int | None = None, progress: bool = False, verbose: bool = True) -> dict:
    """Test accuracy/loss of ``model`` (optionally loaded from ``load``) on the test split:
    :func:`evaluate` on the device ``accelerator`` names, with one CPU thread on the CPU as in
    :func:`train` (``progress``: a bar over the batches).

    ``batch_size`` only groups the test rows: any value gives the same accuracy and loss (up
    to float rounding), so the default is large."""
    s = TrainSettings.build(batch_size=batch_size, accelerator=accelerator, num_threads=num_threads)
    check_usable(s.accelerator)
    if load is not None:
        path_like("load", load, "a checkpoint path")
    data = _data(dataset, data)
    net, name = model_and_name(model, data.info)
    if load:
        load_into(net, name, load, load_type, by_name=isinstance(model, str))
    check_fits(net, name, data)
    with on_device(net, s.accelerator), torch_threads(cpu_threads(s.accelerator, s.num_threads)):
        scores = evaluate(net, data, "test", batch_size=s.batch_size, progress=progress)
    result = {"model": name, "dataset": data.info.name, "synthetic": data.info.synthetic,
              "checkpoint": str(load) if load else None, "test_loss": scores["loss"], "test_acc": scores["acc"],
              "n": scores["n"]}
    if verbose:
        print(f"[labkit] test {name} on {data.info.label}: acc {result['test_acc']:.4f}, "
              f"loss {result['test_loss']:.4f} ({result['n']} samples)")
    return result
