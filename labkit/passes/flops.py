"""Count FLOPs and BitOPs per node: ``mg, info = analyse_flops_pass(mg)``.

Run it after the common metadata pass (it reads each node's shapes and precisions)::

    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": dummy_in})
    mg, info = analyse_flops_pass(mg)          # prints the "Computations summary"
    info["table"]                              # the same table as a DataFrame

FLOPs say how much arithmetic a layer does; BitOPs also say how wide that arithmetic is,
so they see quantisation, which FLOPs cannot::

    BitOPs = FLOPs x input width x weight width     (linear, conv, batch norm)
    BitOPs = FLOPs x input width                    (activations, elementwise ops)

Widths are ``precision[0]`` of the node's ``data_in_0`` and ``weight`` metadata: 32 for
float32, 8 after an 8-bit ``quantize_transform_pass``. Per-op counts live in
:mod:`labkit.passes.flop_calculators`.

Conventions (``pass_args["convention"]``):

* ``"mac"`` (default, the lab report's table): a multiply-accumulate counts as 1 FLOP.
* ``"2flops_per_mac"``: a MAC counts as 2 FLOPs (a multiply and an add), as
  ``torch.utils.flop_counter.FlopCounterMode`` and most papers count. Only MAC ops
  (linear, conv, matmul) change.

Backward counts assume every input needs a gradient (linear and conv: 2 x forward).
"""

from __future__ import annotations

import operator
import warnings

import pandas as pd
import torch
import torch.nn as nn
from tabulate import tabulate
from torch.fx.operator_schemas import normalize_function

from ..checks import instance_of
from ..graph import get_node_actual_target
from .flop_calculators import OpCall, UnsupportedOpError, count_op
from .utils import check_pass_args, get_mase_op, graph_module, node_common

CONVENTIONS = ("mac", "2flops_per_mac")
DEFAULT_PASS_ARGS = {"print": True, "convention": "mac"}

COLUMNS = ["Node name", "Node type", "Parameters", "Forward FLOPS", "Backward FLOPS",
           "Forward bitops", "Backward bitops", "Note"]
NUMBER_COLUMNS = COLUMNS[2:7]
TITLE = "Computations summary:\n---------------------"


def analyse_flops_pass(graph, pass_args=None):
    """Count parameters, FLOPs and BitOPs (forward and backward) of every node.

    ``pass_args``: ``{"print": bool, "convention": "mac" | "2flops_per_mac"}``.
    Returns ``(graph, info)`` with ``info["table"]`` (a DataFrame, one row per node plus a
    ``total`` row), ``info["totals"]`` and ``info["unsupported"]`` (names of nodes whose op
    could not be counted: their row says so, and they are left out of the totals).
    Each node also gets ``meta["mase"].parameters["software"]["flops"]``.
    """
    args = _check_pass_args(pass_args)
    gm = graph_module(graph, "analyse_flops_pass")
    nodes = list(gm.graph.nodes)
    for node in nodes:  # every node needs its shapes and widths
        node_common(node, "analyse_flops_pass")

    rows, unsupported = [], []
    for node in nodes:
        row = _count_node(gm, node, args["convention"])
        if row["Note"].startswith("unsupported"):
            unsupported.append(node.name)
        _store(node, row, args["convention"])
        rows.append(row)

    table = pd.DataFrame(rows, columns=COLUMNS)
    table[NUMBER_COLUMNS] = table[NUMBER_COLUMNS].astype(float)
    totals = {c: float(table[c].sum()) for c in NUMBER_COLUMNS}
    note = f"excludes unsupported: {', '.join(unsupported)}" if unsupported else ""
    table.loc[len(table)] = {"Node name": "total", "Node type": "", **totals, "Note": note}

    if unsupported:
        warnings.warn(f"analyse_flops_pass: cannot count {len(unsupported)} node(s), listed as "
                      f"'unsupported' and left out of the totals: {', '.join(unsupported)}",
                      stacklevel=2)
    if args["print"]:
        print(TITLE)
        print(format_flops_table(table))
    return graph, {"table": table, "totals": totals, "unsupported": unsupported,
                   "convention": args["convention"]}


def format_flops_table(table: pd.DataFrame, tablefmt: str = "github") -> str:
    """The table as text, like the lab report's: blank cells for placeholders and outputs.

    The ``Note`` column is shown only when some row has a note.
    """
    columns = COLUMNS if table["Note"].astype(bool).any() else COLUMNS[:-1]
    rows = [[None if isinstance(v, float) and v != v else v for v in row]  # NaN -> blank
            for row in table[columns].itertuples(index=False)]
    return tabulate(rows, headers=columns, tablefmt=tablefmt)


# --- one node -------------------------------------------------------------------------------


