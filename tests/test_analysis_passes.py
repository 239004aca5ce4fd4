"""Report passes and statistical profiling, checked against known values and numpy."""

import numpy as np
import pandas as pd
import pytest
import torch

from labkit.data.base import DatasetInfo, JSCData
from labkit.data.loaders import JSCDataModule
from labkit.graph import MaseGraph
from labkit.models import MODELS, get_model
from labkit.passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
from labkit.passes.profile import (
    AbsMean,
    RangeMinMax,
    RangeQuantile,
    VarianceOnline,
    VariancePrecise,
    make_statistic,
    profile_statistics_analysis_pass,
)
from labkit.passes.report import (
    report_graph_analysis_pass,
    report_node_meta_param_analysis_pass,
    report_node_shape_analysis_pass,
    report_node_type_analysis_pass,
)
from models_zoo import EXTRA_MODELS, dummy_input

QUIET = {"verbose": False}


def build(model, batch=8):
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": dummy_input(batch)}})
    return mg


# --- report_graph_analysis_pass ---------------------------------------------------------------

def test_report_graph_jsc_tiny(capsys):
    mg = build(get_model("jsc-tiny"))
    mg2, info = report_graph_analysis_pass(mg)
    assert mg2 is mg
    assert info["count"] == {"placeholder": 1, "get_attr": 0, "call_function": 0,
                             "call_method": 0, "call_module": 4, "output": 1}
    assert list(info["table"].columns) == ["opcode", "name", "target", "args", "kwargs"]
    assert info["table"]["opcode"].tolist() == ["placeholder"] + ["call_module"] * 4 + ["output"]
    assert info["table"].loc[3, "target"] == "seq_blocks.2"
    assert [repr(m) for m in info["layer_types"]][2] == "Linear(in_features=16, out_features=5, bias=True)"
    assert "def forward(self, x)" in info["code"]
    printed = capsys.readouterr().out
    assert "Network overview:" in printed and "'call_module': 4" in printed
    assert "Linear(in_features=16, out_features=5, bias=True)" in printed


def test_report_graph_writes_the_file_instead_of_printing(tmp_path, capsys):
    mg = build(get_model("jsc-tiny"))
    path = tmp_path / "reports" / "graph.txt"
    _, info = report_graph_analysis_pass(mg, {"file_name": path})
    assert capsys.readouterr().out == ""
    assert path.read_text() == info["text"]
    report_graph_analysis_pass(mg, str(tmp_path / "g2.txt"))  # a bare path works too
    assert (tmp_path / "g2.txt").exists()


def test_report_graph_counts_every_opcode():
    _, info = report_graph_analysis_pass(build(EXTRA_MODELS["get_attr"]()), QUIET)
    assert info["count"] == {"placeholder": 1, "get_attr": 2, "call_function": 2,
                             "call_method": 0, "call_module": 1, "output": 1}
    targets = info["table"].set_index("name")["target"]
    assert targets["matmul"] == "torch.matmul" and targets["mul"] == "operator.mul"
    _, info = report_graph_analysis_pass(build(EXTRA_MODELS["method"]()), QUIET)
    assert info["count"]["call_method"] == 2


def test_pass_args_are_checked():
    mg = build(get_model("jsc-tiny"))
    with pytest.raises(ValueError, match="unknown pass_args \\['filename'\\]"):
        report_graph_analysis_pass(mg, {"filename": "x.txt"})
    with pytest.raises(TypeError, match="must be a dict"):
        report_node_type_analysis_pass(mg, 3)
    with pytest.raises(ValueError, match="which=.*choose from"):
        report_node_meta_param_analysis_pass(mg, {"which": ("commons",), "verbose": False})


def test_reports_need_metadata():
    mg = MaseGraph(get_model("jsc-tiny"))
    with pytest.raises(ValueError, match="add_common_metadata_analysis_pass"):
        report_node_type_analysis_pass(mg, QUIET)
    _, info = report_graph_analysis_pass(mg, QUIET)  # the graph report does not need it
    assert info["count"]["call_module"] == 4


