"""Checkpoints written in MASE's format (tests/mase_format.py) load into labkit's zoo.

MASE's trainer saves a Lightning ``.ckpt`` whose state dict is the wrapper's (``model.``
prefixed keys, no model name); its ``pt`` type is a plain ``state_dict``. labkit reads both
with ``weights_only=True``."""

import os
from pathlib import Path

import pytest
import torch

from labkit import count_parameters, evaluate, get_model, load_model
from labkit.cli import main
from labkit.training import read_checkpoint

from mase_format import write_mase_lightning_ckpt, write_mase_pt

TINY = ["--data-size", "2000"]

# The parameter names and shapes of MASE's jsc-s and jsc-trt, read off its definitions
# (src/chop/models/jet_substructure): layer index -> (kind, width in, width out).
MASE_JSC_S = {0: ("bn", 16), 2: ("fc", 16, 64), 3: ("bn", 64), 5: ("fc", 64, 32), 7: ("fc", 32, 32),
              9: ("fc", 32, 32), 11: ("fc", 32, 5), 12: ("bn", 5)}
MASE_JSC_TRT = {0: ("bn", 16), 2: ("fc", 16, 32), 3: ("bn", 32), 5: ("fc", 32, 48), 6: ("bn", 48),
                9: ("fc", 48, 16), 10: ("bn", 16), 12: ("fc", 16, 5), 13: ("bn", 5)}


def _expected_shapes(layers: dict, prefix: str) -> dict:
    shapes = {}
    for i, (kind, *w) in layers.items():
        if kind == "fc":
            shapes[f"{prefix}.{i}.weight"], shapes[f"{prefix}.{i}.bias"] = (w[1], w[0]), (w[1],)
        else:
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.{i}.{name}"] = (w[0],)
            shapes[f"{prefix}.{i}.num_batches_tracked"] = ()
    return shapes


@pytest.mark.parametrize("name, layers, prefix, n_params", [
    ("jsc-s", MASE_JSC_S, "module_list", 5615),
    ("jsc-trt", MASE_JSC_TRT, "seq_blocks", 3231),
])
def test_zoo_models_have_mases_parameter_names(name, layers, prefix, n_params):
    model = get_model(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == _expected_shapes(layers, prefix)
    assert count_parameters(model) == n_params


@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-s", "jsc-trt"])
def test_mase_lightning_checkpoint_loads_with_load_type_pl(name, tmp_path):
    torch.manual_seed(1)
    trained = get_model(name)
    path = write_mase_lightning_ckpt(trained, tmp_path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith("model.") for k in raw["state_dict"]) and "hyper_parameters" not in raw
    torch.manual_seed(2)  # a different initialisation: every value must come from the file
    loaded = load_model(name, path, "pl")
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("wrapped", [False, True])
def test_mase_pt_state_dict_loads_with_load_type_pt(tmp_path, wrapped):
    torch.manual_seed(3)
    trained = get_model("jsc-s")
    path = write_mase_pt(trained, tmp_path / "jsc-s.pt", wrapped=wrapped)
    loaded = load_model("jsc-s", path, "pt")
    x = torch.randn(32, 16)
    assert torch.equal(loaded.eval()(x), trained.eval()(x))


def test_wrong_load_type_is_one_clear_line(tmp_path):
    ckpt = write_mase_lightning_ckpt(get_model("jsc-tiny"), tmp_path)
    pt = write_mase_pt(get_model("jsc-tiny"), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="is not a Lightning checkpoint .*use load_type='pt'"):
        load_model("jsc-tiny", pt, "pl")
    with pytest.raises(ValueError, match="is a Lightning checkpoint, not a torch state dict; .*--load-type pl") as e:
        load_model("jsc-tiny", ckpt, "pt")
    assert "\n" not in str(e.value)


class NotWeights:  # what a wrapper's save_hyperparameters could pickle (e.g. a dataset-info object)
    pass


def test_a_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in get_model("jsc-tiny").state_dict().items()},
                "hyper_parameters": {"dataset_info": NotWeights()}}, path)
    with pytest.raises(ValueError, match="could not read checkpoint .*pickled objects labkit will not load"):
        read_checkpoint(path, "pl")


@pytest.fixture(scope="module")
def mase_ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mase-ckpts")
    torch.manual_seed(4)
    return {name: write_mase_lightning_ckpt(get_model(name), folder / name) for name in ("jsc-s", "jsc-trt")}


def test_cli_test_reads_a_mase_ckpt(mase_ckpts, capsys):
    code = main(["test", "jsc-trt", "jsc-synthetic", "--load", str(mase_ckpts["jsc-trt"]), "--load-type", "pl",
                 "--task", "cls", "--cpu=0", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "test jsc-trt" in out and "acc 0." in out


def test_cli_transform_by_name_on_a_mase_jsc_s(mase_ckpts, tmp_path, capsys):
    """MASE's node names (module_list_2 ...) address jsc-s's layers in a by-name config."""
    toml = tmp_path / "by_name.toml"
    toml.write_text('model = "jsc-s"\ndataset = "jsc-synthetic"\nproject = "mase-jsc-s"\n'
                    '[passes.quantize]\nby = "name"\n[passes.quantize.default.config]\nname = "NA"\n'
                    '[passes.quantize.module_list_2.config]\nname = "integer"\n'
                    'data_in_width = 8\ndata_in_frac_width = 4\nweight_width = 8\nweight_frac_width = 4\n'
                    'bias_width = 8\nbias_frac_width = 4\n')
    code = main(["transform", "--config", str(toml), "--load", str(mase_ckpts["jsc-s"]), "--load-type", "pl",
                 *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(1 nodes changed)" in out


def test_cli_train_starts_from_a_mase_checkpoint(mase_ckpts, capsys):
    """`ch train --load`: training continues from the checkpoint's weights."""
    start = torch.load(mase_ckpts["jsc-trt"], weights_only=True)["state_dict"]["model.seq_blocks.2.weight"]
    code = main(["train", "jsc-trt", "jsc-synthetic", "--load", str(mase_ckpts["jsc-trt"]), "--load-type", "pl",
                 "--max-epochs", "1", "--learning-rate", "1e-9", "--project", "mase-finetune", "--no-progress",
                 *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    last = Path(os.environ["LABKIT_OUTPUT_DIR"]) / "mase-finetune" / "software" / "training_ckpts" / "last.ckpt"
    after = read_checkpoint(last)["state_dict"]["seq_blocks.2.weight"]
    assert torch.allclose(after, start, atol=1e-6)  # a 1e-9 learning rate barely moves it
    torch.manual_seed(0)
    assert not torch.allclose(get_model("jsc-trt").state_dict()["seq_blocks.2.weight"], start, atol=1e-2)
