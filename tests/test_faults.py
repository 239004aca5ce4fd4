"""Faults a careless user (or bad luck) causes, issue 15: Ctrl-C at any moment, a training
that diverges, poisoned data caches, two runs in one project, a killed sweep, re-run
transforms. Each must end with one clear line, and lose or change nothing already finished.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from labkit.lock import LOCK_NAME, ProjectBusyError, project_lock
from labkit.training import TrainingDiverged, project_dir, read_checkpoint, train

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path, **extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "LABKIT_OUTPUT_DIR": str(tmp_path / "outputs"), **extra}
    return env


def _cli(*args):
    return [sys.executable, "-m", "labkit", *args]


def _train_args(project, *extra):
    return _cli("train", "jsc-tiny", "jsc-synthetic", "--data-size", "2000", "--no-progress",
                "--project", project, *extra)


def _no_traceback(text):
    assert "Traceback" not in text, text


def _ckpts(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.ckpt"))}


# -- a training that diverges --------------------------------------------------------------


class _PoisonAt(Callback):
    """Makes the weights infinite at the start of epoch ``epoch`` (0-based): the loss of that
    epoch is NaN, whatever the learning rate."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("inf"))


def test_diverging_run_stops_and_keeps_the_last_finite_epoch(small_data):
    with pytest.raises(TrainingDiverged) as info:
        train("jsc-tiny", data=small_data, max_epochs=4, project="faults-diverge", progress=False,
              verbose=False, callbacks=[_PoisonAt(2)])
    msg = str(info.value)
    assert "\n" not in msg and "epoch 3" in msg and "learning_rate=" in msg
    assert "checkpoints of epoch 2" in msg
    result = info.value.result
    assert result["epochs"] == 2 and len(result["history"]) == 2
    assert result["history"][["train_loss", "val_loss"]].notna().all().all()
    # the files on disk are those of epoch 2: finite weights, epoch counter at 2
    last = read_checkpoint(result["last_ckpt"])
    assert last["raw"]["epoch"] == 1  # Lightning counts from 0
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert Path(result["best_ckpt"]).is_file()