@pytest.mark.parametrize("name", sorted(EXTRA_MODELS) + sorted(MODELS.names()))
def test_every_model_kind_is_reported(name):
    model = EXTRA_MODELS[name]() if name in EXTRA_MODELS else get_model(name)
    mg = build(model)
    n = len(mg.nodes)
    _, g = report_graph_analysis_pass(mg, QUIET)
    assert sum(g["count"].values()) == n
    assert len(g["layer_types"]) == g["count"]["call_module"]
    for report in (report_node_type_analysis_pass, report_node_shape_analysis_pass,
                   report_node_meta_param_analysis_pass):
        _, info = report(mg, QUIET)
        assert isinstance(info["table"], pd.DataFrame) and len(info["table"]) == n
        assert info["table"]["Node name"].tolist() == [x.name for x in mg.nodes]


# --- node reports -----------------------------------------------------------------------------------

def test_node_type_report(capsys):
    mg = build(get_model("jsc-tiny"))
    _, info = report_node_type_analysis_pass(mg)
    t = info["table"].set_index("Node name")
    assert t.loc["seq_blocks_0", "Mase type"] == "module" and t.loc["seq_blocks_0", "Mase op"] == "batch_norm1d"
    assert t.loc["seq_blocks_2", "Mase op"] == "linear" and t.loc["seq_blocks_2", "Value type"] == "float[32]"
    assert "module_related_func" in capsys.readouterr().out


def test_node_shape_report():
    mg = build(get_model("jsc-tiny"))
    _, info = report_node_shape_analysis_pass(mg, QUIET)
    row = info["table"].set_index("Node name").loc["seq_blocks_2"]
    assert row["Inputs"] == "data_in_0=[8, 16], weight=[5, 16], bias=[5]"
    assert row["Outputs"] == "data_out_0=[8, 5]"


def test_meta_param_report_columns_and_save(tmp_path):
    mg = build(get_model("jsc-tiny"))
    _, info = report_node_meta_param_analysis_pass(mg, {"which": ("common", "software"), "verbose": False,
                                                        "save_path": tmp_path / "meta.txt"})
    assert list(info["table"].columns) == ["Node name", "Fx Node op", "Mase type", "Mase op",
                                           "Common Param", "Software Param"]
    cell = info["table"].set_index("Node name").loc["seq_blocks_2", "Common Param"]
    assert "'weight'" in cell and "[5, 16]" in cell
    assert (tmp_path / "meta.txt").read_text() == info["text"]
    _, all_info = report_node_meta_param_analysis_pass(mg, QUIET)
    assert "Hardware Param" in all_info["table"].columns


# --- statistics against numpy -----------------------------------------------------------------------

def batches_of(seed=0, sizes=(7, 16, 3, 11), width=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, width, generator=g) * (1 + torch.arange(width)) + torch.arange(width) for b in sizes]


def feed(stat, xs):
    for x in xs:
        stat.update(x)
    return stat.compute()


def test_variance_online_matches_numpy_over_batches():
    xs = batches_of()
    allx = torch.cat(xs).double().numpy()
    out = feed(VarianceOnline(dims="all"), xs)
    assert out["count"] == allx.size
    assert out["mean"] == pytest.approx(allx.mean(), rel=1e-12)
    assert out["variance"] == pytest.approx(np.var(allx), rel=1e-12)
    per_col = feed(VarianceOnline(dims=[1]), xs)  # keep the feature dim: one value per column
    np.testing.assert_allclose(per_col["variance"], np.var(allx, axis=0), rtol=1e-12)
    np.testing.assert_allclose(per_col["mean"], allx.mean(axis=0), rtol=1e-12)
    assert per_col["count"] == allx.shape[0]


def test_variance_precise_matches_numpy():
    xs = batches_of(1)
    allx = torch.cat(xs).double().numpy()
    out = feed(VariancePrecise(dims="all"), xs)  # unbiased, as torch.var and MASE's variance_precise
    assert out["variance"] == pytest.approx(np.var(allx, ddof=1), rel=1e-12)
    per_col = feed(VariancePrecise(dims=[-1]), xs)
    np.testing.assert_allclose(per_col["variance"], np.var(allx, axis=0, ddof=1), rtol=1e-12)


