"""Many models per step: runs that differ only in learning rate, weight decay, seed, max_epochs
or early stopping train together, in one process, as one *stacked* model.

A JSC model has 100-3,000 parameters, so a CPU training step is almost all per-operation
overhead, and K separate runs pay it K times. Here K runs of the same architecture and batch
size hold K copies of every parameter and each mini-batch step is one batched computation
over the K models, so the overhead is paid once:

    results = train_stacked("jsc-tiny", data, [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}],
                            max_epochs=10, batch_size=128)
    results[0]["best_ckpt"], results[1]["history"]     # each run's own, as train() returns them

How the K models stay K independent runs:

* activations are *feature-major*, ``[K, features, batch]``: a Linear is one ``baddbmm``
  ``w @ h`` over the K models, with contiguous operands and result; BatchNorm1d is torch's own
  ``batch_norm`` kernel over ``[1, K * features, batch]``, whose per-row statistics are exactly
  each model's own, its running mean and variance updated in place in the stacked buffers
  (``vmap`` cannot update buffers in place); ReLU is elementwise. Dropout draws each model's
  mask from the model's own generator, seeded as its own run's would be, into its own
  ``[batch, features]`` block, so the mask is the one its run alone draws;
* the loss is the sum of the K models' mean losses, so each model's gradient is its own;
* the step has no autograd graph (:meth:`_Stack.step`, as :mod:`labkit.fused` for one model):
  the forward keeps what each layer's backward needs and the backward calls the kernels
  autograd would (``bmm`` for ``baddbmm``'s gradients, ``native_batch_norm_backward``,
  ``threshold_backward``), writing each gradient into its place in one flat buffer; the
  result is the autograd step's bit for bit (``tests/test_stack.py``);
* Adam works on one flat buffer of all K models' parameters: torch's fused CPU Adam kernel
  (the one a run alone uses) at learning rate 1 gives every element's update, which is scaled
  by its own model's learning rate; four operations per step whatever K is;
* when seeds differ, each model gets its own shuffle order (gathered rows ``x[perm_k]``);
* each model keeps its metrics, history, early stopping, best/last checkpoints (normal
  single-model Lightning checkpoints: ``load_model`` and ``labkit test --load`` read them)
  and leaves the stack when it finishes (its ``max_epochs``, early stopping or a non-finite loss).

Training runs under a Lightning ``Trainer`` with manual optimisation and chunks of mini-batches
per Lightning step, as a single run does. A stacked run matches the same run trained alone to
float rounding (batched matrix products and BatchNorm's statistics sum in a different order,
and the learning rate multiplies Adam's update last), not
bit for bit; ``tests/test_stack.py`` checks both, and that a model with ``learning_rate=0``
never moves. What the stacker cannot handle (layer types other than Linear, BatchNorm1d, ReLU
and Dropout, models whose forward is not their layers in order, a GPU, a scheduler or a time
limit) is trained one run at a time by :func:`labkit.training.train` instead.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from .cache import atomic_write
from .config import default_project
from .data.loaders import epoch_permutation
from .lock import project_lock
from .progress import report
from .checkpoints import archive_previous, model_and_name, project_dir, restore_previous
from .fused import DropoutMasks, dropout_noise, leaves, probe_output
from .lit import Interrupted, LitClassifier, NonFiniteLoss, StopOnInterrupt, _fused_adam_ok, count_optimizer_steps
from .runtime import interruptible, quiet_lightning, torch_flags_restored, torch_threads
from .settings import DEFAULTS, TrainSettings
from .training import TrainingDiverged, _check_project, _data, check_fits, default_chunk, diverged_error

STACKED = "stacked_runs"  # a sweep lead's settings entry: the runs that train with it (not a train() setting)
VARY = ("learning_rate", "weight_decay", "seed", "max_epochs", "early_stopping")  # may differ within a stack
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, as LitClassifier uses them
_BN_BACKWARD = torch.ops.aten.native_batch_norm_backward.default
_RELU_BACKWARD = torch.ops.aten.threshold_backward.default
_LOG_SOFTMAX_BACKWARD = torch.ops.aten._log_softmax_backward_data.default


# -- which models can be stacked ------------------------------------------------------------------


def stackable(net: nn.Module) -> bool:
    """Can :func:`train_stacked` train this model? Known layer kinds applied in order (checked
    by comparing the stacked forward with the model's own on a few rows, in eval mode)."""
    found = leaves(net)
    probe = probe_output(net, [m for _, m in found]) if found is not None else None
    if probe is None:
        return False
    x, want = probe
    try:
        with torch.no_grad():
            got = _Stack([net], [0.0], [0.0]).forward(feature_major(x, 1), training=False, gens=None)[0].t()
    except Exception:  # a forward that does more than its layers, or other shapes
        return False
    return got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-4)


# -- K models' parameters, buffers and Adam state ----------------------------------------------------


