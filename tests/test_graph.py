"""MaseGraph tracing, node targets, metadata schema, copies and drawings."""

import copy
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit.graph import GraphTraceError, MaseGraph, deepcopy_mase_graph, get_node_actual_target
from labkit.models import MODELS, get_model
from labkit.passes.metadata import (
    MaseMetadata,
    add_common_metadata_analysis_pass,
    add_software_metadata_analysis_pass,
    dtype_precision,
    init_metadata_analysis_pass,
)
from labkit.passes.utils import get_mase_op, get_mase_type
from models_zoo import EXTRA_MODELS, BranchyMLP, dummy_input


def build(model, batch=8):
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": dummy_input(batch)}})
    return mg


def common(mg, name):
    return mg.node(name).meta["mase"]["common"]


# --- the spec's lines -----------------------------------------------------------------------

def test_spec_lines_verbatim():
    model = get_model("jsc-tiny")
    dummy_in = {"x": torch.randn(8, 16)}
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": dummy_in})
    ori_mg = copy.deepcopy(mg)
    seen = []
    for og_node, node in zip(ori_mg.fx_graph.nodes, mg.fx_graph.nodes):
        seen.append((og_node.name, str(get_node_actual_target(og_node)), str(get_node_actual_target(node))))
    assert [s[0] for s in seen] == ["x", "seq_blocks_0", "seq_blocks_1", "seq_blocks_2", "seq_blocks_3", "output"]
    assert seen[0][1:] == ("x", "x") and seen[-1][1:] == ("output", "output")
    assert seen[1][1].startswith("BatchNorm1d(16, eps=1e-05")
    assert seen[2][1] == "ReLU(inplace=True)"
    assert seen[3][1] == "Linear(in_features=16, out_features=5, bias=True)"


# --- tracing --------------------------------------------------------------------------------

def test_graph_attributes_and_targets():
    model = get_model("jsc-tiny")
    mg = MaseGraph(model)
    assert isinstance(mg.model, torch.fx.GraphModule)
    assert mg.fx_graph is mg.model.graph
    assert [n.op for n in mg.nodes] == ["placeholder"] + ["call_module"] * 4 + ["output"]
    assert isinstance(mg.modules["seq_blocks.2"], nn.Linear)
    x = dummy_input(8)
    model.eval(), mg.model.eval()
    assert torch.equal(mg(x), model(x))  # the graph computes what the model computes
    lin = mg.node("seq_blocks_2")
    assert get_node_actual_target(lin) is mg.modules["seq_blocks.2"]
    with pytest.raises(ValueError, match="no node named 'nope'"):
        mg.node("nope")


def test_targets_of_function_and_method_nodes():
    f = MaseGraph(EXTRA_MODELS["functional"]())
    assert get_node_actual_target(f.node("relu")) is F.relu
    assert get_node_actual_target(f.node("flatten")) is torch.flatten
    m = MaseGraph(EXTRA_MODELS["method"]())
    assert get_node_actual_target(m.node("view")) == "view"
    r = MaseGraph(EXTRA_MODELS["residual"]())
    assert get_node_actual_target(r.node("add")) is operator.add
    g = MaseGraph(EXTRA_MODELS["get_attr"]())
    assert get_node_actual_target(g.node("proj")) == "proj"


@pytest.mark.parametrize("name", sorted(MODELS.names()))
def test_every_registry_model_traces_and_runs(name):
    model = get_model(name).eval()
    mg = build(model)
    x = dummy_input(8)
    mg.model.eval()
    assert torch.allclose(mg(x), model(x))
    out = mg.node("output").meta["mase"]["common"]["args"]["data_in_0"]
    assert out["shape"] == [8, 5]


def test_untraceable_model_names_the_line_and_the_fix():
    with pytest.raises(GraphTraceError) as err:
        MaseGraph(BranchyMLP())
    msg = str(err.value)
    assert "BranchyMLP" in msg and "models_zoo.py" in msg and "if x.sum() > 0" in msg
    assert "torch.fx.wrap" in msg and "cf_args" in msg


