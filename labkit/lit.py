"""The LightningModule that trains a classifier, and the callbacks :func:`labkit.train` adds.

A JSC model has ~100-1000 parameters, so one optimiser step costs a fraction of a
millisecond while Lightning's per-step bookkeeping costs about a millisecond. We keep
Lightning (checkpoints, CSV/TensorBoard logs, early stopping, time limits, progress bars)
but run it with *manual optimisation*: each Lightning step receives a *chunk* of
consecutive mini-batches (see :class:`labkit.data.BatchIterator`) and takes one plain
optimiser step per mini-batch. Same batches, same number of steps, same updates as the
usual one-batch-per-step recipe -- only the overhead is paid per chunk instead
(``benchmarks/bench_train.py`` measures it against that recipe).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .fused import FusedStep
from .settings import DEFAULTS

STAGES = ("train", "val", "test")


def _fused_adam_ok(params) -> bool:
    params = list(params)
    return bool(params) and all(p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda")
                                for p in params)


def count_optimizer_steps(trainer: pl.Trainer, n: int):
    """Tell Lightning that ``n`` optimiser steps were taken on the raw optimiser.

    Its global_step (used by checkpointing and logging) counts optimiser steps taken under
    manual optimisation. Stepping through Lightning's optimiser wrapper instead would count them
    itself, but runs every callback's on_before_optimizer_step hook per mini-batch: the per-step
    overhead the chunked loops here avoid (measured ~30% slower fits of jsc-tiny at batch 256 on
    the CPU). This is the one write into Lightning's loop state."""
    trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by(n)


class LitClassifier(pl.LightningModule):
    """Cross-entropy classification with Adam; each stage (train/val/test) has its own loss and
    accuracy metrics, logged per epoch as ``<stage>_loss`` and ``<stage>_acc``.

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
        self.use_fused = True  # False: always autograd (benchmarks/bench_train.py compares the two)
        self._fused = (None, None)  # (the optimiser it was built for, the hand-written step or None)
        for stage in STAGES:
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes=num_classes, average="micro"))
            # "disable": no NaN test per update (a host sync); a non-finite training loss is caught per chunk
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))

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

    # -- training: one Lightning step = one chunk of mini-batches -------------------------
    def training_step(self, chunk, chunk_idx):
        if isinstance(chunk, tuple):  # a plain (x, y) batch also works
            chunk = [chunk]
        opt = self.optimizers().optimizer  # the raw torch optimiser: no per-step wrappers
        fused = self._fused_step(opt)
        loss_sum = torch.zeros((), device=self.device)
        preds, targets = [], []
        first_loss = None
        for x, y in chunk:
            if fused is not None and fused.usable(x):
                loss, logits = fused(x, y)  # the same update, by hand (labkit/fused.py)
            else:
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if first_loss is None:
                first_loss = loss.detach()
            loss_sum += loss.detach() * len(y)
            preds.append(logits.detach().argmax(1))
            targets.append(y)
        # One check per chunk (a host sync per mini-batch would cost more than the step): a
        # non-finite loss anywhere in the chunk makes the sum non-finite. Stop before Lightning
        # can checkpoint the ruined weights, so the files on disk stay those of a finite epoch.
        if not torch.isfinite(loss_sum):
            raise NonFiniteLoss(float(loss_sum), self.current_epoch + 1,
                                before_any_update=self.global_step == 0 and not torch.isfinite(first_loss))
        count_optimizer_steps(self.trainer, len(chunk))
        n = sum(len(t) for t in targets)
        self.train_acc.update(torch.cat(preds), torch.cat(targets))
        self.train_loss.update(loss_sum / n, weight=n)
        self.log_dict({"train_loss": self.train_loss, "train_acc": self.train_acc}, on_step=False, on_epoch=True,
                      batch_size=n)
        self.log("train_loss_step", loss_sum / n, on_step=True, on_epoch=False, batch_size=n)

    def _fused_step(self, opt):
        """The hand-written step for this model and optimiser (built once), or None: autograd."""
        if self._fused[0] is not opt:
            self._fused = (opt, FusedStep.build(self.model, opt) if self.use_fused else None)
        return self._fused[1]

    def on_train_epoch_start(self):
        # Shuffle order is a pure function of (seed, epoch), so a resumed run sees the same batches.
        loader = self.trainer.train_dataloader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.current_epoch)

    def on_train_epoch_end(self):
        # After the callbacks' on_train_epoch_end (EpochHistory has read this epoch's rate).
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()  # the next epoch's rate

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, batch, stage: str):
        x, y = batch
        logits = self.model(x)
        loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss.update(F.cross_entropy(logits, y, reduction="none"))  # the mean over every row
        acc.update(logits, y)
        self.log_dict({f"{stage}_loss": loss, f"{stage}_acc": acc}, on_step=False, on_epoch=True, prog_bar=True,
                      batch_size=len(y))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")


class EpochHistory(Callback):
    """The per-epoch history :func:`labkit.train` returns: one row per finished training epoch
    with its epoch number, train and val loss and accuracy, and the learning rate it used."""

    COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc")

    def __init__(self):
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer, lit):
        # Called before the LightningModule's hook, so the scheduler has not yet moved the rate.
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        row.update({k: float(metrics[k]) for k in self.COLUMNS if k in metrics})
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append(row)


class ReportEpochs(Callback):
    """Tells :func:`labkit.progress.report` about every finished training epoch (a sweep's bar of
    epochs across its worker processes)."""

    def on_train_epoch_end(self, trainer, lit):
        from .progress import report
        report(1)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite in ``epoch`` (raised at the end of a chunk)."""

    def __init__(self, value: float, epoch: int, before_any_update: bool):
        super().__init__(f"training loss {value} in epoch {epoch}")
        self.value, self.epoch, self.before_any_update = value, epoch, before_any_update


class Interrupted(Exception):
    """Raised at a step boundary after a Ctrl-C (see :class:`StopOnInterrupt`)."""


class StopOnInterrupt(Callback):
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
            self.where += f"; {self._write_last(trainer)}"
        else:
            self.where += "; no checkpoint written yet"
        raise Interrupted(self.where)

    def _write_last(self, trainer) -> str:
        """Write the run's last.ckpt now; says what was written (labkit.stack writes each run's)."""
        trainer.save_checkpoint(self.last_ckpt)  # written to a temp file, then renamed
        return f"last.ckpt: {self.last_ckpt}"

    def on_train_start(self, trainer, pl_module):
        self._stop(trainer, "starting", save=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._stop(trainer, "training", save=True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "fit":
            self._stop(trainer, "validating", save=True)
