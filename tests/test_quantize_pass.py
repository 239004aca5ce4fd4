"""quantize_transform_pass, summarize_quantization_analysis_pass and auto_frac_width_pass."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit.graph import MaseGraph, get_node_actual_target
from labkit.models import get_model
from labkit.passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
from labkit.passes.quantize import (
    auto_frac_width_pass,
    auto_quantize_config,
    integer_frac_width,
    minifloat_exponent_bias,
    quantize_transform_pass,
    summarize_quantization_analysis_pass,
)
from labkit.quantize.modules import LinearInteger, ReLUInteger
from labkit.quantize.quantizers import IntegerQuantizer, MinifloatQuantizer

INT8_LINEAR = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
               "weight_width": 8, "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}
TINY_ARGS = {"by": "type", "default": {"config": {"name": None}}, "linear": {"config": INT8_LINEAR}}
# The lab report's pass_args for jsc-custom (linear at 2 bits, relu at 8).
CUSTOM_ARGS = {
    "by": "type",
    "default": {"config": {"name": None}},
    "linear": {"config": {"name": "integer",
                          "data_in_width": 2, "data_in_frac_width": 2,
                          "weight_width": 2, "weight_frac_width": 2,
                          "bias_width": 2, "bias_frac_width": 2}},
    "relu": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4}},
}


def mase_graph(model, batch=8, seed=0):
    torch.manual_seed(seed)
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": torch.randn(batch, 16)}})
    return mg


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return mase_graph(get_model("jsc-tiny"))


@pytest.fixture
def custom():
    torch.manual_seed(0)
    return mase_graph(get_model("jsc-custom"))


def table(summary: pd.DataFrame) -> dict:
    return {row["Original type"]: (row["OP"], row["Total"], row["Changed"], row["Unchanged"])
            for _, row in summary.iterrows()}


# --- the lab report's two summary tables ------------------------------------------------------

def test_jsc_tiny_by_type_changes_only_the_linear(tiny, capsys):
    ori_mg = copy.deepcopy(tiny)
    mg, info = quantize_transform_pass(tiny, TINY_ARGS)
    assert info["changed"] == ["seq_blocks_2"]
    _, summary = summarize_quantization_analysis_pass(mg, {"original_graph": ori_mg, "save_dir": None})
    assert table(summary["summary"]) == {
        "BatchNorm1d": ("batch_norm1d", 1, 0, 1),
        "Linear": ("linear", 1, 1, 0),
        "ReLU": ("relu", 2, 0, 2),
        "output": ("output", 1, 0, 1),
        "x": ("placeholder", 1, 0, 1),
    }
    assert list(summary["summary"].columns) == ["Original type", "OP", "Total", "Changed", "Unchanged"]
    printed = capsys.readouterr().out
    assert "| Linear          | linear       |       1 |         1 |           0 |" in printed
    # the node-by-node traversal of the report
    targets = [(str(get_node_actual_target(a)), str(get_node_actual_target(b)))
               for a, b in zip(ori_mg.fx_graph.nodes, mg.fx_graph.nodes)]
    assert targets[3] == ("Linear(in_features=16, out_features=5, bias=True)",
                          "LinearInteger(in_features=16, out_features=5, bias=True)")
    assert all(a == b for i, (a, b) in enumerate(targets) if i != 3)


def test_jsc_custom_linear_and_relu(custom, tmp_path):
    ori_mg = copy.deepcopy(custom)
    mg, _ = quantize_transform_pass(custom, CUSTOM_ARGS)
    _, summary = summarize_quantization_analysis_pass(mg, {"original_graph": ori_mg, "save_dir": tmp_path})
    assert table(summary["summary"]) == {
        "BatchNorm1d": ("batch_norm1d", 4, 0, 4),
        "Dropout": ("dropout", 2, 0, 2),
        "Linear": ("linear", 3, 3, 0),
        "ReLU": ("relu", 4, 4, 0),
        "output": ("output", 1, 0, 1),
        "x": ("placeholder", 1, 0, 1),
    }
    nodes = summary["nodes"]
    assert list(nodes.columns) == ["Name", "MASE_TYPE", "Mase_OP", "Original type", "Quantized type", "Changed"]
    assert nodes.set_index("Name").loc["seq_blocks_4", "Quantized type"] == "ReLUInteger"
    for name in ("quantize_summary.csv", "quantize_summary.md", "quantize_nodes.csv", "quantize_nodes.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert pd.read_csv(tmp_path / "quantize_summary.csv")["Changed"].sum() == 7


def test_weights_really_are_quantised(custom):
    ori_mg = copy.deepcopy(custom)
    mg, _ = quantize_transform_pass(custom, CUSTOM_ARGS)
    layer = mg.modules["seq_blocks.2"]
    assert isinstance(layer, LinearInteger)
    quantised = layer.w_quantizer(layer.weight)
    assert set(quantised.unique().tolist()) <= {-0.5, -0.25, 0.0, 0.25}  # 2 bits, step 1/4
    assert torch.equal(layer.weight, ori_mg.modules["seq_blocks.2"].weight)  # float weights kept
    x = torch.randn(64, 16)
    mg.model.eval(), ori_mg.model.eval()
    assert not torch.allclose(mg.model(x), ori_mg.model(x))


# --- the graph given is quantised (MASE); a deepcopy made first and the traced model are not ----

def test_deepcopy_made_before_is_untouched(custom):
    ori_mg = copy.deepcopy(custom)
    before_modules = {k: type(v) for k, v in ori_mg.modules.items()}
    before_code = ori_mg.model.code
    before_meta = {n.name: copy.deepcopy(n.meta["mase"].parameters["common"]["args"]) for n in ori_mg.nodes}
    before_state = {k: v.clone() for k, v in ori_mg.model.state_dict().items()}
    args = copy.deepcopy(CUSTOM_ARGS)

    mg, _ = quantize_transform_pass(custom, args)

    assert mg is custom  # MASE's semantics: the graph given is changed and returned
    assert args == CUSTOM_ARGS  # pass_args not mutated (MASE pops "by")
    assert {k: type(v) for k, v in ori_mg.modules.items()} == before_modules
    assert ori_mg.model.code == before_code
    for n in ori_mg.nodes:
        assert n.meta["mase"].parameters["common"]["args"].keys() == before_meta[n.name].keys()
        for key, info in n.meta["mase"].parameters["common"]["args"].items():
            assert info.get("type") == before_meta[n.name][key].get("type")
            assert info.get("precision") == before_meta[n.name][key].get("precision")
    # parameters are copies: training the quantised graph leaves the copy's weights alone
    with torch.no_grad():
        for p in mg.model.parameters():
            p.add_(1.0)
    for k, v in ori_mg.model.state_dict().items():
        assert torch.equal(v, before_state[k])


def test_metadata_precision_is_updated(custom):
    mg, _ = quantize_transform_pass(custom, CUSTOM_ARGS)
    linear = mg.node("seq_blocks_2").meta["mase"].parameters["common"]
    for key in ("data_in_0", "weight", "bias"):
        assert linear["args"][key]["type"] == "integer"
        assert linear["args"][key]["precision"] == [2, 2]
    assert linear["results"]["data_out_0"]["precision"] == [32]  # outputs stay float
    relu = mg.node("seq_blocks_1").meta["mase"].parameters["common"]
    assert relu["args"]["data_in_0"]["precision"] == [8, 4]
    bn = mg.node("seq_blocks_0").meta["mase"].parameters["common"]
    assert bn["args"]["weight"] == {**bn["args"]["weight"], "type": "float", "precision": [32]}
    # the metadata's module is the new layer
    assert isinstance(mg.node("seq_blocks_2").meta["mase"].module, LinearInteger)


def test_state_dict_is_compatible(custom):
    mg, _ = quantize_transform_pass(custom, CUSTOM_ARGS)
    assert list(mg.model.state_dict()) == list(custom.model.state_dict())
    fresh = get_model("jsc-custom")
    fresh.load_state_dict(mg.model.state_dict())  # a quantised model's weights load into the float model
    mg.model.load_state_dict(custom.model.state_dict())


def test_by_name_and_default(custom):
    args = {"by": "name", "default": {"config": {"name": None}},
            "seq_blocks_6": {"config": INT8_LINEAR},
            "seq_blocks_8": {"config": {"name": "minifloat", "data_in_width": 8, "data_in_exponent_width": 4}}}
    mg, info = quantize_transform_pass(copy.deepcopy(custom), args)
    assert info["changed"] == ["seq_blocks_6", "seq_blocks_8"]
    assert type(mg.modules["seq_blocks.6"]).__name__ == "LinearInteger"
    assert type(mg.modules["seq_blocks.8"]).__name__ == "ReLUMinifloat"
    assert type(mg.modules["seq_blocks.2"]) is nn.Linear
    assert mg.node("seq_blocks_8").meta["mase"].parameters["common"]["args"]["data_in_0"]["precision"] == [8, 4, 7]

    # a default config applies to every quantisable node; weight keys are ignored by ReLUs
    mg2, info2 = quantize_transform_pass(custom, {"by": "type", "default": {"config": INT8_LINEAR}})
    kinds = {type(m).__name__ for m in mg2.modules.values()}
    assert {"LinearInteger", "ReLUInteger", "BatchNorm1dInteger", "Dropout"} <= kinds
    assert len(info2["changed"]) == 3 + 4 + 4


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x).relu()


def test_functional_relu_becomes_a_quantised_layer():
    mg = mase_graph(Functional())
    ori = copy.deepcopy(mg)
    args = {"by": "type", "default": {"config": {"name": None}},
            "relu": {"config": {"name": "integer", "data_in_width": 4, "data_in_frac_width": 1}}}
    new, info = quantize_transform_pass(mg, args)
    assert info["changed"] == ["relu", "relu_1", "relu_2"]
    relus = [n for n in new.fx_graph.nodes if n.name.startswith("relu")]
    assert all(n.op == "call_module" and isinstance(get_node_actual_target(n), ReLUInteger) for n in relus)
    assert [n.op for n in ori.fx_graph.nodes if n.name.startswith("relu")] == ["call_function"] * 2 + ["call_method"]
    x = torch.randn(32, 16)
    q = IntegerQuantizer(width=4, frac_width=1, is_signed=False)  # a ReLU's input: unsigned, as in MASE
    expected = F.relu(q(ori.model.fc3(F.relu(q(ori.model.fc2(F.relu(q(ori.model.fc1(x)))))))))
    assert torch.equal(new.model(x), expected)
    _, s = summarize_quantization_analysis_pass(new, {"original_graph": ori, "verbose": False})
    assert table(s["summary"])["relu"] == ("relu", 3, 3, 0)  # F.relu, torch.relu, x.relu() share a name
    assert new.node("relu_1").meta["mase"].parameters["common"]["args"]["data_in_0"]["precision"] == [4, 1]


# --- bad configurations -----------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    ({**TINY_ARGS, "by": "layer"}, "pass_args\\['by'\\] must be 'type' .*, 'name' .* or 'regex_name' .*, got 'layer'"),
    ({k: v for k, v in TINY_ARGS.items() if k != "by"}, "pass_args\\['by'\\] must be"),
    ({**TINY_ARGS, "linear": {"config": {**INT8_LINEAR, "weight_widht": 8}}},
     "pass_args\\['linear'\\] \\(op linear\\): unknown key 'weight_widht' \\(value 8\\)"),
    ({**TINY_ARGS, "linear": {"config": {**INT8_LINEAR, "name": "integr"}}}, "unknown quantiser 'integr'"),
    ({**TINY_ARGS, "linear": {"config": {**INT8_LINEAR, "weight_width": 0}}},
     "\\(op linear\\): weight_width must be an integer >= 1, got 0"),
    ({**TINY_ARGS, "linear": {"config": {**INT8_LINEAR, "bias_frac_width": 200}}},
     "bias_frac_width=200.* the scale 2\\^200, outside float32"),
    ({**TINY_ARGS, "linear": {"config": {"name": "integer", "data_in_width": 8}}},
     "missing key 'data_in_frac_width'"),
    ({**TINY_ARGS, "lienar": {"config": INT8_LINEAR}}, "unknown op 'lienar'.*quantisable ops: linear"),
    ({**TINY_ARGS, "linear": INT8_LINEAR}, "pass_args\\['linear'\\] must be \\{'config'"),
    ({"by": "name", "seq_blocks_9": {"config": INT8_LINEAR}}, "no node named 'seq_blocks_9'"),
    ({"by": "name", "seq_blocks_0": {"config": {**INT8_LINEAR, "weight_width": -1}}},
     "node 'seq_blocks_0' \\(batch_norm1d\\): weight_width must be"),
    ({"by": "name", "output": {"config": INT8_LINEAR}}, "node 'output' \\(output\\): op 'output' cannot be quantised"),
    ({**TINY_ARGS, "default": {"config": {"name": "integer", "data_in_width": 8}}}, "pass_args\\['default'\\]: missing key"),
    ("linear", "must be a dict"),
])
def test_bad_pass_args(tiny, args, match):
    with pytest.raises(ValueError, match=match):
        quantize_transform_pass(tiny, args)


def test_non_quantisable_ops_are_rejected_only_when_asked_for(custom):
    with pytest.raises(ValueError, match="op 'dropout' cannot be quantised; quantisable ops: linear, relu"):
        quantize_transform_pass(custom, {"by": "type", "dropout": {"config": INT8_LINEAR}})
    mg, info = quantize_transform_pass(custom, {"by": "type", "dropout": {"config": {"name": "NA"}}})
    assert info["changed"] == []


def test_functional_linear_is_rejected_when_configured():
    class FLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 16))

        def forward(self, x):
            return F.linear(x, self.w)

    mg = mase_graph(FLinear())
    with pytest.raises(ValueError, match="node 'linear' \\(linear\\): only layers .* can be quantised"):
        quantize_transform_pass(mg, {"by": "type", "linear": {"config": INT8_LINEAR}})
    _, info = quantize_transform_pass(mg, {"by": "type", "default": {"config": INT8_LINEAR}})
    assert info["changed"] == []  # under a default config it is left alone


def test_summary_errors(tiny):
    with pytest.raises(ValueError, match="needs pass_args=\\{'original_graph'"):
        summarize_quantization_analysis_pass(tiny, {})
    with pytest.raises(ValueError, match="unknown key 'orginal_graph'"):
        summarize_quantization_analysis_pass(tiny, {"original_graph": tiny, "orginal_graph": tiny})
    other = mase_graph(get_model("jsc-custom"))
    with pytest.raises(ValueError, match="different nodes"):
        summarize_quantization_analysis_pass(tiny, {"original_graph": other})


# --- automatic fractional widths --------------------------------------------------------------

def test_integer_frac_width_is_the_largest_that_does_not_saturate():
    for lo, hi, width in [(-0.5085, 0.36, 2), (0.0, 3.6, 8), (-4.1, 3.6, 4), (-0.001, 0.002, 8), (-100.0, 5.0, 6)]:
        f = integer_frac_width(lo, hi, width)
        q = IntegerQuantizer(width=width, frac_width=f)
        x = torch.tensor([lo, hi])
        assert torch.allclose(q(x), x, atol=2.0 ** -f / 2 + 1e-12)  # only rounding error, no clipping
        q_finer = IntegerQuantizer(width=width, frac_width=f + 1)
        assert (q_finer(x) - x).abs().max() > 2.0 ** -(f + 1) / 2  # one more fractional bit clips
    assert integer_frac_width(0.0, 0.0, 8) == 7


def test_minifloat_bias_covers_the_range():
    for m in (0.01, 0.7, 3.0, 300.0):
        bias = minifloat_exponent_bias(-m, m, 8, 4)
        q = MinifloatQuantizer(width=8, exponent_width=4, exponent_bias=bias)
        assert q.max_value() >= m * 0.96  # within rounding of the top value
        finer = MinifloatQuantizer(width=8, exponent_width=4, exponent_bias=bias + 1)
        assert finer.max_value() < m


def test_auto_frac_width_pass_from_a_calibration_batch(custom):
    x = torch.randn(512, 16) * 3
    _, info = auto_frac_width_pass(custom, {"width": 6, "dummy_in": x})
    args = info["pass_args"]
    assert args["by"] == "name" and set(args) == {"by", "default", "seq_blocks_1", "seq_blocks_2", "seq_blocks_4",
                                                  "seq_blocks_6", "seq_blocks_8", "seq_blocks_10", "seq_blocks_12"}
    table_ = info["table"]
    assert set(table_["operand"]) == {"data_in", "weight", "bias"} and (table_["width"] == 6).all()
    # the chosen format holds every activation of the batch without clipping
    mg, _ = quantize_transform_pass(copy.deepcopy(custom), args)
    first = mg.modules["seq_blocks.1"]
    f = args["seq_blocks_1"]["config"]["data_in_frac_width"]
    # a ReLU's input is unsigned (as MASE's ReLUInteger): 6 unsigned bits reach as far as 7 signed ones
    assert f == integer_frac_width(0.0, float(x.max()), 7)
    assert first.x_quantizer.limits()[1] + 2.0 ** -f / 2 >= float(x.max())
    # and accuracy-wise it is close to the float model at 8 bits
    _, info8 = auto_frac_width_pass(custom, {"width": 8, "dummy_in": x})
    mg8, _ = quantize_transform_pass(copy.deepcopy(custom), info8["pass_args"])
    custom.model.eval(), mg8.model.eval()
    agree = (mg8.model(x).argmax(1) == custom.model(x).argmax(1)).float().mean()
    assert agree > 0.9


def test_auto_frac_width_uses_profiled_stats_when_present(custom):
    node = custom.node("seq_blocks_1")
    node.meta["mase"].parameters["software"] = {"args": {"data_in_0": {"stat": {
        "range_min_max": {"min": torch.tensor(-12.0), "max": torch.tensor(10.0)}}}}}
    args = auto_quantize_config(custom, 8, ops=["relu"], dummy_in=torch.randn(64, 16))
    # unsigned ReLU input: the negative minimum does not matter, 8 unsigned bits = 9 signed ones
    assert args["seq_blocks_1"]["config"]["data_in_frac_width"] == integer_frac_width(0.0, 10.0, 9) == 4


def test_auto_frac_width_by_type_minifloat_and_errors(custom):
    x = torch.randn(256, 16)
    args = auto_quantize_config(custom, {"data_in": 8, "weight": 4, "bias": 8}, by="type", dummy_in=x)
    assert set(args) == {"by", "default", "linear", "relu"} and args["by"] == "type"
    assert args["linear"]["config"]["weight_width"] == 4
    mf = auto_quantize_config(custom, 8, format="minifloat", dummy_in=x)
    assert mf["seq_blocks_2"]["config"]["weight_exponent_width"] == 4
    mg, _ = quantize_transform_pass(copy.deepcopy(custom), mf)
    assert type(mg.modules["seq_blocks.2"]).__name__ == "LinearMinifloat"
    with pytest.raises(ValueError, match="no activation ranges for seq_blocks_1"):
        auto_frac_width_pass(custom, {"width": 8})
    with pytest.raises(ValueError, match="width must be an integer in \\[1, 32\\], got 0"):
        auto_frac_width_pass(custom, {"width": 0, "dummy_in": x})
    with pytest.raises(ValueError, match="unknown key 'widht'"):
        auto_frac_width_pass(custom, {"widht": 8})
    with pytest.raises(ValueError, match="format must be one of 'integer', 'minifloat', got 'log'"):
        auto_frac_width_pass(custom, {"width": 8, "format": "log"})


def test_auto_frac_width_after_profile_statistics_analysis_pass(custom):
    from labkit.passes.profile import profile_statistics_analysis_pass

    batches = [torch.randn(128, 16) * 2 for _ in range(3)]
    custom, _ = profile_statistics_analysis_pass(custom, {
        "by": "type", "target_activation_nodes": ["linear", "relu"],
        "activation_statistics": {"range_min_max": {"device": "cpu", "dims": "all"}},
        "input_generator": batches, "num_samples": 384, "progress": False})  # samples: 3 batches of 128
    _, info = auto_frac_width_pass(custom, {"width": 8})  # no calibration batch needed now
    hi = max(float(b.max()) for b in batches)
    # seq_blocks_1 is a ReLU: its input is unsigned, 8 bits reaching as far as 9 signed ones
    assert info["pass_args"]["seq_blocks_1"]["config"]["data_in_frac_width"] == integer_frac_width(0.0, hi, 9)
    mg, _ = quantize_transform_pass(custom, info["pass_args"])
    assert len([m for m in mg.modules.values() if type(m).__name__.endswith("Integer")]) == 7


# --- review fixes -----------------------------------------------------------------------------

class Twice(nn.Module):
    """One Linear called at two nodes: ``fc`` and ``fc_1``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        return self.out(self.fc(self.fc(x)))