def test_concrete_args_make_a_branch_static():
    class Flagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 5)

        def forward(self, x, negate=False):
            y = self.fc(x)
            return -y if negate else y

    mg = MaseGraph(Flagged(), cf_args={"negate": True})
    assert any(n.target is operator.neg for n in mg.nodes)


def test_bad_model_type():
    with pytest.raises(TypeError, match="nn.Module"):
        MaseGraph("jsc-tiny")


def test_subclass_of_torch_layer_stays_a_leaf():
    class MyLinear(nn.Linear):  # like a quantised LinearInteger
        def forward(self, x):
            return F.linear(x, self.weight.round(), self.bias)

    model = nn.Sequential(MyLinear(16, 5))
    mg = build(model)
    node = mg.node("_0")
    assert node.op == "call_module"
    assert common(mg, "_0")["mase_op"] == "linear"  # found along the MRO


# --- metadata ---------------------------------------------------------------------------------

def test_jsc_tiny_metadata_schema():
    mg = build(get_model("jsc-tiny"))
    meta = mg.node("seq_blocks_2").meta["mase"]
    assert isinstance(meta, MaseMetadata)
    assert meta.module is mg.modules["seq_blocks.2"]
    assert set(meta.parameters) == {"common", "software", "hardware"}
    assert meta["common"] is meta.parameters["common"]
    c = meta["common"]
    assert (c["mase_type"], c["mase_op"]) == ("module_related_func", "linear")
    assert list(c["args"]) == ["data_in_0", "weight", "bias"]
    assert c["args"]["data_in_0"]["shape"] == [8, 16]
    assert c["args"]["weight"]["shape"] == [5, 16]
    assert c["args"]["bias"]["shape"] == [5]
    assert c["results"]["data_out_0"]["shape"] == [8, 5]
    for info in [*c["args"].values(), *c["results"].values()]:
        assert info["torch_dtype"] == torch.float32
        assert info["type"] == "float" and info["precision"] == [32]
    assert c["args"]["weight"]["from"] is None
    assert c["args"]["data_in_0"]["from"] == "seq_blocks_1"
    # other node kinds
    types = {n.name: (n.meta["mase"]["common"]["mase_type"], n.meta["mase"]["common"]["mase_op"]) for n in mg.nodes}
    assert types == {
        "x": ("placeholder", "placeholder"), "seq_blocks_0": ("module", "batch_norm1d"),
        "seq_blocks_1": ("module_related_func", "relu"), "seq_blocks_2": ("module_related_func", "linear"),
        "seq_blocks_3": ("module_related_func", "relu"), "output": ("output", "output"),
    }


def test_get_mase_op_and_type_read_the_common_metadata():
    mg = build(get_model("jsc-tiny"))
    for n in mg.nodes:
        assert (get_mase_type(n), get_mase_op(n)) == (common(mg, n.name)["mase_type"], common(mg, n.name)["mase_op"])
    bare = MaseGraph(model=get_model("jsc-tiny")).node("seq_blocks_2")  # traced, no metadata yet
    assert get_mase_op(bare, "") == "" and get_mase_type(bare, None) is None
    with pytest.raises(ValueError, match=r"report_x: node 'seq_blocks_2' has no common metadata; run init_metadata"):
        get_mase_op(bare, pass_name="report_x")
    with pytest.raises(ValueError, match="this pass: node 'seq_blocks_2'"):
        get_mase_type(bare)
    assert mg.node("x").meta["mase"].module is None


def test_get_mase_op_and_type_are_public():
    import labkit
    import labkit.passes
    from labkit.passes import utils
    for name in ("get_mase_op", "get_mase_type"):
        assert name in labkit.__all__ and name in labkit.passes.__all__
        assert getattr(labkit, name) is getattr(labkit.passes, name) is getattr(utils, name)


