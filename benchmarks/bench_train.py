"""Training throughput: labkit's chunked Lightning loop vs the standard Lightning recipe.

Both arms train jsc-tiny with Adam at the same batch size, from the same initial weights,
over the same shuffled batches (the standard arm's DataLoader uses a sampler that yields
labkit's per-epoch permutation), so they take identical optimisation steps. The standard
arm is what a tutorial would write: ``DataLoader(TensorDataset)`` (per-sample
``__getitem__`` + collate), automatic optimisation, and a torchmetrics accuracy logged on
every step. labkit runs twice: with its hand-written step (``labkit/fused.py``, the default for
the zoo's layer chains) and with autograd (``LitClassifier.use_fused = False``). We print samples/s
for each arm, the ratios, and how far the final weights differ (the two labkit arms: not at all).

    python benchmarks/bench_train.py                     # full-size jsc-synthetic, 1 epoch
    python benchmarks/bench_train.py --rows 200000 --epochs 2
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from labkit.data import epoch_permutation, load_dataset
from labkit.models import get_model
from labkit.lit import LitClassifier
from labkit.runtime import quiet_lightning
from labkit.training import default_chunk
from labkit.data import JSCDataModule


class SameOrderSampler(Sampler):
    """Yields labkit's epoch permutation, so the standard arm sees exactly the same batches."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        self.epoch += 1
        return iter(perm.tolist())


class StandardLit(pl.LightningModule):
    def __init__(self, model, lr):
        super().__init__()
        self.model, self.lr = model, lr
        self.train_acc = MulticlassAccuracy(num_classes=5, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def trainer(epochs, logdir):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                      num_sanity_val_steps=0, logger=pl.loggers.CSVLogger(logdir), log_every_n_steps=50)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="jsc-synthetic rows (default: full size)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    kwargs = {"size": args.rows} if args.rows else {}
    data = load_dataset("jsc-synthetic", progress=False, **kwargs)
    x, y = data.split("train")
    n, b = len(y), args.batch_size
    print(f"data: {data.info.label}, {n} training rows; batch {b}; {args.epochs} epoch(s); "
          f"{args.threads} thread(s); {-(-n // b) * args.epochs} optimiser steps per arm")

    torch.manual_seed(args.seed)
    init = get_model("jsc-tiny", data.info)
    logdir = tempfile.mkdtemp()

    # -- standard recipe
    std_model = copy.deepcopy(init)
    loader = DataLoader(TensorDataset(x, y), batch_size=b, sampler=SameOrderSampler(n, args.seed))
    t0 = time.perf_counter()
    trainer(args.epochs, logdir).fit(StandardLit(std_model, 1e-3), train_dataloaders=loader)
    t_std = time.perf_counter() - t0

    # -- labkit, with autograd and with the hand-written step
    times, models = {}, {}
    for arm, fused in (("autograd", False), ("fused", True)):
        models[arm] = copy.deepcopy(init)
        lit = LitClassifier(models[arm], learning_rate=1e-3)
        lit.use_fused = fused
        dm = JSCDataModule(data=data, batch_size=b, seed=args.seed, chunk=default_chunk(b))
        t0 = time.perf_counter()
        trainer(args.epochs, logdir).fit(lit, datamodule=dm)  # as labkit.train fits
        times[arm] = time.perf_counter() - t0

    samples = n * args.epochs

    def diff(a, c):
        return max((u - v).abs().max().item() for u, v in zip(a.state_dict().values(), c.state_dict().values()))

    print(f"standard recipe         : {samples / t_std:12,.0f} samples/s  ({t_std:.2f} s)")
    print(f"labkit, autograd step   : {samples / times['autograd']:12,.0f} samples/s  ({times['autograd']:.2f} s)")
    print(f"labkit, hand-written    : {samples / times['fused']:12,.0f} samples/s  ({times['fused']:.2f} s)")
    print(f"ratio vs standard       : {t_std / times['fused']:.1f}x  (autograd step: {t_std / times['autograd']:.1f}x;"
          f" target >= 5x)")
    print(f"hand-written vs autograd: {times['autograd'] / times['fused']:.2f}x")
    print(f"max |weight difference| after training: standard vs labkit {diff(std_model, models['fused']):.2e} "
          f"(same steps, same batches); autograd vs hand-written {diff(models['autograd'], models['fused']):.1e}")

if __name__ == "__main__":
    main()
