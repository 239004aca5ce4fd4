"""Sweeps: real trainings, stored per run, reused, resumed and invalidated one run at a time."""

import json
import os
import signal
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch.nn as nn

import labkit.sweep as sw
from labkit.data import load_dataset
from labkit.models import MODELS, register_model
from labkit.sweep import grid_sweep, list_sweeps, load_sweep, sweep
from labkit.training import interruptible
from labkit.training import evaluate, load_model

FAST = dict(max_epochs=2, learning_rate=1e-3, workers=1, progress=False)
# for sweeps over the learning rate, run by run: these tests count train() calls (a stacked sweep,
# labkit.stack, trains such runs as one model: tests/test_stack.py)
LR_FAST = {**{k: v for k, v in FAST.items() if k != "learning_rate"}, "stack_runs": False}


@pytest.fixture(scope="module")
def data():
    return load_dataset("jsc-synthetic", size=5000, progress=False)


@pytest.fixture
def count_trainings(monkeypatch):
    """Wrap the real trainer: counts calls; ``state["fail_at"] = n`` raises Ctrl-C on call n."""
    state = {"calls": 0, "fail_at": None}
    real = sw.train

    def counting(*args, **kwargs):
        state["calls"] += 1
        if state["fail_at"] == state["calls"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sw, "train", counting)
    return state


def _snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(directory).glob("*.json"))}


def test_sweep_returns_table_histories_and_tested_checkpoints(data, tmp_path):
    res = sweep("jsc-tiny", "jsc-synthetic", "batch_size", [128, 512], data=data, cache_dir=tmp_path, **FAST)
    t = res.table
    assert list(t["batch_size"]) == [128, 512]
    assert {"final_val_acc", "best_val_acc", "test_acc", "epochs", "wall_time_s", "best_ckpt", "cached"} <= set(t.columns)
    assert list(t["epochs"]) == [2, 2] and not t["cached"].any()
    assert set(res.histories) == {"batch_size=128", "batch_size=512"}
    for row in t.itertuples():
        hist = res.histories[row.label]
        assert list(hist["epoch"]) == [1, 2]
        assert row.best_val_acc == pytest.approx(hist["val_acc"].max())
        assert row.final_val_acc == pytest.approx(hist["val_acc"].iloc[-1])
        ckpt = Path(row.best_ckpt)
        assert ckpt.is_file() and tmp_path in ckpt.parents  # checkpoints live with the sweep
        acc = evaluate(load_model("jsc-tiny", ckpt), data, "test")["acc"]
        assert row.test_acc == pytest.approx(acc)
    assert len(list(tmp_path.glob("*.json"))) == 2  # one stored result per run
    assert "<table" in res._repr_html_() and "SYNTHETIC" in res._repr_html_()
    # batch 128 takes 4x the steps of 512 at the same learning rate: it learns faster here
    assert t["final_val_acc"].iloc[0] > t["final_val_acc"].iloc[1]


def test_rerun_reuses_every_finished_run(data, tmp_path, count_trainings):
    first = sweep("jsc-tiny", data, "learning_rate", [1e-3, 1e-2], cache_dir=tmp_path, **LR_FAST)
    assert count_trainings["calls"] == 2
    again = sweep("jsc-tiny", data, "learning_rate", [1e-3, 1e-2], cache_dir=tmp_path, **LR_FAST)
    assert count_trainings["calls"] == 2  # nothing trained the second time
    assert again.table["cached"].all()
    cols = ["learning_rate", "final_val_acc", "best_val_acc", "test_acc", "epochs", "best_ckpt"]
    pd.testing.assert_frame_equal(first.table[cols], again.table[cols])
    for label, hist in first.histories.items():
        pd.testing.assert_frame_equal(hist, again.histories[label], check_dtype=False)


def test_interrupted_sweep_resumes_with_only_the_missing_runs(data, tmp_path, count_trainings):
    values = [1e-3, 3e-3, 1e-2]
    count_trainings["fail_at"] = 2  # Ctrl-C during the second run
    with pytest.raises(KeyboardInterrupt):
        sweep("jsc-tiny", data, "learning_rate", values, cache_dir=tmp_path, **LR_FAST)
    assert len(list(tmp_path.glob("*.json"))) == 1  # the first run was stored as it finished
    count_trainings.update(calls=0, fail_at=None)
    res = sweep("jsc-tiny", data, "learning_rate", values, cache_dir=tmp_path, **LR_FAST)
    assert count_trainings["calls"] == 2  # only the two missing runs
    assert res.table["cached"].sum() == 1 and len(res.table) == 3