def test_a_module_called_twice_is_quantised_at_both_nodes():
    mg = mase_graph(Twice())
    new, info = quantize_transform_pass(copy.deepcopy(mg), {"by": "type", "linear": {"config": INT8_LINEAR}})
    assert info["changed"] == ["fc", "fc_1", "out"] and set(info["configs"]) == {"fc", "fc_1", "out"}
    for name in ("fc", "fc_1"):
        assert isinstance(get_node_actual_target(new.node(name)), LinearInteger)
        assert new.node(name).meta["mase"].parameters["common"]["args"]["weight"]["precision"] == [8, 4]
    assert get_node_actual_target(new.node("fc")) is get_node_actual_target(new.node("fc_1"))
    _, s = summarize_quantization_analysis_pass(new, {"original_graph": mg, "verbose": False})
    assert table(s["summary"])["Linear"] == ("linear", 3, 3, 0)
    # by name, naming every call site with the same config
    _, info = quantize_transform_pass(mg, {"by": "name", "fc": {"config": INT8_LINEAR},
                                           "fc_1": {"config": dict(INT8_LINEAR)}})
    assert info["changed"] == ["fc", "fc_1"]


def test_a_module_called_twice_needs_one_config_for_all_its_nodes():
    mg = mase_graph(Twice())
    with pytest.raises(ValueError, match="module 'fc' is called at nodes fc, fc_1: pass_args quantise it at fc "
                                         "but not at fc_1"):
        quantize_transform_pass(mg, {"by": "name", "fc": {"config": INT8_LINEAR}})
    other = {**INT8_LINEAR, "weight_width": 4}
    with pytest.raises(ValueError, match="module 'fc' is called at nodes fc, fc_1 with different configs"):
        quantize_transform_pass(mg, {"by": "name", "fc": {"config": INT8_LINEAR}, "fc_1": {"config": other}})
    with pytest.raises(ValueError, match="module 'fc' .* different configs"):  # a default fills in the other
        quantize_transform_pass(mg, {"by": "name", "default": {"config": other}, "fc": {"config": INT8_LINEAR}})


