"""Checkpoints: where a project's are, reading them safely, loading them into a model, and
moving an earlier run's aside.

Every checkpoint is read with ``torch.load(weights_only=True)``: a file is data, never code
(a pickled object in it is refused by name rather than run).

    path = project_dir("lab-1_jsc-tiny") / "training_ckpts" / "best.ckpt"
    net = load_model("jsc-tiny", path)           # checks the checkpoint was trained for jsc-tiny
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from .config import LOAD_TYPES
from .models import get_model
from .paths import check_name, outputs_dir


def project_dir(project) -> Path:
    """``outputs/<project>/software`` for a project name; ``<project>/software`` for a Path."""
    if isinstance(project, Path):
        return project / "software"
    return outputs_dir() / check_name(project, "project") / "software"


def archive_previous(ckpt_dir: Path):
    """Never overwrite an earlier run's checkpoints: move them aside, timestamped."""
    if ckpt_dir.exists() and any(ckpt_dir.glob("*.ckpt")):
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        dest = ckpt_dir.parent / "archive" / stamp
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(ckpt_dir), str(dest))
        return dest
    return None


def restore_previous(ckpt_dir: Path, archived: Path | None):
    """Undo :func:`archive_previous` for a run that stopped before writing any checkpoint: the
    earlier run's files go back where they were."""
    if archived is not None and not any(ckpt_dir.glob("*.ckpt")):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.move(str(archived), str(ckpt_dir))


def model_and_name(model, info):
    """``(module, name)``: a registry name built for ``info``, or a module with its own name."""
    if isinstance(model, str):
        return get_model(model, info), model
    if isinstance(model, nn.Module):
        return model, getattr(model, "labkit_name", type(model).__name__)
    raise TypeError(f"model must be a registered model name or an nn.Module, got {type(model).__name__}")


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
    net, name = model_and_name(model, info)
    load_into(net, name, path, load_type, by_name=isinstance(model, str))
    return net


def load_into(net: nn.Module, name: str, path, load_type: str, by_name: bool):
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
