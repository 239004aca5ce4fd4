"""Training and testing with PyTorch Lightning, lean enough for tiny models.

A JSC model has ~100-1000 parameters, so one optimiser step costs a fraction of a
millisecond while Lightning's per-step bookkeeping costs about a millisecond. We keep
Lightning (checkpoints, CSV/TensorBoard logs, early stopping, time limits, progress bars)
but run it with *manual optimisation*: each Lightning step receives a *chunk* of
consecutive mini-batches (see :class:`labkit.data.BatchIterator`) and takes one plain
optimiser step per mini-batch. Same batches, same number of steps, same updates as the
usual one-batch-per-step recipe -- only the overhead is paid per chunk instead.

    result = train("jsc-tiny", "jsc-synthetic", max_epochs=10, batch_size=256, learning_rate=1e-3)
    result["best_ckpt"], result["history"]           # a path, a pandas DataFrame
    test("jsc-tiny", "jsc-synthetic", load=result["best_ckpt"])["test_acc"]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torchmetrics.classification import MulticlassAccuracy

from .config import LOAD_TYPES, TEST_BATCH_SIZE, default_project
from .data import JSCData, JSCDataModule, load_dataset
from .checks import instance_of, path_like, positive_int
from .lock import project_lock
from .models import get_model
from .paths import check_name, outputs_dir
from .runtime import (check_usable, device_kind, eval_mode, model_device, torch_flags_restored,
                      torch_threads, usable_accelerators)  # noqa: F401  (usable_accelerators: re-exported)
from .settings import DEFAULTS, TrainSettings


def _fused_adam_ok(params) -> bool:
    params = list(params)
    return bool(params) and all(p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda")
                                for p in params)


class LitClassifier(pl.LightningModule):
    """Cross-entropy classification with Adam, separate train/val/test accuracy metrics.

    (MASE shares one accuracy object between train and validation, so each pollutes the
    other's running state; here every stage has its own.)
    """

    def __init__(self, model: nn.Module, *, learning_rate: float = DEFAULTS["learning_rate"],
                 weight_decay: float = DEFAULTS["weight_decay"], scheduler: str | None = DEFAULTS["scheduler"],
                 max_epochs: int | None = None, num_classes: int = 5,
                 model_name: str | None = None, dataset_name: str | None = None,
                 dataset_fingerprint: str | None = None):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])  # plain values only: safe for weights_only loads
        self.automatic_optimization = False
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.history: list[dict] = []
        self._reset_sums()

    def forward(self, x):
        return self.model(x)

    def configure_optimizers(self):
        hp = self.hparams
        # The fused kernel is the same Adam update in one kernel per step instead of several
        # (it differs from the default only by float rounding) and is ~100 us/step faster here.
        opt = torch.optim.Adam(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay,
                               fused=_fused_adam_ok(self.parameters()))
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, hp.max_epochs or 1))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt

    def _reset_sums(self):
        self._sums = {"train_loss": 0.0, "train_n": 0, "val_loss": 0.0, "val_n": 0,
                      "test_loss": 0.0, "test_n": 0}

    # -- training: one Lightning step = one chunk of mini-batches -------------------------
    def training_step(self, chunk, chunk_idx):
        if isinstance(chunk, tuple):  # a plain (x, y) batch also works
            chunk = [chunk]
        opt = self.optimizers().optimizer  # the raw torch optimiser: no per-step wrappers
        loss_sum = torch.zeros((), device=self.device)
        preds, targets = [], []
        first_loss = None
        for x, y in chunk:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            if first_loss is None:
                first_loss = loss.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            preds.append(logits.detach().argmax(1))
            targets.append(y)
        # One check per chunk (a host sync per mini-batch would cost more than the step): a
        # non-finite loss anywhere in the chunk makes the sum non-finite. Stop before Lightning
        # can checkpoint the ruined weights, so the files on disk stay those of a finite epoch.
        if not torch.isfinite(loss_sum):
            raise _NonFiniteLoss(float(loss_sum), self.current_epoch + 1,
                                 before_any_update=self.global_step == 0 and not torch.isfinite(first_loss))
        self._count_optimizer_steps(len(chunk))
        preds, targets = torch.cat(preds), torch.cat(targets)
        self.train_acc.update(preds, targets)
        self._sums["train_loss"] += loss_sum
        self._sums["train_n"] += len(targets)
        self.log("train_loss_step", loss_sum / len(targets), on_step=True, on_epoch=False,
                 batch_size=len(targets))

    def _count_optimizer_steps(self, n: int):
        # We stepped the raw optimiser, so tell Lightning: its global_step (used by checkpointing
        # and logging) counts optimiser steps taken under manual optimisation.
        loop = self.trainer.fit_loop.epoch_loop.manual_optimization
        loop.optim_step_progress.increment_by(n)

    def on_train_epoch_start(self):
        # Shuffle order is a pure function of (seed, epoch), so a resumed run sees the same batches.
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def on_train_epoch_end(self):
        n = max(1, self._sums["train_n"])
        train_loss = float(self._sums["train_loss"]) / n
        train_acc = float(self.train_acc.compute()) if self._sums["train_n"] else float("nan")
        self.train_acc.reset()
        self.log_dict({"train_loss": train_loss, "train_acc": train_acc})
        row = {"epoch": self.current_epoch + 1, "train_loss": train_loss, "train_acc": train_acc}
        row.update(getattr(self, "_last_val", {}))
        row["lr"] = self.optimizers().optimizer.param_groups[0]["lr"]  # the rate this epoch used
        self.history.append(row)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()  # the next epoch's rate
        self._sums["train_loss"], self._sums["train_n"] = 0.0, 0

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, batch, stage: str):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, reduction="sum")
        getattr(self, f"{stage}_acc").update(logits, y)
        self._sums[f"{stage}_loss"] += loss.detach()
        self._sums[f"{stage}_n"] += len(y)

    def _eval_epoch_end(self, stage: str) -> dict:
        n = max(1, self._sums[f"{stage}_n"])
        metrics = {f"{stage}_loss": float(self._sums[f"{stage}_loss"]) / n,
                   f"{stage}_acc": float(getattr(self, f"{stage}_acc").compute())}
        getattr(self, f"{stage}_acc").reset()
        self._sums[f"{stage}_loss"], self._sums[f"{stage}_n"] = 0.0, 0
        self.log_dict(metrics, prog_bar=True)
        return metrics

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._last_val = self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._last_test = self._eval_epoch_end("test")


# -- helpers ---------------------------------------------------------------------------------


def default_chunk(batch_size: int) -> int:
    """Mini-batches per Lightning step: ~32k samples, between 1 and 256 steps."""
    return max(1, min(256, 32768 // batch_size))


def _model_and_name(model, info):
    if isinstance(model, str):
        return get_model(model, info), model
    if isinstance(model, nn.Module):
        return model, getattr(model, "labkit_name", type(model).__name__)
    raise TypeError(f"model must be a registered model name or an nn.Module, got {type(model).__name__}")


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


_NOISE = (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*",
          ".*treespec.*", ".*GPU available but not used.*")


def _quiet_lightning():
    """Keep Lightning's banner and advice out of the way (once per process)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    known = {f[1].pattern for f in warnings.filters if f[0] == "ignore" and f[1] is not None}
    for pattern in _NOISE:
        if pattern not in known:
            warnings.filterwarnings("ignore", message=pattern)


def _lightning_exit(exc: SystemExit) -> bool:
    """Was this the ``sys.exit(1)`` Lightning raises after catching Ctrl-C?"""
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return exc.code == 1 and "lightning" in tb.tb_frame.f_code.co_filename


@contextlib.contextmanager
def interruptible():
    """Make Ctrl-C during a Lightning fit a plain ``KeyboardInterrupt``.

    Lightning answers Ctrl-C by calling ``sys.exit(1)`` (having ignored SIGINT meanwhile):
    fine for a script, but in a notebook it ends the cell with ``SystemExit`` instead of an
    interrupt. We turn it back into KeyboardInterrupt, with the SIGINT handler as before.
    """
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except SystemExit as exc:
        if not _lightning_exit(exc):
            raise
        if main and signal.getsignal(signal.SIGINT) is not handler and handler is not None:
            signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt("training interrupted") from None


class TrainingDiverged(ValueError):
    """The training loss became non-finite (NaN or infinite): training stopped there.

    ``result`` holds what was finished: the per-epoch ``history`` (finite epochs only) and
    the checkpoints, which are those of the last finite epoch."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


class _NonFiniteLoss(Exception):
    def __init__(self, value: float, epoch: int, before_any_update: bool):
        super().__init__(f"training loss {value} in epoch {epoch}")
        self.value, self.epoch, self.before_any_update = value, epoch, before_any_update


class _Interrupted(Exception):
    """Raised at a step boundary after a Ctrl-C (see :class:`_StopOnInterrupt`)."""


class _StopOnInterrupt(Callback):
    """Ctrl-C during a fit: finish the current step, save ``last.ckpt``, then stop.

    A KeyboardInterrupt raised wherever the signal lands can hit Lightning's set-up or
    tear-down, a logger's background-thread lock or a checkpoint write, and leave a process
    that never exits or a half-written file. So while fitting, SIGINT only sets a flag, and
    the flag is acted on between steps, where stopping is safe. A second Ctrl-C stops at once.
    """

    def __init__(self, last_ckpt: Path):
        self.last_ckpt = last_ckpt
        self.requested = False
        self.where = ""

    @contextlib.contextmanager
    def catching_sigint(self):
        # Only the main thread can set handlers; leave a handler someone chose (a sweep worker
        # ignores SIGINT, its parent stops it) and replace only Python's default one.
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield self
            return

        def on_sigint(signum, frame):
            if self.requested:
                raise KeyboardInterrupt("interrupted twice: stopped at once")
            self.requested = True

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _stop(self, trainer, stage: str, save: bool):
        if not self.requested:
            return
        self.where = f"in epoch {trainer.current_epoch + 1} ({stage}, after {trainer.global_step} steps)"
        if save and trainer.global_step > 0:
            trainer.save_checkpoint(self.last_ckpt)  # written to a temp file, then renamed
            self.where += f"; last.ckpt: {self.last_ckpt}"
        else:
            self.where += "; no checkpoint written yet"
        raise _Interrupted(self.where)

    def on_train_start(self, trainer, pl_module):
        self._stop(trainer, "starting", save=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._stop(trainer, "training", save=True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "fit":
            self._stop(trainer, "validating", save=True)


@contextlib.contextmanager
def _fit_outcome(lit: LitClassifier, stop: _StopOnInterrupt, ckpt_dir: Path, learning_rate: float,
                 archived: Path | None):
    """Turn how a fit ended into what the caller sees: a one-line KeyboardInterrupt saying
    where it stopped, or :class:`TrainingDiverged` naming the setting to change. A run that
    stopped before writing any checkpoint puts the previous run's back where they were."""
    try:
        try:
            yield
        except (_Interrupted, _NonFiniteLoss):
            if archived is not None and not any(ckpt_dir.glob("*.ckpt")):
                shutil.rmtree(ckpt_dir, ignore_errors=True)
                shutil.move(str(archived), str(ckpt_dir))
            raise
    except _Interrupted as e:
        raise KeyboardInterrupt(f"stopped {e}") from None
    except _NonFiniteLoss as e:
        done = len(lit.history)
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
        raise TrainingDiverged(
            f"training diverged: the training loss became {e.value} in epoch {e.epoch}; {why}; {kept}",
            {"history": pd.DataFrame(lit.history), "epochs": done, "best_ckpt": str(best) if best else None,
             "last_ckpt": str(last) if done and last.is_file() else None}) from None
    if stop.requested:  # Ctrl-C after the last step: the run is complete, but stop here as asked
        raise KeyboardInterrupt(f"training had just finished; its checkpoints are complete in {ckpt_dir}")


def project_dir(project) -> Path:
    """``outputs/<project>/software`` for a project name; ``<project>/software`` for a Path."""
    if isinstance(project, Path):
        return project / "software"
    return outputs_dir() / check_name(project, "project") / "software"


def _archive_previous(ckpt_dir: Path):
    """Never overwrite an earlier run's checkpoints: move them aside, timestamped."""
    if ckpt_dir.exists() and any(ckpt_dir.glob("*.ckpt")):
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        dest = ckpt_dir.parent / "archive" / stamp
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(ckpt_dir), str(dest))
        return dest
    return None


