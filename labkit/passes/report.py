"""Report passes: look at a MaseGraph as tables.

Every pass returns ``(graph, info)`` with the table as a pandas DataFrame in
``info["table"]`` (for notebooks) and the printed text in ``info["text"]``.
``"verbose": False`` keeps a pass quiet. The printed text has the layout MASE's passes print
(the same banners, tables and per-node blocks), so a handout's output reads the same here;
the DataFrames are labkit's addition.

    placeholder    forward()'s inputs             get_attr      reads a model attribute
    call_module    runs a sub-module (a layer)    call_function runs a free function
    call_method    runs a tensor method           output        what forward() returns
"""

from __future__ import annotations

import math
from pathlib import Path
from pprint import pformat

import pandas as pd
from tabulate import tabulate

from ..cache import atomic_write_text
from ..graph import get_node_actual_target
from .utils import check_pass_args, get_mase_op, get_mase_type, graph_module, node_common, target_name

__all__ = [
    "report_graph_analysis_pass", "report_node_meta_param_analysis_pass",
    "report_node_type_analysis_pass", "report_node_shape_analysis_pass",
    "calculate_avg_bits_mg_analysis_pass",
]

OPCODES = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")


def _table_text(df: pd.DataFrame, tablefmt: str = "simple") -> str:
    return tabulate(df, headers="keys", tablefmt=tablefmt, showindex=False)


def _banner(title: str) -> str:
    return f"{'=' * 21} {title} {'=' * 21}"


def report_graph_analysis_pass(graph, pass_args=None):
    """Overview of the graph, printed as MASE prints it: the node table (Graph Summary), the
    torch.fx listing (Graph Syntax: ``%name : [num_users=N] = call_module[target=...]``),
    then the opcode counts (``Network overview``) and the layers (``Layer types``).

    pass_args: ``{"file_name": None | path, "verbose": True}`` (a bare path works too).
    Prints the report, or writes it to ``file_name`` when one is given.
    info: ``table`` (opcode, name, target, args, kwargs), ``code`` (the generated forward),
    ``count`` (nodes per opcode), ``layer_types`` (the call_module layers) and ``text``.
    """
    if isinstance(pass_args, (str, Path)):
        pass_args = {"file_name": pass_args}
    args = check_pass_args(pass_args, {"file_name": None, "verbose": True}, "report_graph_analysis_pass")
    gm = graph_module(graph, "report_graph_analysis_pass")
    rows, raw_rows, count, layer_types = [], [], dict.fromkeys(OPCODES, 0), []
    for node in gm.graph.nodes:
        count[node.op] = count.get(node.op, 0) + 1
        rows.append({"opcode": node.op, "name": node.name, "target": target_name(node.target),
                     "args": str(node.args), "kwargs": str(node.kwargs)})
        raw_rows.append([node.op, node.name, node.target, node.args, node.kwargs])  # printed as fx shows them
        if node.op == "call_module":
            layer_types.append(get_node_actual_target(node))
    table = pd.DataFrame(rows, columns=["opcode", "name", "target", "args", "kwargs"])
    node_table = tabulate(raw_rows, headers=["opcode", "name", "target", "args", "kwargs"])
    text = (f"\nGraph Analysis Report\n\n{_banner('Graph Summary')}\n\n{node_table}\n\n"
            f"{_banner('Graph Syntax')}\n\n{gm.graph}\n\n"
            f"{_banner('Graph Overview')}\n\n"
            f"Network overview:\n{count}\n\n"
            f"Layer types:\n{layer_types}\n")
    if args["file_name"] is not None:
        atomic_write_text(args["file_name"], text)
    elif args["verbose"]:
        print(text)
    return graph, {"table": table, "code": gm.code, "count": count,
                   "layer_types": layer_types, "text": text}


