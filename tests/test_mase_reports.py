"""Printed output as MASE prints it, and MASE's interface/verify/bits passes.

The handout (Lab 2) code runs as written, imports changed; the expected text is what MASE's
passes print for the same graph, written out by hand here."""

import copy

import pandas as pd
import pytest
import torch

from labkit import (
    MaseGraph,
    add_common_metadata_analysis_pass,
    add_software_metadata_analysis_pass,
    calculate_avg_bits_mg_analysis_pass,
    get_model,
    init_metadata_analysis_pass,
    load_node_meta_param_interface_pass,
    quantize_transform_pass,
    report_graph_analysis_pass,
    report_node_meta_param_analysis_pass,
    report_node_shape_analysis_pass,
    report_node_type_analysis_pass,
    save_node_meta_param_interface_pass,
    summarize_quantization_analysis_pass,
    verify_metadata_analysis_pass,
)

# Lab 2's quantisation config, as the handout writes it
PASS_ARGS = {
    "by": "type",
    "default": {"config": {"name": None}},
    "linear": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
                          "weight_width": 8, "weight_frac_width": 4, "bias_width": 8, "bias_frac_width": 4}},
}


def graph_of(name="jsc-tiny", batch=8):
    torch.manual_seed(0)
    model = get_model(name)
    dummy_in = {"x": torch.randn(batch, 16)}
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": dummy_in})
    mg, _ = add_software_metadata_analysis_pass(mg, None)
    return mg


def test_report_graph_prints_mases_report(capsys):
    mg = graph_of()
    _ = report_graph_analysis_pass(mg)  # the handout's cell
    out = capsys.readouterr().out
    banners = ["Graph Analysis Report", "===================== Graph Summary =====================",
               "===================== Graph Syntax =====================",
               "===================== Graph Overview =====================", "Network overview:", "Layer types:"]
    positions = [out.index(b) for b in banners]
    assert positions == sorted(positions)
    # the node table, then torch.fx's own listing of the graph
    assert "call_module  seq_blocks_2  seq_blocks.2  (seq_blocks_1,)  {}" in out
    assert "    %x : [num_users=1] = placeholder[target=x]\n" in out
    assert ("    %seq_blocks_2 : [num_users=1] = call_module[target=seq_blocks.2]"
            "(args = (%seq_blocks_1,), kwargs = {})\n") in out
    assert "    return seq_blocks_3\n" in out
    assert ("Network overview:\n{'placeholder': 1, 'get_attr': 0, 'call_function': 0, 'call_method': 0, "
            "'call_module': 4, 'output': 1}\n") in out
    layers = out[out.index("Layer types:"):].splitlines()[1]
    assert layers.startswith("[BatchNorm1d(16, eps=1e-05") and "Linear(in_features=16, out_features=5, bias=True)" in layers
    assert "Graph code" not in out  # labkit's generated code stays in info["code"], as before


def test_report_graph_of_a_function_node_lists_its_users(capsys):
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 16)

        def forward(self, x):
            return torch.relu(self.fc(x)) + x

    mg = MaseGraph(model=Residual())
    report_graph_analysis_pass(mg)
    out = capsys.readouterr().out
    assert "    %x : [num_users=2] = placeholder[target=x]\n" in out  # fc and the add both read x
    assert "call_function[target=torch.relu](args = (%fc,), kwargs = {})" in out
    assert "'call_function': 2" in out