class MyLinear(nn.Linear):
    """A Linear with behaviour of its own: the transform must not replace its forward."""

    def forward(self, x):
        return F.linear(x, self.weight.round(), self.bias)


def test_subclass_of_a_float_layer_is_named_or_left_alone():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), MyLinear(16, 5))
    mg = mase_graph(model)
    with pytest.raises(ValueError, match="node '_2' \\(linear\\): layer '2' is a MyLinear, a subclass of Linear but "
                                         "not Linear itself"):
        quantize_transform_pass(mg, {"by": "type", "linear": {"config": INT8_LINEAR}})
    with pytest.raises(ValueError, match="layer '2' is a MyLinear"):
        quantize_transform_pass(mg, {"by": "name", "_2": {"config": INT8_LINEAR}})
    # under a default config it is left alone, like any op without a quantised twin
    new, info = quantize_transform_pass(mg, {"by": "type", "default": {"config": INT8_LINEAR}})
    assert info["changed"] == ["_0", "_1"]
    assert type(new.modules["2"]) is MyLinear and type(new.modules["0"]) is LinearInteger


def test_quantize_transform_pass_needs_a_mase_graph(tiny):
    class Holder:  # has a traced .model, but is not a MaseGraph: its metadata could not be copied
        model = tiny.model

    with pytest.raises(TypeError, match="needs a MaseGraph, got Holder; build one with MaseGraph\\(model=model\\)"):
        quantize_transform_pass(Holder(), TINY_ARGS)