def test_jsc_custom_metadata_shapes_follow_the_batch():
    mg = build(get_model("jsc-custom"), batch=3)
    assert common(mg, "seq_blocks_2")["args"]["weight"]["shape"] == [32, 16]
    assert common(mg, "seq_blocks_2")["results"]["data_out_0"]["shape"] == [3, 32]
    assert common(mg, "seq_blocks_5")["mase_op"] == "dropout"
    assert common(mg, "seq_blocks_7")["args"]["weight"]["shape"] == [16]
    assert common(mg, "seq_blocks_10")["results"]["data_out_0"]["shape"] == [3, 5]
    ops = [common(mg, n.name)["mase_op"] for n in mg.nodes]
    assert ops.count("linear") == 3 and ops.count("relu") == 4 and ops.count("batch_norm1d") == 4


def test_metadata_pass_leaves_the_model_untouched():
    model = get_model("jsc-tiny")
    model.train()
    mg = MaseGraph(model)
    before = {k: v.clone() for k, v in mg.model.state_dict().items()}
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": torch.randn(1, 16) * 5})  # bare tensor, batch 1
    after = mg.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats unchanged
    assert mg.model.training
    assert common(mg, "seq_blocks_0")["args"]["data_in_0"]["shape"] == [1, 16]


@pytest.mark.parametrize("kind", sorted(EXTRA_MODELS))
def test_extra_models_trace_and_get_metadata(kind):
    model = EXTRA_MODELS[kind]().eval()
    mg = build(model)
    mg.model.eval()
    x = dummy_input(8)
    assert torch.allclose(mg(x), model(x))
    for n in mg.nodes:
        c = n.meta["mase"]["common"]
        assert {"mase_type", "mase_op", "args", "results"} <= set(c), n.name
    assert common(mg, "output")["args"]["data_in_0"]["shape"] == [8, 5]


def test_extra_models_metadata_details():
    f = build(EXTRA_MODELS["functional"]())
    assert (common(f, "relu")["mase_type"], common(f, "relu")["mase_op"]) == ("module_related_func", "relu")
    assert (common(f, "flatten")["mase_type"], common(f, "flatten")["mase_op"]) == ("implicit_func", "flatten")
    assert common(f, "flatten")["args"]["data_in_1"]["value"] == 1

    r = build(EXTRA_MODELS["residual"]())
    add = common(r, "add")
    assert (add["mase_type"], add["mase_op"]) == ("builtin_func", "add")
    assert [add["args"][k]["from"] for k in ("data_in_0", "data_in_1")] == ["x", "act"]

    m = build(EXTRA_MODELS["method"]())
    view = common(m, "view")
    assert (view["mase_type"], view["mase_op"]) == ("implicit_func", "view")
    assert view["args"]["data_in_1"] == {"shape": None, "torch_dtype": None, "type": "int",
                                         "precision": None, "value": -1, "from": None}
    assert (common(m, "relu")["mase_type"], common(m, "relu")["mase_op"]) == ("module_related_func", "relu")

    g = build(EXTRA_MODELS["get_attr"]())
    assert common(g, "proj")["mase_type"] == "get_attr"
    assert common(g, "proj")["results"]["data_out_0"]["shape"] == [16, 8]
    mm = common(g, "matmul")
    assert mm["mase_op"] == "matmul" and mm["args"]["data_in_1"]["shape"] == [16, 8]
    assert mm["args"]["data_in_1"]["from"] == "proj"

    c1 = build(EXTRA_MODELS["conv1d"]())
    assert common(c1, "conv")["mase_op"] == "conv1d"
    assert common(c1, "conv")["args"]["weight"]["shape"] == [4, 1, 3]
    assert common(c1, "pool")["results"]["data_out_0"]["shape"] == [8, 4, 8]

    c2 = build(EXTRA_MODELS["conv2d"]())
    assert [common(c2, n)["mase_op"] for n in ("conv1", "bn1", "pool", "gap")] == \
        ["conv2d", "batch_norm2d", "max_pool2d", "adaptive_avg_pool2d"]
    assert common(c2, "bn1")["mase_type"] == "module"
    assert common(c2, "gap")["results"]["data_out_0"]["shape"] == [8, 8, 1, 1]
    assert common(c2, "size")["results"]["data_out_0"]["value"] == 8


