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


@pytest.fixture
def count_trainings(monkeypatch):
    """``count_trainings("max_epochs")`` patches the sweep's ``train`` (runs trained one at a time,
    not stacked or derived) and returns the list of that setting's value for each call."""
    import labkit.sweep as sw

    def start(setting: str) -> list:
        calls, real = [], sw.train

        def counting(*args, **kwargs):
            calls.append(kwargs.get(setting))
            return real(*args, **kwargs)

        monkeypatch.setattr(sw, "train", counting)
        return calls

    return start


@pytest.fixture
def counters(monkeypatch):
    """Every EpochCounter a sweep makes (bars disabled), to read its total and done."""
    import labkit.sweep as sw
    from labkit import progress
    made = []

    class Recording(progress.EpochCounter):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "disable": True})
            made.append(self)

    monkeypatch.setattr(sw, "EpochCounter", Recording)
    return made


def sweep_entries(directory, setting: str) -> dict:
    """The cache entries of a sweep folder by their value of ``setting``."""
    import json
    from pathlib import Path
    entries = (json.loads(p.read_text()) for p in Path(directory).glob("*.json"))
    return {e["settings"][setting]: e for e in entries}


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests run only with LABKIT_SLOW=1 (as pyproject.toml says)."""
    if os.environ.get("LABKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with LABKIT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