class _Stack:
    """K copies of one architecture: each parameter stacked as ``[K, *shape]``, all of them in
    one flat buffer (``flat``; gradients in ``grad_flat``, Adam's moments in ``m`` and ``v``),
    so the optimiser step is a few operations on whole buffers."""

    def __init__(self, nets, lrs, wds, steps: int = 0, moments=None):
        self.K = len(nets)
        net0 = nets[0]
        self.names = [n for n, _ in net0.named_parameters()]
        shapes = [p.shape for p in net0.parameters()]
        sizes = [p.numel() for p in net0.parameters()]
        K = self.K
        total = K * sum(sizes)
        self.flat = torch.empty(total)
        self.grad_flat = torch.zeros(total)
        self.m, self.v = torch.zeros(total), torch.zeros(total)
        self.params, self.index = [], {}
        owner = []
        per = [dict(n.named_parameters()) for n in nets]
        o = 0
        for i, (name, shape, n) in enumerate(zip(self.names, shapes, sizes)):
            view = self.flat[o:o + K * n].view(K, *shape)
            view.copy_(torch.stack([p[name].detach() for p in per]))
            if moments is not None:  # Adam state carried over (the stack was rebuilt)
                self.m[o:o + K * n].view(K, *shape).copy_(torch.stack([mm[0][i] for mm in moments]))
                self.v[o:o + K * n].view(K, *shape).copy_(torch.stack([mm[1][i] for mm in moments]))
            view.requires_grad_()  # a leaf sharing the flat buffer's memory
            view.grad = self.grad_flat[o:o + K * n].view(K, *shape)  # autograd accumulates into it in place
            self.params.append(view)
            self.index[name] = i
            owner.append(torch.arange(K).repeat_interleave(n))
            o += K * n
        self.owner = torch.cat(owner)  # element -> model
        self.lr = torch.tensor([float(x) for x in lrs], dtype=torch.float32)[self.owner]  # each element's model's rate
        self._update = torch.empty(total)  # Adam's update at learning rate 1 (see adam_step)
        self._step = torch.zeros(())  # the kernel reads the step count from a tensor: self.steps, copied in
        self.wd = torch.tensor([float(x) for x in wds], dtype=torch.float32)[self.owner]
        self.any_wd = any(float(x) != 0 for x in wds)
        self.steps = steps
        self.buffers = {}  # state-dict name -> [K, C] running statistics
        self.layers = self._layers(nets)  # (kind, module, tensors, their gradients: views into grad_flat)
        self.ops = [_prepared(layer) for layer in self.layers]  # what :meth:`step` reads, made once
        self.masks = _dropout_masks(self.layers, K)  # every mask of a step, drawn at its start
        self._consts = {}  # the loss's constants, by batch size
        self.template = net0

    def _layers(self, nets) -> list:
        """Each layer of the chain as ``(kind, module, its stacked tensors, their gradients)``;
        BatchNorm's running statistics stacked into :attr:`buffers`."""
        layers = []
        for name, m in leaves(nets[0]):
            get = lambda what: self.params[self.index[f"{name}.{what}"]]  # noqa: E731
            if isinstance(m, nn.Linear):
                w, b = get("weight"), get("bias") if m.bias is not None else None
                layers.append(("linear", m, (w, b), (w.grad, b.grad if b is not None else None)))
            elif isinstance(m, nn.BatchNorm1d):
                subs = [dict(n.named_modules())[name] for n in nets]
                rm = torch.stack([s.running_mean for s in subs]).float().contiguous()
                rv = torch.stack([s.running_var for s in subs]).float().contiguous()
                self.buffers[f"{name}.running_mean"], self.buffers[f"{name}.running_var"] = rm, rv
                layers.append(("bn", m, (get("weight"), get("bias"), rm, rv), (get("weight").grad, get("bias").grad)))
            elif isinstance(m, nn.ReLU):
                layers.append(("relu", m, (), ()))
            else:
                layers.append(("dropout", m, (), ()))
        return layers

    def forward(self, h, training: bool, gens):
        """``h``: ``[K, in, batch]`` -> logits ``[K, classes, batch]``. Differentiable (autograd's
        step, kept as the reference :meth:`step` is tested against); validation runs it without grad.

        The layout is feature-major, each model's activations ``[features, batch]``: a Linear is
        one batched matmul ``w @ h`` whose operands and result are all contiguous, and a
        BatchNorm is one ``batch_norm`` over the K x features rows of ``[1, K * features, batch]``.
        (Batch-major, ``[batch, K * features]``, costs a transposing copy around every matmul, and
        a matmul producing 5 columns runs ~4x slower than one producing 5 rows.)"""
        K, B = self.K, h.shape[-1]
        for kind, m, t, _ in self.layers:
            if kind == "linear":
                w, b = t
                h = torch.baddbmm(b.unsqueeze(2), w, h) if b is not None else torch.bmm(w, h)
            elif kind == "bn":
                w, b, rm, rv = t
                h = F.batch_norm(h.view(1, -1, B), rm.view(-1), rv.view(-1), w.view(-1), b.view(-1), training,
                                 m.momentum, m.eps).view(K, -1, B)
            elif kind == "relu":
                h = torch.relu(h)
            elif training and m.p > 0:
                noise = dropout_noise(m.p, B, K, h.shape[1], gens)
                h = h * (noise if noise.dim() == 0 else noise.transpose(1, 2))
        return h

    @torch.no_grad()
    def step(self, x, y, gens):
        """One training step of all K models without autograd: forward keeping what each layer's
        backward needs, the loss, the backward into ``grad_flat``, then :meth:`adam_step`.
        ``x`` ``[K, in, batch]`` (see :func:`feature_major`), ``y`` ``[batch, K]``; returns each
        model's mean loss ``[K]`` and its predicted classes ``[K, batch]``. The result is
        autograd's (``losses.sum().backward()`` over :meth:`forward`) bit for bit: the same
        kernels on tensors of the same shapes and strides."""
        if x.shape[-1] < 2:
            _refuse_one_row(self.ops, self.K)
        saved, h = [], x
        masks = iter(self.masks.draw(x.shape[-1], gens))
        for op in self.ops:
            h, keep = _forward_keeping(op, h, self.K, masks)
            saved.append(keep)
        losses, preds, g = _loss_and_grad(h, y, self._consts)
        for i in range(len(self.ops) - 1, -1, -1):
            g = _backward(self.ops[i], saved[i], g, self.K, need_input=i > 0)
        self.adam_step()
        return losses, preds

    @torch.no_grad()
    def adam_step(self):
        """One Adam step for all K models: torch's fused CPU Adam kernel (the one a run alone
        uses) with a learning rate of 1 on a zeroed buffer gives every element's update, which is
        then scaled by its own model's learning rate: 4 operations on whole buffers for any K,
        where a step per model would be K kernel calls."""
        self.steps += 1
        self._step.fill_(self.steps)
        g = self.grad_flat
        if self.any_wd:
            g = torch.addcmul(g, self.flat, self.wd)  # grad + param * weight_decay, as the kernel adds it
        update = self._update.zero_()
        torch._fused_adam_([update], [g], [self.m], [self.v], [], [self._step], lr=1.0, beta1=BETA1, beta2=BETA2,
                           weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False)
        self.flat.addcmul_(update, self.lr)

    # -- one model out of the stack ------------------------------------------------------------------
    def state_dict(self, k: int) -> dict:
        """Model ``k``'s ``state_dict`` (keys and order as the model's own)."""
        out = {}
        for name in self.template.state_dict():
            if name in self.index:
                out[name] = self.params[self.index[name]][k].detach().clone()
            elif name in self.buffers:
                out[name] = self.buffers[name][k].clone()
            elif name.endswith("num_batches_tracked"):
                out[name] = torch.tensor(self.steps, dtype=torch.long)
            else:  # cannot happen for the layer kinds allowed
                raise KeyError(name)
        return out

    def moments(self, k: int):
        """Model ``k``'s Adam moments, per parameter (lists of tensors)."""
        ms, vs, o = [], [], 0
        for p in self.params:
            n = p[0].numel()
            ms.append(self.m[o:o + self.K * n].view(p.shape)[k].clone())
            vs.append(self.v[o:o + self.K * n].view(p.shape)[k].clone())
            o += self.K * n
        return ms, vs

    def net(self, k: int) -> nn.Module:
        net = copy.deepcopy(self.template)
        net.load_state_dict(self.state_dict(k))
        return net

    def keep(self, ks, lrs, wds) -> "_Stack":
        """A stack of the models ``ks`` only (their weights, statistics and Adam state)."""
        return _Stack([self.net(k) for k in ks], lrs, wds, self.steps, [self.moments(k) for k in ks])