def test_online_equals_precise_on_a_3d_tensor_keeping_two_dims():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(b, 3, 5, generator=g) for b in (2, 6, 1)]
    a = feed(VarianceOnline(dims=[1, 2]), xs)  # population variance
    b = feed(VariancePrecise(dims=[1, 2]), xs)  # unbiased: n / (n - 1) times as large, n = 9 rows
    np.testing.assert_allclose(np.array(a["variance"]) * 9 / 8, b["variance"], rtol=1e-10)
    assert np.array(a["variance"]).shape == (3, 5)
    np.testing.assert_allclose(a["variance"], torch.cat(xs).double().var(0, correction=0).numpy(), rtol=1e-10)


def test_range_min_max_and_abs():
    xs = batches_of(3)
    allx = torch.cat(xs).numpy()
    out = feed(RangeMinMax(), xs)
    assert out["min"] == pytest.approx(allx.min()) and out["max"] == pytest.approx(allx.max())
    assert out["range"] == pytest.approx(allx.max() - allx.min())
    per_col = feed(RangeMinMax(dims=[1], abs=True), xs)
    np.testing.assert_allclose(per_col["max"], np.abs(allx).max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(per_col["min"], np.abs(allx).min(axis=0), rtol=1e-6)


def test_range_quantile_matches_numpy():
    xs = batches_of(4)
    allx = torch.cat(xs).double().numpy()
    out = feed(RangeQuantile(quantile=0.97), xs)
    assert out["max"] == pytest.approx(np.quantile(allx, 0.97), rel=1e-12)
    assert out["min"] == pytest.approx(np.quantile(allx, 0.03), rel=1e-12)
    per_col = feed(RangeQuantile(quantile=0.9, dims=[1]), xs)
    np.testing.assert_allclose(per_col["max"], np.quantile(allx, 0.9, axis=0), rtol=1e-12)
    # a known case: 0..100 -> the 0.97-quantile is 97, the 0.03-quantile is 3
    known = feed(RangeQuantile(quantile=0.97), [torch.arange(0, 51.0), torch.arange(51, 101.0)])
    assert known == {"min": pytest.approx(3.0), "max": pytest.approx(97.0), "range": pytest.approx(94.0)}


def test_abs_mean():
    out = feed(AbsMean(), [torch.tensor([-1.0, 2.0]), torch.tensor([[-3.0, 4.0, -5.0]])])
    assert out == {"abs_mean": pytest.approx(3.0), "count": 5}


def test_statistic_config_errors():
    with pytest.raises(ValueError, match="unknown statistic 'variance'|variance_online"):
        make_statistic("variance", {})
    with pytest.raises(ValueError, match="unknown options \\['quantile'\\]"):
        make_statistic("variance_online", {"quantile": 0.9})
    with pytest.raises(ValueError, match="dims must be 'all' or a list"):
        make_statistic("abs_mean", {"dims": "channels"})
    with pytest.raises(ValueError, match="quantile must be"):
        make_statistic("range_quantile", {"quantile": 97})
    with pytest.raises(ValueError, match="dim 3 is out of range"):
        VarianceOnline(dims=[3]).update(torch.zeros(2, 2))
    s = VarianceOnline(dims=[0])
    s.update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="not the batch dim"):
        s.update(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="seen no data"):
        AbsMean().compute()


# --- profile_statistics_analysis_pass ----------------------------------------------------------------

def spec_pass_args(input_generator, num_samples=96, **extra):
    return {
        "by": "type",
        "target_weight_nodes": ["linear"],
        "target_activation_nodes": ["relu"],
        "weight_statistics": {"variance_precise": {"device": "cpu", "dims": "all"}},
        "activation_statistics": {"range_quantile": {"device": "cpu", "dims": "all", "quantile": 0.97}},
        "input_generator": input_generator,
        "num_samples": num_samples,
        "progress": False,
        **extra,
    }