def test_a_changed_setting_invalidates_only_its_own_runs(data, tmp_path, count_trainings):
    sweep("jsc-tiny", data, "learning_rate", [1e-3, 1e-2], cache_dir=tmp_path, **LR_FAST)
    res = sweep("jsc-tiny", data, "learning_rate", [1e-3, 3e-2], cache_dir=tmp_path, **LR_FAST)
    assert count_trainings["calls"] == 3
    assert dict(zip(res.table["learning_rate"], res.table["cached"])) == {1e-3: True, 3e-2: False}
    # a fixed setting touches every run; the other data set too
    sweep("jsc-tiny", data, "learning_rate", [1e-3], cache_dir=tmp_path, **{**LR_FAST, "max_epochs": 1})
    assert count_trainings["calls"] == 4
    other = load_dataset("jsc-synthetic", size=4000, progress=False)
    sweep("jsc-tiny", other, "learning_rate", [1e-3], cache_dir=tmp_path, **LR_FAST)
    assert count_trainings["calls"] == 5
    # ... and a different network registered under the same name
    try:
        @register_model("t-sweep-net")
        class Small(nn.Module):
            def __init__(self, info):
                super().__init__()
                self.net = nn.Sequential(nn.BatchNorm1d(info.num_features), nn.Linear(info.num_features, info.num_classes))

            def forward(self, x):
                return self.net(x)

        sweep("t-sweep-net", data, "learning_rate", [1e-3], cache_dir=tmp_path, **LR_FAST)
        sweep("t-sweep-net", data, "learning_rate", [1e-3], cache_dir=tmp_path, **LR_FAST)
        assert count_trainings["calls"] == 6

        @register_model("t-sweep-net")
        class Wider(Small):
            def __init__(self, info):
                super().__init__(info)
                self.net = nn.Sequential(nn.Linear(info.num_features, 8), nn.ReLU(), nn.Linear(8, info.num_classes))

        sweep("t-sweep-net", data, "learning_rate", [1e-3], cache_dir=tmp_path, **LR_FAST)
        assert count_trainings["calls"] == 7
    finally:
        MODELS._entries.pop("t-sweep-net", None)  # leave the registry as other tests expect it


@pytest.mark.parametrize("param, values, kwargs, error, words", [
    ("batch_size", [128, 0], {}, ValueError, ["batch_size", "0"]),
    ("batch_size", [128, 12.5], {}, ValueError, ["batch_size", "12.5"]),
    ("learning_rate", [1e-3, "fast"], {}, ValueError, ["learning_rate", "fast"]),
    ("max_epochs", [-1], {}, ValueError, ["max_epochs", "-1"]),
    ("colour", [1, 2], {}, ValueError, ["colour", "batch_size"]),
    ("batch_size", [], {}, ValueError, ["no values", "batch_size"]),
    ("batch_size", [64, 64], {}, ValueError, ["repeated", "64"]),
    ("batch_size", 64, {}, TypeError, ["list", "64"]),
    ("model", ["jsc-tiny", "jsc-nope"], {}, ValueError, ["jsc-nope"]),
    ("batch_size", [64], {"momentum": 0.9}, TypeError, ["momentum"]),
    ("batch_size", [64], {"batch_size": 32}, ValueError, ["batch_size", "both"]),
    ("batch_size", [64], {"workers": 0}, ValueError, ["workers", "0"]),
    ("batch_size", [64], {"accelerator": "tpu"}, ValueError, ["accelerator", "tpu"]),
    ("batch_size", [64], {"early_stopping": 0}, ValueError, ["early_stopping", "0"]),
])
def test_bad_input_fails_before_any_run_and_keeps_the_cache(data, tmp_path, count_trainings,
                                                            param, values, kwargs, error, words):
    sweep("jsc-tiny", data, "batch_size", [256], cache_dir=tmp_path, **FAST)
    before = _snapshot(tmp_path)
    count_trainings["calls"] = 0
    opts = {**FAST, **kwargs}
    with pytest.raises(error) as err:
        sweep("jsc-tiny", data, param, values, cache_dir=tmp_path, **opts)
    for word in words:
        assert word in str(err.value)
    assert count_trainings["calls"] == 0
    assert _snapshot(tmp_path) == before