# -- the Lightning module that trains a stack ------------------------------------------------------


class _Member:
    """One run in the stack: its settings, files, metrics and fate."""

    def __init__(self, i, net, name, settings, project, data, gen, fingerprint):
        self.i, self.settings, self.gen = i, settings, gen
        self.out = project_dir(project)
        self.ckpt_dir = self.out / "training_ckpts"
        self.project = project
        # A LitClassifier only to write the same hyperparameters into the checkpoints.
        self.lit = LitClassifier(net, learning_rate=settings["learning_rate"], weight_decay=settings["weight_decay"],
                                 scheduler=None, max_epochs=settings["max_epochs"],
                                 num_classes=data.info.num_classes, model_name=name,
                                 dataset_name=data.info.name, dataset_fingerprint=fingerprint)
        opt = torch.optim.Adam(net.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"],
                               fused=_fused_adam_ok(net.parameters()))
        self.param_groups = opt.state_dict()["param_groups"]
        self.checkpoint = ModelCheckpoint(dirpath=self.ckpt_dir, filename="best", monitor="val_acc", mode="max",
                                          save_top_k=1, enable_version_counter=False)
        # not run by a Trainer: only its state goes into the checkpoints, as a single run's does
        self.last = ModelCheckpoint(dirpath=self.ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                    enable_version_counter=False)
        patience = settings.get("early_stopping")
        self.stopper = EarlyStopping(monitor="val_acc", mode="max", patience=patience) if patience else None
        # The CSV and TensorBoard logs a run trained alone writes (its epoch metrics, same folders)
        self.loggers = [CSVLogger(self.out / "logs", name="csv"),
                        TensorBoardLogger(self.out / "logs", name="tensorboard")]
        self.history: list[dict] = []
        self.archived = None
        self.diverged = None  # (loss value, epoch, before_any_update)
        self.finished_at = None  # seconds since the start when it left the stack
        self.steps = 0