def test_profile_jsc_tiny_weights_and_activations_against_numpy():
    model = get_model("jsc-tiny")
    mg = build(model)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 16, generator=g), torch.zeros(32, dtype=torch.long)) for _ in range(5)]
    mg, info = profile_statistics_analysis_pass(mg, spec_pass_args(data, num_samples=96))
    assert info["num_batches"] == 3  # num_samples counts samples: 96 / 32 per batch
    # weights: the linear layer's weight, exactly
    w = model.seq_blocks[2].weight.detach().double().numpy()
    sw = mg.node("seq_blocks_2").meta["mase"].parameters["software"]
    assert sw["args"]["weight"]["stat"]["variance_precise"]["variance"] == pytest.approx(np.var(w, ddof=1), rel=1e-12)
    b = model.seq_blocks[2].bias.detach().double().numpy()  # the bias too, as MASE profiles it
    assert sw["args"]["bias"]["stat"]["variance_precise"]["variance"] == pytest.approx(np.var(b, ddof=1), rel=1e-12)
    # activations: the first ReLU sees BatchNorm's output; in eval mode with fresh running
    # stats that is x / sqrt(1 + eps), over the first 3 batches only
    x = torch.cat([b[0] for b in data[:3]]).double().numpy() / np.sqrt(1 + 1e-5)
    stat = mg.node("seq_blocks_1").meta["mase"].parameters["software"]["args"]["data_in_0"]["stat"]
    assert stat["range_quantile"]["max"] == pytest.approx(np.quantile(x, 0.97), rel=1e-6)
    assert stat["range_quantile"]["min"] == pytest.approx(np.quantile(x, 0.03), rel=1e-6)
    assert stat["range_quantile"]["min"] < 0  # seen before the in-place ReLU clipped it
    # the info table has every value
    t = info["table"]
    assert set(t["node"]) == {"seq_blocks_1", "seq_blocks_2", "seq_blocks_3"}
    assert set(t["mase_op"]) == {"relu", "linear"}
    row = t[(t.node == "seq_blocks_2") & (t.tensor == "weight") & (t.statistic == "variance_precise") & (t.key == "variance")]
    assert row["value"].item() == pytest.approx(np.var(w, ddof=1), rel=1e-12)


def test_profile_with_a_datamodule_and_by_name():
    g = torch.Generator().manual_seed(1)
    x = lambda n: torch.randn(n, 16, generator=g)  # noqa: E731
    y = lambda n: torch.randint(0, 5, (n,), generator=g)  # noqa: E731
    data = JSCData(DatasetInfo("test"), x(100), y(100), x(40), y(40), x(40), y(40))
    dm = JSCDataModule(batch_size=25, data=data)
    model = get_model("jsc-custom")
    mg = build(model)
    state = {k: v.clone() for k, v in mg.model.state_dict().items()}
    mg.model.train()
    args = spec_pass_args(dm, num_samples=1000, by="name", target_weight_nodes=["seq_blocks_6"],
                          target_activation_nodes=["seq_blocks_2"],
                          activation_statistics={"variance_online": {"dims": [1]}, "abs_mean": {}})
    mg, info = profile_statistics_analysis_pass(mg, args)
    assert info["num_batches"] == 4  # the train split has only 100 / 25 batches
    stat = mg.node("seq_blocks_2").meta["mase"].parameters["software"]["args"]["data_in_0"]["stat"]
    assert len(stat["variance_online"]["variance"]) == 16 and stat["variance_online"]["count"] == 100
    assert stat["abs_mean"]["count"] == 1600
    # the input of seq_blocks_2 is relu(bn(x)) on the train split: recompute it
    gm = mg.model
    gm.eval()
    with torch.no_grad():
        h = mg.modules["seq_blocks.1"](mg.modules["seq_blocks.0"](data.x_train.clone())).double().numpy()
    gm.train()
    np.testing.assert_allclose(stat["variance_online"]["variance"], np.var(h, axis=0), rtol=1e-6, atol=1e-12)
    assert stat["abs_mean"]["abs_mean"] == pytest.approx(np.abs(h).mean(), rel=1e-6)
    # the model is untouched: training flag back, BatchNorm stats unchanged
    assert mg.model.training
    assert all(torch.equal(state[k], v) for k, v in mg.model.state_dict().items())


def test_profile_accepts_dict_and_tensor_batches():
    mg = build(get_model("jsc-tiny"))
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(8, 16, generator=g) for _ in range(2)]
    args = spec_pass_args([{"x": x} for x in xs], num_samples=16, target_weight_nodes=[])
    _, a = profile_statistics_analysis_pass(mg, args)
    _, b = profile_statistics_analysis_pass(mg, {**args, "input_generator": iter(xs)})
    assert a["stats"] == b["stats"] and a["num_batches"] == 2


