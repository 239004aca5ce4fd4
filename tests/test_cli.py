"""The command line: the lab's train/test actions, the settings table, and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.cli import main

TINY = ["--data-size", "6000", "--no-progress"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`labkit train jsc-tiny jsc-synthetic --max-epochs 2` (on 6k rows) -> its best.ckpt."""
    code = main(["train", "jsc-tiny", "jsc-synthetic", "--max-epochs", "2", "--project", "cli-tiny", *TINY])
    assert code == 0
    best = Path(os.environ["LABKIT_OUTPUT_DIR"]) / "cli-tiny" / "software" / "training_ckpts" / "best.ckpt"
    assert best.is_file()
    return best


def test_train_prints_settings_table_history_and_checkpoints(capsys):
    code, out, _ = _run(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--max-epochs", "1",
                                 "--batch-size", "256", "--learning-rate", "0.001", "--project", "cli-a", *TINY])
    assert code == 0
    for word in ("Name", "Default", "Manual Override", "Effective", "batch_size", "256", "0.001"):
        assert word in out
    assert "best.ckpt:" in out and "val_acc" in out and "SYNTHETIC" in out


def test_train_history_table_prints_a_small_learning_rate_readably(capsys):
    code, out, _ = _run(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--max-epochs", "1",
                                 "--learning-rate", "1e-5", "--project", "cli-small-lr", *TINY])
    assert code == 0
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "train_loss"])
    columns, row = lines[head].split(), lines[head + 1].split()
    assert columns[-1] == "lr" and row[0] == "1"
    assert float(row[-1]) == 1e-5 and row[-1] != "0.0000"  # was printed as 0.0000
    assert row[columns.index("val_acc")].count(".") == 1 and len(row[columns.index("val_acc")]) == 6  # 0.xxxx


def test_test_action_prints_accuracy(capsys, trained):
    code, out, _ = _run(capsys, ["test", "jsc-tiny", "jsc-synthetic", "--load", str(trained),
                                 "--load-type", "pl", "--data-size", "6000"])
    assert code == 0
    assert "test jsc-tiny" in out and "acc 0." in out


