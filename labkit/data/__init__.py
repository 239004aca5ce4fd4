"""JSC data: the real dataset (download, validate, cache), the synthetic stand-in, and loaders."""

from .base import CLASS_NAMES, DATASETS, FEATURE_NAMES, DatasetInfo, JSCData, register_dataset
from .loaders import BatchIterator, JSCDataModule, epoch_permutation
from . import synthetic  # noqa: F401  (registers "jsc-synthetic")


def load_dataset(name: str, **kwargs) -> JSCData:
    """Load (from cache when possible) the registered dataset ``name``."""
    return DATASETS.get(name)(**kwargs)
