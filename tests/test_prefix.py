"""Shared prefixes (labkit.prefix): a sweep over max_epochs trains once, to the largest, and
every shorter run is bit for bit the run trained alone -- history, weights, test accuracy."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from labkit.data import load_dataset
from labkit.prefix import compute_seconds, groups, plan_table
from labkit.sweep import sweep
from labkit.training import read_checkpoint

from conftest import sweep_entries

SAME = ["epochs", "steps", "best_val_acc", "final_val_acc", "final_train_acc", "test_acc", "stopped_early"]


@pytest.fixture(scope="module")
def data():
    return load_dataset("jsc-synthetic", size=2000, progress=False)


@pytest.fixture
def trainings(count_trainings):
    return count_trainings("max_epochs")


def _stored(directory: Path) -> dict:
    """max_epochs -> (settings, result) of every cache entry."""
    return {k: (e["settings"], e["result"]) for k, e in sweep_entries(directory, "max_epochs").items()}


def _meta(raw: dict, root: Path) -> str:
    """Everything in a checkpoint but the tensors of weights and optimiser, with the sweep's
    folder written as ROOT (the two sweeps live in two folders)."""
    rest = {k: v for k, v in raw.items() if k not in ("state_dict", "optimizer_states")}
    return json.dumps(rest, default=repr, sort_keys=True).replace(str(root), "ROOT")


def _same_checkpoint(a, b, root_a, root_b):
    ra, rb = read_checkpoint(a)["raw"], read_checkpoint(b)["raw"]
    # epoch, steps, loop state, hyperparameters (its own max_epochs), and the callbacks' state
    # naming the run's own files, never the longer run's
    assert _meta(ra, root_a) == _meta(rb, root_b)
    assert ra["state_dict"].keys() == rb["state_dict"].keys()
    for k in ra["state_dict"]:
        assert torch.equal(ra["state_dict"][k], rb["state_dict"][k]), k  # bit for bit
    for sa, sb in zip(ra["optimizer_states"][0]["state"].values(), rb["optimizer_states"][0]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def _compare(shared, alone, shared_dir, alone_dir, epochs):
    cols = ["max_epochs", "epochs", "best_val_acc", "final_val_acc", "test_acc", "diverged"]
    pd.testing.assert_frame_equal(shared.table[cols], alone.table[cols])
    for label, hist in alone.histories.items():
        pd.testing.assert_frame_equal(shared.histories[label], hist)  # exact: check_exact by default for ints,
        assert shared.histories[label].equals(hist)  # and bit for bit for the floats too
    s, a = _stored(shared_dir), _stored(alone_dir)
    assert sorted(s) == sorted(a) == sorted(epochs)
    for k in epochs:
        assert s[k][0] == a[k][0]  # the same cache key: indistinguishable entries
        rs, ra = s[k][1], a[k][1]
        assert {f: rs[f] for f in SAME} == {f: ra[f] for f in SAME}
        assert rs["history"] == ra["history"]
        assert ("prefix_of" in rs) == (k != max(epochs)) and "prefix_of" not in ra  # where its time was spent
        for which in ("best_ckpt", "last_ckpt"):
            assert (rs[which] is None) == (ra[which] is None)
            if rs[which]:
                assert shared_dir in Path(rs[which]).parents
                _same_checkpoint(rs[which], ra[which], shared_dir, alone_dir)
    return s, a


def test_a_max_epochs_sweep_trains_once_and_equals_each_run_alone(data, tmp_path, trainings, capsys):
    kw = dict(data=data, workers=1, learning_rate=1e-2, batch_size=256, seed=3)
    shared = sweep("jsc-tiny", data, "max_epochs", [1, 2, 3], cache_dir=tmp_path / "shared", **kw)
    assert trainings == [3]  # one training, to the largest max_epochs
    assert "3 runs as 1 trainings" in capsys.readouterr().err  # the plan, printed before training
    alone = sweep("jsc-tiny", data, "max_epochs", [1, 2, 3], cache_dir=tmp_path / "alone",
                  share_prefixes=False, stack_runs=False, **kw)
    assert trainings == [3, 3, 2, 1]
    _compare(shared, alone, tmp_path / "shared", tmp_path / "alone", [1, 2, 3])
    # the best checkpoint is the best within each run's prefix, tested on its own
    for row in shared.table.itertuples():
        hist = shared.histories[row.label]
        assert len(hist) == row.max_epochs and row.best_val_acc == pytest.approx(hist["val_acc"].max(), abs=1e-6)
    again = sweep("jsc-tiny", data, "max_epochs", [1, 2, 3], cache_dir=tmp_path / "shared", **kw)
    assert again.table["cached"].all() and trainings == [3, 3, 2, 1]
    # compute spent: the one training's time for the shared sweep, every run's for the other
    longest = shared.table.set_index("max_epochs")["wall_time_s"]
    assert compute_seconds(again) == pytest.approx(longest[3])
    assert compute_seconds(again, alone) == pytest.approx(longest[3] + alone.table["wall_time_s"].sum())


def test_early_stopping_stops_the_shorter_runs_at_the_same_epoch(data, tmp_path, trainings):
    # A large learning rate with patience 1 stops early within a few epochs.
    kw = dict(data=data, workers=1, learning_rate=0.3, batch_size=512, seed=1, early_stopping=1, progress=False)
    values = [2, 4, 6, 7, 8]  # with these settings it stops after epoch 6
    shared = sweep("jsc-tiny", data, "max_epochs", values, cache_dir=tmp_path / "shared", **kw)
    alone = sweep("jsc-tiny", data, "max_epochs", values, cache_dir=tmp_path / "alone",
                  share_prefixes=False, stack_runs=False, **kw)
    assert trainings[0] == 8 and len(trainings) == 1 + len(values)
    # the cases this test is about happened: runs that stop early, and shorter ones that end first
    assert (alone.table["epochs"] < alone.table["max_epochs"]).sum() >= 2  # a shorter run stops early too
    assert (alone.table["epochs"] == alone.table["max_epochs"]).any()
    _compare(shared, alone, tmp_path / "shared", tmp_path / "alone", values)


def test_a_diverged_training_diverges_every_run_it_carries(data, tmp_path):
    kw = dict(data=data, workers=1, learning_rate=1e308, progress=False)
    shared = sweep("jsc-tiny", data, "max_epochs", [1, 2], cache_dir=tmp_path / "shared", **kw)
    alone = sweep("jsc-tiny", data, "max_epochs", [1, 2], cache_dir=tmp_path / "alone", share_prefixes=False, stack_runs=False, **kw)
    assert shared.table["diverged"].all() and alone.table["diverged"].all()
    s, a = _stored(tmp_path / "shared"), _stored(tmp_path / "alone")
    for k in (1, 2):
        assert s[k][1]["history"] == a[k][1]["history"] and s[k][1]["epochs"] == a[k][1]["epochs"]
        assert str(tmp_path / "alone") not in s[k][1]["diverged"]


def test_only_runs_that_differ_in_max_epochs_alone_are_grouped():
    def run(**s):
        full = {"max_epochs": 1, "batch_size": 128, "scheduler": None, "max_time": None, **s}
        return ({}, full, {"model": "m", **full})

    runs = [run(max_epochs=2), run(max_epochs=5), run(max_epochs=3, batch_size=64), run(max_epochs=9),
            run(max_epochs=4, scheduler="cosine"), run(max_epochs=8, scheduler="cosine"),
            run(max_epochs=6, max_time=60.0), run(max_epochs=7, max_time=60.0)]
    assert groups(runs, range(len(runs))) == [[3, 1, 0], [2], [4], [5], [6], [7]]
    table = plan_table(runs, groups(runs, range(len(runs))), "s")
    assert "8 runs as 6 trainings" in table and "2, 5, 9" in table


def test_share_prefixes_must_be_a_bool(data, tmp_path):
    with pytest.raises(TypeError, match="share_prefixes"):
        sweep("jsc-tiny", data, "max_epochs", [1, 2], data=data, workers=1, cache_dir=tmp_path, share_prefixes="yes")


def test_in_worker_processes_a_grid_shares_per_batch_size(data, tmp_path):
    from labkit.sweep import grid_sweep
    grid = {"batch_size": [256, 512], "max_epochs": [1, 2]}
    kw = dict(data=data, learning_rate=1e-2, progress=False)
    shared = grid_sweep("jsc-tiny", data, grid, workers=2, cache_dir=tmp_path / "shared", **kw)
    alone = grid_sweep("jsc-tiny", data, grid, workers=1, cache_dir=tmp_path / "alone", share_prefixes=False, stack_runs=False, **kw)
    entries = lambda d: [json.loads(p.read_text()) for p in (tmp_path / d).glob("*.json")]  # noqa: E731
    s, a = [{(e["settings"]["batch_size"], e["settings"]["max_epochs"]): (e["settings"], e["result"])
             for e in entries(d)} for d in ("shared", "alone")]
    assert sorted(s) == sorted(a) and len(s) == 4
    for k in s:
        assert s[k][0] == a[k][0] and s[k][1]["history"] == a[k][1]["history"]
        assert {f: s[k][1][f] for f in SAME} == {f: a[k][1][f] for f in SAME}
