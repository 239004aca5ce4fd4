"""MASE's example configs and its handout commands, run with `ch` -> `labkit`.

MASE's `ch` drops every config key it does not know; labkit drops the ones MASE itself uses
but labkit does not ([transform], `report`, ...) with one warning line, and still
rejects a key neither knows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.cli import main
from labkit.config import ConfigError, MASE_ONLY_KEYS, load_config
from labkit.data.synthetic import write_source_files

ROOT = Path(__file__).resolve().parents[1]
LABKIT = str(Path(sys.executable).parent / "labkit")
MASE_EXAMPLES = Path("/work/mase-src/configs/examples")
TINY = ["--data-size", "2000"]

# MASE's layout in our own words: its sections and its `report` key beside labkit's settings.
MASE_STYLE_TOML = """\
model = "jsc-tiny"
dataset = "jsc-synthetic"
task = "cls"
num_workers = 0
is_pretrained = false

[passes.quantize]
by = "type"
report = true
[passes.quantize.linear.config]
name = "integer"
data_in_width = 6
data_in_frac_width = 3
weight_width = 6
weight_frac_width = 3
bias_width = 6
bias_frac_width = 3

[transform]
style = "graph"

[search.strategy]
name = "optuna"
"""


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _row(out: str, name: str) -> list[str]:
    """The settings table's row for ``name``, as cells."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == name:
            return cells
    raise AssertionError(f"no settings row {name!r} in:\n{out}")


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "ignoring MASE settings" in line]


def test_mase_only_keys_are_dropped_with_one_warning_line(tmp_path, capsys):
    path = tmp_path / "mase.toml"
    path.write_text(MASE_STYLE_TOML)
    config = load_config(path)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1
    for name in ("is_pretrained", "transform", "passes.quantize.report"):
        assert name in lines[0]
    assert not {"transform", "is_pretrained"} & set(config)
    assert config["search"] == {"strategy": {"name": "optuna"}}  # kept: `labkit search` reads it
    assert "report" not in config["passes"]["quantize"] and config["passes"]["quantize"]["by"] == "type"
    assert config["num_workers"] == 0 and config["task"] == "cls"


def test_a_key_neither_mase_nor_labkit_knows_is_still_one_clear_error(tmp_path, capsys):
    path = tmp_path / "typo.toml"
    path.write_text('model = "jsc-tiny"\nmax_epoch = 5\n[search]\nn_trials = 3\n')
    with pytest.raises(ConfigError, match="unknown key 'max_epoch'; allowed keys: model"):
        load_config(path)
    code, _, err = _run(capsys, ["train", "--config", str(path)])
    assert code == 2
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "max_epoch" in errors[0]


def test_labkits_own_copy_of_the_handout_config_loads():
    config = load_config(ROOT / "configs" / "examples" / "jsc_toy_by_type.toml")
    assert config["model"] == "jsc-tiny" and config["dataset"] == "jsc" and config["task"] == "cls"
    linear = config["passes"]["quantize"]["linear"]["config"]
    assert (linear["name"], linear["data_in_width"], linear["weight_frac_width"]) == ("integer", 8, 4)


