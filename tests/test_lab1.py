"""labkit.lab1_checkpoints: the Lab-1 set-up notebooks 04, 05 and 06 share."""

from pathlib import Path

import pytest

import labkit
from labkit import lab1_checkpoints, lab1_settings
from labkit.training import project_dir


def test_lab1_settings_are_the_reports_and_quick_is_small():
    full = lab1_settings()
    assert full["jsc-custom"] == dict(max_epochs=20, batch_size=128, learning_rate=1e-4)  # the report's
    assert full["jsc-tiny"]["max_epochs"] == 10
    assert {kw["max_epochs"] for kw in lab1_settings(quick=True).values()} == {2}
    assert "lab1_checkpoints" in labkit.__all__ and "lab1_settings" in labkit.__all__


def test_lab1_settings_rejects_a_quick_that_is_not_a_bool():
    with pytest.raises(TypeError, match="quick must be True or False, not 'yes'"):
        lab1_settings("yes")


def test_lab1_checkpoints_trains_both_networks_once_then_reuses_them(small_data):
    first = lab1_checkpoints(small_data, quick=True)
    assert set(first) == {"jsc-tiny", "jsc-custom"}
    for name, c in first.items():
        assert c["trained_now"] and c["model"] == name
        assert Path(c["best_ckpt"]) == project_dir(f"lab-1_{name}") / "training_ckpts" / "best.ckpt"
        assert Path(c["best_ckpt"]).is_file()
    again = lab1_checkpoints(small_data, quick=True)
    assert {n: c["trained_now"] for n, c in again.items()} == {"jsc-tiny": False, "jsc-custom": False}
    assert {n: c["best_ckpt"] for n, c in again.items()} == {n: c["best_ckpt"] for n, c in first.items()}
