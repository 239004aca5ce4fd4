"""The GPU path (skipped without CUDA; run on a GPU machine with `pytest tests/test_gpu.py`)."""

import pytest
import torch

from labkit.data import JSCData
from labkit.training import evaluate, load_model, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_training_on_gpu_moves_the_data_once(small_data, monkeypatch):
    moves = []
    original = JSCData.to

    def counting_to(self, device):
        moves.append(str(device))
        return original(self, device)

    monkeypatch.setattr(JSCData, "to", counting_to)
    r = train("jsc-tiny", small_data, max_epochs=2, batch_size=256, learning_rate=1e-3,
              accelerator="gpu", project="t-gpu", progress=False, verbose=False)
    assert r["device"].startswith("cuda")
    assert len(moves) == 1 and moves[0].startswith("cuda")  # once, not per batch or per epoch
    assert r["best_val_acc"] > 0.35
    # the checkpoint loads on the CPU and gives the accuracy it was selected for
    acc = evaluate(load_model("jsc-tiny", r["best_ckpt"]), small_data, split="val")["acc"]
    assert acc == pytest.approx(r["best_val_acc"], abs=2e-3)


def test_gpu_and_cpu_runs_agree_closely(small_data):
    cpu = train("jsc-tiny", small_data, max_epochs=1, batch_size=512, learning_rate=1e-3, seed=1,
                accelerator="cpu", project="t-agree-cpu", progress=False, verbose=False)
    gpu = train("jsc-tiny", small_data, max_epochs=1, batch_size=512, learning_rate=1e-3, seed=1,
                accelerator="gpu", project="t-agree-gpu", progress=False, verbose=False)
    assert abs(cpu["best_val_acc"] - gpu["best_val_acc"]) < 0.02
