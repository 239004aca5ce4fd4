"""The widget explorers, driven through their callbacks without a browser."""

import ipywidgets as W
import pytest

import labkit.widgets as wd
from labkit.data import load_dataset
from labkit.sweep import sweep
from labkit.training import train
from labkit.widgets import SweepBrowser, TrainExplorer, explore

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def data():
    return load_dataset("jsc-synthetic", size=5000, progress=False)


def test_train_button_trains_and_updates_the_plot_every_epoch(data):
    ex = TrainExplorer(data, project="t-explorer")
    ex.model.value, ex.learning_rate.value, ex.batch_size.value, ex.max_epochs.value = "jsc-tiny", 1e-2, 256, 3
    seen = []
    real_on_epoch = ex.on_epoch

    def spy(epoch, metrics):
        real_on_epoch(epoch, metrics)
        seen.append((epoch, ex.progress.value, len(ex.plot_data[ex.current][0]), bytes(ex.image.value)))

    ex.on_epoch = spy
    ex.button.click()  # what a user's click does: training starts in a thread
    ex.wait(120)
    assert [s[:3] for s in seen] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]  # live, epoch by epoch
    assert len({s[3] for s in seen}) == 3 and all(s[3].startswith(PNG) for s in seen)  # redrawn each time
    assert "done" in ex.status.value and not ex.button.disabled
    xs, ys = ex.plot_data[ex.current]
    hist = ex.last_result["history"]
    assert xs == [1, 2, 3] and ys == pytest.approx(list(hist["val_acc"]))
    # the explorer trains exactly like labkit.training.train with the same settings
    ref = train("jsc-tiny", data, max_epochs=3, batch_size=256, learning_rate=1e-2, project="t-explorer-ref",
                progress=False, verbose=False)
    assert ys == pytest.approx(list(ref["history"]["val_acc"]), abs=1e-6)


def test_runs_of_a_session_stay_on_the_plot_for_comparison(data):
    ex = TrainExplorer(data, project="t-explorer2", max_epochs=1)
    ex.learning_rate.value = 1e-3
    ex.run()
    ex.learning_rate.value = 1e-2
    ex.run()
    assert len(ex.plot_data) == 2 and ex.current.endswith("bs=256") and "lr=1.0e-02" in ex.current


def test_epoch_callback_alone_moves_progress_and_curve(data):
    ex = TrainExplorer(data)
    ex.on_start({"model": "jsc-tiny", "learning_rate": 1e-3, "batch_size": 64, "max_epochs": 4})
    before = ex.image.value
    assert ex.button.disabled and ex.progress.max == 4
    ex.on_epoch(1, {"val_acc": 0.5, "val_loss": 1.2})
    ex.on_epoch(2, {"val_acc": 0.6, "val_loss": 1.1})
    assert ex.progress.value == 2 and ex.plot_data[ex.current] == ([1, 2], [0.5, 0.6])
    assert bytes(ex.image.value) != bytes(before) and "0.6000" in ex.status.value


def test_a_failed_run_is_reported_in_the_widget(data, monkeypatch):
    def boom(*a, **k):
        raise ValueError("batch_size must be a positive integer, got 0")

    monkeypatch.setattr(wd, "fit_live", boom)
    ex = TrainExplorer(data)
    ex.button.click()
    ex.wait(60)
    assert "batch_size" in ex.status.value and "crimson" in ex.status.value
    assert not ex.button.disabled  # ready for the next try


def test_bad_data_is_refused():
    with pytest.raises(TypeError, match="JSCData"):
        TrainExplorer("jsc-synthetic")