def test_node_type_report_prints_mases_value_types(capsys):
    mg = graph_of()
    _, info = report_node_type_analysis_pass(mg)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Inspecting graph [add_common_node_type_analysis_pass]"
    assert lines[1].split() == ["Node", "name", "Fx", "Node", "op", "Mase", "type", "Mase", "op", "Value", "type"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert rows["x"] == ["placeholder", "placeholder", "placeholder", "NA"]  # no data input
    assert rows["seq_blocks_2"] == ["call_module", "module_related_func", "linear", "float"]
    assert rows["output"] == ["output", "output", "output", "float"]
    # after Lab 2's quantisation the linear layer's input is an integer
    mg, _ = quantize_transform_pass(mg, PASS_ARGS)
    _, info = report_node_type_analysis_pass(mg)
    assert "linear        integer" in capsys.readouterr().out
    assert info["table"].set_index("Node name").loc["seq_blocks_2", "Value type"] == "integer[8, 4]"  # labkit's


def test_node_shape_report_prints_mases_blocks(capsys):
    mg = graph_of(batch=8)
    _, info = report_node_shape_analysis_pass(mg)
    out = capsys.readouterr().out
    assert out.startswith("Inspecting graph [add_common_node_shape_analysis_pass]\nx:\nin:\nout:\ndata_out_0 = [8, 16]\n")
    assert ("seq_blocks_2:\nin:\ndata_in_0 = [8, 16]\nweight = [5, 16]\nbias = [5]\nout:\n"
            "data_out_0 = [8, 5]\n") in out
    assert info["table"].set_index("Node name").loc["seq_blocks_2", "Outputs"] == "data_out_0=[8, 5]"


def test_node_meta_param_report_prints_mases_grid(capsys, tmp_path):
    mg = graph_of()
    mg, _ = report_node_meta_param_analysis_pass(mg, {"which": ("software",)})  # the handout's cell
    out = capsys.readouterr().out
    assert out.startswith("Inspecting graph [add_common_meta_param_analysis_pass]\n+")
    header = [c.strip() for c in out.splitlines()[2].strip("|").split("|")]
    assert header == ["Node name", "Fx Node op", "Mase type", "Mase op", "Software Param"]
    # "all" is MASE's common + software; the DataFrame keeps labkit's hardware column too
    _, info = report_node_meta_param_analysis_pass(mg, {"save_path": tmp_path / "meta.txt", "verbose": False})
    assert "Hardware Param" in info["table"].columns and "Hardware Param" not in info["text"]
    assert "Common Param" in info["text"] and (tmp_path / "meta.txt").read_text() == info["text"]
    # each cell is the pretty-printed dict (sorted keys, as pprint does)
    cell = info["table"].set_index("Node name").loc["seq_blocks_2", "Common Param"]
    assert cell.startswith("{'args': {'bias':") and "'mase_op': 'linear'" in cell


def test_summarize_quantization_like_mase(capsys, tmp_path):
    mg = graph_of("jsc-toy")
    ori_mg = copy.deepcopy(mg)
    mg, _ = quantize_transform_pass(mg, PASS_ARGS)
    _, info = summarize_quantization_analysis_pass(mg, {"original_graph": ori_mg, "save_dir": tmp_path})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Quantized graph histogram:"
    assert out[1] == "| Original type   | OP           |   Total |   Changed |   Unchanged |"
    assert out[2] == "|-----------------+--------------+---------+-----------+-------------|"  # org-mode, as MASE
    assert "| Linear          | linear       |       3 |         3 |           0 |" in out
    assert "| BatchNorm1d     | batch_norm1d |       4 |         0 |           4 |" in out
    table = pd.read_csv(tmp_path / "quantize_table.csv", index_col=0)
    assert list(table.columns) == ["Ori name", "New name", "MASE_TYPE", "Mase_OP", "Original type",
                                   "Quantized type", "Changed"]
    row = table.set_index("Ori name").loc["seq_blocks_2"]
    assert (row["New name"], row["Quantized type"], bool(row["Changed"])) == ("seq_blocks_2", "LinearInteger", True)
    hist = pd.read_csv(tmp_path / "quantize_histogram.csv", index_col="Original type")
    assert hist.loc["Linear"].tolist() == ["linear", 3, 3, 0] and hist.loc["ReLU"].tolist() == ["relu", 4, 0, 4]
    for labkit_file in ("quantize_summary.csv", "quantize_summary.md", "quantize_nodes.csv", "quantize_nodes.md"):
        assert (tmp_path / labkit_file).is_file()
    assert list(info["nodes"].columns)[0] == "Name" and len(info["compare"]) == len(info["nodes"]) == 13


def test_summarize_with_the_handouts_call(capsys, tmp_path, monkeypatch):
    """Lab 2 handout: summarize_quantization_analysis_pass(ori_mg, mg, save_dir="quantize_summary")."""
    monkeypatch.chdir(tmp_path)
    ori_mg = graph_of()
    mg, _ = quantize_transform_pass(copy.deepcopy(ori_mg), PASS_ARGS)
    summarize_quantization_analysis_pass(ori_mg, mg, save_dir="quantize_summary")
    assert "| Linear          | linear       |       1 |         1 |           0 |" in capsys.readouterr().out
    assert (tmp_path / "quantize_summary" / "quantize_table.csv").is_file()
    with pytest.raises(TypeError, match="save_dir= goes with the handouts' call"):
        summarize_quantization_analysis_pass(mg, {"original_graph": ori_mg}, save_dir="x")


# --- calculate_avg_bits_mg_analysis_pass ---------------------------------------------------------

def test_avg_bits_on_hand_computed_mixed_precision():
    """jsc-toy, batch 8: linear inputs 8x16, 8x8, 8x8 values; weights 8x16, 8x8, 5x8."""
    mg = graph_of("jsc-toy", batch=8)
    _, info = calculate_avg_bits_mg_analysis_pass(mg, None)
    assert (info["data_avg_bit"], info["w_avg_bit"]) == (32.0, 32.0)
    config = {"name": "integer", "data_in_width": 6, "data_in_frac_width": 5, "weight_width": 4,
              "weight_frac_width": 3, "bias_width": 8, "bias_frac_width": 4}
    mg, _ = quantize_transform_pass(mg, {"by": "name", "seq_blocks_2": {"config": config},
                                         "seq_blocks_5": {"config": {**config, "data_in_width": 8,
                                                                     "weight_width": 2, "weight_frac_width": 1}}})
    _, info = calculate_avg_bits_mg_analysis_pass(mg, None)
    # data: (128*6 + 64*8 + 64*32) / 256; weights: (128*4 + 64*2 + 40*32) / 232 -- the width, not width+frac
    assert info["data_avg_bit"] == pytest.approx((128 * 6 + 64 * 8 + 64 * 32) / 256)
    assert info["w_avg_bit"] == pytest.approx((128 * 4 + 64 * 2 + 40 * 32) / 232)
    assert info["table"]["Node name"].tolist() == ["seq_blocks_2", "seq_blocks_5", "seq_blocks_8"]


def test_avg_bits_needs_a_linear_layer():
    mg = MaseGraph(model=torch.nn.Sequential(torch.nn.ReLU()))
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"input": torch.randn(2, 3)}})
    with pytest.raises(ValueError, match="no linear/conv1d/conv2d node"):
        calculate_avg_bits_mg_analysis_pass(mg)