def test_grid_sweep_covers_every_combination(data, tmp_path):
    res = grid_sweep("jsc-tiny", data, {"batch_size": [256, 512], "learning_rate": [1e-3, 1e-2]},
                     cache_dir=tmp_path, max_epochs=1, workers=1, progress=False)
    t = res.table
    assert len(t) == 4 and set(zip(t["batch_size"], t["learning_rate"])) == {
        (256, 1e-3), (256, 1e-2), (512, 1e-3), (512, 1e-2)}
    assert "batch_size=256, learning_rate=0.01" in res.histories
    assert res.best("best_val_acc")["best_val_acc"] == t["best_val_acc"].max()


def test_models_can_be_swept_too(data, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = sweep(None, data, "model", ["jsc-tiny", "jsc-toy"], cache_dir=tmp_path, **FAST)
    assert list(res.table["model"]) == ["jsc-tiny", "jsc-toy"]
    assert all(Path(p).is_file() for p in res.table["best_ckpt"])
    ax = res.plot_summary()  # names, not numbers: one position each
    assert [t.get_text() for t in ax.get_xticklabels()] == ["jsc-tiny", "jsc-toy"]
    assert list(ax.get_lines()[0].get_xdata()) == [0, 1] and ax.get_xscale() == "linear"
    plt.close("all")


def test_two_different_modules_of_one_class_are_two_runs(data, tmp_path):
    a = nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 5))
    b = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))
    res = sweep(None, data, "model", [a, b], cache_dir=tmp_path, **FAST)
    names = list(res.table["model"])
    assert len(set(names)) == 2 and all(n.startswith("Sequential-") for n in names)
    assert set(res.histories) == {f"model={n}" for n in names}
    assert len(list(tmp_path.glob("*.json"))) == 2
    from labkit.models import get_model
    assert sw.module_name(get_model("jsc-tiny")) == "jsc-tiny"  # a zoo module goes by its registry name