def test_auto_frac_width_pass_arguments_are_checked(custom):
    x = torch.randn(64, 16)
    for e in ("4", 0, 9, True):
        with pytest.raises(ValueError, match=f"exponent_width must be an integer in \\[1, 8\\], got {e!r}"):
            auto_frac_width_pass(custom, {"width": 8, "format": "minifloat", "exponent_width": e, "dummy_in": x})
    with pytest.raises(ValueError, match="exponent_width is for format='minifloat', not 'integer'"):
        auto_frac_width_pass(custom, {"width": 8, "exponent_width": 4, "dummy_in": x})
    with pytest.raises(ValueError, match="ops must be a list of linear, relu, .*got None"):
        auto_frac_width_pass(custom, {"width": 8, "ops": None, "dummy_in": x})
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        auto_frac_width_pass(custom, {"width": 8, "num_samples": 0, "dummy_in": x})
    mf = auto_quantize_config(custom, 8, format="minifloat", exponent_width=3, dummy_in=x)
    assert mf["seq_blocks_2"]["config"]["weight_exponent_width"] == 3


def test_auto_frac_width_pass_profiles_every_input_and_keeps_layer_modes():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 8), nn.Linear(4, 8)
            self.bn = nn.BatchNorm1d(8)

        def forward(self, x, y):
            return self.bn(self.a(x) + self.b(y))

    mg = MaseGraph(TwoInputs())
    x, y = torch.randn(32, 16), torch.randn(32, 4) * 40
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": x, "y": y}})
    mg.model.train()
    mg.modules["bn"].eval()
    args = auto_quantize_config(mg, 8, ops=["linear"], dummy_in={"x": x, "y": y})
    assert args["b"]["config"]["data_in_frac_width"] == integer_frac_width(float(y.min()), float(y.max()), 8)
    assert args["a"]["config"]["data_in_frac_width"] == integer_frac_width(float(x.min()), float(x.max()), 8)
    assert mg.model.training and mg.modules["a"].training and not mg.modules["bn"].training


