"""Fast batches from in-memory tensors, and the Lightning DataModule around them.

A ``DataLoader(TensorDataset)`` calls ``__getitem__`` once per sample and then collates:
for 16 floats per sample that costs far more than the model. Here each epoch draws one
permutation, gathers the shuffled tensors once, and hands out contiguous slices.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from .base import JSCData
from ..checks import positive_int


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle order of ``epoch``: a pure function of (seed, epoch), so runs are reproducible
    and a resumed run sees the same batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class BatchIterator:
    """Iterate ``(x, y)`` mini-batches; reshuffles (deterministically) on every pass.

    ``chunk`` > 1 groups consecutive mini-batches into lists, so one Lightning step can run
    several optimiser steps (see :mod:`labkit.training`).
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, chunk: int = 1):
        batch_size = positive_int("batch_size", batch_size)
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.chunk = drop_last, max(1, int(chunk))
        self.epoch = 0

    def num_batches(self) -> int:
        n, b = len(self.y), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        return -(-self.num_batches() // self.chunk)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def to(self, device) -> "BatchIterator":
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def batches(self):
        x, y = self.x, self.y
        if self.shuffle:
            perm = epoch_permutation(len(y), self.seed, self.epoch).to(x.device)
            x, y = x[perm], y[perm]
            self.epoch += 1
        # split() makes every batch's view in one call (slicing twice per batch in Python costs
        # ~10 us a batch: a twentieth of a jsc-tiny training step)
        xs, ys = x.split(self.batch_size), y.split(self.batch_size)
        for i in range(self.num_batches()):
            yield xs[i], ys[i]

    def __iter__(self):
        if self.chunk == 1:
            yield from self.batches()
            return
        group = []
        for batch in self.batches():
            group.append(batch)
            if len(group) == self.chunk:
                yield group
                group = []
        if group:
            yield group


class JSCDataModule(pl.LightningDataModule):
    """The JSC splits as a LightningDataModule, backed by :class:`BatchIterator`.

    ``data`` may be passed in already loaded (a :class:`JSCData`); otherwise ``setup()``
    loads ``dataset`` through the dataset registry (cached on disk after the first time).
    """

    def __init__(self, dataset: str = "jsc-synthetic", batch_size: int = 128, *,
                 eval_batch_size: int | None = None, seed: int = 0, chunk: int = 1,
                 data: JSCData | None = None, **load_kwargs):
        super().__init__()
        self.dataset, self.seed, self.chunk = dataset, seed, chunk
        self.batch_size = positive_int("batch_size", batch_size)
        self.eval_batch_size = (max(self.batch_size, 8192) if eval_batch_size is None
                                else positive_int("eval_batch_size", eval_batch_size))
        self.load_kwargs = load_kwargs
        self.data = data

    @property
    def info(self):
        return self.load().info

    def load(self) -> JSCData:
        if self.data is None:
            from . import load_dataset
            self.data = load_dataset(self.dataset, **self.load_kwargs)
        return self.data

    def setup(self, stage: str | None = None):
        data = self.load()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None and data.x_train.device != device:
            self.data = data.to(device)  # once: every batch afterwards is a slice on the device

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # setup() put the data on the device, so every batch is already there. A training chunk is
        # a list of hundreds of (x, y) views: Lightning's generic walk over it to move them costs
        # ~25 us per mini-batch on the CPU (an eighth of a jsc-tiny step), so skip it.
        first = batch[0] if isinstance(batch, list) and batch else batch
        if isinstance(first, (tuple, list)) and all(isinstance(t, torch.Tensor) and t.device == device
                                                    for t in first):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self):
        x, y = self.load().split("train")
        return BatchIterator(x, y, self.batch_size, shuffle=True, seed=self.seed, chunk=self.chunk)

    def val_dataloader(self):
        return BatchIterator(*self.load().split("val"), self.eval_batch_size)

    def test_dataloader(self):
        return BatchIterator(*self.load().split("test"), self.eval_batch_size)

    def predict_dataloader(self):
        return self.test_dataloader()