def test_sweep_browser_shows_stored_runs_without_training(data, tmp_path, monkeypatch):
    opts = dict(data=data, max_epochs=2, workers=1, progress=False)
    bs = sweep("jsc-tiny", "jsc-synthetic", "batch_size", [256, 512], cache_dir=tmp_path / "bs",
               learning_rate=1e-3, **opts)

    def no_training(*a, **k):
        raise AssertionError("the browser must not train")

    monkeypatch.setattr("labkit.sweep.train", no_training)
    br = SweepBrowser(root=tmp_path)
    assert list(br.sweep_picker.options) == ["bs"] and br.result.name == "bs"
    assert set(br.plot_data) == {"batch_size=256", "batch_size=512"} and bytes(br.image.value).startswith(PNG)
    assert "<table" in br.table.value and br.row is None

    br.run_picker.value = "batch_size=512"  # what picking in the dropdown does
    row = bs.table.set_index("label").loc["batch_size=512"]
    assert br.row["test_acc"] == pytest.approx(row["test_acc"])
    assert br.plot_data["batch_size=512"][1] == pytest.approx(list(bs.histories["batch_size=512"]["val_acc"]))
    assert f"{row['test_acc']:.4g}" in br.table.value and "256" not in br.table.value.split("</thead>")[1]

    # a sweep finished later shows up on refresh
    monkeypatch.undo()
    sweep("jsc-tiny", "jsc-synthetic", "learning_rate", [1e-3, 1e-2], cache_dir=tmp_path / "lr", **opts)
    br.refresh()
    assert list(br.sweep_picker.options) == ["bs", "lr"]
    br.sweep_picker.value = "lr"
    assert set(br.plot_data) == {"learning_rate=0.001", "learning_rate=0.01"}
    assert list(br.run_picker.options)[1:] == ["learning_rate=0.001", "learning_rate=0.01"]


def test_empty_browser_says_what_to_do(tmp_path):
    br = SweepBrowser(root=tmp_path / "none")
    assert br.result is None and "sweep(" in br.table.value


def test_explore_puts_both_views_in_tabs(data, tmp_path):
    tab = explore(data, root=tmp_path)
    assert isinstance(tab, W.Tab) and len(tab.children) == 2
    assert [tab.get_title(i) for i in range(2)] == ["Train", "Sweep results"]


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": 100}, ["batch_size", "100", "16, 32", "4096"]),
    ({"batch_size": 256.0}, ["batch_size", "256.0"]),
    ({"learning_rate": 0.5}, ["learning_rate", "0.5", "1e-06", "0.1"]),
    ({"learning_rate": 1e-9}, ["learning_rate", "1e-09"]),
    ({"max_epochs": 500}, ["max_epochs", "500", "epochs_limit=100"]),
    ({"max_epochs": 0}, ["max_epochs", "0"]),
    ({"epochs_limit": 0}, ["epochs_limit", "0"]),
    ({"model": "jsc-tyni"}, ["jsc-tyni", "jsc-tiny"]),
])
def test_starting_values_outside_the_controls_are_refused_by_name(data, kwargs, words):
    with pytest.raises(ValueError) as e:
        TrainExplorer(data, **kwargs)
    for word in words:
        assert word in str(e.value)


def test_starting_values_on_the_controls_are_kept(data):
    ex = TrainExplorer(data, learning_rate=1e-4, batch_size=1024, max_epochs=7, epochs_limit=7)
    assert ex.settings() == {"model": "jsc-tiny", "learning_rate": pytest.approx(1e-4), "batch_size": 1024,
                             "max_epochs": 7}


def test_stop_button_ends_training_after_the_current_epoch(data):
    ex = TrainExplorer(data, project="t-explorer-stop", max_epochs=50)
    assert ex.stop_button.disabled  # nothing to stop yet
    real_on_epoch = ex.on_epoch

    def press_stop_at_epoch_2(epoch, metrics):
        real_on_epoch(epoch, metrics)
        if epoch == 2:
            assert not ex.stop_button.disabled
            ex.stop_button.click()

    ex.on_epoch = press_stop_at_epoch_2
    ex.button.click()
    assert ex.worker is not None  # the kernel is free while it trains: that is what lets Stop be heard
    ex.wait(120)
    assert ex.last_result["epochs"] == 2 and ex.progress.value == 2
    assert "stopped by you" in ex.status.value and ex.stop_button.disabled and not ex.button.disabled
    ex.on_epoch = real_on_epoch
    ex.max_epochs.value = 1
    ex.button.click()  # the next run is not stopped by the old request
    ex.wait(120)
    assert ex.last_result["epochs"] == 1 and "stopped by you" not in ex.status.value


def test_control_labels_are_not_cut_short(data, tmp_path):
    ex = TrainExplorer(data)
    browser = SweepBrowser(tmp_path)
    for control in (ex.model, ex.learning_rate, ex.batch_size, ex.max_epochs, ex.progress,
                    browser.sweep_picker, browser.run_picker):
        assert control.style.description_width == "initial", control.description