def _count_node(gm, node, convention: str) -> dict:
    common = node_common(node, "analyse_flops_pass")
    op = get_mase_op(node)
    row = {"Node name": node.name, "Node type": op, "Note": ""}
    blank = dict.fromkeys(NUMBER_COLUMNS, float("nan"))

    if node.op in ("placeholder", "output"):
        return {**row, **blank}
    if node.op == "get_attr":  # reads a tensor: no arithmetic; a Parameter counts as parameters
        value = operator.attrgetter(node.target)(gm)
        params = value.numel() if isinstance(value, nn.Parameter) else 0
        return {**row, **dict.fromkeys(NUMBER_COLUMNS, 0), "Parameters": params}

    call = _op_call(node, op, common)
    try:
        count = count_op(call)
    except UnsupportedOpError as e:
        return {**row, **blank, "Note": f"unsupported: {e}"}

    scale = 2 if (count.macs and convention == "2flops_per_mac") else 1
    forward, backward = scale * count.forward, scale * count.backward
    bits = _bit_multiplier(common.get("args", {}), count.bitops)
    note = ""
    if bits is None:  # zero FLOPs are zero BitOPs at any width
        bits = 0 if forward == backward == 0 else float("nan")
        note = "" if bits == 0 else "no input width in metadata: BitOPs unknown"
    return {**row, "Parameters": count.params, "Forward FLOPS": forward, "Backward FLOPS": backward,
            "Forward bitops": forward * bits, "Backward bitops": backward * bits, "Note": note}


def _op_call(node, op: str, common: dict) -> OpCall:
    """Gather what the calculators need from the node's metadata (and the node itself)."""
    args = common.get("args", {})
    data_in = sorted((k for k in args if k.startswith("data_in_")), key=lambda k: int(k[8:]))
    inputs = [_shape(args[k]) for k in data_in]
    module = get_node_actual_target(node) if node.op == "call_module" else None

    # non-tensor arguments (kernel_size=2, dim=1, ...) by name, for the calculators that need them
    attrs = {k: v.get("value") for k, v in args.items()
             if isinstance(v, dict) and v.get("shape") is None and not k.startswith("data_in_")}
    if node.op == "call_function":  # name the positional ones too: F.max_pool2d(x, 2)
        try:
            normalized = normalize_function(node.target, node.args, node.kwargs,
                                            normalize_to_only_use_kwargs=True)
        except (RuntimeError, TypeError, ValueError):  # some callables have no readable signature
            normalized = None
        if normalized is not None:
            attrs.update({k: v for k, v in normalized.kwargs.items()
                          if not isinstance(v, torch.fx.Node)})

    return OpCall(op, inputs=inputs, output=_shape(common.get("results", {}).get("data_out_0")),
                  weight=_shape(args.get("weight")), module=module, attrs=attrs)


def _bit_multiplier(args: dict, kind: str):
    """Width product that turns FLOPs into BitOPs; None when no input width is known."""
    data_in = [w for k, v in args.items() if k.startswith("data_in_") and (w := _width(v))]
    if not data_in:
        return None
    first = _width(args.get("data_in_0")) or max(data_in)   # 2 * x: the tensor is input 1
    if kind == "weighted":  # the module's weight, else a functional call's second input
        return first * (_width(args.get("weight")) or _width(args.get("data_in_1")) or 1)
    if kind == "two_inputs":
        return first * (_width(args.get("data_in_1")) or first)
    return max(data_in)


def _width(arg):
    """Bit width of one metadata entry: ``precision[0]`` (None for non-tensor arguments)."""
    precision = arg.get("precision") if isinstance(arg, dict) else None
    return int(precision[0]) if precision else None


def _store(node, row: dict, convention: str):
    meta = node.meta.get("mase")
    if meta is None:
        return
    software = meta.parameters.setdefault("software", {})
    software["flops"] = {
        "parameters": row["Parameters"], "forward_flops": row["Forward FLOPS"],
        "backward_flops": row["Backward FLOPS"], "forward_bitops": row["Forward bitops"],
        "backward_bitops": row["Backward bitops"], "convention": convention,
        "supported": not row["Note"].startswith("unsupported"),
    }


# --- small helpers --------------------------------------------------------------------------


def _check_pass_args(pass_args) -> dict:
    args = check_pass_args(pass_args, DEFAULT_PASS_ARGS, "analyse_flops_pass")
    if args["convention"] not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {args['convention']!r}")
    instance_of("pass_args['print']", args["print"], bool, "a bool")
    return args


def _shape(entry):
    """The ``shape`` of a metadata entry as a tuple; None for scalars and missing entries."""
    if isinstance(entry, dict):
        entry = entry.get("shape")
    if not isinstance(entry, (tuple, list, torch.Size)):
        return None
    return tuple(int(d) for d in entry)
