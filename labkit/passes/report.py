"""Report passes: look at a MaseGraph as tables.

Every pass returns ``(graph, info)`` with the table as a pandas DataFrame in
``info["table"]`` (for notebooks) and the printed text in ``info["text"]``.
``"verbose": False`` keeps a pass quiet.

    placeholder    forward()'s inputs             get_attr      reads a model attribute
    call_module    runs a sub-module (a layer)    call_function runs a free function
    call_method    runs a tensor method           output        what forward() returns
"""

from __future__ import annotations

from pathlib import Path
from pprint import pformat

import pandas as pd
from tabulate import tabulate

from ..cache import atomic_write_text
from ..graph import get_node_actual_target
from .utils import check_pass_args, graph_module, node_common, target_name

__all__ = [
    "report_graph_analysis_pass", "report_node_meta_param_analysis_pass",
    "report_node_type_analysis_pass", "report_node_shape_analysis_pass",
]

OPCODES = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")


def _table_text(df: pd.DataFrame, tablefmt: str = "simple") -> str:
    return tabulate(df, headers="keys", tablefmt=tablefmt, showindex=False)


def report_graph_analysis_pass(graph, pass_args=None):
    """Overview of the graph: the opcode table, the generated code, node counts, layer types.

    pass_args: ``{"file_name": None | path, "verbose": True}`` (a bare path works too).
    Prints the report, or writes it to ``file_name`` when one is given.
    info: ``table`` (opcode, name, target, args, kwargs), ``code``, ``count``
    (nodes per opcode), ``layer_types`` (the modules' reprs) and ``text``.
    """
    if isinstance(pass_args, (str, Path)):
        pass_args = {"file_name": pass_args}
    args = check_pass_args(pass_args, {"file_name": None, "verbose": True}, "report_graph_analysis_pass")
    gm = graph_module(graph, "report_graph_analysis_pass")
    rows, count, layer_types = [], dict.fromkeys(OPCODES, 0), []
    for node in gm.graph.nodes:
        count[node.op] = count.get(node.op, 0) + 1
        rows.append({"opcode": node.op, "name": node.name, "target": target_name(node.target),
                     "args": str(node.args), "kwargs": str(node.kwargs)})
        if node.op == "call_module":
            layer_types.append(get_node_actual_target(node))
    table = pd.DataFrame(rows, columns=["opcode", "name", "target", "args", "kwargs"])
    text = (f"Graph of {getattr(graph, 'name', type(gm).__name__)}:\n{_table_text(table)}\n\n"
            f"Graph code:{gm.code}\n"
            f"Network overview:\n{count}\n"
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


def report_node_meta_param_analysis_pass(graph, pass_args=None):
    """One row per node with its metadata: ``which`` of common/software/hardware (or "all").

    pass_args: ``{"which": ("all",), "save_path": None, "verbose": True}``.
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
               "Mase type": common["mase_type"], "Mase op": common["mase_op"]}
        for part in parts:
            row[f"{part.capitalize()} Param"] = pformat(_plain(node.meta["mase"].parameters[part]),
                                                        width=60, sort_dicts=False)
        rows.append(row)
    table = pd.DataFrame(rows)
    text = _table_text(table, "grid")
    if args["save_path"] is not None:
        atomic_write_text(args["save_path"], text)
    if args["verbose"]:
        print(text)
    return graph, {"table": table, "text": text}


def _value_type(common: dict) -> str:
    first = common["args"].get("data_in_0") or common["results"].get("data_out_0") or {}
    if first.get("precision"):
        return f"{first['type']}{first['precision']}"
    return first.get("type", "NA")


def report_node_type_analysis_pass(graph, pass_args=None):
    """One row per node: fx opcode, mase_type, mase_op and its input's value type (float[32] ...)."""
    args = check_pass_args(pass_args, {"verbose": True}, "report_node_type_analysis_pass")
    rows = []
    for node in graph_module(graph, "report_node_type_analysis_pass").graph.nodes:
        common = node_common(node, "report_node_type_analysis_pass")
        rows.append({"Node name": node.name, "Fx Node op": node.op, "Mase type": common["mase_type"],
                     "Mase op": common["mase_op"], "Value type": _value_type(common)})
    table = pd.DataFrame(rows)
    text = _table_text(table)
    if args["verbose"]:
        print(text)
    return graph, {"table": table, "text": text}


def _shapes(entries: dict) -> str:
    return ", ".join(f"{k}={v['shape']}" for k, v in entries.items() if v.get("shape") is not None)


def report_node_shape_analysis_pass(graph, pass_args=None):
    """One row per node: the shapes of its tensor inputs (data and parameters) and outputs."""
    args = check_pass_args(pass_args, {"verbose": True}, "report_node_shape_analysis_pass")
    rows = []
    for node in graph_module(graph, "report_node_shape_analysis_pass").graph.nodes:
        common = node_common(node, "report_node_shape_analysis_pass")
        rows.append({"Node name": node.name, "Mase op": common["mase_op"],
                     "Inputs": _shapes(common["args"]), "Outputs": _shapes(common["results"])})
    table = pd.DataFrame(rows)
    text = _table_text(table)
    if args["verbose"]:
        print(text)
    return graph, {"table": table, "text": text}
