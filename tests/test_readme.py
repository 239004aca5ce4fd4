"""The README's Python examples run as written, so the documented API keeps working (issue 9).

Its ```python blocks run in order in one namespace, as a reader pasting them into one session
would (a later block uses the ``data`` of the first); shell blocks are skipped. Two things are
adjusted, nothing else: ``load_dataset`` gets a small ``size`` (the example loads the full
dataset), and the placeholder cluster address becomes a LocalCluster on 127.0.0.1.
"""

import re
from pathlib import Path

import pytest

import labkit
from labkit.models import MODELS

README = Path(__file__).resolve().parent.parent / "README.md"
PLACEHOLDER_CLUSTER = "tcp://host:8786"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_the_examples_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) == 3
    assert "train(" in blocks[0] and "register_model" in blocks[1] and PLACEHOLDER_CLUSTER in blocks[2]


def test_the_readme_python_examples_run(monkeypatch):
    from distributed import LocalCluster
    real_load = labkit.load_dataset
    monkeypatch.setattr(labkit, "load_dataset",
                        lambda name, **kw: real_load(name, **{"size": 3000, "progress": False, **kw}))
    models_before = dict(MODELS._entries)
    ns = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=50) as lc:
        try:
            for i, block in enumerate(python_blocks()):
                code = compile(block.replace(PLACEHOLDER_CLUSTER, lc.scheduler_address), f"README block {i}", "exec")
                exec(code, ns)
            assert "jsc-wide" in MODELS  # the extending example registered its model
        finally:
            MODELS._entries.clear()
            MODELS._entries.update(models_before)
    assert len(ns["data"].y_train) < 3000
    assert Path(ns["result"]["best_ckpt"]).is_file() and len(ns["result"]["history"]) == 10
    assert all("common" in n.meta["mase"].parameters for n in ns["mg"].fx_graph.nodes)
    assert sorted(ns["res"].table["batch_size"]) == [64, 128, 256]