def _accelerator(accelerator: str) -> str:
    if accelerator == "cuda":
        return "gpu"
    return accelerator


def _threads(accel: str, num_threads: int | None) -> int | None:
    """CPU threads for a run: as asked, else one on the CPU (see :func:`torch_threads`)."""
    return num_threads or (1 if device_kind(accel) == "cpu" else None)


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
    max_epochs, batch_size, learning_rate, seed = s.max_epochs, s.batch_size, s.learning_rate, s.seed
    project = _check_project(project)
    all_callbacks: list[Callback] = _check_callbacks(callbacks)
    chunk = None if chunk is None else positive_int("chunk", chunk)
    if not isinstance(model, nn.Module):
        _model_and_name(model, None)  # a wrong type or an unknown name: before any data is loaded
        if project is None and isinstance(dataset, str) and data is None:
            default_project(model, dataset)  # a name unfit for a folder: before loading the data
    _quiet_lightning()

    data = _data(dataset, data)
    dataset_name = data.info.name
    pl.seed_everything(seed, verbose=False)  # before the model is built: weights depend on it
    net, model_name = _model_and_name(model, data.info)
    check_fits(net, model_name, data)
    project = project or default_project(model_name, dataset_name)
    out = project_dir(project)
    ckpt_dir = out / "training_ckpts"

    lit = LitClassifier(net, learning_rate=learning_rate, weight_decay=s.weight_decay,
                        scheduler=s.scheduler, max_epochs=max_epochs, num_classes=data.info.num_classes,
                        model_name=model_name, dataset_name=dataset_name,
                        dataset_fingerprint=data.fingerprint())
    dm = JSCDataModule(dataset_name, batch_size=batch_size, seed=seed, data=data,
                       chunk=chunk or default_chunk(batch_size))
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_acc", mode="max",
                                 save_last=True, save_top_k=1, enable_version_counter=False)
    stop = _StopOnInterrupt(ckpt_dir / "last.ckpt")
    all_callbacks = [checkpoint, stop, *all_callbacks]
    if s.early_stopping:
        all_callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=s.early_stopping))
    loggers = [CSVLogger(out / "logs", name="csv"), TensorBoardLogger(out / "logs", name="tensorboard")]
    accel = _accelerator(s.accelerator)
    # Lightning's deterministic=True would stay on for the whole process; one run at a time
    # per project (see labkit.lock); Ctrl-C stops between steps.
    with torch_flags_restored(), project_lock(out.parent), stop.catching_sigint():
        trainer = pl.Trainer(
            max_epochs=max_epochs, accelerator=accel, devices=1, logger=loggers, callbacks=all_callbacks,
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=s.log_every_n_steps, deterministic=True if accel == "cpu" else "warn",
            max_time=dt.timedelta(seconds=s.max_time) if s.max_time else None,
        )
        # Only now that the run is set up: a failure above leaves the old checkpoints in place.
        archived = _archive_previous(ckpt_dir)
        start = time.perf_counter()
        with (interruptible(), torch_threads(_threads(accel, s.num_threads)),
              _fit_outcome(lit, stop, ckpt_dir, learning_rate, archived)):
            trainer.fit(lit, datamodule=dm)
        wall = time.perf_counter() - start

    history = pd.DataFrame(lit.history)
    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    result = {
        "model": model_name, "dataset": dataset_name, "synthetic": data.info.synthetic,
        "device": str(trainer.strategy.root_device), "project": project, "output_dir": str(out),
        "best_ckpt": str(best_path) if best_path else None,
        "last_ckpt": str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").exists() else None,
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan"),
        "final_val_acc": float(history["val_acc"].iloc[-1]) if len(history) else float("nan"),
        "final_val_loss": float(history["val_loss"].iloc[-1]) if len(history) else float("nan"),
        "final_train_acc": float(history["train_acc"].iloc[-1]) if len(history) else float("nan"),
        "epochs": len(history), "max_epochs": max_epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "seed": seed,
        "steps": int(trainer.global_step),
        "wall_time_s": wall, "stopped_early": len(history) < max_epochs,
        "archived_previous": str(archived) if archived else None,
        "history": history,
    }
    if verbose:
        print(f"[labkit] trained {model_name} on {data.info.label}: best val acc {result['best_val_acc']:.4f} "
              f"after {result['epochs']} epochs in {wall:.1f}s\n[labkit] outputs: {out}")
    return result