def test_dummy_in_errors():
    mg = MaseGraph(get_model("jsc-tiny"))
    with pytest.raises(ValueError, match="dummy_in"):
        add_common_metadata_analysis_pass(mg, None)
    with pytest.raises(ValueError, match=r"unknown inputs \['y'\]"):
        add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": torch.randn(2, 16), "y": torch.randn(2, 16)}})
    with pytest.raises(TypeError, match="dummy_in must be"):
        add_common_metadata_analysis_pass(mg, {"dummy_in": "x"})
    with pytest.raises(TypeError, match="MaseGraph"):
        init_metadata_analysis_pass(get_model("jsc-tiny"), None)


def test_add_value_keeps_tensors():
    mg = MaseGraph(get_model("jsc-tiny"))
    x = torch.randn(4, 16)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": x}, "add_value": True})
    assert torch.equal(common(mg, "seq_blocks_0")["args"]["data_in_0"]["value"], x)
    # recorded before the in-place ReLU ran: the input still has negative values
    assert (common(mg, "seq_blocks_1")["args"]["data_in_0"]["value"] < 0).any()


def test_software_slots():
    mg = build(get_model("jsc-tiny"))
    mg, _ = add_software_metadata_analysis_pass(mg, None)
    sw = mg.node("seq_blocks_2").meta["mase"].parameters["software"]
    assert set(sw["args"]) == {"data_in_0", "weight", "bias"} and sw["args"]["weight"] == {"stat": {}}


def test_dtype_precision():
    assert dtype_precision(torch.float32) == ("float", [32])
    assert dtype_precision(torch.float16) == ("float", [16])
    assert dtype_precision(torch.int8) == ("integer", [8, 0])
    assert dtype_precision(torch.bool) == ("bool", [1])


# --- copies, module swaps -------------------------------------------------------------------

def test_deepcopy_is_independent():
    mg = build(get_model("jsc-tiny"))
    ori = copy.deepcopy(mg)
    assert deepcopy_mase_graph(mg).nodes[2].name == "seq_blocks_1"
    node, og = mg.node("seq_blocks_2"), ori.node("seq_blocks_2")
    assert og.meta["mase"].model is ori.model and og.meta["mase"].node is og
    assert og.meta["mase"].module is not node.meta["mase"].module
    # swap a module in one graph: the other keeps its own
    node.meta["mase"].module = nn.Identity()
    assert isinstance(get_node_actual_target(node), nn.Identity)
    assert isinstance(get_node_actual_target(og), nn.Linear)
    og.meta["mase"]["common"]["args"]["weight"]["type"] = "integer"
    assert node.meta["mase"]["common"]["args"]["weight"]["type"] == "float"


# --- text and drawing ---------------------------------------------------------------------------

def test_to_text_lists_every_node_with_its_shape():
    mg = build(get_model("jsc-tiny"))
    lines = mg.to_text().splitlines()
    assert len(lines) == 6
    assert lines[3].split()[:4] == ["seq_blocks_2", "call_module", "Linear(seq_blocks_1)", "linear"]
    assert lines[3].endswith("-> [8, 5]")
    # without metadata it still works (no shapes)
    assert "Linear(seq_blocks_1)" in MaseGraph(get_model("jsc-tiny")).to_text()