@pytest.mark.skipif(not MASE_EXAMPLES.is_dir(), reason="MASE's source tree is not here")
@pytest.mark.parametrize("name", sorted(p.name for p in MASE_EXAMPLES.glob("*.toml")) if MASE_EXAMPLES.is_dir() else [])
def test_mases_example_configs_load_as_written(name, capsys):
    path = MASE_EXAMPLES / name
    if name == "search_opt_quantized_tpe_search.toml":  # an OPT language model: not a JSC lab task
        with pytest.raises(ConfigError, match="task must be one of cls, classification, got 'lm'"):
            load_config(path)
        return
    config = load_config(path)
    assert config["model"] and config["dataset"]
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) <= 1
    assert not set(config) & set(MASE_ONLY_KEYS)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A folder laid out like MASE's repository root: configs/examples/ holds labkit's copy of
    the handout config, and `jsc` is served from a small local file in the real ARFF format."""
    root = tmp_path_factory.mktemp("mase-root")
    (root / "configs" / "examples").mkdir(parents=True)
    src = ROOT / "configs" / "examples" / "jsc_toy_by_type.toml"
    (root / "configs" / "examples" / src.name).write_text(src.read_text())
    files = write_source_files(root / "source", size=2000, seed=3)
    env = {**os.environ, "LABKIT_JSC_SOURCE": str(files["arff"]), "LABKIT_DATA_DIR": str(root / "data"),
           "LABKIT_OUTPUT_DIR": str(root / "mase_output")}
    return root, env


def test_the_handout_transform_command(lab):
    """Lab 2: `./ch transform --config configs/examples/jsc_toy_by_type.toml --task cls --cpu=0`."""
    root, env = lab
    out = subprocess.run([LABKIT, "transform", "--config", "configs/examples/jsc_toy_by_type.toml",
                          "--task", "cls", "--cpu=0"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert len(_warnings(out.stderr)) == 1 and "does not use: transform" in out.stderr  # [search]: labkit search
    assert "no load_name: transforming an untrained jsc-tiny" in out.stderr
    assert _row(out.stdout, "num_workers")[-2:] == ["0", "0"]  # flag, effective
    assert "| Linear          | linear       |       1 |         1 |           0 |" in out.stdout
    assert (root / "mase_output" / "jsc-tiny" / "transform" / "results.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--task", "lm"], "task must be one of cls, classification, got 'lm'"),
    (["--cpu", "-1"], "num_workers (--cpu) must be an integer >= 0, got -1"),
    (["--gpu", "2"], "num_devices (--gpu) must be 1 (labkit trains on one device), got 2"),
])
def test_bad_mase_flags_are_one_line(capsys, argv, message):
    code, _, err = _run(capsys, ["train", "jsc-tiny", "jsc-synthetic", *argv])
    assert code == 2 and err.strip().splitlines() == [f"labkit train: error: command line: {message}"]


@pytest.mark.parametrize("action", ["train", "test", "transform"])
def test_mase_flags_exist_on_train_test_and_transform(action, capsys):
    with pytest.raises(SystemExit):
        main([action, "--help"])
    text = capsys.readouterr().out
    for flag in ("--task", "--cpu", "--gpu", "--accelerator", "--load", "--load-type"):
        assert flag in text


def test_train_with_mase_flags(capsys):
    code, out, err = _run(capsys, ["train", "jsc-tiny", "jsc-synthetic", "--task", "cls", "--cpu=0", "--gpu", "1",
                                   "--accelerator", "cpu", "--max-epochs", "1", "--project", "mase-flags",
                                   "--no-progress", *TINY])
    assert code == 0, err
    assert "best.ckpt:" in out
    assert _row(out, "num_devices")[-1] == "1" and _row(out, "task")[-1] == "cls"


def test_mases_other_load_types_are_one_clear_error(tmp_path, capsys):
    """MASE's `mz` (a pickled GraphModule) and `hf` types need pickle or other models."""
    path = tmp_path / "mz.toml"
    path.write_text('model = "jsc-tiny"\ndataset = "jsc-synthetic"\nload_type = "mz"\n')
    with pytest.raises(ConfigError, match="load_type must be one of pl, pt, got 'mz'"):
        load_config(path)
    with pytest.raises(SystemExit) as e:
        main(["test", "jsc-tiny", "jsc-synthetic", "--load", "x.mz", "--load-type", "mz"])
    assert e.value.code == 2 and "invalid choice: 'mz'" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has the GPU the config asks for")
def test_mases_gpu_accelerator_without_a_gpu_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "gpu.toml"
    path.write_text('model = "jsc-tiny"\ndataset = "jsc-synthetic"\naccelerator = "gpu"\n'
                    '[passes.quantize]\nby = "type"\n[passes.quantize.linear.config]\nname = "NA"\n')
    code, _, err = _run(capsys, ["transform", "--config", str(path), "--cpu=0"])
    assert code == 2
    assert err.strip().splitlines() == ["labkit transform: error: accelerator 'gpu' needs a CUDA GPU, "
                                        "and torch finds none here; use one of auto, cpu"]


def test_the_handouts_train_test_and_search_commands(lab, monkeypatch, capsys):
    """Lab 1/3: `ch train jsc-tiny jsc --max-epochs 1 --batch-size 256`, `ch test ... --load ...
    --load-type pl`, `ch search --config configs/examples/jsc_toy_by_type.toml --load <ckpt>`."""
    root, env = lab
    monkeypatch.chdir(root)
    for key in ("LABKIT_JSC_SOURCE", "LABKIT_DATA_DIR", "LABKIT_OUTPUT_DIR"):
        monkeypatch.setenv(key, env[key])
    assert main(["train", "jsc-tiny", "jsc", "--max-epochs", "1", "--batch-size", "256", "--no-progress"]) == 0
    ckpt = root / "mase_output" / "jsc-tiny_jsc" / "software" / "training_ckpts" / "best.ckpt"
    assert ckpt.is_file()
    assert main(["test", "jsc-tiny", "jsc", "--load", str(ckpt), "--load-type", "pl"]) == 0
    assert "test jsc-tiny" in capsys.readouterr().out
    code = main(["search", "--config", "configs/examples/jsc_toy_by_type.toml", "--load", str(ckpt)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Pareto front:" in out and "5 trials" in out