def test_pass_args_are_parsed_once_into_a_plan_that_the_pass_applies(custom, monkeypatch):
    import labkit.passes.quantize as q

    plan = q.plan_quantization(custom, CUSTOM_ARGS)
    assert isinstance(plan, q.QuantPlan) and plan.by == "type"
    linears = [n for n in plan if plan[n].op == "linear"]
    assert linears and all(plan[n].config == CUSTOM_ARGS["linear"]["config"] for n in linears)
    assert {plan[n].op for n in plan} == {"linear", "relu"}
    assert list(plan) == [n.name for n in custom.model.graph.nodes if n.name in plan]  # graph order
    assert q.validate_quantize_args(custom, CUSTOM_ARGS) == plan  # the old name gives the same plan
    # the pass parses pass_args exactly as often as planning alone does; applying parses nothing
    calls = []
    real = q.parse_config
    monkeypatch.setattr(q, "parse_config", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    q.plan_quantization(custom, CUSTOM_ARGS)
    planned = list(calls)
    calls.clear()
    mg, info = quantize_transform_pass(copy.deepcopy(custom), CUSTOM_ARGS)
    assert calls == planned and planned  # every key once, plus the default
    calls.clear()
    changed = q.apply_quantize_plan(custom, plan)
    assert calls == [] and changed == info["changed"] == list(plan)
    assert info["configs"] == plan.configs() and info["configs"][linears[0]] is not plan[linears[0]].config
    x = torch.randn(4, 16)
    assert torch.equal(custom.model.eval()(x), mg.model.eval()(x))  # the plan applied alone quantises as the pass does
