"""The model zoo: small MLPs for Jet Substructure Classification (JSC).

Every model is built from a dataset ``info`` object that exposes ``num_features`` and
``num_classes`` as attributes (a :class:`labkit.data.DatasetInfo`, or anything alike).
Add your own with one decorator, e.g. in a notebook cell::

    @register_model("jsc-custom")
    class JSC_Custom(nn.Module):
        def __init__(self, info): ...

    model = get_model("jsc-custom", info)
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import torch.nn as nn

from .checks import positive_int
from .registry import Registry

MODELS = Registry("model")

# The JSC task: 16 high-level jet features, 5 jet classes (g, q, w, z, t).
JSC_INFO = SimpleNamespace(num_features=16, num_classes=5)


def register_model(name: str, *, overwrite: bool = True):
    """Decorator: register a class or function ``f(info) -> nn.Module`` under ``name``."""
    return MODELS.register(name, overwrite=overwrite)


def _as_info(info):
    """``info`` as an object with positive-integer ``num_features`` and ``num_classes``."""
    if info is None:
        return JSC_INFO
    if isinstance(info, dict):  # MASE passes plain dicts around
        info = SimpleNamespace(**info)
    if not (hasattr(info, "num_features") and hasattr(info, "num_classes")):
        raise TypeError(f"info must be a DatasetInfo (data.info), a dict or an object with num_features "
                        f"and num_classes, got {info!r} ({type(info).__name__})")
    for key in ("num_features", "num_classes"):
        positive_int(key, getattr(info, key))
    return info


def get_model(name: str, info=None) -> nn.Module:
    """Build the registered model ``name`` for a dataset ``info`` (default: the JSC task).

    The model remembers its registry name as ``model.labkit_name``, so training the module
    itself (``train(get_model("jsc-tiny"), data)``) records ``"jsc-tiny"`` in its checkpoint."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a registered model name ({', '.join(MODELS.names())}), got {name!r}")
    build = MODELS.get(name)
    model = build(_as_info(info))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {name!r} built a {type(model).__name__}, expected an nn.Module")
    model.labkit_name = name
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_zoo(info=None) -> pd.DataFrame:
    """One row per registered model: its parameter count and layer types."""
    rows = []
    for name in MODELS.names():
        model = get_model(name, info)
        layers = [type(m).__name__ for m in model.modules() if not list(m.children())]
        rows.append({"model": name, "parameters": count_parameters(model),
                     "layers": len(layers), "layer types": ", ".join(sorted(set(layers)))})
    return pd.DataFrame(rows).set_index("model")


# --- the registry models (after MASE's machop/chop/models/physical/jet_substructure) ------
# ``nn.ReLU(16)`` in MASE sets ``inplace`` to a truthy value; we write ``inplace=True``.


@register_model("jsc-tiny")
class JSC_Tiny(nn.Module):
    """BatchNorm1d(16) -> ReLU -> Linear(16, 5) -> ReLU: 32 + 85 = 117 parameters."""

    def __init__(self, info):
        super().__init__()
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(info.num_features),
            nn.ReLU(inplace=True),
            nn.Linear(info.num_features, info.num_classes),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.seq_blocks(x)


@register_model("jsc-toy")
class JSC_Toy(nn.Module):
    """Three LogicNets-style layers 16 -> 8 -> 8 -> 5, each Linear -> BatchNorm1d -> ReLU."""

    def __init__(self, info):
        super().__init__()
        f, c = info.num_features, info.num_classes
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(f), nn.ReLU(inplace=True),
            nn.Linear(f, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True),
            nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True),
            nn.Linear(8, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.seq_blocks(x)


@register_model("jsc-custom")
class JSC_Custom(nn.Module):
    """The lab report's network: 16 -> 32 -> 16 -> 5 with BatchNorm, ReLU and Dropout(0.2)."""

    def __init__(self, info):
        super().__init__()
        f, c = info.num_features, info.num_classes
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(f), nn.ReLU(inplace=True),
            nn.Linear(f, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(16, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.seq_blocks(x)


@register_model("jsc-s")
class JSC_S(nn.Module):
    """The hls4ml-sized model, hidden layers 64-32-32-32 (MASE's ``jsc-s``).

    The layers sit in a flat ``module_list`` as in MASE, so MASE's checkpoints
    (``module_list.2.weight`` ...) and by-name configs (``module_list_2``) fit."""

    def __init__(self, info, hidden=(64, 32, 32, 32)):
        super().__init__()
        widths = [info.num_features, *hidden, info.num_classes]
        layers = [nn.BatchNorm1d(widths[0]), nn.ReLU()]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i == 0 or i == len(widths) - 2:  # BatchNorm after the first and the last Linear only
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(nn.ReLU())
        self.module_list = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.module_list:
            x = layer(x)
        return x


@register_model("jsc-trt")
class JSC_TRT(nn.Module):
    """MASE's ``jsc-trt``: 16 -> 32 -> 48 -> 16 -> 5, BatchNorm and ReLU after every Linear,
    Dropout(0.5) before the third Linear; 3,231 parameters."""

    def __init__(self, info):
        super().__init__()
        f, c = info.num_features, info.num_classes
        self.seq_blocks = nn.Sequential(
            nn.BatchNorm1d(f), nn.ReLU(),
            nn.Linear(f, 32), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Linear(32, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(48, 16), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Linear(16, c), nn.BatchNorm1d(c), nn.ReLU(),
        )

    def forward(self, x):
        return self.seq_blocks(x)