class _StackedLit(pl.LightningModule):
    """All members' training under one Trainer: each Lightning step is a chunk of mini-batches."""

    def __init__(self, members, stack, data, batch_size, chunk):
        super().__init__()
        self.automatic_optimization = False
        self.members, self.live, self.stack = members, list(members), stack
        self.data, self.batch_size, self.chunk = data, batch_size, chunk
        self.n_train = len(data.y_train)
        self.start = None

    def configure_optimizers(self):
        return None  # the stack steps its own Adam (one update of all K models per mini-batch)

    def train_dataloader(self):
        return _Ranges(self.n_train, self.batch_size, self.chunk)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # CPU only, and a training chunk is a list of row ranges: Lightning's generic walk over
        # its hundreds of (start, stop) pairs would cost ~15 us per mini-batch, for nothing to move
        return batch

    def val_dataloader(self):
        from .data.loaders import BatchIterator
        return BatchIterator(*self.data.split("val"), max(self.batch_size, 8192))

    def on_train_start(self):
        self.start = time.perf_counter()

    def on_train_epoch_start(self):
        seeds = [m.settings["seed"] for m in self.live]
        e = self.current_epoch
        if len(set(seeds)) == 1:  # one shuffle for all: gather the rows once, as a single run does
            perm = epoch_permutation(self.n_train, seeds[0], e)
            self._x, self._y, self._perms = self.data.x_train[perm], self.data.y_train[perm], None
        else:
            self._perms = torch.stack([epoch_permutation(self.n_train, s, e) for s in seeds], 1)  # [N, K]
        K = len(self.live)
        self._sums = torch.zeros(K)
        self._correct = torch.zeros(K, dtype=torch.long)
        self._n = 0

    def _rows(self, a, b):
        """Rows ``a:b`` for the K models: features ``[rows, K, features]`` and labels ``[rows, K]``."""
        K = len(self.live)
        if self._perms is None:  # (views: all K models read the same rows)
            return self._x[a:b].unsqueeze(1).expand(-1, K, -1), self._y[a:b].unsqueeze(1).expand(-1, K)
        idx = self._perms[a:b]
        return self.data.x_train[idx], self.data.y_train[idx]

    def training_step(self, chunk, chunk_idx):
        stack, K = self.stack, len(self.live)
        gens = [m.gen for m in self.live]
        first = None
        sums = torch.zeros(K)
        # The chunk's rows gathered and laid out for the K models at once, and the correct
        # predictions counted once per chunk: per mini-batch, those few operations cost a sixth
        # of a jsc-tiny stacked step.
        sizes = [b - a for a, b in chunk]
        x_all, y_all = self._rows(chunk[0][0], chunk[-1][1])
        preds = []
        for x, y, n in zip(_feature_major_batches(x_all, sizes), y_all.split(sizes), sizes):
            losses, p = stack.step(x, y, gens)  # each model's mean loss over its batch
            if first is None:
                first = losses
            sums += losses * n
            preds.append(p)
        self._correct += (torch.cat(preds, 1) == y_all.t()).sum(1)
        self._n += len(y_all)
        # As a single run: one check per chunk; a model whose loss is non-finite has diverged
        # in this epoch (its checkpoints on disk stay those of the last finite epoch).
        bad = ~torch.isfinite(sums)
        if bool(bad.any()):
            for k in bad.nonzero().flatten().tolist():
                m = self.live[k]
                if m.diverged is None:
                    before = self.global_step == 0 and not bool(torch.isfinite(first[k]))
                    m.diverged = (float(sums[k]), self.current_epoch + 1, before)
                    m.finished_at = time.perf_counter() - self.start
        self._sums += sums
        count_optimizer_steps(self.trainer, len(chunk))  # global_step counts mini-batch steps, as in a single run

    # -- validation: every live model on the whole split ------------------------------------------------
    def on_validation_epoch_start(self):
        K = len(self.live)
        self._val_sum, self._val_correct, self._val_n = torch.zeros(K), torch.zeros(K, dtype=torch.long), 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        K, B = len(self.live), len(y)
        losses, preds = _losses(self.stack.forward(feature_major(x, K), False, None), y)
        self._val_sum += losses.sum(1)
        self._val_correct += (preds == y).sum(1)
        self._val_n += B

    def on_validation_end(self):
        # What a single run's two ModelCheckpoints do at this point: best if better, and last.
        n = max(1, self._val_n)
        dump = self.trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        self._val = []
        for k, m in enumerate(self.live):
            val = {"val_loss": float(self._val_sum[k]) / n, "val_acc": _accuracy(self._val_correct[k], self._val_n)}
            self._val.append(val)
            if m.diverged is not None:
                continue
            score = torch.tensor(val["val_acc"])
            if not torch.isfinite(score):
                score = torch.tensor(float("-inf"))
            ck = m.checkpoint
            best = str(m.ckpt_dir / "best.ckpt")
            if ck.best_model_score is None or bool(score > ck.best_model_score):
                ck.best_k_models = {best: score}
                ck.kth_best_model_path, ck.kth_value = best, score
                ck.best_model_path, ck.best_model_score, ck.current_score = best, score, score
                self._save(dump, k, m, best)
        # last.ckpt every epoch, as a single run's "last" checkpoint callback writes it
        self.save_last(dump)

    def save_last(self, dump=None) -> int:
        """Every run still training writes its last.ckpt now (each epoch, and on Ctrl-C: see
        :class:`_StopStack`); returns how many did. ``dump``: the trainer's checkpoint, if made."""
        if dump is None:
            dump = self.trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        live = [(k, m) for k, m in enumerate(self.live) if m.diverged is None]
        for k, m in live:
            self._save(dump, k, m, str(m.ckpt_dir / "last.ckpt"))
        return len(live)

    def _save(self, dump, k, m, path):
        ckpt = dict(dump)
        ckpt["state_dict"] = {f"model.{name}": t for name, t in self.stack.state_dict(k).items()}
        ms, vs = self.stack.moments(k)
        step = torch.tensor(float(self.stack.steps))
        ckpt["optimizer_states"] = [{"state": {i: {"step": step.clone(), "exp_avg": a, "exp_avg_sq": b}
                                               for i, (a, b) in enumerate(zip(ms, vs))},
                                     "param_groups": copy.deepcopy(m.param_groups)}]
        ckpt["lr_schedulers"] = []
        ckpt["callbacks"] = {cb.state_key: cb.state_dict() for cb in (m.checkpoint, m.last, m.stopper) if cb is not None}
        ckpt["hparams_name"] = m.lit._hparams_name
        ckpt["hyper_parameters"] = dict(m.lit.hparams)
        atomic_write(Path(path), lambda tmp: torch.save(ckpt, tmp))

    def on_train_epoch_end(self):
        done, keep = 0, []
        e = self.current_epoch + 1
        for k, m in enumerate(self.live):
            if m.diverged is not None:  # left the stack in this epoch: no row for it
                continue
            row = {"epoch": e, "train_loss": float(self._sums[k]) / max(1, self._n),
                   "train_acc": _accuracy(self._correct[k], self._n) if self._n else float("nan")}
            row.update(self._val[k])
            row["lr"] = m.settings["learning_rate"]
            m.history.append(row)
            self._log(m, row)
            m.steps = int(self.global_step)
            done += 1
            stop = e >= m.settings["max_epochs"]
            if m.stopper is not None:
                should, reason = m.stopper._evaluate_stopping_criteria(torch.tensor(row["val_acc"]))
                if should:  # as EarlyStopping's own check at this point of a single run
                    m.stopper.stopped_epoch, m.stopper.stopping_reason_message = self.current_epoch, reason
                    stop = True
            if stop:
                m.finished_at = time.perf_counter() - self.start
            else:
                keep.append(m)
        report(done)  # epochs finished, for the sweep's progress bar
        if len(keep) != len(self.live):
            self._keep(keep)

    def _log(self, m, row):
        """One epoch into the run's CSV/TensorBoard logs, as a single run's Lightning loggers get it:
        the validation and the training metrics at the epoch's last chunk."""
        step = (self.current_epoch + 1) * self.trainer.num_training_batches - 1
        for logger in m.loggers:
            for stage in ("val", "train"):
                logger.log_metrics({f"{stage}_acc": row[f"{stage}_acc"], f"{stage}_loss": row[f"{stage}_loss"],
                                    "epoch": self.current_epoch}, step)

    def _keep(self, keep):
        if keep:
            ks = [self.live.index(m) for m in keep]
            self.stack = self.stack.keep(ks, [m.settings["learning_rate"] for m in keep],
                                         [m.settings["weight_decay"] for m in keep])
        self.live = keep
        if not keep:
            self.trainer.should_stop = True


