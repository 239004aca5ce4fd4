"""The config-driven transform (``labkit transform --config``), end to end on fresh checkpoints."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from labkit.cli import main
from labkit.training import train
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


# --- the accuracy-vs-bits comparison ----------------------------------------------------------

def test_model_size_bits_counts_quantised_parameters_at_their_width():
    import torch.nn as nn

    from labkit.quantize.compare import model_size_bits
    from labkit.quantize.modules import quantize_module

    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3))
    assert model_size_bits(model) == (8 + 15) * 32
    model[1] = quantize_module(model[1], {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
                                          "weight_width": 4, "weight_frac_width": 3,
                                          "bias_width": 6, "bias_frac_width": 3})
    assert model_size_bits(model) == 8 * 32 + 12 * 4 + 3 * 6


def test_compare_quantization_runs_caches_and_plots(tmp_path, small_data, checkpoints):
    from labkit.quantize.compare import compare_quantization, plot_accuracy_vs_bits

    kwargs = dict(data=small_data, widths=(8, 3), qat_epochs=1, qat_learning_rate=1e-3,
                  cache_dir=tmp_path / "cache", progress=False)
    df = compare_quantization("jsc-custom", checkpoints["jsc-custom"], **kwargs)
    assert len(df) == 1 + 2 * 2 * 2  # the float row + format x mode x width
    assert set(df["format"]) == {"float", "integer", "minifloat"} and set(df["mode"]) == {"float", "ptq", "qat"}
    assert df["test_acc"].between(0, 1).all() and not df["cached"].any()
    runs = df[df["format"] != "float"].set_index(["format", "mode", "width"])
    float_acc = float(df.loc[df["format"] == "float", "test_acc"].iloc[0])
    for fmt in ("integer", "minifloat"):
        assert abs(runs.loc[(fmt, "ptq", 8), "test_acc"] - float_acc) < 0.05  # 8 bits: nearly free
        assert runs.loc[(fmt, "ptq", 8), "size_bits"] > runs.loc[(fmt, "ptq", 3), "size_bits"]
        # QAT keeps its best epoch by validation accuracy, the PTQ start included
        assert runs.loc[(fmt, "qat", 3), "qat_best_val_acc"] >= 0
        assert runs.loc[(fmt, "qat", 3), "qat_epoch_kept"] in (0, 1)
    config = json.loads(runs.loc[("integer", "ptq", 3), "config"])
    assert config["seq_blocks_2"]["config"]["weight_width"] == 3 and "weight_frac_width" in config["seq_blocks_2"]["config"]

    again = compare_quantization("jsc-custom", checkpoints["jsc-custom"], **kwargs)
    assert again["cached"].iloc[1:].all()
    assert again["test_acc"].tolist() == df["test_acc"].tolist()

    fig = plot_accuracy_vs_bits(df, path=tmp_path / "acc.png")
    assert "SYNTHETIC" in fig._suptitle.get_text() and (tmp_path / "acc.png").stat().st_size > 0
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 + 1


@pytest.mark.parametrize("kwargs, match", [
    ({"formats": ("log",)}, "format 'log' cannot be compared"),
    ({"modes": ("qta",)}, "mode must be one of 'ptq', 'qat', got 'qta'"),
    ({"widths": (8, 0)}, "each integer width must be an integer in \\[1, 32\\], got 0"),
    ({"widths": (1,), "formats": ("minifloat",)}, "each minifloat width must be an integer in \\[2, 32\\], got 1"),
    ({"widths": ()}, "widths must be a non-empty list"),
    ({"widths": 0}, "each integer width must be an integer in \\[1, 32\\], got 0"),
])
def test_compare_quantization_bad_arguments(small_data, checkpoints, kwargs, match):
    from labkit.quantize.compare import compare_quantization

    with pytest.raises(ValueError, match=match):
        compare_quantization("jsc-custom", checkpoints["jsc-custom"], data=small_data, progress=False, **kwargs)


def test_comparison_profiles_the_float_graph_once(small_data, checkpoints):
    from labkit.passes.quantize import auto_quantize_config
    from labkit.quantize.compare import _float_graph

    calibration = small_data.split("train")[0][:1024]
    mg = _float_graph("jsc-custom", checkpoints["jsc-custom"], "pl", small_data, calibration, ["linear", "relu"])
    profiled = [n.name for n in mg.nodes
                if "range_min_max" in mg.node(n.name).meta["mase"]["software"].get("args", {})
                .get("data_in_0", {}).get("stat", {})]
    assert profiled == ["seq_blocks_1", "seq_blocks_2", "seq_blocks_4", "seq_blocks_6", "seq_blocks_8",
                        "seq_blocks_10", "seq_blocks_12"]
    stat = mg.node("seq_blocks_1").meta["mase"]["software"]["args"]["data_in_0"]["stat"]["range_min_max"]
    with torch.no_grad():
        h = mg.modules["seq_blocks.0"](calibration)  # the first ReLU's input, over the whole batch
    assert (stat["min"], stat["max"]) == pytest.approx((float(h.min()), float(h.max())), rel=1e-6)
    # every (format, width) run reads those ranges: no calibration batch needed any more
    for fmt in ("integer", "minifloat"):
        assert set(auto_quantize_config(mg, 4, format=fmt)) >= {"by", "default", "seq_blocks_1"}


def _save_transformed(path, model_name, state_dict, **extra):
    quantize = {"by": "type", "default": {"config": {"name": None}},
                "linear": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
                                      "weight_width": 8, "weight_frac_width": 4,
                                      "bias_width": 8, "bias_frac_width": 4}}}
    torch.save({"state_dict": state_dict, "model_name": model_name, "quantize": quantize, **extra}, path)
    return path


def test_load_transformed_builds_the_model_for_the_saved_dataset(tmp_path):
    from labkit.data.base import DatasetInfo
    from labkit.models import get_model
    from labkit.transform import _info_dict

    info = DatasetInfo("eight-features", num_features=8, num_classes=3)
    model = get_model("jsc-tiny", info)
    path = _save_transformed(tmp_path / "t.pt", "jsc-tiny", model.state_dict(),
                             dataset_name=info.name, dataset_info=_info_dict(info))
    mg = load_transformed(path)  # no info given: the saved one, 8 features and 3 classes
    assert type(mg.modules["seq_blocks.2"]).__name__ == "LinearInteger"
    assert mg.model(torch.randn(4, 8)).shape == (4, 3)
    with pytest.raises(ValueError, match="t.pt was transformed on 'eight-features' with num_features=8, "
                                         "but info has num_features=16"):
        load_transformed(path, info=DatasetInfo("jsc"))


def test_load_transformed_with_the_wrong_weights_names_the_file_and_model(tmp_path):
    from labkit.models import get_model

    path = _save_transformed(tmp_path / "wrong.pt", "jsc-custom", get_model("jsc-tiny").state_dict())
    with pytest.raises(ValueError, match="transformed model .*wrong.pt does not fit model 'jsc-custom': "
                                         "Error.* loading state_dict"):
        load_transformed(path)
