"""Hostile and careless input (issue 15): no path escapes outputs/, no traceback, one clear line.

Every case runs as the command line (``labkit.cli.main`` in this process: exit status 2 for bad
input, 1 for an environment fault, one line on stderr naming the bad value or file) and, where
the Python API takes the same input, as a call that raises ValueError/TypeError naming the
argument. Each run works in its own temporary home (cwd, ``LABKIT_OUTPUT_DIR``) so the tests
can check that nothing was written outside ``outputs/`` and no earlier file changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from labkit.cli import main
from labkit.paths import check_name

TINY = ["--data-size", "1000", "--no-progress", "--max-epochs", "1"]


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh working directory and outputs folder: ``home / "outputs"`` (the data cache stays shared)."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("LABKIT_OUTPUT_DIR", str(tmp_path / "outputs"))
    return tmp_path


def files_under(root: Path) -> dict:
    """Every file under ``root`` with a hash of its bytes (what a run may not change)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(capsys, argv, code=2):
    """Run the command line; assert its exit status and one clean stderr line; return that line."""
    got = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    assert got == code, (got, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message.strip(), message
    assert "weights_only=False" not in message  # never advise the setting that runs pickled code
    return message


@pytest.fixture(scope="module")
def tiny_data():
    from labkit.data import load_dataset
    return load_dataset("jsc-synthetic", size=1000, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """One real Lightning checkpoint (jsc-tiny, 1 epoch on 1000 rows)."""
    from labkit.training import train
    out = tmp_path_factory.mktemp("trained")
    r = train("jsc-tiny", data=tiny_data, project=out / "run", max_epochs=1, progress=False, verbose=False)
    return Path(r["best_ckpt"])


# -- names that become paths -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["lab-1", "jsc-tiny_jsc", "a", "A.b_c-9", "x" * 64])
def test_check_name_accepts_one_safe_path_component(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["../escape", "/somewhere", "a/b", "a\\b", "..", ".", ".hidden", "-rf", "",
                                  "x" * 65, "x" * 300, "a b", "tab\t", "caf\u00e9", "nul\0"])
def test_check_name_rejects_anything_else_naming_the_value_and_the_rule(name):
    with pytest.raises(ValueError) as e:
        check_name(name, "project")
    message = one_line(e)
    assert message.startswith("project") and repr(name)[:40] in message
    assert "A-Z" in message and "64" in message


@pytest.mark.parametrize("value", [123, None, b"abc", Path("a")])
def test_check_name_rejects_non_strings_by_type(value):
    with pytest.raises(TypeError, match="sweep name must be a string"):
        check_name(value, "sweep name")


@pytest.mark.parametrize("project", ["../escape", "ABSOLUTE", "x" * 300, "a/b"])
def test_cli_project_cannot_escape_outputs(capsys, home, project):
    if project == "ABSOLUTE":
        project = str(home / "somewhere")
    line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--project", project, *TINY])
    assert "project" in line and project[:30] in line
    assert files_under(home) == {}  # nothing anywhere: not outside outputs/, not inside either


@pytest.mark.parametrize("action", ["train", "transform"])
def test_toml_project_cannot_escape_outputs(capsys, home, action):
    toml = home / "cwd" / "shared.toml"
    toml.write_text('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nproject = "../x"\n'
                    'load_name = "best.ckpt"\n[passes.quantize]\nby = "type"\n')
    before = files_under(home)
    line = cli(capsys, [action, "--config", toml])
    assert str(toml) in line and "'../x'" in line
    assert files_under(home) == before


def test_api_project_and_sweep_names_are_checked_before_anything_runs(home):
    from labkit.sweep import sweep
    from labkit.training import train
    from labkit.transform import run_transform
    with pytest.raises(ValueError, match=r"project '\.\./x' .*allowed"):
        train("jsc-tiny", "jsc-synthetic", project="../x")
    with pytest.raises(TypeError, match="project must be a string.*got 123"):
        train("jsc-tiny", "jsc-synthetic", project=123)
    with pytest.raises(ValueError, match=r"sweep name '\.\./up'"):
        sweep("jsc-tiny", "jsc-synthetic", "batch_size", [64, 128], name="../up")
    with pytest.raises(ValueError, match=r"project '/abs'"):
        run_transform({"model": "jsc-tiny", "dataset": "jsc-synthetic", "project": "/abs",
                       "load_name": "x.ckpt", "passes": {"quantize": {"by": "type"}}})
    assert files_under(home) == {}


def test_a_model_name_unfit_for_a_path_cannot_become_the_default_project(home):
    import torch.nn as nn

    from labkit.config import default_project
    from labkit.models import MODELS, register_model
    with pytest.raises(ValueError, match=r"project '\.\./m_jsc-synthetic'"):
        default_project("../m", "jsc-synthetic")

    @register_model("bad/name")
    def _bad(info):
        return nn.Linear(info.num_features, info.num_classes)

    try:
        from labkit.training import train
        with pytest.raises(ValueError, match="bad/name"):
            train("bad/name", "jsc-synthetic", max_epochs=1)
    finally:
        MODELS._entries.pop("bad/name")
    assert files_under(home) == {}


def test_a_figure_name_is_a_file_name_not_a_path(home, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.plots import save_figure
    monkeypatch.setenv("LABKIT_FIGURES_DIR", str(home / "figures"))
    fig = plt.figure()
    try:
        with pytest.raises(ValueError, match=r"figure name '\.\./up'"):
            save_figure(fig, "../up")
        assert files_under(home) == {}
        assert save_figure(fig, "ok-1").parent == home / "figures"
    finally:
        plt.close(fig)


def test_an_explicit_path_object_is_the_api_way_to_write_elsewhere(home, tiny_data):
    """A Path (only from Python, never from a flag or a config) names a directory of the caller's choice."""
    from labkit.training import train
    r = train("jsc-tiny", data=tiny_data, project=home / "mine", max_epochs=1, progress=False, verbose=False)
    assert Path(r["best_ckpt"]).is_relative_to(home / "mine")


# -- checkpoints of the wrong shape ----------------------------------------------------------


def _bad_checkpoints(folder: Path) -> dict:
    cases = {
        "state_dict_list": {"state_dict": [1, 2, 3]},
        "hparams_string": {"state_dict": {"model.w": torch.zeros(1)}, "hyper_parameters": "a string"},
        "int_key": {"state_dict": {1: torch.zeros(1)}},
        "not_tensors": {"state_dict": {"model.w": "zeros"}},
        "a_list": [1, 2, 3],
    }
    paths = {}
    for name, obj in cases.items():
        paths[name] = folder / f"{name}.ckpt"
        torch.save(obj, paths[name])
    return paths


@pytest.mark.parametrize("case", ["state_dict_list", "hparams_string", "int_key", "not_tensors", "a_list", "dir"])
@pytest.mark.parametrize("load_type", ["pl", "pt"])
def test_wrong_shaped_checkpoint_is_one_line_naming_the_file(capsys, home, case, load_type):
    paths = _bad_checkpoints(home / "cwd")
    path = home / "cwd" if case == "dir" else paths[case]
    before = files_under(home)
    line = cli(capsys, ["test", "jsc-tiny", "jsc-synthetic", "--load", path, "--load-type", load_type,
                        "--data-size", "1000"])
    assert str(path) in line, line
    if case == "dir":
        assert "is a directory" in line
    from labkit.training import load_model, test
    with pytest.raises(ValueError) as e:
        load_model("jsc-tiny", path, load_type)
    assert str(path) in one_line(e)
    with pytest.raises(ValueError):
        test("jsc-tiny", "jsc-synthetic", load=path, load_type=load_type)
    assert files_under(home) == before


def test_load_type_pt_on_a_lightning_checkpoint_says_so_and_suggests_pl(capsys, home, trained):
    before = trained.read_bytes()
    line = cli(capsys, ["test", "jsc-tiny", "jsc-synthetic", "--load", trained, "--load-type", "pt",
                        "--data-size", "1000"])
    assert "Lightning checkpoint" in line and "pl" in line and str(trained) in line
    from labkit.training import load_model
    with pytest.raises(ValueError, match="Lightning checkpoint.*'pl'"):
        load_model("jsc-tiny", trained, "pt")
    assert trained.read_bytes() == before


# -- the sweep cache -------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [
    '{"settings": SETTINGS, "result": "a string"}',
    '{"settings": SETTINGS, "result": {"history": "not a list"}}',
    '{"settings": SETTINGS, "result": {"best_val_acc": 0.5, "history": [1, 2]}}',
    '[1, 2, 3]',
    '"just a string"',
])
def test_a_wrong_shaped_sweep_entry_is_moved_aside_and_rerun(home, tiny_data, entry):
    from labkit.sweep import load_sweep, sweep
    kw = dict(data=tiny_data, max_epochs=1, workers=1, progress=False, name="s")
    first = sweep("jsc-tiny", None, "batch_size", [256], **kw)
    [path] = first.directory.glob("*.json")
    settings = json.loads(path.read_text())["settings"]
    path.write_text(entry.replace("SETTINGS", json.dumps(settings)))
    again = sweep("jsc-tiny", None, "batch_size", [256], **kw)
    assert not again.table["cached"].iloc[0]  # re-run, not a crash
    assert json.loads(path.read_text())["result"]["epochs"] == 1  # the fresh result replaced it
    aside = list(first.directory.glob("corrupt/*"))
    assert len(aside) == 1 and aside[0].read_text() == entry.replace("SETTINGS", json.dumps(settings))
    assert len(load_sweep(first.directory).table) == 1


def test_load_sweep_skips_wrong_shaped_entries(home):
    from labkit.cache import ResultCache
    from labkit.sweep import load_sweep
    d = home / "outputs" / "sweeps" / "x"
    ResultCache(d).put({"batch_size": 64}, {"best_val_acc": 0.5, "history": []})
    (d / "bad.json").write_text('{"settings": {"batch_size": 1}, "result": "a string"}')
    (d / "worse.json").write_text('{"settings": 7}')
    assert list(load_sweep(d).table["best_val_acc"]) == [0.5]


# -- environment faults: one line naming the path and what to do, exit status 1 ----------------


def test_outputs_dir_under_a_regular_file(capsys, home, monkeypatch, trained):
    (home / "afile").write_text("x")
    monkeypatch.setenv("LABKIT_OUTPUT_DIR", str(home / "afile" / "outputs"))
    line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", *TINY], code=1)
    assert str(home / "afile") in line and "LABKIT_OUTPUT_DIR" in line
    toml = home / "cwd" / "t.toml"
    toml.write_text(f'model = "jsc-tiny"\ndataset = "jsc-synthetic"\ndata_size = 1000\nload_name = "{trained}"\n'
                    f'[passes.quantize]\nby = "type"\n[passes.quantize.default.config]\nname = "NA"\n')
    line = cli(capsys, ["transform", "--config", toml], code=1)
    assert str(home / "afile") in line and "LABKIT_OUTPUT_DIR" in line
    from labkit.paths import outputs_dir
    with pytest.raises(OSError, match="LABKIT_OUTPUT_DIR"):
        outputs_dir()


def test_a_project_folder_that_is_a_file(capsys, home):
    (home / "outputs").mkdir()
    (home / "outputs" / "p").write_text("keep me")
    line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--project", "p", *TINY], code=1)
    assert str(home / "outputs" / "p") in line
    assert (home / "outputs" / "p").read_text() == "keep me"


def test_data_processed_a_regular_file(capsys, home, monkeypatch):
    data = home / "data"
    data.mkdir()
    (data / "processed").write_text("not a folder")
    monkeypatch.setenv("LABKIT_DATA_DIR", str(data))
    line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", *TINY], code=1)
    assert str(data / "processed") in line and "LABKIT_DATA_DIR" in line
    assert (data / "processed").read_text() == "not a folder"


def test_data_dir_not_writable_is_one_line(capsys, home, monkeypatch):
    """As another user: the processed cache cannot be written (simulated, since root writes anyway)."""
    import errno

    import labkit.data.prepare as prepare
    data = home / "data"
    monkeypatch.setenv("LABKIT_DATA_DIR", str(data))

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(prepare, "save_processed", refuse)
    line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", *TINY], code=1)
    assert str(data / "processed") in line and "permission denied" in line and "LABKIT_DATA_DIR" in line


def test_a_failed_run_leaves_the_projects_checkpoints_as_they_were(capsys, home, tiny_data):
    from labkit.models import get_model
    from labkit.training import train
    train("jsc-tiny", data=tiny_data, project="keep", max_epochs=1, progress=False, verbose=False)
    before = files_under(home / "outputs")
    with pytest.raises(ValueError):
        train(get_model("jsc-tiny", {"num_features": 8, "num_classes": 5}), data=tiny_data, project="keep")
    for argv in (["--learning-rate", "-1"], ["--batch-size", "0"], ["--data-size", str(10**9)]):
        cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--project", "keep", *argv])
    assert files_under(home / "outputs") == before


def test_outputs_not_writable_is_said_before_anything_runs(capsys, home, monkeypatch):
    """As another user (simulated: root may write anywhere, so os.access is asked to say no)."""
    (home / "outputs").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == home / "outputs"
                        else real_access(p, mode, **kw))
    line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", *TINY], code=1)
    assert str(home / "outputs") in line and "permission denied" in line and "LABKIT_OUTPUT_DIR" in line
    assert files_under(home) == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_outputs_not_writable(capsys, home):
    (home / "outputs").mkdir(mode=0o500)
    try:
        line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", *TINY], code=1)
    finally:
        (home / "outputs").chmod(0o700)
    assert str(home / "outputs") in line