def test_a_scheduler_sweep_plots_and_none_is_no_schedule(data, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = sweep("jsc-tiny", data, "scheduler", ["none", "cosine"], cache_dir=tmp_path, **FAST)
    assert res.table["scheduler"].isna().tolist() == [True, False] and res.table["scheduler"].iloc[1] == "cosine"
    assert list(res.histories["scheduler=None"]["lr"]) == pytest.approx([1e-3, 1e-3])
    assert list(res.histories["scheduler=cosine"]["lr"]) == pytest.approx([1e-3, 5e-4])
    ax = res.plot_summary()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["None", "cosine"]
    plt.close("all")
    with pytest.raises(ValueError, match="repeated"):
        sweep("jsc-tiny", data, "scheduler", [None, "none"], cache_dir=tmp_path, **FAST)


USER_MODULE = """
import torch.nn as nn
from labkit.models import register_model


@register_model("t-user-net")
class UserNet(nn.Module):
    def __init__(self, info):
        super().__init__()
        self.fc = nn.Linear(info.num_features, info.num_classes)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A model registered in the user's own importable module (not __main__)."""
    import importlib
    import sys
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "t_user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    try:
        yield importlib.import_module("t_user_models")
    finally:
        MODELS._entries.pop("t-user-net", None)
        sys.modules.pop("t_user_models", None)


def test_workers_build_models_registered_in_the_users_module(data, tmp_path, user_module, count_trainings):
    res = sweep("t-user-net", data, "batch_size", [256, 512], cache_dir=tmp_path, max_epochs=1,
                learning_rate=1e-3, workers=2, progress=False)
    assert count_trainings["calls"] == 0  # both runs trained in the worker processes
    assert not res.table["cached"].any() and res.table["best_val_acc"].notna().all()
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_which_models_workers_can_rebuild(user_module):
    assert sw.worker_builders(["jsc-tiny", "t-user-net"]) == {"jsc-tiny": MODELS.get("jsc-tiny"),
                                                              "t-user-net": user_module.UserNet}
    from labkit.data import DatasetInfo
    assert sw.worker_builders([user_module.UserNet(DatasetInfo("x"))]) == {}  # pickled with its module

    @register_model("t-local-net")
    class Local(nn.Module):  # defined inside a function: a fresh process cannot import it
        def __init__(self, info):
            super().__init__()
            self.fc = nn.Linear(info.num_features, info.num_classes)

    try:
        assert sw.worker_builders(["jsc-tiny", "t-local-net"]) is None
        assert sw.worker_builders([nn.Sequential(nn.Linear(16, 5))]) == {}  # torch's own class
        Local.__module__ = "__main__"  # as if typed into a notebook
        assert sw.worker_builders(["t-local-net"]) is None
    finally:
        MODELS._entries.pop("t-local-net", None)


def test_process_pool_gives_the_same_results_as_in_process(data, tmp_path):
    args = dict(max_epochs=1, learning_rate=1e-3, progress=False)
    pooled = sweep("jsc-tiny", data, "batch_size", [256, 512], workers=2, cache_dir=tmp_path / "pool", **args)
    local = sweep("jsc-tiny", data, "batch_size", [256, 512], workers=1, cache_dir=tmp_path / "local", **args)
    assert not pooled.table["cached"].any()
    for col in ("final_val_acc", "best_val_acc", "test_acc"):
        assert list(pooled.table[col]) == pytest.approx(list(local.table[col]), abs=1e-6)
    assert len(list((tmp_path / "pool").glob("*.json"))) == 2


def test_finished_sweeps_can_be_listed_and_loaded_without_training(data, tmp_path, count_trainings):
    res = sweep("jsc-tiny", data, "batch_size", [256, 512], cache_dir=tmp_path / "bs", **FAST)
    calls = count_trainings["calls"]
    assert list_sweeps(tmp_path) == ["bs"]
    loaded = load_sweep("bs", root=tmp_path)
    assert count_trainings["calls"] == calls
    assert loaded.params == ["batch_size"] and loaded.info.synthetic
    merged = loaded.table.merge(res.table, on="batch_size", suffixes=("", "_run"))
    assert list(merged["test_acc"]) == pytest.approx(list(merged["test_acc_run"]))
    assert set(loaded.histories) == set(res.histories)
    with pytest.raises(ValueError, match="nope"):
        load_sweep("nope", root=tmp_path)


def test_a_stored_result_is_plain_json_with_its_settings(data, tmp_path):
    sweep("jsc-tiny", data, "batch_size", [512], cache_dir=tmp_path, **FAST)
    (entry,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    s = entry["settings"]
    assert s["batch_size"] == 512 and s["learning_rate"] == 1e-3 and s["model"] == "jsc-tiny"
    assert s["dataset"]["settings"]["size"] == 5000 and s["recipe"] == sw.RECIPE_VERSION
    assert len(entry["result"]["history"]) == 2


def test_only_lightnings_ctrl_c_exit_becomes_keyboard_interrupt():
    with pytest.raises(SystemExit):  # a real exit stays an exit
        with interruptible():
            raise SystemExit(1)


def test_a_real_ctrl_c_mid_sweep_keeps_finished_runs(data, tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread to receive SIGINT")
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process")
    before = signal.getsignal(signal.SIGINT)
    sweep("jsc-tiny", data, "batch_size", [512], cache_dir=tmp_path, **FAST)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep("jsc-tiny", data, "batch_size", [512, 64], cache_dir=tmp_path,
                  **{**FAST, "max_epochs": 400})
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C still works afterwards
    assert len(list(tmp_path.glob("*.json"))) == 1  # the finished run survived, nothing half-written


def test_in_process_runs_use_one_thread_and_restore_it(data, tmp_path, monkeypatch):
    import torch
    seen = []
    real = sw.train

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(sw, "train", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sweep("jsc-tiny", data, "batch_size", [512], cache_dir=tmp_path, **FAST)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_plots_draw_every_run_and_name_the_data(data, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = sweep("jsc-tiny", data, "batch_size", [64, 256, 1024], cache_dir=tmp_path, **FAST)
    ax = res.plot()
    assert [line.get_label() for line in ax.get_lines()][:3] == list(res.histories)
    assert len(ax.get_lines()) == 6  # a curve and an end marker per run
    assert "SYNTHETIC" in ax.get_title()
    ax = res.plot_summary()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "256", "1024"]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx(list(res.table["final_val_acc"]))
    plt.close("all")
    with pytest.raises(ValueError, match="one-setting"):
        grid_sweep("jsc-tiny", data, {"batch_size": [256], "learning_rate": [1e-3]}, cache_dir=tmp_path,
                   max_epochs=1, workers=1, progress=False).plot_summary()