# -- loading and testing ---------------------------------------------------------------------


def read_checkpoint(path, load_type: str = "pl") -> dict:
    """Read a checkpoint safely (``weights_only=True``) into ``{"state_dict", "model_name", ...}``."""
    if load_type not in LOAD_TYPES:
        raise ValueError(f"load_type must be one of {', '.join(LOAD_TYPES)} "
                         f"('pl': Lightning .ckpt, 'pt': torch state dict), got {load_type!r}")
    path = Path(path)
    if path.is_dir():
        inside = next((f for f in ("best.ckpt", "last.ckpt") if (path / f).is_file()), None)
        hint = f", e.g. {path / inside}" if inside else ""
        raise ValueError(f"checkpoint {path} is a directory; give the checkpoint file in it{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train first, e.g. `labkit train ...`, "
                                f"which prints where best.ckpt is written)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated / not a torch file / pickled objects
        # (torch's own message advises weights_only=False, which would run arbitrary code)
        raise ValueError(f"could not read checkpoint {path} as a {load_type!r} checkpoint: not a torch "
                         f"checkpoint (or saved with pickled objects labkit will not load)") from None
    if load_type == "pl":
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); "
                             f"if it is a plain state dict use load_type='pt'")
        hp = ckpt.get("hyper_parameters", {}) or {}
        if not isinstance(hp, dict):
            raise ValueError(f"{path} is not a labkit Lightning checkpoint: its hyper_parameters are a "
                             f"{type(hp).__name__}, not a table")
        state = {k.removeprefix("model."): v for k, v in _state_dict(ckpt["state_dict"], path).items()
                 if k.startswith("model.")}
        return {"state_dict": state, "model_name": hp.get("model_name"),
                "dataset_name": hp.get("dataset_name"), "dataset_fingerprint": hp.get("dataset_fingerprint"),
                "raw": ckpt}
    if isinstance(ckpt, dict) and ("pytorch-lightning_version" in ckpt
                                   or {"state_dict", "epoch", "global_step"} <= set(ckpt)):
        raise ValueError(f"{path} is a Lightning checkpoint, not a torch state dict; "
                         f"load it with load_type 'pl' (--load-type pl)")
    if isinstance(ckpt, dict) and "state_dict" in ckpt:  # labkit's own .pt files carry a name
        return {"state_dict": _state_dict(ckpt["state_dict"], path), "model_name": ckpt.get("model_name"),
                "dataset_name": ckpt.get("dataset_name"), "raw": ckpt}
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"state_dict": _state_dict(ckpt, path), "model_name": None, "dataset_name": None, "raw": ckpt}
    raise ValueError(f"{path} is not a state dict (load_type='pt' expects torch.save(model.state_dict()))")


