"""What every JSC dataset shares: the schema, the info object and the split container."""

from __future__ import annotations

from dataclasses import dataclass, field

import hashlib

import torch

from ..cache import settings_hash
from ..registry import Registry

# The 16 high-level jet-substructure features (hls4ml / LogicNets / MASE order) ...
FEATURE_NAMES = (
    "j_zlogz",
    "j_c1_b0_mmdt", "j_c1_b1_mmdt", "j_c1_b2_mmdt",
    "j_c2_b1_mmdt", "j_c2_b2_mmdt",
    "j_d2_b1_mmdt", "j_d2_b2_mmdt", "j_d2_a1_b1_mmdt", "j_d2_a1_b2_mmdt",
    "j_m2_b1_mmdt", "j_m2_b2_mmdt",
    "j_n2_b1_mmdt", "j_n2_b2_mmdt",
    "j_mass_mmdt",
    "j_multiplicity",
)
# ... and the 5 one-hot label columns: gluon, light quark, W, Z and top jets.
CLASS_NAMES = ("j_g", "j_q", "j_w", "j_z", "j_t")

DATASETS = Registry("dataset")


def register_dataset(name: str):
    """Decorator: register ``f(**kwargs) -> JSCData`` as a dataset loader."""
    return DATASETS.register(name)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data. Attribute *and* item access (MASE uses both)."""

    name: str
    num_features: int = len(FEATURE_NAMES)
    num_classes: int = len(CLASS_NAMES)
    feature_names: tuple = FEATURE_NAMES
    class_names: tuple = CLASS_NAMES
    synthetic: bool = False
    source: str = ""

    def __getitem__(self, key):
        return getattr(self, key)

    @property
    def label(self) -> str:
        """How figures and tables name the data; synthetic data is always marked as such."""
        return f"{self.name} (SYNTHETIC stand-in data)" if self.synthetic else f"{self.name} (real JSC data)"


@dataclass
class JSCData:
    """Preprocessed, in-memory splits: float32 features (standardised) and int64 class indices."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    manifest: dict = field(default_factory=dict)

    SPLITS = ("train", "val", "test")

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "validation":
            name = "val"
        if name not in self.SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(self.SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def sizes(self) -> dict:
        return {s: len(self.split(s)[1]) for s in self.SPLITS}

    def identity(self) -> dict:
        """What pins this data down, for caches keyed by it (sweep results, quantisation
        comparisons, checkpoint reuse): name, per-split shapes and dtypes, a hash of every
        tensor's bytes and, when the data came from a processed cache, the recipe that made it.

        The recipe alone is not enough: ``dataclasses.replace(data, x_train=...)`` keeps the
        manifest but not the data. Hashing all of it is cheap (~0.05 s for the full 830k-row
        table, see ``benchmarks/bench_data.py``) and is done once per train/sweep/compare call.
        """
        tensors = {f"{v}_{s}": getattr(self, f"{v}_{s}") for s in self.SPLITS for v in ("x", "y")}
        ident = {"name": self.info.name, "synthetic": self.info.synthetic, "sizes": self.sizes(),
                 "tensors": {k: [list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in tensors.items()},
                 "content": tensor_digest(tensors.values())}
        m = self.manifest or {}
        if m.get("settings"):
            ident.update(settings=m["settings"], checksum=m.get("checksum"), prep_version=m.get("prep_version"))
        return ident

    def fingerprint(self) -> str:
        """A short hash of :meth:`identity`."""
        return settings_hash(self.identity())

    def to(self, device) -> "JSCData":
        """Move every split to ``device`` (once, before training on a GPU)."""
        moved = {k: getattr(self, k).to(device) for k in
                 ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return JSCData(self.info, manifest=self.manifest, **moved)


def tensor_digest(tensors) -> str:
    """A short sha256 of the shapes, dtypes and bytes of some tensors (on any device)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())   # the raw bytes, without a copy
    return h.hexdigest()[:16]
