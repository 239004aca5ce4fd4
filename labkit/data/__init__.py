"""JSC data: the real dataset (download, validate, cache), the synthetic stand-in, and loaders.

    data = load_dataset("jsc-synthetic", size=100_000)   # or "jsc" for the real table
    data.x_train, data.y_train                           # standardised float32 / int64
    data.info.label                                      # says SYNTHETIC for the stand-in
    raw_frame("jsc-synthetic")                           # physical units, for histograms
"""

from pathlib import Path

import pandas as pd

from .base import CLASS_NAMES, DATASETS, FEATURE_NAMES, DatasetInfo, JSCData, register_dataset
from .formats import DataFormatError
from .jsc import DataUnavailableError, choose_dataset, ensure_raw
from .loaders import BatchIterator, JSCDataModule, epoch_permutation
from .prepare import read_processed, unscaled_frame
from .synthetic import generate as generate_synthetic


def load_dataset(name: str, **kwargs) -> JSCData:
    """Load (from cache when possible) the registered dataset ``name``.

    Known names: ``"jsc"`` (real; downloads once) and ``"jsc-synthetic"`` (the stand-in).
    """
    return DATASETS.get(name)(**kwargs)


def raw_frame(name: str = "jsc-synthetic", split: str | None = None, **load_kwargs) -> pd.DataFrame:
    """The dataset before scaling: 16 feature columns in physical units, ``label`` (class
    name, e.g. ``"j_w"``) and ``split`` (train/val/test). ``split`` keeps only one split."""
    data = load_dataset(name, **load_kwargs)
    payload = read_processed(Path(data.manifest["cache_path"]))
    if payload is None:
        raise RuntimeError(f"the processed cache of {name!r} vanished while reading it; try again")
    frame = unscaled_frame(payload)
    if split is not None:
        if split not in JSCData.SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(JSCData.SPLITS)}")
        frame = frame[frame["split"] == split].reset_index(drop=True)
    frame.attrs["label"] = data.info.label
    return frame