# -- data sizes ------------------------------------------------------------------------------


def test_data_size_beyond_the_dataset_is_refused_before_allocating(capsys, home):
    line = cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--data-size", str(10**10)])
    assert "10000000000" in line and "data_size" in line
    from labkit.data import load_dataset
    with pytest.raises(ValueError, match="10000000000"):
        load_dataset("jsc-synthetic", size=10**10)


def test_more_rows_than_the_real_table_has_says_so(tmp_path):
    from labkit.data import load_dataset
    from labkit.data.synthetic import write_source_files
    files = write_source_files(tmp_path / "src", size=2000, seed=3)
    with pytest.raises(ValueError, match=r"3000 rows.*2000"):
        load_dataset("jsc", size=3000, source=str(files["arff"]), data_dir=tmp_path / "data", progress=False)
    data = load_dataset("jsc", size=1500, source=str(files["arff"]), data_dir=tmp_path / "data", progress=False)
    assert sum(data.sizes().values()) == 1500


# -- sweep() in a script without a __main__ guard ---------------------------------------------


def test_sweep_without_main_guard_runs_in_process_with_one_notice(home, tiny_data, monkeypatch, capsys):
    """A script run as ``python script.py`` that calls sweep() at top level: spawned workers would
    re-run it (and start sweeps of their own); the sweep runs in this process with one notice."""
    import types

    script = home / "cwd" / "unguarded.py"
    script.write_text("res = sweep('jsc-tiny', data, 'batch_size', [256, 512], max_epochs=1, workers=2, "
                      "progress=False, name='unguarded')\n")
    main_module = types.ModuleType("__main__")
    main_module.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    from labkit.sweep import sweep
    env = {"__name__": "__main__", "__file__": str(script), "sweep": sweep, "data": tiny_data}
    exec(compile(script.read_text(), str(script), "exec"), env)
    assert len(env["res"].table) == 2
    err = capsys.readouterr().err
    notices = [line for line in err.splitlines() if "__main__" in line]
    assert len(notices) == 1 and "in this process" in notices[0], err


