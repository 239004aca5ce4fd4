"""labkit.runtime: eval_mode gives every submodule its own mode back, even after an error; the device is found one way."""

import pytest
import torch
import torch.nn as nn

from labkit.runtime import eval_mode


def test_eval_mode_restores_each_submodules_own_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a BatchNorm frozen inside a training model
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model) as m:
            assert m is model
            assert not any(sub.training for sub in model.modules())
            raise RuntimeError("inside")
    assert [sub.training for sub in model.modules()] == [True, True, False, True]


def test_available_devices_and_device_kind_follow_what_torch_finds(monkeypatch):
    from labkit.runtime import available_devices, device_kind
    for cuda, mps, found, auto in [(False, False, ("cpu",), "cpu"), (True, False, ("cpu", "cuda"), "gpu"),
                                   (False, True, ("cpu", "mps"), "mps"), (True, True, ("cpu", "cuda", "mps"), "mps")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        assert available_devices() == found
        assert device_kind("auto") == auto  # as Lightning's "auto": MPS, else CUDA, else the CPU
        assert [device_kind(a) for a in ("cpu", "gpu", "cuda", "mps")] == ["cpu", "gpu", "gpu", "mps"]
    with pytest.raises(ValueError, match="accelerator must be one of auto, cpu, gpu, cuda, mps, got 'tpu'"):
        device_kind("tpu")


def test_the_device_is_found_in_one_place(monkeypatch):
    # runtime.available_devices is the only code that asks torch what hardware there is
    from pathlib import Path

    import labkit
    from labkit.training import usable_accelerators
    root = Path(labkit.__file__).parent
    askers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                    if "cuda.is_available" in p.read_text() or "mps.is_available" in p.read_text())
    assert askers == ["runtime.py"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert usable_accelerators() == ("auto", "cpu", "gpu", "cuda")


def test_model_device_is_where_the_parameters_are():
    from labkit.runtime import model_device
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU
