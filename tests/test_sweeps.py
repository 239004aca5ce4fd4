"""sweeps(): several one-setting sweeps planned as one -- the same results as one sweep() call
per setting, each distinct run trained once, stored in every sweep that has it, resumable."""

import json
from pathlib import Path

import pandas as pd
import pytest

from labkit import sweeps
from labkit.data import load_dataset
from labkit.prefix import compute_seconds
from labkit.sweep import label_of, load_sweep, sweep

GRID = {"batch_size": [256, 512], "max_epochs": [1, 2], "learning_rate": [1e-3, 1e-2]}
FIXED = {"batch_size": 256, "max_epochs": 1, "learning_rate": 1e-3}  # (256, 1, 1e-3) is in all three sweeps
SAME = ["final_val_acc", "best_val_acc", "test_acc", "epochs", "diverged", "label"]


@pytest.fixture(scope="module")
def data():
    return load_dataset("jsc-synthetic", size=2000, progress=False)


def _separately(data, root: Path, grid=GRID, fixed=FIXED, **kw) -> dict:
    """One sweep() call per setting, as a notebook would make them, into ``root/<model>-<setting>``."""
    out = {}
    for p, values in grid.items():
        rest = {k: v for k, v in fixed.items() if k != p}
        out[p] = sweep("jsc-tiny", data, p, values, data=data, cache_dir=root / f"jsc-tiny-{p}", progress=False,
                       **{"workers": 1, **kw}, **rest)
    return out


def _files(directory: Path) -> set:
    return {p.name for p in directory.glob("*.json")}


def _assert_same(together: dict, apart: dict, exact: bool = True):
    assert list(together) == list(apart)
    for p in apart:
        a, b = together[p], apart[p]
        assert a.params == b.params == [p] and list(a.table[p]) == list(b.table[p])
        if exact:  # shared prefixes are bit for bit the runs trained alone
            pd.testing.assert_frame_equal(a.table[SAME], b.table[SAME], check_exact=True)
        else:  # stacked runs: the same to float rounding
            pd.testing.assert_frame_equal(a.table[SAME], b.table[SAME], check_exact=False, atol=1e-5, rtol=0)
        assert a.histories.keys() == b.histories.keys()
        for label in b.histories:
            if exact:
                assert a.histories[label].equals(b.histories[label]), (p, label)
            else:
                pd.testing.assert_frame_equal(a.histories[label], b.histories[label], check_exact=False,
                                              atol=1e-5, rtol=0)
        assert _files(a.directory) == _files(b.directory)  # the same cache keys, so the same entries


def test_sweeps_equal_separate_sweeps_and_train_the_shared_run_once(data, tmp_path, count_trainings):
    trainings = count_trainings("max_epochs")
    together = sweeps("jsc-tiny", data, GRID, data=data, workers=1, progress=False, stack_runs=False,
                      root=tmp_path / "together", **FIXED)
    # 6 sweep runs, 4 distinct; (256, 1, 1e-3) is the prefix of (256, 2, 1e-3): 3 trainings
    assert sorted(trainings) == [1, 1, 2]
    assert {p: r.directory for p, r in together.items()} == {
        p: tmp_path / "together" / f"jsc-tiny-{p}" for p in GRID}
    assert not any(r.table["cached"].any() for r in together.values())
    apart = _separately(data, tmp_path / "apart", stack_runs=False)
    assert sorted(trainings[3:]) == [1, 1, 1, 1, 2]  # one call per setting: the shared run thrice (prefix once)
    _assert_same(together, apart)
    # the shared run: trained once, the same stored result (and checkpoint) in each sweep's cache
    shared = [r.table.set_index("label").loc[label_of({p: FIXED[p]})] for p, r in together.items()]
    assert len({row["best_ckpt"] for row in shared}) == 1 and Path(shared[0]["best_ckpt"]).is_file()
    # a later sweep() call, as in a notebook, finds every run in the cache
    again = _separately(data, tmp_path / "together", stack_runs=False)
    assert len(trainings) == 8 and all(r.table["cached"].all() for r in again.values())
    for p, res in again.items():
        loaded = load_sweep(res.directory)  # a run whose checkpoints live in another sweep's folder too
        assert loaded.params == [p] and set(loaded.histories) == set(res.histories)
        assert all(Path(c).is_file() for c in loaded.table["best_ckpt"])
    # compute spent: the one 2-epoch training (carrying the 1-epoch run) and the two others, once each
    t = {p: r.table.set_index(p)["wall_time_s"] for p, r in together.items()}
    assert compute_seconds(*together.values()) == pytest.approx(t["max_epochs"][2] + t["batch_size"][512]
                                                                + t["learning_rate"][1e-2])


def test_without_shared_prefixes_an_identical_run_still_trains_once(data, tmp_path, count_trainings):
    trainings = count_trainings("max_epochs")
    res = sweeps("jsc-tiny", data, GRID, data=data, workers=1, progress=False, share_prefixes=False,
                 stack_runs=False, root=tmp_path, **FIXED)
    assert sorted(trainings) == [1, 1, 1, 2]  # 4 distinct runs of the 6
    entries = [json.loads(p.read_text()) for r in res.values() for p in r.directory.glob("*.json")]
    assert len(entries) == 6
    by_key = {}
    for e in entries:
        by_key.setdefault(json.dumps(e["settings"], sort_keys=True), []).append(e["result"])
    assert sorted(map(len, by_key.values())) == [1, 1, 1, 3]
    (three,) = [rs for rs in by_key.values() if len(rs) == 3]
    assert three[0] == three[1] == three[2]


def test_a_partly_cached_set_of_sweeps_trains_only_what_is_missing(data, tmp_path, count_trainings):
    trainings = count_trainings("learning_rate")
    first = sweep("jsc-tiny", data, "batch_size", GRID["batch_size"], data=data, workers=1, progress=False,
                  cache_dir=tmp_path / "jsc-tiny-batch_size", **{k: v for k, v in FIXED.items() if k != "batch_size"})
    assert len(trainings) == 2
    res = sweeps("jsc-tiny", data, GRID, data=data, workers=1, progress=False, stack_runs=False, root=tmp_path,
                 **FIXED)
    # (256, 1, 1e-3) came from the batch-size sweep's cache; (256, 2, 1e-3) and (256, 1, 1e-2) trained
    assert sorted(trainings[2:]) == [1e-3, 1e-2]
    cached = {p: dict(zip(r.table[p], r.table["cached"])) for p, r in res.items()}
    assert cached == {"batch_size": {256: True, 512: True}, "max_epochs": {1: True, 2: False},
                      "learning_rate": {1e-3: True, 1e-2: False}}
    pd.testing.assert_frame_equal(res["batch_size"].table[SAME], first.table[SAME])
    again = sweeps("jsc-tiny", data, GRID, data=data, workers=1, progress=False, root=tmp_path, **FIXED)
    assert len(trainings) == 4 and all(r.table["cached"].all() for r in again.values())


def test_with_workers_and_stacks_the_results_match_separate_sweeps(data, tmp_path):
    grid = {"max_epochs": [1, 2], "learning_rate": [1e-3, 1e-2, 3e-2]}
    fixed = {"max_epochs": 1, "learning_rate": 1e-3, "batch_size": 256}
    together = sweeps("jsc-tiny", data, grid, data=data, workers=2, progress=False, root=tmp_path / "t", **fixed)
    apart = _separately(data, tmp_path / "a", grid, fixed, workers=1)
    _assert_same(together, apart, exact=False)


def test_a_stack_spanning_two_sweeps_counts_once_in_compute_seconds(data, tmp_path, count_trainings):
    trainings = count_trainings("learning_rate")
    grid = {"learning_rate": [1e-3, 1e-2], "weight_decay": [0.0, 1e-3]}
    together = sweeps("jsc-tiny", data, grid, data=data, workers=1, progress=False, root=tmp_path,
                      learning_rate=1e-3, weight_decay=0.0, max_epochs=1, batch_size=256)
    assert trainings == []  # 4 sweep runs, 3 distinct: one stacked training, none alone
    stored = [json.loads(p.read_text())["result"] for r in together.values() for p in r.directory.glob("*.json")]
    assert len({r["stacked_in"] for r in stored}) == 1
    longest = max(r["wall_time_s"] for r in stored)
    assert compute_seconds(*together.values()) == pytest.approx(longest)


@pytest.mark.parametrize("grid, kwargs, error, words", [
    ([("batch_size", [64])], {}, TypeError, ["grid"]),
    ({}, {}, TypeError, ["grid"]),
    ({"colour": [1, 2]}, {}, ValueError, ["colour"]),
    ({"batch_size": 64}, {}, TypeError, ["batch_size", "list"]),
    ({"batch_size": [64, 0]}, {}, ValueError, ["batch_size", "0"]),
    ({"batch_size": [64]}, {"momentum": 0.9}, TypeError, ["momentum"]),
    ({"max_epochs": [1]}, {"max_epochs": -1}, ValueError, ["max_epochs", "-1"]),
    ({"batch_size": [64]}, {"workers": 0}, ValueError, ["workers"]),
    ({"batch_size": [64]}, {"share_prefixes": "yes"}, TypeError, ["share_prefixes"]),
    ({"batch_size": [64]}, {"accelerator": "tpu"}, ValueError, ["accelerator", "tpu"]),
    ({"batch_size": [64]}, {"root": 3}, TypeError, ["root", "3"]),
])
def test_bad_input_fails_before_anything_runs(data, tmp_path, count_trainings, grid, kwargs, error, words):
    trainings = count_trainings("max_epochs")
    with pytest.raises(error) as err:
        sweeps("jsc-tiny", data, grid, data=data, progress=False, **{"root": tmp_path / "root", **kwargs})
    for word in words:
        assert word in str(err.value)
    assert trainings == [] and not (tmp_path / "root").exists()