def test_main_guard_detection():
    from labkit.sweep import unguarded_main_line
    src = textwrap.dedent("""
        import x
        x.sweep()
        def f():
            x.sweep()
        if __name__ == "__main__":
            x.sweep()
            f()
        if "__main__" == __name__:
            f()
    """).splitlines()
    code = "\n".join(src)
    assert unguarded_main_line(code, 3) is True
    assert unguarded_main_line(code, 7) is False and unguarded_main_line(code, 8) is False
    assert unguarded_main_line(code, 10) is False


# -- messages that name the value or file ----------------------------------------------------


def test_negative_learning_rate_is_named_everywhere(capsys, home):
    assert "-0.001" in cli(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--learning-rate", "-0.001"])
    toml = home / "cwd" / "lr.toml"
    toml.write_text('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nlearning_rate = -0.001\n')
    assert "-0.001" in cli(capsys, ["train", "--config", toml])
    from labkit.sweep import sweep
    from labkit.training import train
    with pytest.raises(ValueError, match="learning_rate.*-0.001"):
        train("jsc-tiny", "jsc-synthetic", learning_rate=-0.001)
    with pytest.raises(ValueError, match="learning_rate.*-0.001"):
        sweep("jsc-tiny", "jsc-synthetic", "learning_rate", [1e-3, -0.001])


@pytest.mark.parametrize("kind, content, expect", [
    ("directory", None, "is a directory"),
    ("binary", b"\x00\x01\x02\xff\xfe model", "binary"),
    ("latin-1", 'model = "jsc-t\xefny"\n'.encode("latin-1"), "not UTF-8"),
])
def test_unreadable_config_is_named(capsys, home, kind, content, expect):
    path = home / "cwd" / f"{kind}.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    line = cli(capsys, ["train", "--config", path])
    assert str(path) in line and expect in line
    from labkit.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=expect):
        load_config(path)