def test_draw_writes_a_png(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model in (get_model("jsc-tiny"), EXTRA_MODELS["residual"](), EXTRA_MODELS["get_attr"]()):
        mg = build(model)
        path = tmp_path / f"{mg.name}.png"
        fig = mg.draw(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        texts = [t.get_text() for t in fig.axes[0].texts if t.get_text()]
        assert len(texts) == len(mg.nodes)  # one labelled box per node
        assert any("[8, 5]" in t for t in texts)
        plt.close(fig)


# --- review fixes -----------------------------------------------------------------------------

INT8 = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
        "weight_width": 6, "weight_frac_width": 3, "bias_width": 8, "bias_frac_width": 5}


def test_rerunning_metadata_after_quantising_keeps_the_widths():
    from labkit.passes.quantize import quantize_transform_pass

    mg, _ = quantize_transform_pass(build(get_model("jsc-tiny")), {"by": "type", "linear": {"config": INT8}})
    add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": dummy_input(4)}})
    args = common(mg, "seq_blocks_2")["args"]
    assert [args[k]["precision"] for k in ("data_in_0", "weight", "bias")] == [[8, 4], [6, 3], [8, 5]]
    assert {args[k]["type"] for k in ("data_in_0", "weight", "bias")} == {"integer"}
    assert args["data_in_0"]["shape"] == [4, 16]  # the rest is fresh: the new batch of 4
    assert common(mg, "seq_blocks_1")["args"]["data_in_0"]["precision"] == [32]
    # a bypassed layer computes in float, and says so
    mg.modules["seq_blocks.2"].bypass = True
    add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": dummy_input(4)}})
    assert common(mg, "seq_blocks_2")["args"]["weight"]["precision"] == [32]


def test_wrongly_shaped_dummy_in_names_the_node_and_the_shape():
    mg = MaseGraph(get_model("jsc-custom"))
    with pytest.raises(ValueError, match=r"node 'seq_blocks_0' \(BatchNorm1d\) failed on inputs of shape "
                                         r"\[\[4, 10\]\], running dummy_in of shape \[4, 10\]: RuntimeError: "
                                         r"running_mean should contain 10 elements not 16"):
        add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": torch.randn(4, 10)}})
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"node '_2' \(Linear\) failed on inputs of shape \[\[3, 8\]\], running "
                                         r"dummy_in of shape \[3, 16\]: RuntimeError: mat1 and mat2"):
        add_common_metadata_analysis_pass(MaseGraph(model), {"dummy_in": torch.randn(3, 16)})


def test_metadata_pass_args_are_checked():
    mg = MaseGraph(get_model("jsc-tiny"))
    with pytest.raises(ValueError, match=r"unknown pass_args \['add_values'\] .*did you mean 'add_value'"):
        add_common_metadata_analysis_pass(mg, {"dummy_in": dummy_input(2), "add_values": True})
    with pytest.raises(TypeError, match="build one with MaseGraph\\(model=model\\)"):
        add_common_metadata_analysis_pass(get_model("jsc-tiny"), {"dummy_in": dummy_input(2)})


def test_metadata_pass_gives_every_layer_back_its_own_mode():
    mg = MaseGraph(get_model("jsc-custom"))
    mg.model.train()
    mg.modules["seq_blocks.3"].eval()  # one frozen BatchNorm
    add_common_metadata_analysis_pass(mg, {"dummy_in": dummy_input(4)})
    assert mg.model.training and mg.modules["seq_blocks.0"].training
    assert not mg.modules["seq_blocks.3"].training


def test_deepcopy_of_metadata_keeps_its_node_and_model():
    mg = build(get_model("jsc-tiny"))
    meta = mg.node("seq_blocks_2").meta["mase"]
    clone = copy.deepcopy(meta)
    assert clone.node is meta.node and clone.model is meta.model and clone.module is meta.module
    clone["common"]["args"]["weight"]["precision"] = [4, 2]
    assert meta["common"]["args"]["weight"]["precision"] == [32]
