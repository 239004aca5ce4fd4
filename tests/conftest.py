"""Shared test setup: one CPU thread per worker, outputs and figures in a temp folder."""

import os
import tempfile

import pytest
import torch

torch.set_num_threads(1)
# Tests (and the notebooks they execute, which inherit the environment) never write into the
# checkout's outputs/ or figures/, and each pytest-xdist worker gets its own folders (workers
# inherit the controller's environment, so this must not be a setdefault). The processed-data
# cache in data/ is shared on purpose: its writes are atomic.
_TMP = tempfile.mkdtemp(prefix=f"labkit-tests-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
os.environ["LABKIT_OUTPUT_DIR"] = os.path.join(_TMP, "outputs")
os.environ["LABKIT_FIGURES_DIR"] = os.path.join(_TMP, "figures")
# Tests run on this machine even where a Dask cluster is named for the notebooks
# (tests/test_dask.py starts its own LocalCluster on 127.0.0.1).
os.environ.pop("LABKIT_CLUSTER", None)


@pytest.fixture(scope="session")
def small_data():
    """20k rows of jsc-synthetic: enough for training tests to learn something, fast to load."""
    from labkit.data import load_dataset
    return load_dataset("jsc-synthetic", size=20_000, progress=False)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests run only with LABKIT_SLOW=1 (as pyproject.toml says)."""
    if os.environ.get("LABKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with LABKIT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