def test_config_file_and_flag_precedence(capsys, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nmax_epochs = 1\nbatch_size = 512\n'
                    'learning_rate = 1e-3\nproject = "cli-cfg"\ndata_size = 6000\n')
    code, out, _ = _run(capsys, ["train", "--config", str(toml), "--batch-size", "1024", "--no-progress"])
    assert code == 0
    row = next(line for line in out.splitlines() if "batch_size" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["batch_size", "128", "512", "1024", "1024"]  # default, file, flag, effective


@pytest.mark.parametrize("argv, message", [
    (["train", "jsc-tyni", "jsc-synthetic"], "unknown model 'jsc-tyni'"),
    (["train", "jsc-tiny", "cifar10"], "unknown dataset 'cifar10'"),
    (["train", "jsc-tiny", "jsc-synthetic", "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (["train", "jsc-tiny", "jsc-synthetic", "--batch-size", "-4"], "batch_size must be a positive integer, got -4"),
    (["train", "jsc-tiny", "jsc-synthetic", "--learning-rate", "0"], "learning_rate must be a finite number > 0, got 0.0"),
    (["train", "jsc-tiny", "jsc-synthetic", "--learning-rate", "-0.1"], "learning_rate must be a finite number > 0, got -0.1"),
    (["train"], "no model given"),
    (["test", "jsc-tiny", "jsc-synthetic", "--load", "/nonexistent/best.ckpt"], "checkpoint not found"),
    (["train", "--config", "/nonexistent.toml"], "config file not found"),
    (["train", "jsc-tiny", "jsc-synthetic", "--max-time", "inf"], "max_time (seconds; None: no limit) must be a finite number > 0, got inf"),
    (["train", "jsc-tiny", "jsc-synthetic", "--learning-rate", "nan"], "learning_rate must be a finite number"),
    (["train", "jsc-tiny", "jsc-synthetic", "--data-size", "50"], "data_size must be at least 100 rows, got 50"),
    (["train", "jsc-tiny", "jsc-synthetic", "--seed", "-1"], "seed must be an integer in [0, 2**32), got -1"),
])
def test_bad_input_exits_2_with_one_clear_line(capsys, argv, message):
    code, _, err = _run(capsys, argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "jsc-tiny", "jsc-synthetic", "--max-epoch-count", "3"])
    assert e.value.code == 2
    assert "unrecognized arguments: --max-epoch-count" in capsys.readouterr().err


@pytest.mark.parametrize("body, message", [
    ('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nbatch_sise = 64\n', "unknown key 'batch_sise'"),
    ('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nbatch_size = "64"\n', "bad.toml: batch_size must be a positive integer, got '64'"),
    ('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nlearning_rate = true\n', "bad.toml: learning_rate must be a finite number > 0, got True"),
    ('model = "jsc-tiny"\nload_type = "pkl"\n', "load_type must be one of pl, pt"),
    ('model = "jsc-tiny\n', "not valid TOML"),
    ('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nscheduler = "step"\n', "bad.toml: scheduler must be one of None, 'none', 'cosine', got 'step'"),
    ('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nmax_time = inf\n', "bad.toml: max_time (seconds; None: no limit) must be a finite number > 0, got inf"),
    ('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nseed = 4294967296\n', "seed must be an integer in [0, 2**32)"),
])
def test_bad_toml_exits_2(capsys, tmp_path, body, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(body)
    code, _, err = _run(capsys, ["train", "--config", str(toml)])
    assert code == 2 and message in err, err


def test_wrong_or_corrupt_checkpoint_leaves_files_intact(capsys, trained, tmp_path):
    before = trained.read_bytes()
    code, _, err = _run(capsys, ["test", "jsc-custom", "jsc-synthetic", "--load", str(trained), "--data-size", "6000"])
    assert code == 2 and "trained for model 'jsc-tiny', not 'jsc-custom'" in err
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(before[: len(before) // 3])
    code, _, err = _run(capsys, ["test", "jsc-tiny", "jsc-synthetic", "--load", str(corrupt), "--data-size", "6000"])
    assert code == 2 and "could not read checkpoint" in err
    assert trained.read_bytes() == before


def test_python_dash_m_and_console_script_help():
    for cmd in ([sys.executable, "-m", "labkit", "--help"], [str(Path(sys.executable).parent / "labkit"), "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "train" in out.stdout and "transform" in out.stdout


def test_ls_lists_models_with_parameter_counts(capsys):
    code, out, _ = _run(capsys, ["ls"])
    assert code == 0
    assert "jsc-tiny" in out and "117" in out and "jsc-synthetic" in out


def test_train_load_of_a_missing_checkpoint_is_one_line(capsys):
    # `train --load` starts from the checkpoint (MASE's `ch train --load`), so it must exist
    code, _, err = _run(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--load", "best.ckpt"])
    assert code == 2 and err.strip().splitlines() == [
        "labkit train: error: checkpoint not found: best.ckpt (train first, e.g. `labkit train ...`, "
        "which prints where best.ckpt is written)"]


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_without_one_is_one_line_naming_what_works(capsys, monkeypatch, accelerator):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = _run(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--accelerator", accelerator, *TINY])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"accelerator '{accelerator}' needs a CUDA GPU" in lines[0] and "use one of auto, cpu" in lines[0]


def test_scheduler_none_means_a_constant_rate(capsys):
    code, out, _ = _run(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--max-epochs", "2", "--scheduler", "none",
                                 "--learning-rate", "0.001", "--project", "cli-none", *TINY])
    assert code == 0
    history = out[out.index(" epoch "):].splitlines()[1:3]
    assert [line.split()[-1] for line in history] == ["0.001", "0.001"]  # the lr column


def test_test_finds_a_relative_checkpoint_under_the_project_root_and_honours_batch_size(
        capsys, trained, tmp_path, monkeypatch):
    from labkit.paths import data_dir
    home = tmp_path / "home"
    (home / "outputs" / "x").mkdir(parents=True)
    (home / "outputs" / "x" / "best.ckpt").write_bytes(trained.read_bytes())
    monkeypatch.setenv("LABKIT_DATA_DIR", str(data_dir()))  # keep using the shared data cache
    monkeypatch.setenv("LABKIT_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # not the project root: the path is found there anyway
    argv = ["test", "jsc-tiny", "jsc-synthetic", "--load", "outputs/x/best.ckpt", "--data-size", "6000"]
    code, out, err = _run(capsys, argv)
    assert code == 0 and "acc 0." in out, err
    cells = lambda text: [c.strip() for c in next(l for l in text.splitlines() if "batch_size" in l).strip("|").split("|")]
    assert cells(out) == ["batch_size", "8192", "", "8192"]  # test's default: a large evaluation batch
    code, out, _ = _run(capsys, argv + ["--batch-size", "512"])
    assert code == 0 and cells(out) == ["batch_size", "8192", "512", "512"]


def test_every_top_level_name_resolves_and_train_stays_the_function():
    import inspect

    import labkit
    import labkit.passes
    import labkit.training  # the module is named apart from the function, so `labkit.train` is simply it
    assert inspect.isfunction(labkit.train) and labkit.train is labkit.training.train
    import labkit.precision_search  # likewise for `labkit.search`
    assert inspect.isfunction(labkit.search) and labkit.search is labkit.precision_search.search
    assert not set(labkit._SUBMODULES) & set(labkit.__all__)  # no submodule can shadow an exported name
    assert set(labkit.passes.__all__) <= set(labkit.__all__)  # every pass, as `from .passes import *` gave
    for name in labkit.__all__:
        assert getattr(labkit, name) is not None, name
    assert set(labkit.__all__) <= set(dir(labkit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        labkit.nope


def test_the_command_line_starts_without_torch():
    """`labkit --help` only builds the parser: torch and Lightning load when an action needs them."""
    code = ("import sys, labkit.cli\n"
            "heavy = sorted(m for m in ('torch', 'pytorch_lightning', 'pandas') if m in sys.modules)\n"
            "print(heavy)\n"
            "from labkit import train, MaseGraph\n"
            "print(train.__module__, MaseGraph.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "labkit.training labkit.graph"]


def test_make_refuses_an_old_python_before_building_anything(tmp_path):
    import shutil
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\n[ "$1" = "--version" ] && { echo "Python 3.10.12"; exit 0; }\nexit 1\n')
    old.chmod(0o755)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-C", str(root), "install", f"PYTHON={old}", f"VENV={tmp_path / 'venv'}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "labkit needs Python >= 3.11" in out.stdout and "3.10.12" in out.stdout
    assert not (tmp_path / "venv").exists()


def test_each_action_dispatches_to_its_own_command_function():
    # argparse's set_defaults(func=...) names the handler next to the parser block that defines the action.
    from labkit import cli
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "action")
    assert set(sub.choices) == {"train", "test", "transform", "search", "ls", "notebooks"}
    for action in sub.choices:
        argv = [action] if action in ("ls", "notebooks") else [action, "jsc-tiny", "jsc-synthetic"]
        assert parser.parse_args(argv).func is getattr(cli, f"cmd_{action}"), action