def test_absurd_learning_rate_is_one_line_naming_it_and_keeps_earlier_checkpoints(small_data, tmp_path):
    # an earlier run in the project (trained here: one subprocess is enough)
    ckpt_dir = Path(train("jsc-tiny", data=small_data, max_epochs=1, project="faults-lr", progress=False,
                          verbose=False)["best_ckpt"]).parent
    before = _ckpts(ckpt_dir)
    assert set(before) == {"best.ckpt", "last.ckpt"}
    env = _env(tmp_path, LABKIT_OUTPUT_DIR=os.environ["LABKIT_OUTPUT_DIR"])
    run = subprocess.run(_train_args("faults-lr", "--max-epochs", "2", "--learning-rate", "1e308"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    _no_traceback(run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labkit train: error: training diverged")
    assert "learning_rate=1e+308" in lines[0]
    # nothing was written by the diverged run, so the earlier checkpoints are where they were
    assert _ckpts(ckpt_dir) == before


def test_sweep_records_a_diverged_run_instead_of_raising(small_data, tmp_path):
    from labkit.sweep import load_sweep, sweep
    res = sweep("jsc-tiny", small_data, "learning_rate", [1e-3, 1e308], max_epochs=1, workers=1,
                progress=False, cache_dir=tmp_path / "sweep")
    t = res.table.set_index("learning_rate")
    assert not t.loc[1e-3, "diverged"] and t.loc[1e308, "diverged"]
    assert t.loc[1e-3, "final_val_acc"] > 0 and t.loc[1e308, "final_val_acc"] != t.loc[1e308, "final_val_acc"]
    # recorded like any finished run: a re-run reuses it, and it is on disk with its reason
    again = sweep("jsc-tiny", small_data, "learning_rate", [1e-3, 1e308], max_epochs=1, workers=1,
                  progress=False, cache_dir=tmp_path / "sweep")
    assert again.table["cached"].all()
    stored = [json.loads(p.read_text())["result"] for p in (tmp_path / "sweep").glob("*.json")]
    assert sum(bool(r.get("diverged")) for r in stored) == 1
    assert load_sweep(tmp_path / "sweep").table["diverged"].sum() == 1


# -- one run at a time per project ---------------------------------------------------------


def test_second_training_into_a_busy_project_fails_naming_the_holder(small_data):
    folder = project_dir("faults-busy").parent
    with project_lock(folder):
        with pytest.raises(ProjectBusyError, match=f"PID {os.getpid()}"):
            train("jsc-tiny", data=small_data, max_epochs=1, project="faults-busy", progress=False,
                  verbose=False)
    assert not (folder / "software" / "training_ckpts").exists()
    # released: the same training now runs
    r = train("jsc-tiny", data=small_data, max_epochs=1, project="faults-busy", progress=False, verbose=False)
    assert Path(r["best_ckpt"]).is_file()


def test_lock_of_a_killed_run_is_stale_and_taken_over(tmp_path):
    folder = tmp_path / "proj"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from labkit.lock import project_lock\n"
         f"with project_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)"],
        env=_env(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ProjectBusyError, match=f"PID {holder.pid}"):
            with project_lock(folder):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by kill -9
    with project_lock(folder):  # stale: taken over
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_busy_project_on_the_command_line_is_exit_2_and_one_line(tmp_path):
    with project_lock(tmp_path / "outputs" / "busy"):
        run = subprocess.run(_train_args("busy", "--max-epochs", "1"), env=_env(tmp_path),
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    _no_traceback(run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"PID {os.getpid()}" in lines[0] and "in use" in lines[0]


# -- Ctrl-C ----------------------------------------------------------------------------------


def _interrupt_when(tmp_path, project, ready, *extra, timeout=60, cmd=None):
    """Run a training (``cmd``, default the CLI's train), send SIGINT once ``ready(stdout_so_far, pid)``
    is true; (rc, stdout, stderr, seconds to stop)."""
    # SIGINT back to its default in the child: a shell starts background jobs with it ignored, and
    # an ignored signal is inherited (then Python installs no handler and Ctrl-C does nothing)
    proc = subprocess.Popen(cmd or _train_args(project, *extra), env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not ready("".join(out), proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        err = proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run did not stop within 30 s of Ctrl-C")
    reader.join(5)
    return proc.returncode, "".join(out), err, time.monotonic() - sent


def _importing_torch(out, pid) -> bool:
    """torch's libraries are mapped: the CLI is importing torch (a signal sent earlier would
    land in Python's own start-up, which no program can handle)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return not Path("/proc/self/maps").exists()  # no /proc: send it at once


@pytest.mark.parametrize("point", ["importing", "settings printed"])
def test_ctrl_c_before_training_exits_130_with_one_line(tmp_path, point):
    ready = {"importing": _importing_torch,
             "settings printed": lambda out, pid: "log_every_n_steps" in out}[point]
    rc, out, err, _ = _interrupt_when(tmp_path, "cc", ready, "--max-epochs", "1")
    assert rc == 130, err
    _no_traceback(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err


def test_ctrl_c_during_training_stops_at_the_next_step_and_writes_last_ckpt(tmp_path):
    ckpt_dir = tmp_path / "outputs" / "cc-train" / "software" / "training_ckpts"
    # many small chunks, many epochs: the run is mid-training once the first last.ckpt exists
    rc, out, err, took = _interrupt_when(tmp_path, "cc-train", lambda out, pid: (ckpt_dir / "last.ckpt").exists(),
                                         "--max-epochs", "500", "--batch-size", "16")
    assert rc == 130, err
    _no_traceback(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "in epoch" in lines[0] and "last.ckpt" in lines[0], err
    assert took < 20
    last = read_checkpoint(ckpt_dir / "last.ckpt")  # complete and loadable
    assert last["raw"]["global_step"] > 0
    assert not (ckpt_dir.parent.parent / LOCK_NAME).read_text()  # lock released


STACK_SCRIPT = """
import sys
from labkit.data import load_dataset
from labkit.stack import train_stacked
data = load_dataset("jsc-synthetic", size=2000, progress=False)
try:
    train_stacked("jsc-tiny", data, [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}], data=data, max_epochs=500,
                  batch_size=16, chunk=1, projects=sys.argv[1:])
except KeyboardInterrupt as e:
    print(e, file=sys.stderr)
    sys.exit(130)
"""


def test_ctrl_c_in_a_stack_stops_at_the_next_chunk_and_writes_each_runs_last_ckpt(tmp_path):
    dirs = [tmp_path / "outputs" / f"stack{k}" / "software" / "training_ckpts" for k in range(2)]
    cmd = [sys.executable, "-c", STACK_SCRIPT, "stack0", "stack1"]
    rc, out, err, took = _interrupt_when(tmp_path, None, lambda out, pid: (dirs[1] / "last.ckpt").exists(), cmd=cmd)
    assert rc == 130, err
    _no_traceback(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "in epoch" in lines[0] and "last.ckpt of 2 stacked run(s)" in lines[0], err
    assert took < 20
    steps = {read_checkpoint(d / "last.ckpt")["raw"]["global_step"] for d in dirs}  # complete and loadable
    assert len(steps) == 1 and steps.pop() > 0  # both written at the same step
    assert all(not (d.parent.parent / LOCK_NAME).read_text() for d in dirs)  # locks released


@pytest.mark.slow  # a dozen short runs
@pytest.mark.parametrize("delay", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0])
def test_ctrl_c_at_any_moment_ends_the_run_cleanly(tmp_path, delay):
    """Wherever the signal lands (imports, data, Lightning's set-up, a step, validation, a
    checkpoint write, tear-down), the run ends within seconds: 130 and one line, or 0 when
    it had finished before the signal."""
    started = []  # when the CLI began importing torch: the clock starts after Python's own start-up

    def ready(out, pid):
        if not started and _importing_torch(out, pid):
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > delay

    rc, out, err, took = _interrupt_when(tmp_path, "cc-any", ready,
                                         "--max-epochs", "3", "--batch-size", "64")
    assert rc in (0, 130), err
    assert took < 20
    _no_traceback(err)
    if rc == 130:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("labkit") and "interrupted" in lines[0], err


# -- a killed sweep takes its workers with it ------------------------------------------------


def _children(pid) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_busy_worker_exits_when_its_parent_is_killed(tmp_path):
    """exit_with_parent, which every sweep worker calls first: a worker busy in a long run
    (it would only look at its task queue after it) still goes when its parent is killed."""
    worker = ("from labkit.runtime import exit_with_parent; import os, sys\n"
              "exit_with_parent(int(sys.argv[1]), interval=0.1); print('busy', flush=True)\n"
              "while True: sum(range(10000))")
    parent_code = ("import subprocess, sys, os, time\n"
                   f"child = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())])\n"
                   "print(child.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=_env(tmp_path), stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "busy"  # the child's line: it is in its loop
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the worker outlived its killed parent")


@pytest.mark.slow  # two spawned workers importing torch and training: ~15-40 s
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_sweep_workers_exit_when_the_sweep_is_killed(tmp_path):
    script = tmp_path / "sweep_script.py"
    script.write_text(
        "from labkit import load_dataset\nfrom labkit.sweep import sweep\n"
        "if __name__ == '__main__':\n"
        "    data = load_dataset('jsc-synthetic', size=2000, progress=False)\n"
        f"    sweep('jsc-tiny', data, 'batch_size', [16, 32], max_epochs=1000, workers=2, progress=False,\n"
        f"          cache_dir={str(tmp_path / 'sweep')!r})\n")
    parent = subprocess.Popen([sys.executable, str(script)], env=_env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        runs = tmp_path / "sweep" / "runs"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and parent.poll() is None:  # the workers are training
            if runs.is_dir() and any(runs.glob("*/software/training_ckpts/last.ckpt")):
                break
            time.sleep(0.1)
        workers = _children(parent.pid)
        assert parent.poll() is None and len(workers) >= 2, "the sweep did not start its workers"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(workers)} children of the killed sweep still running"


# -- re-running a transform ------------------------------------------------------------------


def _quant_config(ckpt, width):
    linear = {"name": "integer", "data_in_width": width, "data_in_frac_width": width // 2,
              "weight_width": width, "weight_frac_width": width // 2, "bias_width": width,
              "bias_frac_width": width // 2}
    return {"model": "jsc-tiny", "dataset": "jsc-synthetic", "load_name": ckpt, "load_type": "pl",
            "project": "faults-transform",
            "passes": {"quantize": {"by": "type", "default": {"config": {"name": "NA"}},
                                    "linear": {"config": linear}}}}


def test_rerunning_a_transform_archives_the_previous_outputs(small_data):
    from labkit.transform import run_transform
    ckpt = train("jsc-tiny", data=small_data, max_epochs=1, project="faults-transform-src", progress=False,
                 verbose=False)["best_ckpt"]
    first = run_transform(_quant_config(ckpt, 8), data=small_data, verbose=False)
    out = Path(first["output_dir"])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"transformed.pt", "results.json", "config.json"} <= set(before)
    assert first["archived_previous"] is None
    second = run_transform(_quant_config(ckpt, 4), data=small_data, verbose=False)
    archived = Path(second["archived_previous"])
    assert archived.parent == out / "archive"
    assert {p.name: p.read_bytes() for p in archived.iterdir()} == before  # every file, unchanged
    assert json.loads((out / "config.json").read_text())["passes"]["quantize"]["linear"]["config"]["weight_width"] == 4
    # and a transform into a project another run holds fails at once, writing nothing
    with project_lock(out.parent), pytest.raises(ProjectBusyError, match=f"PID {os.getpid()}"):
        run_transform(_quant_config(ckpt, 6), data=small_data, verbose=False)
    assert json.loads((out / "config.json").read_text())["passes"]["quantize"]["linear"]["config"]["weight_width"] == 4


# -- data that lies ----------------------------------------------------------------------------


def _poison(path, recompute_checksum=False, drop_checksum=False):
    """Write NaN into a processed cache's features, in its valid format."""
    from labkit.data.prepare import content_digest
    payload = torch.load(path, weights_only=True)
    payload["x"][3, 2] = float("nan")
    if recompute_checksum:
        payload["content_sha256"] = content_digest(payload)
    if drop_checksum:
        payload.pop("content_sha256")
    torch.save(payload, path)


@pytest.mark.parametrize("poison, reason", [
    ({}, "does not match the checksum"),
    ({"recompute_checksum": True}, "non-finite values"),
    ({"drop_checksum": True}, "no content checksum"),
])
def test_a_poisoned_stand_in_cache_is_rebuilt_with_one_line(tmp_path, capsys, poison, reason):
    from labkit.data import load_dataset
    clean = load_dataset("jsc-synthetic", size=1000, data_dir=tmp_path, progress=False)
    cache = Path(clean.manifest["cache_path"])
    _poison(cache, **poison)
    capsys.readouterr()
    again = load_dataset("jsc-synthetic", size=1000, data_dir=tmp_path, progress=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "processed cache" in line]
    assert len(said) == 1 and reason in said[0] and str(cache) in said[0]
    assert again.identity() == clean.identity()  # rebuilt to the same content
    assert torch.isfinite(again.x_train).all()
    load_dataset("jsc-synthetic", size=1000, data_dir=tmp_path, progress=False)  # and now trusted
    assert "processed cache" not in capsys.readouterr().out


def test_a_poisoned_real_data_cache_is_rebuilt_from_the_validated_source(tmp_path, capsys):
    from labkit.data import load_dataset
    from labkit.data.synthetic import write_source_files
    arff = write_source_files(tmp_path / "src", size=1500)["arff"]
    clean = load_dataset("jsc", source=str(arff), data_dir=tmp_path / "data", progress=False)
    _poison(Path(clean.manifest["cache_path"]), recompute_checksum=True)
    capsys.readouterr()
    again = load_dataset("jsc", source=str(arff), data_dir=tmp_path / "data", progress=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "processed cache" in line]
    assert len(said) == 1 and "non-finite" in said[0] and "rebuilding it from the source" in said[0]
    assert again.identity() == clean.identity()


# -- `labkit notebooks` finds the notebooks, or says it cannot -----------------------------


def test_notebooks_are_found_with_labkit_home_elsewhere(tmp_path, monkeypatch):
    from labkit.notebooks import list_notebooks
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    books = list_notebooks()
    assert books and all(b.parent == ROOT / "notebooks" for b in books)


def test_no_notebooks_anywhere_is_one_line_not_zero_runs(tmp_path, monkeypatch, capsys):
    import labkit.notebooks as nb
    from labkit.cli import main
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    monkeypatch.setattr(nb, "__file__", str(tmp_path / "pkg" / "labkit" / "notebooks.py"))
    assert main(["notebooks", "--quick", "--dataset", "jsc-synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no notebooks" in err and str(tmp_path / "notebooks") in err
