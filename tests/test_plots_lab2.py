"""Lab-2 plotting helpers: the values they collect are the layers' real ones."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch
import torch.nn as nn

from labkit.graph import MaseGraph
from labkit.models import get_model
from labkit.passes.flops import analyse_flops_pass
from labkit.passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
from labkit.plots import layer_values, plot_accuracy_vs_cost, plot_layer_distributions, plot_per_layer


def _graph(name="jsc-tiny", seed=0):
    torch.manual_seed(seed)
    model = get_model(name).eval()
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": x}})
    return mg, model, x


def test_layer_values_match_the_model():
    mg, model, x = _graph()
    values = layer_values(mg, x)
    assert list(values) == ["seq_blocks_0", "seq_blocks_1", "seq_blocks_2", "seq_blocks_3"]
    assert [v["op"] for v in values.values()] == ["batch_norm1d", "relu", "linear", "relu"]
    # the first layer sees the raw batch; the linear layer sees relu(batch_norm(x))
    assert torch.equal(values["seq_blocks_0"]["activation"], x)
    bn, lin = model.seq_blocks[0], model.seq_blocks[2]
    expected = torch.relu(bn(x))
    assert torch.allclose(values["seq_blocks_2"]["activation"], expected)
    assert torch.equal(values["seq_blocks_2"]["weight"], lin.weight.detach())
    assert values["seq_blocks_1"]["weight"] is None


def test_layer_values_keep_relu_inputs_before_inplace_relu():
    mg, model, x = _graph()
    assert model.seq_blocks[1].inplace  # jsc-tiny's ReLU overwrites its input
    values = layer_values(mg, x, ops=["relu"])
    assert list(values) == ["seq_blocks_1", "seq_blocks_3"]
    assert (values["seq_blocks_1"]["activation"] < 0).any()  # the pre-ReLU values survived


def test_layer_values_restores_training_mode_and_rejects_bad_input():
    mg, _, x = _graph()
    mg.model.train()
    layer_values(mg, x)
    assert mg.model.training
    with pytest.raises(ValueError, match="conv2d"):
        layer_values(mg, x, ops=["conv2d"])
    with pytest.raises(TypeError, match="MaseGraph"):
        layer_values(nn.Linear(16, 5), x)
    with pytest.raises(TypeError, match="tensor"):
        layer_values(mg, [x])


def test_layer_values_keeps_each_submodules_own_mode():
    # a training model whose BatchNorm is frozen in eval mode (as when fine-tuning with fixed
    # statistics): after layer_values the model trains again but the BatchNorm stays frozen
    mg, _, x = _graph()
    mg.model.train()
    bn = mg.model.get_submodule("seq_blocks.0")
    assert isinstance(bn, nn.BatchNorm1d)
    bn.eval()
    stats = bn.running_mean.clone(), bn.running_var.clone()
    layer_values(mg, x)
    assert mg.model.training and mg.model.get_submodule("seq_blocks.2").training
    assert not bn.training
    # and layer_values itself ran in eval mode: the running statistics were not updated
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_plot_layer_distributions_draws_one_box_per_layer():
    mg, _, x = _graph("jsc-custom")
    values = layer_values(mg, x)
    fig = plot_layer_distributions(values, kind="box")
    weights_ax, acts_ax = fig.axes[:2]
    n_weighted = sum(v["weight"] is not None for v in values.values())
    assert len(weights_ax.get_yticklabels()) == n_weighted
    assert len(acts_ax.get_yticklabels()) == len(values)
    fig = plot_layer_distributions(values, kind="hist")
    assert len(fig.axes) == 2 * len(values)
    with pytest.raises(ValueError, match="kind"):
        plot_layer_distributions(values, kind="violin")


def test_plot_per_layer_bars_follow_the_tables():
    mg, _, _ = _graph("jsc-custom")
    _, info = analyse_flops_pass(mg, {"print": False})
    half = info["table"].copy()
    half["Forward bitops"] = half["Forward bitops"] / 2
    ax = plot_per_layer({"float32": info["table"], "half": half}, "Forward bitops", log=False)
    layers = info["table"][(info["table"]["Node name"] != "total") & info["table"]["Forward bitops"].notna()]
    bars = ax.patches
    assert len(bars) == 2 * len(layers)
    heights = [b.get_height() for b in bars]
    assert heights[:len(layers)] == list(layers["Forward bitops"])
    assert heights[len(layers):] == list(layers["Forward bitops"] / 2)
    ax = plot_per_layer({"float32": info["table"]}, "Forward bitops", log=True)
    assert ax.get_yscale() == "symlog"
    assert ax.get_ylim()[1] >= layers["Forward bitops"].max()  # the tallest bar is not clipped
    with pytest.raises(ValueError, match="column"):
        plot_per_layer({"a": info["table"]}, "nope")


def test_plot_accuracy_vs_cost_one_line_per_format_and_mode():
    df = pd.DataFrame({"format": ["float", "integer", "integer", "integer", "integer"],
                       "mode": ["float", "ptq", "ptq", "qat", "qat"], "width": [32, 8, 4, 8, 4],
                       "test_acc": [0.7, 0.69, 0.5, 0.7, 0.6], "bitops": [1024.0, 64, 16, 64, 16]})
    ax = plot_accuracy_vs_cost(df, "bitops")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["integer PTQ", "integer QAT", "float32"]
    assert list(ax.get_lines()[0].get_xdata()) == [16, 64]
    with pytest.raises(ValueError, match="size_bits"):
        plot_accuracy_vs_cost(df, "size_bits")


def test_plot_weight_quantisation_counts_the_levels():
    from labkit.plots import plot_weight_quantisation
    from labkit.quantize.quantizers import IntegerQuantizer

    w = torch.linspace(-0.6, 0.6, 101)
    q = IntegerQuantizer(width=2, frac_width=2)(w)   # 2-bit fixed point: -0.5, -0.25, 0, 0.25
    fig = plot_weight_quantisation({"fc": (w, q)})
    hist_ax, curve_ax = fig.axes
    assert "4 distinct values" in hist_ax.get_legend().get_texts()[1].get_text()
    xs, ys = curve_ax.get_lines()[0].get_data()
    assert sorted(set(ys.tolist())) == [-0.5, -0.25, 0.0, 0.25]
    assert list(xs) == sorted(xs)
    with pytest.raises(ValueError, match="shape"):
        plot_weight_quantisation({"fc": (w, q[:10])})
    with pytest.raises(TypeError, match="pair"):
        plot_weight_quantisation({"fc": w})


def test_titles_name_the_data_as_its_label_does():
    from types import SimpleNamespace

    from labkit.data import DatasetInfo
    from labkit.plots import titled
    for synthetic in (True, False):
        info = DatasetInfo("jsc-synthetic" if synthetic else "jsc", synthetic=synthetic)
        assert titled("acc", info) == f"acc\n{info.label}"
    assert "SYNTHETIC" in titled("acc", DatasetInfo("jsc-synthetic", synthetic=True))
    assert titled("acc", None) == titled("acc") == "acc"
    assert "SYNTHETIC" in titled("acc", SimpleNamespace(name="mine", synthetic=True))  # no label of its own