def _targets(y, K: int):
    """Labels ``[rows, K]`` (or ``[rows]``, the same for all K) as the loss's index ``[K, 1, rows]``."""
    return y.t().unsqueeze(1) if y.dim() == 2 else y.view(1, 1, -1).expand(K, 1, -1)


def _losses(logits, y):
    """``logits`` ``[K, C, rows]``, ``y`` ``[rows, K]`` (or ``[rows]``, the same for all K) ->
    per-row losses ``[K, rows]`` and the predicted classes ``[K, rows]`` (first maximum, as ``argmax``).

    ``F.cross_entropy(reduction="none")`` of each model: log_softmax over the classes, then
    minus the target's log-probability. With the classes the middle dimension and the rows
    contiguous inside it, log_softmax runs like an elementwise operation (over a last dimension
    of 5 classes, as in the batch-major layout, it takes about 25 ns an element). ``max`` gives
    the first maximum, as ``argmax`` does, and runs much faster over a middle dimension."""
    lsm = torch.log_softmax(logits, 1)
    return lsm.gather(1, _targets(y, len(logits))).squeeze(1).neg(), logits.detach().max(1).indices


def _loss_and_grad(logits, y, consts: dict):
    """:meth:`_Stack.step`'s loss: each model's mean loss ``[K]``, the predicted classes, and the
    gradient of the losses' sum with respect to the logits ``[K, C, rows]``, as autograd computes
    it through :func:`_losses`, ``mean(1)`` and ``sum()``. ``consts``: constants kept by batch size."""
    K, C, rows = logits.shape
    yi = _targets(y, K)
    lsm = torch.log_softmax(logits, 1)
    losses = lsm.gather(1, yi).squeeze(1).neg_().mean(1)
    if rows not in consts:
        # autograd: the sum's backward gives ones, the mean's divides them by the row count, the
        # negation negates, and gather's scatters the result into zeros at the targets
        consts[rows] = (-(torch.ones(()) / rows)).item()  # a float32 value, exact as a Python float
    g = torch.zeros(K, C, rows).scatter_(1, yi, consts[rows])
    return losses, logits.max(1).indices, _LOG_SOFTMAX_BACKWARD(g, lsm, 1, lsm.dtype)


def _prepared(layer):
    """A layer as :meth:`_Stack.step` uses it: the views its kernels take, made once (detached:
    the step runs no autograd), and its gradients' places in ``grad_flat``."""
    kind, m, t, grads = layer
    if kind == "linear":
        w, b = (x.detach() if x is not None else None for x in t)
        return kind, m, (w, w.transpose(1, 2), b.unsqueeze(2) if b is not None else None), grads
    if kind == "bn":
        return kind, m, tuple(x.detach().view(-1) for x in t), tuple(x.view(-1) for x in grads)
    return kind, m, (), ()