def _state_dict(state, path) -> dict:
    """``state`` if it is a state dict (names -> tensors), else a ValueError naming the file."""
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a usable checkpoint: its state_dict is a {type(state).__name__}, "
                         f"not a table of named tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path} is not a usable checkpoint: its state_dict maps {key!r} to a "
                             f"{type(value).__name__}; it must map parameter names to tensors")
    return state


def load_model(model, path, load_type: str = "pl", info=None) -> nn.Module:
    """Build ``model`` (registry name or module) and load a checkpoint into it, checking they match."""
    net, name = _model_and_name(model, info)
    _load_into(net, name, path, load_type, by_name=isinstance(model, str))
    return net


def _load_into(net: nn.Module, name: str, path, load_type: str, by_name: bool):
    """Load checkpoint ``path`` into ``net``; ``by_name``: it must have been trained as ``name``."""
    ckpt = read_checkpoint(path, load_type)
    if ckpt["model_name"] and by_name and ckpt["model_name"] != name:
        raise ValueError(f"checkpoint {path} was trained for model {ckpt['model_name']!r}, "
                         f"not {name!r}; load it with model {ckpt['model_name']!r}")
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"checkpoint {path} does not fit model {name!r}: {detail}") from None


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
def evaluate(model: nn.Module, data, split: str = "test", batch_size: int = 65536) -> dict:
    """Plain (no Lightning) evaluation: ``{"acc", "loss", "n"}`` on one split of ``data``."""
    x, y = data.split(split) if isinstance(data, JSCData) else data
    device = model_device(model)
    correct, loss, n = 0, 0.0, len(y)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb)
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return {"acc": correct / max(1, n), "loss": loss / max(1, n), "n": n}