def test_a_utf8_bom_config_is_accepted(capsys, home):
    from labkit.config import load_config
    path = home / "cwd" / "notepad.toml"
    path.write_bytes(b"\xef\xbb\xbf" + 'model = "jsc-tiny"\ndataset = "jsc-synthetic"\nproject = "bom"\n'.encode())
    assert load_config(path)["model"] == "jsc-tiny"
    assert main(["train", "--config", str(path), *TINY]) == 0
    assert (home / "outputs" / "bom" / "software" / "training_ckpts" / "best.ckpt").is_file()


def test_typo_suggests_the_nearest_model(capsys):
    line = cli(capsys, ["train", "jsc-tyni", "jsc-synthetic"])
    assert "Did you mean 'jsc-tiny'?" in line
    from labkit.models import get_model
    with pytest.raises(ValueError, match="Did you mean 'jsc-tiny'"):
        get_model("jsc-tyni")
    with pytest.raises(ValueError, match="Did you mean 'jsc-custom'"):
        get_model("jsc-cutsom")
    with pytest.raises(ValueError, match="Did you mean 'jsc-synthetic'"):
        from labkit.data import load_dataset
        load_dataset("jsc-synthtic")


@pytest.mark.parametrize("value", ['"yes"', "1", '"true"'])
def test_quantize_bypass_must_be_a_boolean(value):
    from labkit.graph import MaseGraph
    from labkit.models import get_model
    from labkit.passes.quantize import quantize_transform_pass
    mg = MaseGraph(get_model("jsc-tiny"))
    import tomllib
    args = tomllib.loads(f'by = "type"\n[linear.config]\nname = "integer"\nbypass = {value}\n')
    with pytest.raises(ValueError, match=r"bypass in \[linear.config\] must be true or false, got"):
        quantize_transform_pass(mg, args)


