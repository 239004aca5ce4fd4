"""Checkpoints in the layout MASE's trainer writes, for the MASE-parity tests.

MASE's ``ch train`` wraps the network in a LightningModule that holds it as ``self.model``
(plus a loss and torchmetrics objects, which keep no persistent state) and saves
``best.ckpt`` with Lightning's ModelCheckpoint; it calls no ``save_hyperparameters``, so the
file carries no model name. :func:`write_mase_lightning_ckpt` has Lightning itself write such
a file (one optimiser step on a few random rows); :func:`write_mase_pt` writes the plain state
dict of MASE's ``pt`` load type.
"""

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.callbacks import ModelCheckpoint
from torchmetrics import Accuracy, MeanMetric


class MaseShapedWrapper(pl.LightningModule):
    """The attributes of MASE's classification wrapper that end up in its checkpoints."""

    def __init__(self, model: nn.Module, num_classes: int = 5, learning_rate: float = 1e-3):
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.loss_fn = nn.CrossEntropyLoss()
        self.acc_train = Accuracy("multiclass", num_classes=num_classes)
        self.loss_val = MeanMetric()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss_step", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss_epoch", self.loss_fn(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


def _loader(n=64, features=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def write_mase_lightning_ckpt(model: nn.Module, folder) -> Path:
    """Train ``model`` for one step the way MASE's trainer does and return its ``best.ckpt``."""
    folder = Path(folder)
    ckpt_cb = ModelCheckpoint(dirpath=folder, filename="best", monitor="val_loss_epoch", mode="min",
                              save_top_k=1, save_last=True)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", devices=1, logger=False, callbacks=[ckpt_cb],
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(MaseShapedWrapper(model), _loader(), _loader(seed=1))
    path = folder / "best.ckpt"
    assert path.is_file()
    return path


def write_mase_pt(model: nn.Module, path, wrapped: bool = False) -> Path:
    """MASE's ``pt`` checkpoint: ``torch.save(model.state_dict())`` (``wrapped``: inside a
    ``{"state_dict": ...}`` dict, which MASE's loader also accepts)."""
    state = model.state_dict()
    torch.save({"state_dict": state} if wrapped else state, path)
    return Path(path)
