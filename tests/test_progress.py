"""Epoch progress across processes: sweeps count every finished epoch, in-process and from workers."""

import io
import multiprocessing as mp

import pytest

import labkit.progress as progress
from labkit.data import load_dataset
from labkit.sweep import sweep


def test_report_goes_to_the_installed_sink_and_nowhere_without_one():
    got = []
    progress.install(got.append)
    try:
        progress.report(2)
        progress.report()
    finally:
        progress.install(None)
    progress.report(5)  # no sink: nothing happens, nothing fails
    assert got == [2, 1]


def test_install_rejects_what_cannot_receive_reports():
    with pytest.raises(TypeError, match="sink must be a callable, a queue"):
        progress.install(42)


def test_counter_streams_plain_lines_and_drops_epochs_a_run_never_did():
    out = io.StringIO()
    counter = progress.EpochCounter(10, "sweep demo", disable=True, stream=out, every_s=0)
    counter.add(3)
    counter.run_finished(planned=5, done=3)  # stopped early: 2 epochs will never come
    counter.close()
    assert counter.total == 8 and counter.done == 3
    assert "[labkit] sweep demo: 3/10 epochs" in out.getvalue()
    assert out.getvalue().splitlines()[-1] == "[labkit] sweep demo: 3/8 epochs"


def _worker(q):
    progress.install(q)
    for _ in range(4):
        progress.report(1)


def test_counter_drains_reports_from_worker_processes():
    ctx = mp.get_context("spawn")
    counter = progress.EpochCounter(4, disable=True)
    sink = counter.worker_sink(ctx)
    p = ctx.Process(target=_worker, args=(sink,))
    p.start()
    p.join(60)
    counter.close()
    assert p.exitcode == 0 and counter.done == 4


def test_in_process_sweep_counts_every_epoch_of_every_run(tmp_path, counters):
    data = load_dataset("jsc-synthetic", size=3000, progress=False)
    sweep("jsc-tiny", data, "max_epochs", [1, 2], learning_rate=1e-3, workers=1, progress=False, cache_dir=tmp_path,
          share_prefixes=False, stack_runs=False)
    assert [(c.total, c.done) for c in counters] == [(3, 3)]
    # a re-run trains nothing, so it plans no epochs
    sweep("jsc-tiny", data, "max_epochs", [1, 2], learning_rate=1e-3, workers=1, progress=False, cache_dir=tmp_path,
          share_prefixes=False, stack_runs=False)
    assert (counters[1].total, counters[1].done) == (0, 0)
    assert progress._SINK is None  # the sweep uninstalls its sink


def test_shared_prefix_sweep_counts_the_epochs_it_trains(tmp_path, counters):
    # max_epochs 1 and 2 share one 2-epoch training (labkit/prefix.py): 2 epochs are trained, not 3
    data = load_dataset("jsc-synthetic", size=3000, progress=False)
    sweep("jsc-tiny", data, "max_epochs", [1, 2], learning_rate=1e-3, workers=1, progress=False, cache_dir=tmp_path)
    assert [(c.total, c.done) for c in counters] == [(2, 2)]
    assert progress._SINK is None  # the sweep uninstalls its sink


def test_worker_processes_report_their_epochs(tmp_path, counters):
    data = load_dataset("jsc-synthetic", size=3000, progress=False)
    sweep("jsc-tiny", data, "batch_size", [256, 512], max_epochs=2, learning_rate=1e-3, workers=2,
          progress=False, cache_dir=tmp_path)
    assert [(c.total, c.done) for c in counters] == [(4, 4)]


def test_make_run_streams_progress_from_the_kernels(monkeypatch, capsys):
    import os

    import labkit.notebooks as nbs
    seen = []
    monkeypatch.setattr(nbs, "run_notebook", lambda book, out, params, progress: seen.append(
        (book.name, os.environ.get(progress_env()))))
    monkeypatch.setattr("labkit.data.choose_dataset", lambda d: "jsc-synthetic")
    monkeypatch.delenv(progress_env(), raising=False)
    nbs.run_notebooks(quick=True, only=["01", "02"], output_dir="unused")
    assert seen == [("01_getting_started.ipynb", "1"), ("02_hyperparameter_sweeps.ipynb", "1")]
    assert progress_env() not in os.environ  # restored afterwards
    out = capsys.readouterr().out
    assert "[labkit] 1/2 executing 01_getting_started.ipynb" in out and "[labkit] 2/2 02_hyperparameter_sweeps.ipynb done in" in out


def progress_env():
    return progress.STREAM_ENV