def test_transform_config_with_bypass_yes_exits_2_and_writes_nothing(capsys, home, trained):
    toml = home / "cwd" / "q.toml"
    toml.write_text(f'model = "jsc-tiny"\ndataset = "jsc-synthetic"\ndata_size = 1000\nload_name = "{trained}"\n'
                    f'project = "q"\n[passes.quantize]\nby = "type"\n[passes.quantize.default.config]\n'
                    f'name = "integer"\nbypass = "yes"\n')
    line = cli(capsys, ["transform", "--config", toml])
    assert "bypass" in line and "'yes'" in line
    assert not (home / "outputs" / "q").exists()


# -- the Python API: exceptions naming the argument -------------------------------------------


def test_train_argument_types(home, tiny_data):
    import pandas as pd

    from labkit.training import train
    cases = [
        (dict(data=pd.DataFrame({"a": [1]})), TypeError, "data must be a JSCData"),
        (dict(project=123), TypeError, "project must be a string"),
        (dict(callbacks="x"), TypeError, "callbacks must be a list of Lightning callbacks.*'x'"),
        (dict(callbacks=["x"]), TypeError, "callbacks must be a list of Lightning callbacks.*'x'"),
        (dict(chunk="a"), ValueError, "chunk must be a positive integer, got 'a'"),
        (dict(chunk=0), ValueError, "chunk must be a positive integer, got 0"),
        (dict(model=5), TypeError, "model must be a registered model name"),
        (dict(dataset=5), TypeError, "dataset must be a dataset name"),
    ]
    for kwargs, exc, message in cases:
        kwargs = {"model": "jsc-tiny", "dataset": "jsc-synthetic", "max_epochs": 1, **kwargs}
        with pytest.raises(exc, match=message):
            train(kwargs.pop("model"), kwargs.pop("dataset"), **kwargs)
    assert files_under(home) == {}