# --- verify_metadata_analysis_pass ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-toy", "jsc-s", "jsc-trt", "jsc-custom"])
def test_verify_accepts_every_zoo_graph(name):
    mg = graph_of(name)
    _, info = verify_metadata_analysis_pass(mg)
    assert info["nodes"] == len(mg.nodes) and info["edges"] == len(mg.nodes) - 1  # a chain


def test_verify_names_the_broken_node():
    mg = graph_of()
    mg.node("seq_blocks_2").meta["mase"].parameters["common"]["args"]["weight"]["shape"] = [5, 15]
    with pytest.raises(ValueError, match="node 'seq_blocks_2': linear weight shape \\[5, 15\\] does not fit "
                                         "input shape \\[8, 16\\]"):
        verify_metadata_analysis_pass(mg)
    mg = graph_of()
    mg.node("seq_blocks_3").meta["mase"].parameters["common"]["args"]["data_in_0"]["shape"] = [8, 6]
    with pytest.raises(ValueError, match="node 'seq_blocks_3': data_in_0 has shape \\[8, 6\\], but its source "
                                         "'seq_blocks_2' outputs \\[8, 5\\]"):
        verify_metadata_analysis_pass(mg)
    with pytest.raises(ValueError, match="add_common_metadata_analysis_pass"):
        verify_metadata_analysis_pass(MaseGraph(model=get_model("jsc-tiny")))


# --- save / load_node_meta_param_interface_pass ----------------------------------------------------

def test_node_meta_params_round_trip_through_toml(tmp_path):
    import tomllib
    mg = graph_of("jsc-toy")
    mg, _ = quantize_transform_pass(mg, PASS_ARGS)
    path = tmp_path / "node_meta_param.toml"
    _, info = save_node_meta_param_interface_pass(mg, str(path))  # MASE passes the path itself
    assert info["nodes"] == len(mg.nodes)
    raw = tomllib.loads(path.read_text())
    assert raw["seq_blocks_2"]["common"]["args"]["data_in_0"]["precision"] == [8, 4]
    assert raw["seq_blocks_2"]["common"]["args"]["weight"]["from"] == "NA"  # None, as MASE writes it
    fresh = MaseGraph(model=get_model("jsc-toy"))
    fresh, _ = init_metadata_analysis_pass(fresh, None)
    fresh, _ = load_node_meta_param_interface_pass(fresh, str(path))
    for node, copy_ in zip(mg.nodes, fresh.nodes):
        saved, loaded = node.meta["mase"].parameters, copy_.meta["mase"].parameters
        assert _equal(saved, loaded), node.name
    assert fresh.node("seq_blocks_2").meta["mase"].parameters["common"]["args"]["weight"]["from"] is None


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_loading_metadata_of_another_graph_is_one_clear_error(tmp_path):
    path = tmp_path / "tiny.toml"
    save_node_meta_param_interface_pass(graph_of("jsc-tiny"), path)
    other = MaseGraph(model=get_model("jsc-toy"))
    with pytest.raises(ValueError, match="does not describe this graph: nodes missing from the file "
                                         "\\['seq_blocks_10', 'seq_blocks_4', .*'seq_blocks_9'\\], nodes in the file but not in the "
                                         "graph \\[\\]"):
        load_node_meta_param_interface_pass(other, path)
    (tmp_path / "bad.toml").write_text("x = [1,\n")
    with pytest.raises(ValueError, match="bad.toml is not a valid TOML file"):
        load_node_meta_param_interface_pass(other, tmp_path / "bad.toml")
    with pytest.raises(FileNotFoundError, match="metadata file not found"):
        load_node_meta_param_interface_pass(other, tmp_path / "missing.toml")
    with pytest.raises(TypeError, match="pass_args must be the TOML file's path"):
        save_node_meta_param_interface_pass(other, {"path": 3})
