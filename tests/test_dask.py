"""Sweeps and quantisation comparisons on a Dask cluster: a LocalCluster on 127.0.0.1 with two
worker processes. Same results as local runs, one cache entry per run, a worker killed
mid-training, an unreachable scheduler."""

import os
import signal
import threading
import time
import uuid

import pytest
import torch.nn as nn

pytest.importorskip("distributed")

from labkit import executor  # noqa: E402
from labkit.data import load_dataset  # noqa: E402
from labkit.sweep import grid_sweep, sweep  # noqa: E402
from labkit.training import train  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return load_dataset("jsc-synthetic", size=5000, progress=False)


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes on the loopback (dashboard too, on a free port);
    closed (workers and all) after."""
    from distributed import Client, LocalCluster
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=50)
    client = Client(lc, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        lc.close()


def _entries(directory):
    return sorted(p.name for p in directory.glob("*.json"))


def test_a_grid_sweep_on_the_cluster_equals_the_local_one_and_shares_its_cache(data, cluster, tmp_path, capsys):
    args = dict(max_epochs=1, progress=False)
    grid = {"batch_size": [256, 512], "learning_rate": [1e-3, 1e-2]}
    remote = grid_sweep("jsc-tiny", data, grid, cluster=cluster.scheduler.address, cache_dir=tmp_path / "c", **args)
    assert "Dask cluster tcp://127.0.0.1:" in capsys.readouterr().out
    local = grid_sweep("jsc-tiny", data, grid, workers=1, cache_dir=tmp_path / "l", **args)
    assert not remote.table["cached"].any() and len(remote.table) == 4
    for col in ("final_val_acc", "best_val_acc", "test_acc", "epochs"):
        assert list(remote.table[col]) == pytest.approx(list(local.table[col]), abs=1e-6)
    # one entry per run, under the same names as the local run's: a local re-run trains nothing
    assert _entries(tmp_path / "c") == _entries(tmp_path / "l") and len(_entries(tmp_path / "c")) == 4
    again = grid_sweep("jsc-tiny", data, grid, workers=1, cache_dir=tmp_path / "c", **args)
    assert again.table["cached"].all()


def test_a_notebook_defined_model_travels_by_value(data, cluster, tmp_path):
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))
    Local = type("NotebookNet", (nn.Module,), {"__module__": "__main__", "__init__": _init, "forward": _forward})
    res = sweep(Local(), data, "batch_size", [512], cluster=cluster, cache_dir=tmp_path, max_epochs=1,
                progress=False)
    assert res.table["best_val_acc"].notna().all() and len(_entries(tmp_path)) == 1
    assert net  # a torch class (importable everywhere) needs nothing special; the __main__ one did


def test_a_model_the_workers_cannot_import_is_one_clear_message(data, cluster, tmp_path, monkeypatch):
    import importlib
    import sys
    (tmp_path / "t_client_only.py").write_text(
        "import torch.nn as nn\n"
        "class ClientOnly(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(16, 5)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # here only: the workers started before
    try:
        module = importlib.import_module("t_client_only")
        message = "a Dask worker cannot import 't_client_only', needed by run batch_size=512: .*upload_file"
        with pytest.raises(RuntimeError, match=message):
            sweep(module.ClientOnly(), data, "batch_size", [512], cluster=cluster, cache_dir=tmp_path / "c",
                  max_epochs=1, progress=False)
    finally:
        sys.modules.pop("t_client_only", None)


def _init(self):
    nn.Module.__init__(self)
    self.body = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))


def _forward(self, x):
    return self.body(x)


def test_compare_quantization_on_the_cluster_equals_the_local_one(data, cluster, tmp_path):
    from labkit.quantize.compare import compare_quantization
    ckpt = train("jsc-tiny", data, max_epochs=1, batch_size=256, learning_rate=1e-3,
                 project=tmp_path / "float", progress=False, verbose=False)["best_ckpt"]
    kwargs = dict(data=data, widths=(8, 3), formats=("integer",), qat_epochs=1, qat_learning_rate=1e-3,
                  progress=False, accelerator="cpu")
    remote = compare_quantization("jsc-tiny", ckpt, cluster=cluster, cache_dir=tmp_path / "c", **kwargs)
    local = compare_quantization("jsc-tiny", ckpt, cache_dir=tmp_path / "l", **kwargs)
    assert len(remote) == 1 + 2 * 2 and not remote["cached"].any()
    for col in ("test_acc", "test_loss", "size_bits", "config"):
        assert remote[col].tolist() == pytest.approx(local[col].tolist()) if col != "config" \
            else remote[col].tolist() == local[col].tolist()
    assert _entries(tmp_path / "c") == _entries(tmp_path / "l") and len(_entries(tmp_path / "c")) == 4


class MarkingNet(nn.Module):
    """Drops a file ``<pid>-<random>`` in ``marks`` when a run's training starts (first
    forward in training mode): which process trains, and how many trainings start."""

    def __init__(self, marks: str):
        super().__init__()
        self.marks, self.started = marks, False
        self.body = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        if self.training and not self.started:
            self.started = True
            with open(os.path.join(self.marks, f"{os.getpid()}-{uuid.uuid4().hex[:8]}"), "w"):
                pass
        return self.body(x)


def test_a_worker_killed_mid_training_loses_only_that_run(data, cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    pids = set(cluster.run(os.getpid).values())
    killed = []

    def kill_first_trainer():
        # Wait until a run is really training in a worker, then kill that worker process.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            started = [int(p.name.split("-")[0]) for p in marks.iterdir()]
            if started and started[0] in pids:
                time.sleep(0.5)  # well inside the run (each takes several seconds)
                os.kill(started[0], signal.SIGKILL)
                killed.append(started[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_trainer, daemon=True)
    killer.start()
    res = sweep(MarkingNet(str(marks)), data, "batch_size", [32, 64, 128], cluster=cluster, cache_dir=tmp_path / "c",
                max_epochs=20, learning_rate=1e-3, progress=False)  # runs of seconds: the kill lands mid-run
    killer.join(5)
    assert killed, "no training started in a worker"
    assert len(res.table) == 3 and res.table["best_val_acc"].notna().all()
    assert len(_entries(tmp_path / "c")) == 3
    # three runs, one of them started twice (the killed one); no finished run trained again
    starts = [int(p.name.split("-")[0]) for p in marks.iterdir()]
    assert len(starts) == 4 and killed[0] in starts


def test_an_unreachable_scheduler_is_one_clear_line_within_seconds(data, tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(executor.ClusterUnavailableError) as err:
        sweep("jsc-tiny", data, "batch_size", [512], cluster=address, cache_dir=tmp_path, max_epochs=1,
              progress=False)
    assert time.monotonic() - start < executor.CONNECT_TIMEOUT_S + 5
    message = str(err.value)
    assert address in message and "\n" not in message
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("cluster, error, match", [
    ("localhost", ValueError, "cluster must be a Dask scheduler address like 'tcp://host:8786'"),
    ("http://x:80", ValueError, "got 'http://x:80'"),
    ("tcp://x:99999", ValueError, "got 'tcp://x:99999'"),
    (True, TypeError, "cluster must be"),
    (3, TypeError, "got int"),
])
def test_a_bad_cluster_argument_is_named(data, tmp_path, cluster, error, match):
    with pytest.raises(error, match=match):
        sweep("jsc-tiny", data, "batch_size", [512], cluster=cluster, cache_dir=tmp_path, progress=False)


def test_the_environment_names_the_cluster_unless_workers_are_given(monkeypatch):
    monkeypatch.setenv(executor.CLUSTER_ENV, "tcp://127.0.0.1:8786")
    assert executor.choose_cluster(None, None) == "tcp://127.0.0.1:8786"
    assert executor.choose_cluster(None, 1) is None  # an explicit local choice wins
    assert executor.choose_cluster(False, None) is None
    monkeypatch.delenv(executor.CLUSTER_ENV)
    assert executor.choose_cluster(None, None) is None


def test_map_unordered_runs_every_task_here_in_processes_and_on_the_cluster(cluster):
    from executor_helpers import square
    for kwargs in ({"workers": 0}, {"workers": 2}, {"cluster": cluster}):
        got = dict(executor.map_unordered(square, range(5), **kwargs))
        assert got == {i: i * i for i in range(5)}, kwargs


def test_a_local_worker_process_that_dies_loses_only_its_task(tmp_path):
    from executor_helpers import die_once
    tasks = [(str(tmp_path), x) for x in range(3)]
    got = dict(executor.map_unordered(die_once, tasks, workers=2))
    assert got == {(str(tmp_path), x): x * x for x in range(3)}
    assert (tmp_path / "died-0").exists()  # it did die, once, and ran again in a fresh pool


def test_the_cli_cluster_flag_fails_fast_with_one_line(capsys):
    import socket

    from labkit.cli import main
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert main(["notebooks", "--only", "zz", "--cluster", f"tcp://127.0.0.1:{port}"]) == 2
    assert time.monotonic() - start < executor.CONNECT_TIMEOUT_S + 5
    err = capsys.readouterr().err.strip()
    assert err.startswith("labkit notebooks: error: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert "\n" not in err and os.environ.get(executor.CLUSTER_ENV) is None
    assert main(["notebooks", "--cluster", "localhost"]) == 2
    assert "got 'localhost'" in capsys.readouterr().err


def test_a_worker_refuses_data_whose_fingerprint_differs_naming_both(data):
    import dataclasses

    import labkit.sweep as sw
    other = dataclasses.replace(data, y_train=data.y_train.flip(0))
    want, got = sw.data_fingerprint(data.identity()), sw.data_fingerprint(other.identity())
    assert want != got
    with pytest.raises(RuntimeError, match=f"fingerprint {got}, but the sweep's data has {want}"):
        sw._load_source(("tensors", other, data.identity()))
    source = sw._data_source(data)
    if source[0] == "cache":  # the processed cache file local workers share
        bad = {**other.identity(), "checksum": "x"}
        with pytest.raises(RuntimeError, match=f"{source[1]} has fingerprint {want}, but the sweep's data has "
                                               f"{sw.data_fingerprint(bad)}"):
            sw._load_source(source[:3] + (bad,))
    assert sw._load_source(sw._data_source(data, scatter=True)).identity() == data.identity()


def test_search_trials_on_the_cluster_equal_the_serial_ones(cluster):
    from test_search import ROWS, lab3_config

    from labkit.precision_search import search
    small = load_dataset("jsc-synthetic", size=ROWS, progress=False)
    config = lab3_config("dask-serial", sampler="random", n_trials=4)  # seeded: both ask the same configs
    serial = search(config, data=small, workers=1, progress=False, verbose=False)
    config["project"] = "dask-cluster"
    remote = search(config, data=small, cluster=cluster, progress=False, verbose=False)
    cols = [c for c in serial.trials if c.startswith("seq_blocks_2.")] + ["accuracy", "loss", "average_bitwidth"]
    key = lambda df: df[cols].sort_values(cols).reset_index(drop=True)  # noqa: E731
    assert len(remote.trials) == 4 and key(serial.trials).equals(key(remote.trials))