def test_test_and_get_model_argument_types():
    from labkit.models import get_model
    from labkit.training import test
    with pytest.raises(TypeError, match="load must be a checkpoint path.*123"):
        test("jsc-tiny", "jsc-synthetic", load=123)
    with pytest.raises(TypeError, match="info must be .*num_features.*got 5"):
        get_model("jsc-tiny", info=5)
    with pytest.raises(ValueError, match="num_features must be a positive integer, got -1"):
        get_model("jsc-tiny", {"num_features": -1, "num_classes": 5})
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        get_model("jsc-tiny", {"num_features": 16, "num_classes": 0})
    with pytest.raises(TypeError, match="name must be a registered model name"):
        get_model(None)


def test_data_that_does_not_fit_the_model(home, tiny_data):
    import dataclasses

    from labkit.models import get_model
    from labkit.training import test, train
    narrow = get_model("jsc-tiny", {"num_features": 8, "num_classes": 5})
    with pytest.raises(ValueError, match=r"16 features.*8") as e:
        train(narrow, data=tiny_data, max_epochs=1, progress=False)
    one_line(e)
    with pytest.raises(ValueError, match=r"16 features.*8"):
        test(narrow, data=tiny_data)
    three = get_model("jsc-tiny", {"num_features": 16, "num_classes": 3})
    with pytest.raises(ValueError, match=r"3 outputs.*5 classes"):
        train(three, data=tiny_data, max_epochs=1, progress=False)
    bad_labels = dataclasses.replace(tiny_data, y_train=tiny_data.y_train.clone().fill_(7))
    with pytest.raises(ValueError, match=r"label 7.*\[0, 5\)") as e:
        train("jsc-tiny", data=bad_labels, max_epochs=1, progress=False)
    one_line(e)
    assert files_under(home) == {}


def test_load_transformed_on_random_bytes_or_a_crafted_pickle(tmp_path):
    import pickle

    from labkit.transform import load_transformed
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    crafted = tmp_path / "crafted.pt"
    torch.save({"state_dict": Evil()}, crafted, pickle_module=pickle)
    for path in (noise, crafted):
        with pytest.raises(ValueError, match="not a labkit transform output") as e:
            load_transformed(path)
        assert str(path) in one_line(e)
    assert not (tmp_path / "pwned").exists()  # and the pickle was never run
    with pytest.raises(TypeError, match="path must be"):
        load_transformed(5)