def test(model="jsc-tiny", dataset="jsc-synthetic", *, load=None, load_type: str = "pl",
         batch_size: int = TEST_BATCH_SIZE, data: JSCData | None = None, accelerator: str = DEFAULTS["accelerator"],
         num_threads: int | None = None, progress: bool = False, verbose: bool = True) -> dict:
    """Test accuracy/loss of ``model`` (optionally loaded from ``load``) on the test split, via Lightning.

    ``batch_size`` only groups the test rows: any value gives the same accuracy and loss (up
    to float rounding), so the default is large. Threads and Ctrl-C as in :func:`train`."""
    s = TrainSettings.build(batch_size=batch_size, accelerator=accelerator, num_threads=num_threads)
    check_usable(s.accelerator)
    if load is not None:
        path_like("load", load, "a checkpoint path")
    _quiet_lightning()
    data = _data(dataset, data)
    net, name = _model_and_name(model, data.info)
    if load:
        _load_into(net, name, load, load_type, by_name=isinstance(model, str))
    check_fits(net, name, data)
    lit = LitClassifier(net, num_classes=data.info.num_classes, model_name=name, dataset_name=data.info.name)
    dm = JSCDataModule(data.info.name, batch_size=s.batch_size, eval_batch_size=s.batch_size, data=data)
    accel = _accelerator(s.accelerator)
    trainer = pl.Trainer(accelerator=accel, devices=1, logger=False,
                         enable_progress_bar=progress, enable_model_summary=False)
    with interruptible(), torch_threads(_threads(accel, s.num_threads)):
        trainer.test(lit, datamodule=dm, verbose=False)
    result = {"model": name, "dataset": data.info.name, "synthetic": data.info.synthetic,
              "checkpoint": str(load) if load else None, **lit._last_test, "n": data.sizes()["test"]}
    if verbose:
        print(f"[labkit] test {name} on {data.info.label}: acc {result['test_acc']:.4f}, "
              f"loss {result['test_loss']:.4f} ({result['n']} samples)")
    return result
