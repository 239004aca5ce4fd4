"""JSC data: the real dataset (download, validate, cache), the synthetic stand-in, and loaders.

    data = load_dataset("jsc-synthetic", size=100_000)   # or "jsc" for the real table
    data.x_train, data.y_train                           # standardised float32 / int64
    data.info.label                                      # says SYNTHETIC for the stand-in
    raw_frame("jsc-synthetic")                           # physical units, for histograms
"""

import inspect

import pandas as pd

from .base import CLASS_NAMES, DATASETS, FEATURE_NAMES, DatasetInfo, JSCData, register_dataset
from .formats import DataFormatError
from .jsc import DataUnavailableError, choose_dataset, ensure_raw
from .loaders import BatchIterator, JSCDataModule, epoch_permutation
from .prepare import unscaled_frame
from .synthetic import generate as generate_synthetic


def load_dataset(name: str, **kwargs) -> JSCData:
    """Load (from cache when possible) the registered dataset ``name``.

    Known names: ``"jsc"`` (real; downloads once) and ``"jsc-synthetic"`` (the stand-in).
    """
    return DATASETS.get(name)(**kwargs)


def raw_frame(name: str = "jsc-synthetic", split: str | None = None, **load_kwargs) -> pd.DataFrame:
    """The dataset before scaling: 16 feature columns in physical units, ``label`` (class
    name, e.g. ``"j_w"``) and ``split`` (train/val/test). ``split`` keeps only one split."""
    if split is not None and split not in JSCData.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(JSCData.SPLITS)}")
    loader = DATASETS.get(name)
    if "with_payload" not in inspect.signature(loader).parameters:
        raise ValueError(f"dataset {name!r} has no processed cache (its loader takes no with_payload "
                         "argument for labkit.data.prepare.load_or_build), so its physical units are unknown")
    data, payload = loader(**load_kwargs, with_payload=True)  # the unscaled table, from the same single load
    frame = unscaled_frame(payload)
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    frame.attrs["label"] = data.info.label
    return frame