def _dropout_masks(layers, K: int) -> DropoutMasks:
    """The masks of the chain's Dropout layers that draw any (0 < p < 1), feature-major."""
    ps, widths = [], []
    width = next((m.in_features if kind == "linear" else m.num_features for kind, m, *_ in layers
                  if kind in ("linear", "bn")), None)
    for kind, m, *_ in layers:
        if kind == "linear":
            width = m.out_features
        elif kind == "dropout" and 0 < m.p < 1:
            ps.append(m.p)
            widths.append(width)
    return DropoutMasks(ps, widths, K, feature_major=True)


def _refuse_one_row(ops, K: int):
    """F.batch_norm's error for one row in training, as the first BatchNorm raises it in
    :meth:`_Stack.forward` and in a run alone; raised before anything is drawn or changed."""
    for kind, m, t, _ in ops:
        if kind == "bn":
            F.batch_norm(torch.zeros(1, K * m.num_features, 1), t[2], t[3], t[0], t[1], True, m.momentum, m.eps)


def _forward_keeping(op, h, K: int, masks):
    """One layer of :meth:`_Stack.step`'s forward (what :meth:`_Stack.forward` computes in
    training) on ``h`` ``[K, features, batch]``: its output, and what its backward needs.
    ``masks``: an iterator over the step's Dropout masks (``[K, features, batch]``), in order."""
    kind, m, t, _ = op
    B = h.shape[-1]
    if kind == "linear":
        w, _, b = t
        return (torch.baddbmm(b, w, h) if b is not None else torch.bmm(w, h)), h
    if kind == "bn":
        rows = h.view(1, -1, B)
        # F.batch_norm's kernel in training (running statistics updated in place), with the
        # batch statistics it saves for the backward
        out, mean, invstd = torch.native_batch_norm(rows, *t, True, m.momentum, m.eps)
        return out.view(K, -1, B), (rows, mean, invstd)
    if kind == "relu":
        out = torch.relu(h)
        return out, out
    if m.p == 0:
        return h, None
    noise = next(masks) if m.p < 1 else torch.zeros(())  # p = 1: all dropped, nothing drawn
    return h * noise, noise


def _backward(op, keep, g, K: int, need_input: bool):
    """One layer's backward in :meth:`_Stack.step`: its parameters' gradients written into their
    places in ``grad_flat``, its input's gradient returned. Each is the kernel autograd runs for
    the forward's operation (derivatives.yaml), on tensors of the same shapes and strides, so
    the sums run in the same order and the values are autograd's bit for bit."""
    kind, m, t, grads = op
    if kind == "linear":
        w, wt, b = t
        # (b)addbmm's gradients: for batch1 = w, grad @ batch2^T (already the weight's layout);
        # for the broadcast bias, the sum over the batch; for batch2 = h, w^T @ grad
        torch.bmm(g, keep.transpose(1, 2), out=grads[0])
        if b is not None:
            torch.sum(g, 2, out=grads[1])
        return wt.bmm(g) if need_input else None
    if kind == "bn":
        rows, mean, invstd = keep
        gi, gw, gb = _BN_BACKWARD(g.view(rows.shape), rows, t[0], t[2], t[3], mean, invstd, True, m.eps,
                                  [need_input, True, True])
        grads[0].copy_(gw)
        grads[1].copy_(gb)
        return gi.view(g.shape) if need_input else None
    if kind == "relu":
        return _RELU_BACKWARD(g, keep, 0)
    if keep is None:  # Dropout(p=0)
        return g
    return g * keep


def feature_major(x, K: int | None = None):
    """Rows of features as the stack's input ``[K, features, rows]``, contiguous: ``x``
    ``[rows, K, features]`` (each model its own rows), or ``[rows, features]`` given to all
    ``K`` models."""
    if x.dim() == 2:
        x = x.unsqueeze(1).expand(-1, K, -1)
    return x.permute(1, 2, 0).contiguous()


def _feature_major_batches(x, sizes):
    """:func:`feature_major` of each mini-batch of ``x`` ``[rows, K, features]`` (consecutive rows,
    ``sizes``): the equal-sized ones in one copy, each a contiguous ``[K, features, batch]`` of it."""
    n = sizes.count(sizes[0]) if sizes[-1] != sizes[0] else len(sizes)
    B = sizes[0]
    block = x[:n * B].unflatten(0, (n, B)).permute(0, 2, 3, 1).contiguous()  # [n, K, features, B]
    out = list(block.unbind(0))
    if n < len(sizes):
        out += [feature_major(part) for part in x[n * B:].split(sizes[n:])]
    return out


def _accuracy(correct, n) -> float:
    """As torchmetrics' micro accuracy: the float32 quotient."""
    return float(torch.as_tensor(correct).float() / torch.tensor(float(n)))