def _plain(obj):
    """OrderedDicts as plain dicts (they print far shorter), recursively."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, dict) for v in obj):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _inspecting(pass_label: str, body: str) -> str:
    """MASE's node reports open with the name of the pass they were first written as."""
    return f"Inspecting graph [{pass_label}]\n{body}"


def report_node_meta_param_analysis_pass(graph, pass_args=None):
    """One row per node with its metadata: ``which`` of common/software/hardware (or "all").

    pass_args: ``{"which": ("all",), "save_path": None, "verbose": True}``.
    Prints MASE's grid table (each parameter dict pretty-printed in its cell); "all" prints
    the Common and Software columns as MASE does, while ``info["table"]`` also holds the
    Hardware one. ``save_path`` receives the printed table.
    """
    args = check_pass_args(pass_args, {"which": ("all",), "save_path": None, "verbose": True},
                           "report_node_meta_param_analysis_pass")
    which = args["which"]
    if isinstance(which, str):
        which = (which,)
    allowed = ("all", "common", "software", "hardware")
    bad = [w for w in which if w not in allowed]
    if bad or not which:
        raise ValueError(f"report_node_meta_param_analysis_pass: which={args['which']!r}; "
                         f"choose from {allowed}")
    parts = [p for p in ("common", "software", "hardware") if p in which or "all" in which]
    rows = []
    for node in graph_module(graph, "report_node_meta_param_analysis_pass").graph.nodes:
        common = node_common(node, "report_node_meta_param_analysis_pass")
        row = {"Node name": node.name, "Fx Node op": node.op,
               "Mase type": get_mase_type(node), "Mase op": get_mase_op(node)}
        for part in parts:
            row[f"{part.capitalize()} Param"] = pformat(_plain(node.meta["mase"].parameters[part]))
        rows.append(row)
    table = pd.DataFrame(rows)
    shown = table
    if "hardware" not in which:  # MASE's "all" means common and software
        shown = table.drop(columns="Hardware Param", errors="ignore")
    text = _table_text(shown, "grid")
    if args["save_path"] is not None:
        atomic_write_text(args["save_path"], text)
    if args["verbose"]:
        print(_inspecting("add_common_meta_param_analysis_pass", text))
    return graph, {"table": table, "text": text}


def _value_type(common: dict) -> str:
    first = common["args"].get("data_in_0") or common["results"].get("data_out_0") or {}
    if first.get("precision"):
        return f"{first['type']}{first['precision']}"
    return first.get("type", "NA")


def report_node_type_analysis_pass(graph, pass_args=None):
    """One row per node: fx opcode, mase_type, mase_op and its value type.

    Prints MASE's table, whose Value type is the first input's number format (``float``,
    ``integer`` ...) or ``NA`` for a node without a data input (the placeholder).
    ``info["table"]`` keeps labkit's fuller value type: format and precision, ``float[32]``,
    ``integer[8, 4]`` (the output's for a placeholder)."""
    args = check_pass_args(pass_args, {"verbose": True}, "report_node_type_analysis_pass")
    rows, printed = [], []
    for node in graph_module(graph, "report_node_type_analysis_pass").graph.nodes:
        common = node_common(node, "report_node_type_analysis_pass")
        rows.append({"Node name": node.name, "Fx Node op": node.op, "Mase type": get_mase_type(node),
                     "Mase op": get_mase_op(node), "Value type": _value_type(common)})
        data_in = common["args"].get("data_in_0")
        printed.append({**rows[-1], "Value type": data_in.get("type", "NA") if isinstance(data_in, dict) else "NA"})
    table = pd.DataFrame(rows)
    text = _table_text(pd.DataFrame(printed))
    if args["verbose"]:
        print(_inspecting("add_common_node_type_analysis_pass", text))
    return graph, {"table": table, "text": text}


def _shapes(entries: dict) -> str:
    return ", ".join(f"{k}={v['shape']}" for k, v in entries.items() if v.get("shape") is not None)


