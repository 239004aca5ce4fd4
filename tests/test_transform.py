"""The config-driven transform (``labkit transform --config``), end to end on fresh checkpoints."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from labkit.cli import main
from labkit.train import train
from labkit.transform import load_transformed, run_transform

SPEC_TOML = Path(__file__).resolve().parent.parent / "configs" / "lab2_transform_jsc_custom.toml"


@pytest.fixture(scope="module")
def checkpoints(small_data):
    """One epoch of jsc-custom and of jsc-tiny on the small synthetic data."""
    out = {}
    for model in ("jsc-custom", "jsc-tiny"):
        r = train(model, small_data, max_epochs=1, batch_size=256, learning_rate=1e-3,
                  project=f"test-transform_{model}", progress=False, verbose=False)
        out[model] = r["best_ckpt"]
    return out


def spec_config(tmp_path, checkpoint, **changes) -> Path:
    """The shipped config, with the checkpoint and dataset swapped for the test's."""
    text = SPEC_TOML.read_text()
    text = text.replace('"./outputs/lab-1_jsc-custom/software/training_ckpts/best.ckpt"', json.dumps(str(checkpoint)))
    text = text.replace('dataset = "jsc"', 'dataset = "jsc-synthetic"')
    for key, value in changes.items():
        text = text.replace(f"{key} = ", f"{key} = {value}\n# was: ", 1)
    path = tmp_path / "transform.toml"
    path.write_text(text)
    return path


def test_shipped_config_is_the_spec_toml():
    config = tomllib.loads(SPEC_TOML.read_text())
    assert config["model"] == "jsc-custom" and config["load_type"] == "pl" and config["project"] == "lab-2_transform"
    assert config["load_name"] == "./outputs/lab-1_jsc-custom/software/training_ckpts/best.ckpt"
    q = config["passes"]["quantize"]
    assert q["by"] == "type" and q["default"]["config"] == {"name": "NA"}
    assert q["linear"]["config"] == {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
                                     "weight_width": 8, "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}


def test_transform_end_to_end(tmp_path, small_data, checkpoints, capsys):
    result = run_transform(spec_config(tmp_path, checkpoints["jsc-custom"]), data=small_data)
    summary = result["summary"].set_index("Original type")
    assert summary.loc["Linear", "Changed"] == 3 and summary.loc["ReLU", "Changed"] == 0
    assert result["changed"] == ["seq_blocks_2", "seq_blocks_6", "seq_blocks_10"]
    printed = capsys.readouterr().out
    assert "| Linear          | linear       |       3 |         3 |           0 |" in printed
    assert "test acc" in printed and "SYNTHETIC" in printed
    # 8-bit fixed point barely moves a small MLP's accuracy
    assert 0.3 < result["test_acc_before"] <= 1 and abs(result["test_acc_after"] - result["test_acc_before"]) < 0.05
    # and the quantised model is not the float one
    x = small_data.x_test[:512]
    assert not torch.equal(result["graph"].model(x), result["original_graph"].model(x))

    out = Path(result["output_dir"])
    assert out.parts[-2:] == ("lab-2_transform", "transform")
    for name in ("transformed.pt", "config.json", "results.json", "quantize_summary.csv", "quantize_nodes.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["passes"]["quantize"]["linear"]["config"]["weight_width"] == 8
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_acc_after"] == result["test_acc_after"]
    # the saved model rebuilds to the same quantised forward pass
    rebuilt = load_transformed(out / "transformed.pt")
    assert type(rebuilt.modules["seq_blocks.2"]).__name__ == "LinearInteger"
    assert torch.equal(rebuilt.model(x), result["graph"].model.eval()(x))


def test_transform_from_the_command_line(tmp_path, small_data, checkpoints, capsys):
    path = spec_config(tmp_path, checkpoints["jsc-custom"], project='"test-cli-transform"')
    code = main(["transform", "--config", str(path), "--data-size", "20000"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| Linear          | linear       |       3 |         3 |           0 |" in printed
    assert "test-cli-transform" in printed


def test_missing_checkpoint_fails_with_one_line(tmp_path, small_data, capsys):
    path = spec_config(tmp_path, tmp_path / "nope" / "best.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope/best.ckpt"):
        run_transform(path, data=small_data)
    assert main(["transform", "--config", str(path), "--data-size", "20000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("labkit transform: error: checkpoint not found") and "\n" not in err


def test_checkpoint_of_another_model_fails(tmp_path, small_data, checkpoints):
    path = spec_config(tmp_path, checkpoints["jsc-tiny"])
    with pytest.raises(ValueError, match="trained for model 'jsc-tiny', not 'jsc-custom'"):
        run_transform(path, data=small_data)


@pytest.mark.parametrize("passes, match", [
    (None, "no \\[passes\\] section"),
    ({"prune": {}}, "unknown pass \\[passes.prune\\]; allowed passes: quantize"),
    ({"quantize": {"by": "kind"}}, "pass_args\\['by'\\] must be 'type'"),
    ({"quantize": {"by": "type", "linear": {"config": {"name": "integer", "weight_width": 8}}}},
     "unknown key|missing key"),
])
def test_bad_passes_section(small_data, checkpoints, passes, match):
    config = {"model": "jsc-custom", "dataset": "jsc-synthetic", "load_name": checkpoints["jsc-custom"],
              "load_type": "pl", "passes": passes}
    with pytest.raises(ValueError, match=match):
        run_transform(config, data=small_data, save=False, verbose=False)