class _Ranges:
    """``(start, stop)`` row ranges of each mini-batch, grouped ``chunk`` to a Lightning step;
    the module gathers the rows (each model's own order when the seeds differ)."""

    def __init__(self, n, batch_size, chunk):
        self.n, self.b, self.chunk = n, batch_size, chunk

    def __len__(self):
        return -(-(-(-self.n // self.b)) // self.chunk)

    def __iter__(self):
        ranges = [(a, min(a + self.b, self.n)) for a in range(0, self.n, self.b)]
        for c in range(0, len(ranges), self.chunk):
            yield ranges[c:c + self.chunk]


class NotStackable(ValueError):
    """The model's layers are not ones :func:`train_stacked` can batch."""


# -- training a stack -----------------------------------------------------------------------------------


def _diverged(m: _Member) -> TrainingDiverged:
    """What :func:`labkit.training.train` raises for this run: the same message and partial result."""
    restore_previous(m.ckpt_dir, m.archived)
    return diverged_error(NonFiniteLoss(*m.diverged), m.settings["learning_rate"], m.ckpt_dir, m.history)


def train_stacked(model="jsc-tiny", dataset="jsc-synthetic", runs=(), *, batch_size: int = DEFAULTS["batch_size"],
                  projects=None, data=None, chunk: int | None = None, progress: bool = False,
                  accelerator: str = "cpu", num_threads: int | None = None, **common) -> list:
    """Train several runs of ``model`` at ``batch_size`` together as one stacked model.

    ``runs``: one dict per run of the settings that may differ (``learning_rate``,
    ``weight_decay``, ``seed``, ``max_epochs``, ``early_stopping``); ``common`` gives the
    others' values for all (defaults as :func:`labkit.training.train`). ``projects``: one
    output folder per run (a name under outputs/ or a ``Path``; default ``<project>-stack<k>``).
    Returns, per run, what :func:`~labkit.training.train` returns, or the
    :class:`~labkit.training.TrainingDiverged` it would have raised. CPU only."""
    batch_size, settings, projects = _checked_runs(runs, common, batch_size, projects, accelerator)
    quiet_lightning()
    data = _data(dataset, data)
    members, nets = _members(model, data, settings, projects)
    if not stackable(nets[0]):
        raise NotStackable(f"model {members[0].lit.hparams.model_name!r} cannot be stacked: its layers must be "
                         f"Linear, BatchNorm1d, ReLU and Dropout applied in order (train the runs one by one)")
    stack = _Stack(nets, [s["learning_rate"] for s in settings], [s["weight_decay"] for s in settings])
    lit = _StackedLit(members, stack, data, batch_size, chunk or default_chunk(batch_size))
    wall = _fit(lit, members, max(s["max_epochs"] for s in settings), progress, num_threads)
    return [_diverged(m) if m.diverged is not None else _result(m, data, batch_size, wall, len(members))
            for m in members]


def _checked_runs(runs, common: dict, batch_size, projects, accelerator: str):
    """train_stacked's arguments checked: (batch size, each run's settings, each run's project)."""
    if not isinstance(runs, (list, tuple)) or not runs or not all(isinstance(r, dict) for r in runs):
        raise TypeError(f"runs must be a non-empty list of dicts of settings, got {runs!r}")
    per_run = [k for r in runs for k in r if k not in VARY]
    if per_run:
        raise TypeError(f"a run may set {', '.join(VARY)}; {per_run[0]!r} is the same for all (pass it once)")
    unknown = [k for k in common if k not in VARY]
    if unknown:
        raise TypeError(f"unknown setting {unknown[0]!r} for train_stacked; settings: batch_size, {', '.join(VARY)}")
    if accelerator != "cpu":
        raise ValueError(f"train_stacked runs on the CPU only (accelerator 'cpu'), got {accelerator!r}")
    batch_size = TrainSettings(batch_size=batch_size).batch_size
    # train()'s own checks and normalisation, run by run
    settings = [{k: getattr(TrainSettings.build(**{**common, **r}), k) for k in VARY} for r in runs]
    if projects is None:
        projects = [None] * len(runs)
    if not isinstance(projects, (list, tuple)) or len(projects) != len(runs):
        raise ValueError(f"projects must be one folder per run ({len(runs)}), got {projects!r}")
    return batch_size, settings, [_check_project(p) for p in projects]


def _members(model, data, settings: list, projects: list):
    """One :class:`_Member` per run, each model built as train() would build it."""
    members, nets = [], []
    fingerprint = data.fingerprint()  # (hashes the data: once, not once per run)
    for i, (s, p) in enumerate(zip(settings, projects)):
        pl.seed_everything(s["seed"], verbose=False)  # as train(): the weights depend on it
        src = copy.deepcopy(model) if isinstance(model, nn.Module) else model
        net, name = model_and_name(src, data.info)
        gen = torch.Generator().manual_seed(0)
        gen.set_state(torch.get_rng_state())  # the dropout stream this run would draw from
        check_fits(net, name, data)
        p = p or f"{default_project(name, data.info.name)}-stack{i}"
        members.append(_Member(i, net, name, s, p, data, gen, fingerprint))
        nets.append(net)
    return members, nets


class _StopStack(StopOnInterrupt):
    """Ctrl-C in a stack, as in a run alone (:class:`~labkit.lit.StopOnInterrupt`): SIGINT only
    sets a flag; at the next chunk or validation batch boundary every run still training writes
    its ``last.ckpt`` (complete and loadable: an atomic write), then the fit stops."""

    def __init__(self):
        super().__init__(None)

    def _write_last(self, trainer) -> str:
        return f"last.ckpt of {trainer.lightning_module.save_last()} stacked run(s) written"


def _fit(lit, members: list, max_epochs: int, progress: bool, num_threads) -> float:
    """Fit the stack with every run's project locked; returns the wall time. Ctrl-C stops it
    between chunks with each run's last.ckpt written (:class:`_StopStack`) and raises a
    one-line KeyboardInterrupt, as :func:`labkit.training.train` does."""
    stop = _StopStack()
    with torch_flags_restored(), contextlib.ExitStack() as locks, stop.catching_sigint():
        for m in members:
            locks.enter_context(project_lock(m.out.parent))
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=[stop],
                             logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                             enable_model_summary=False, num_sanity_val_steps=0, deterministic=True)
        for m in members:
            m.archived = archive_previous(m.ckpt_dir)
            for logger in m.loggers:
                logger.log_hyperparams(dict(m.lit.hparams))
        start = time.perf_counter()
        try:
            with interruptible(), torch_threads(num_threads or 1), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*configure_optimizers. returned .None.")  # on purpose
                trainer.fit(lit)
        except BaseException as e:  # (Ctrl-C, an error) a run that wrote nothing gets its previous files back, as in train()
            for m in members:
                restore_previous(m.ckpt_dir, m.archived)
            if isinstance(e, Interrupted):
                raise KeyboardInterrupt(f"stopped {e}") from None
            raise
        finally:
            for m in members:
                for logger in m.loggers:
                    logger.finalize("success" if m.diverged is None else "failed")
        wall = time.perf_counter() - start
    if stop.requested:  # Ctrl-C after the last step: the runs are complete, but stop here as asked
        raise KeyboardInterrupt("training had just finished; the stacked runs' checkpoints are complete")
    return wall


def _result(m, data, batch_size: int, wall: float, n: int) -> dict:
    """One stacked run's result, as :func:`labkit.training.train` returns it."""
    h = pd.DataFrame(m.history)
    ck = m.checkpoint
    last = m.ckpt_dir / "last.ckpt"
    final = lambda column: float(h[column].iloc[-1]) if len(h) else float("nan")  # noqa: E731
    return {
        "model": m.lit.hparams.model_name, "dataset": data.info.name, "synthetic": data.info.synthetic,
        "device": "cpu", "project": m.project, "output_dir": str(m.out),
        "best_ckpt": ck.best_model_path or None, "last_ckpt": str(last) if last.exists() else None,
        "best_val_acc": float(ck.best_model_score) if ck.best_model_score is not None else float("nan"),
        "final_val_acc": final("val_acc"), "final_val_loss": final("val_loss"), "final_train_acc": final("train_acc"),
        "epochs": len(h), "max_epochs": m.settings["max_epochs"], "batch_size": batch_size,
        "learning_rate": m.settings["learning_rate"], "seed": m.settings["seed"], "steps": m.steps,
        "wall_time_s": m.finished_at if m.finished_at is not None else wall,
        "stopped_early": len(h) < m.settings["max_epochs"],
        "archived_previous": str(m.archived) if m.archived else None, "history": h,
        "stacked_with": n}


# -- in a sweep ---------------------------------------------------------------------------------------


def run_in_sweep(settings: dict, data, project, accelerator: str) -> dict:
    """A sweep's stacked training (:mod:`labkit.schedule` planned it): the lead run's result, as
    :func:`labkit.sweep._run_one` returns it, with every other member's under :data:`STACKED`.
    A model that cannot be stacked after all trains each run alone, with the same results."""
    from . import sweep  # (sweep imports this module)
    lead = {k: v for k, v in settings.items() if k != STACKED}
    members = [(None, lead, project), *settings[STACKED]]
    model = lead["model"]
    try:
        outs = train_stacked(model, data.info.name, [{k: s[k] for k in VARY} for _, s, _ in members], data=data,
                             batch_size=lead["batch_size"], projects=[Path(p) for _, _, p in members],
                             accelerator=accelerator)
    except NotStackable:
        outs = None
    results = []
    for n, (j, s, p) in enumerate(members):
        if outs is None:
            results.append(sweep._run_one(s, data, p, accelerator))
            continue
        r = outs[n]
        if isinstance(r, TrainingDiverged):  # recorded, as for a run trained alone
            results.append(sweep._diverged_result(r))
            continue
        out = {k: r[k] for k in ("best_val_acc", "final_val_acc", "final_train_acc", "epochs", "steps",
                                 "wall_time_s", "stopped_early", "best_ckpt", "last_ckpt")}
        out["test_acc"] = sweep._test_acc(model, r["best_ckpt"], data) if r["best_ckpt"] else float("nan")
        out["history"] = r["history"].to_dict(orient="records")
        out["diverged"] = None
        results.append(out)
    if outs is not None:
        # Provenance only (no table column reads it): these runs' time was spent in one training,
        # so summing wall_time_s over them counts it again (labkit.prefix.compute_seconds does not).
        for r in results:
            r["stacked_in"] = Path(project).name
    return {**results[0], STACKED: [(j, r) for (j, _, _), r in zip(members[1:], results[1:])]}


def split(i: int, result: dict):
    """``(index, result)`` for a finished training and every run stacked with it."""
    result = dict(result)
    stacked = result.pop(STACKED, None) or []
    yield i, result
    yield from ((j, r) for j, r in stacked)


__all__ = ["train_stacked", "stackable", "run_in_sweep", "split", "NotStackable", "STACKED", "VARY"]