def _shape_block(node, common: dict) -> str:
    """MASE's per-node block: the node's name, ``in:`` one line per argument, ``out:`` one per result."""
    def line(key, entry):
        if isinstance(entry, dict) and entry.get("shape") is not None:
            return f"{key} = {entry['shape']}"
        return f"{key} = {entry.get('value') if isinstance(entry, dict) else entry}"  # a non-tensor argument
    lines = [f"{node.name}:", "in:", *(line(k, v) for k, v in common["args"].items()),
             "out:", *(line(k, v) for k, v in common["results"].items())]
    return "\n".join(lines) + "\n"


def report_node_shape_analysis_pass(graph, pass_args=None):
    """Per node: the shapes of its inputs (data and parameters) and outputs.

    Prints MASE's per-node blocks (``name:``, ``in:``, ``data_in_0 = [8, 16]`` ..., ``out:``);
    ``info["table"]`` has one row per node (Inputs, Outputs)."""
    args = check_pass_args(pass_args, {"verbose": True}, "report_node_shape_analysis_pass")
    rows, blocks = [], []
    for node in graph_module(graph, "report_node_shape_analysis_pass").graph.nodes:
        common = node_common(node, "report_node_shape_analysis_pass")
        rows.append({"Node name": node.name, "Mase op": get_mase_op(node),
                     "Inputs": _shapes(common["args"]), "Outputs": _shapes(common["results"])})
        blocks.append(_shape_block(node, common))
    table = pd.DataFrame(rows)
    text = "\n".join(blocks)
    if args["verbose"]:
        print(_inspecting("add_common_node_shape_analysis_pass", text))
    return graph, {"table": table, "text": text}


# MASE counts the bits of these ops' data input and weight
_AVG_BITS_OPS = ("linear", "conv1d", "conv2d")


def calculate_avg_bits_mg_analysis_pass(graph, pass_args=None):
    """The average bits per value that the linear/conv layers spend on their data input and
    their weights, weighted by element count (useful after mixed-precision quantisation).

    A value's bits are its format's total width (``precision[0]``: 8 for ``integer[8, 4]``,
    32 for float). pass_args: ``{"verbose": False}``. Returns ``(graph, {"data_avg_bit",
    "w_avg_bit", "table"})`` with one row per counted node."""
    args = check_pass_args(pass_args, {"verbose": False}, "calculate_avg_bits_mg_analysis_pass")
    rows = []
    for node in graph_module(graph, "calculate_avg_bits_mg_analysis_pass").graph.nodes:
        common = node_common(node, "calculate_avg_bits_mg_analysis_pass")
        op = get_mase_op(node)
        if op not in _AVG_BITS_OPS:
            continue
        entries = {k: common["args"].get(k) for k in ("data_in_0", "weight")}
        if not all(isinstance(e, dict) and e.get("shape") is not None and e.get("precision") for e in entries.values()):
            raise ValueError(f"calculate_avg_bits_mg_analysis_pass: node {node.name!r} ({op}) "
                             f"has no shape/precision for its data_in_0 and weight; run "
                             f"add_common_metadata_analysis_pass first")
        row = {"Node name": node.name, "Mase op": op}
        for key, entry in entries.items():
            row[f"{key} bits"] = int(entry["precision"][0])
            row[f"{key} values"] = int(math.prod(entry["shape"]))
        rows.append(row)
    if not rows:
        raise ValueError("calculate_avg_bits_mg_analysis_pass: the graph has no "
                         f"{'/'.join(_AVG_BITS_OPS)} node to average over")
    table = pd.DataFrame(rows)

    def average(key):
        return float((table[f"{key} bits"] * table[f"{key} values"]).sum() / table[f"{key} values"].sum())

    info = {"data_avg_bit": average("data_in_0"), "w_avg_bit": average("weight"), "table": table}
    if args["verbose"]:
        print(f"data_avg_bit: {info['data_avg_bit']:.4g}, w_avg_bit: {info['w_avg_bit']:.4g}")
    return graph, info