def test_profile_extra_models():
    for kind, targets in (("conv2d", ["conv2d", "linear"]), ("conv1d", ["conv1d"]), ("residual", ["linear"])):
        mg = build(EXTRA_MODELS[kind]())
        args = spec_pass_args([dummy_input(8, s) for s in range(2)], num_samples=16, target_weight_nodes=targets,
                              target_activation_nodes=targets)
        _, info = profile_statistics_analysis_pass(mg, args)
        assert info["num_batches"] == 2
        assert set(info["table"]["mase_op"]) == set(targets)


def test_profile_errors():
    mg = build(get_model("jsc-tiny"))
    data = [dummy_input(4)]
    with pytest.raises(ValueError, match=r"\['linaer'\] match no node by type"):
        profile_statistics_analysis_pass(mg, spec_pass_args(data, target_weight_nodes=["linaer"]))
    with pytest.raises(ValueError, match="by must be one of 'type', 'name', got"):
        profile_statistics_analysis_pass(mg, spec_pass_args(data, by="op"))
    with pytest.raises(ValueError, match="without a weight: \\['seq_blocks_1', 'seq_blocks_3'\\]"):
        profile_statistics_analysis_pass(mg, spec_pass_args(data, target_weight_nodes=["relu"]))
    with pytest.raises(ValueError, match="needs an input_generator"):
        profile_statistics_analysis_pass(mg, spec_pass_args(None))
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        profile_statistics_analysis_pass(mg, spec_pass_args(data, num_samples=0))
    with pytest.raises(ValueError, match="yielded no batches"):
        profile_statistics_analysis_pass(mg, spec_pass_args([]))
    with pytest.raises(TypeError, match="LightningDataModule or an iterable"):
        profile_statistics_analysis_pass(mg, spec_pass_args(3))
    with pytest.raises(ValueError, match="add_common_metadata_analysis_pass"):
        profile_statistics_analysis_pass(MaseGraph(get_model("jsc-tiny")), spec_pass_args(data))


# --- review fixes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("report", [report_graph_analysis_pass, report_node_meta_param_analysis_pass,
                                    report_node_type_analysis_pass, report_node_shape_analysis_pass])
def test_reports_need_a_mase_graph(report):
    with pytest.raises(TypeError, match=f"{report.__name__} expects a MaseGraph.*got JSC_Tiny; "
                                        "build one with MaseGraph\\(model=model\\)"):
        report(get_model("jsc-tiny"), QUIET)


def test_report_files_are_written_whole(tmp_path):
    mg = build(get_model("jsc-tiny"))
    path = tmp_path / "deep" / "er" / "meta.txt"
    _, info = report_node_meta_param_analysis_pass(mg, {"save_path": path, "verbose": False})
    assert path.read_text() == info["text"]
    assert [p.name for p in path.parent.iterdir()] == ["meta.txt"]  # no temporary file left behind


def test_statistic_device_is_checked():
    with pytest.raises(ValueError, match="statistic 'range_min_max': device must be one of .*got 'gpu'"):
        make_statistic("range_min_max", {"device": "gpu"})
    with pytest.raises(ValueError, match="statistic 'abs_mean': device must be one of .*got 'tpu'"):
        make_statistic("abs_mean", {"device": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available on this machine; use 'cpu'"):
            make_statistic("variance_online", {"device": "cuda"})
    assert make_statistic("abs_mean", {"device": "cpu"}).device == torch.device("cpu")


def test_profile_target_lists_are_checked():
    mg = build(get_model("jsc-tiny"))
    data = [dummy_input(4)]
    _, info = profile_statistics_analysis_pass(mg, spec_pass_args(data, target_weight_nodes=None))
    assert set(info["table"]["tensor"]) == {"data_in_0"}  # None: no weight nodes
    with pytest.raises(TypeError, match="target_activation_nodes must be a list of mase ops, got 5"):
        profile_statistics_analysis_pass(mg, spec_pass_args(data, target_activation_nodes=5))


def test_profile_gives_every_layer_back_its_own_mode():
    mg = build(get_model("jsc-custom"))
    mg.model.train()
    bn = mg.modules["seq_blocks.0"]
    bn.eval()  # frozen BatchNorm statistics while the rest trains
    profile_statistics_analysis_pass(mg, spec_pass_args([dummy_input(4)]))
    assert mg.model.training and mg.modules["seq_blocks.2"].training and not bn.training
