"""Quantisation passes: swap float layers for quantised ones, and report what changed.

    pass_args = {
        "by": "type",                                  # match nodes by mase_op ("name": by node name)
        "default": {"config": {"name": None}},         # everything else: leave as it is
        "linear": {"config": {"name": "integer",
                              "data_in_width": 8, "data_in_frac_width": 4,
                              "weight_width": 8, "weight_frac_width": 4,
                              "bias_width": 8, "bias_frac_width": 4}},
    }
    ori_mg = copy.deepcopy(mg)                         # the pass changes mg itself, as MASE's does
    mg, _ = quantize_transform_pass(mg, pass_args)     # returns the same (now quantised) graph
    summarize_quantization_analysis_pass(mg, {"original_graph": ori_mg, "save_dir": None})

The pass follows torch.fx's replace-op recipe: :func:`plan_quantization` matches the nodes
and checks ``pass_args`` once, against the graph, into a :class:`QuantPlan`
(``{node name: LayerPlan(op, config)}``); :func:`apply_quantize_plan` then builds each
quantised layer, puts it in the node's place and recompiles. Nothing after the plan reads
``pass_args`` again.

As in MASE, the graph given is quantised in place and returned, so a bare
``quantize_transform_pass(mg, pass_args)`` quantises ``mg``. Unlike MASE, ``pass_args`` is
never changed (MASE pops ``"by"`` out of it, so running the same dict twice fails), and the
model the graph was traced from keeps its float layers: each quantised layer gets its own
copy of the weights, as MASE's new modules do.

``by``: ``"type"`` (keys are mase ops), ``"name"`` (keys are node names) or
``"regex_name"`` (keys are regular expressions that must match a whole node name; the
first matching key in pass_args order wins, else ``default``).

What gets swapped: exact float layers that have a quantised twin (``nn.Linear`` ->
``LinearInteger``, ``nn.ReLU``, ``nn.BatchNorm1d``, ``nn.Conv1d/2d``), already quantised
layers (re-configured), functional ReLUs (``F.relu(x)``, ``x.relu()``, which become a
``ReLUInteger`` layer) and, as in MASE's QUANTIZEABLE_OP, functional ``add``/``mul``/``sub``
(both inputs quantised with ``data_in_*``) and ``matmul``/``bmm`` (second input with
``weight_*``), which become an ``AddInteger``-style layer. Under the ``default`` config
anything else is left as it is; naming it explicitly (by type or by name) is an error that
says why. That covers ops without a quantised twin (dropout, ``F.linear``) and subclasses
of a float layer (``class MyLinear(nn.Linear)``), whose own ``forward`` the quantised twin
would drop.

A layer called at several nodes (``self.fc(self.fc(x))`` -> nodes ``fc`` and ``fc_1``) is
one module: it is quantised at all of its call sites with one config, or at none, so
``pass_args`` must give all of them the same config (by name, name every one).

:func:`auto_frac_width_pass` writes such a ``pass_args`` for you: for a total bit width it
picks each layer's fractional width (or minifloat exponent bias) from the value ranges,
so that nothing saturates.
"""

from __future__ import annotations

import copy
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate

from ..cache import atomic_write_text
from ..checks import boolean, integer, one_of, positive_int
from ..graph import MaseGraph, get_node_actual_target, node_target_name
from ..quantize.modules import (FUNCTIONAL_OPS, OPERAND_ARGS, QUANTIZED_OPS, can_quantize, quantize_module,
                                quantized_class)
from ..quantize.quantizers import OPERANDS, is_no_quantization, max_minifloat_bias, parse_config
from .metadata import node_op_and_type
from .profile import profile_activations
from .utils import check_pass_args, get_mase_op, get_mase_type, graph_module

__all__ = ["quantize_transform_pass", "summarize_quantization_analysis_pass", "auto_frac_width_pass",
           "auto_quantize_config", "plan_quantization", "validate_quantize_args", "apply_quantize_plan",
           "QuantPlan", "LayerPlan", "QUANTIZABLE_OPS"]

QUANTIZABLE_OPS = tuple(QUANTIZED_OPS)  # linear, relu, batch_norm1d, conv1d, conv2d, add, mul, sub, matmul, bmm
BY = ("type", "name", "regex_name")
# functional forms we can turn into a quantised layer: F.relu(x), torch.relu(x), x.relu(), x + y, x @ w, ...
# (in-place forms such as ``x += y`` are left alone: the new layer would not write into x)
_FUNCTIONAL = {
    "relu": {F.relu, torch.relu, "relu"},
    "add": {operator.add, torch.add, "add"},
    "mul": {operator.mul, torch.mul, "mul"},
    "sub": {operator.sub, torch.sub, "sub"},
    "matmul": {operator.matmul, torch.matmul, "matmul"},
    "bmm": {torch.bmm, "bmm"},
}


def _is_functional(node: fx.Node, op: str) -> bool:
    """A call of a function we can swap for a quantised layer (``F.relu(x)``, ``x + y`` ...)."""
    if node.op not in ("call_function", "call_method") or op not in _FUNCTIONAL:
        return False
    try:
        if node.target not in _FUNCTIONAL[op]:
            return False
    except TypeError:  # an unhashable target
        return False
    if op == "relu":
        return True
    # two operands, at least one of them a tensor (a graph value), and no extra options (alpha=...)
    return len(node.args) == 2 and not node.kwargs and any(isinstance(a, fx.Node) for a in node.args)


# --- reading the graph ------------------------------------------------------------------------

def node_mase_op(node: fx.Node, gm: fx.GraphModule) -> tuple[str, str]:
    """``(mase_op, mase_type)`` from the node's metadata, or worked out from the node itself."""
    op, mase_type = get_mase_op(node, None), get_mase_type(node, None)
    if op is None or mase_type is None:
        return node_op_and_type(node, gm)
    return op, mase_type


# --- parsing pass_args into a plan -----------------------------------------------------------
# torch.fx's replace-op recipe: match the nodes, build their quantised layers, replace, recompile.
# plan_quantization does the matching and every check, once, before the graph changes;
# apply_quantize_plan builds and replaces. Nothing downstream parses pass_args again.

@dataclass(frozen=True)
class LayerPlan:
    """One node to quantise: its mase op and the config checked for that op."""
    op: str
    config: dict


@dataclass(frozen=True)
class QuantPlan:
    """What ``quantize_transform_pass`` will do: ``{node name: LayerPlan}`` in graph order.

    Iterating gives the node names (``name in plan``, ``", ".join(plan)`` work as on a dict)."""
    by: str
    layers: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __contains__(self, name):
        return name in self.layers

    def __getitem__(self, name) -> LayerPlan:
        return self.layers[name]

    def configs(self) -> dict:
        """``{node name: config}``, copies (the pass's ``info["configs"]``)."""
        return {name: dict(layer.config) for name, layer in self.layers.items()}


def _entry_config(pass_args: dict, key: str):
    """``pass_args[key]["config"]``, checked to be a dict (or None)."""
    entry = pass_args[key]
    if not isinstance(entry, dict) or "config" not in entry or set(entry) - {"config"}:
        raise ValueError(f"pass_args[{key!r}] must be {{'config': {{...}}}}, got {entry!r}")
    config = entry["config"]
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"pass_args[{key!r}]['config'] must be a dict, got {config!r}")
    if config is not None and "bypass" in config:  # named here, with the table it sits in
        boolean(f"bypass in [{key}.config]", config["bypass"])
    return config


def _check_by(pass_args) -> str:
    if not isinstance(pass_args, dict):
        raise ValueError(f"quantize pass_args must be a dict, got {type(pass_args).__name__}")
    by = pass_args.get("by")
    if by not in BY:
        raise ValueError(f"pass_args['by'] must be 'type' (match mase_op), 'name' (match node name) or "
                         f"'regex_name' (match node names by regular expression), got {by!r}")
    return by


def _parse_key(key: str, config, by: str, nodes: dict, ops_here: list):
    """One pass_args entry, checked in full (the op or node exists; the config suits it).
    Returns ``(lookup key, config or None)``; a regex key becomes its compiled pattern."""
    if by == "regex_name":
        try:
            pattern = re.compile(key)
        except re.error as exc:
            raise ValueError(f"pass_args: key {key!r} is not a valid regular expression (by='regex_name'): "
                             f"{exc}") from None
        if is_no_quantization(config):
            return pattern, None
        # a format check for every operand: the op is known only per matched node
        parse_config(config, OPERANDS, f"pass_args[{key!r}] (regex)")
        return pattern, config
    if by == "type":
        if key not in QUANTIZABLE_OPS and key not in ops_here:
            raise ValueError(f"pass_args: unknown op {key!r} (by='type'); quantisable ops: "
                             f"{', '.join(QUANTIZABLE_OPS)}; ops in this graph: {', '.join(ops_here)}")
        op, where = key, f"pass_args[{key!r}] (op {key})"
    else:
        if key not in nodes:
            raise ValueError(f"pass_args: no node named {key!r} (by='name'); nodes: {', '.join(nodes)}")
        op = nodes[key][1]
        where = f"node {key!r} ({op})"
    if is_no_quantization(config):
        return key, None
    if op not in QUANTIZABLE_OPS:
        raise ValueError(f"{where}: op {op!r} cannot be quantised; quantisable ops: {', '.join(QUANTIZABLE_OPS)}")
    parse_config(config, QUANTIZED_OPS[op].operands, where)
    return key, config


def _parse_default(pass_args: dict):
    """The ``default`` entry's config, checked for every operand (one default serves every op)."""
    default = _entry_config(pass_args, "default") if "default" in pass_args else None
    if is_no_quantization(default):
        return None
    parse_config(default, OPERANDS, "pass_args['default']")
    return default


def _swappable(node: fx.Node, op: str, where: str, explicit: bool) -> bool:
    """Whether ``node`` can become a quantised layer. Under a default config a node that
    cannot is left alone (False); one named explicitly is an error saying why."""
    if node.op != "call_module" and not _is_functional(node, op):
        if not explicit:
            return False  # e.g. F.linear under a default config: nothing we can swap
        raise ValueError(f"{where}: only layers (call_module), functional relu and two-operand "
                         f"{'/'.join(FUNCTIONAL_OPS)} can be quantised; this node is a {node.op} of "
                         f"{getattr(node.target, '__name__', node.target)!r}"
                         f"{' with options ' + str(dict(node.kwargs)) if node.kwargs else ''}. "
                         "Use the nn.Module layer or the plain two-operand form instead")
    if node.op == "call_module" and not can_quantize(get_node_actual_target(node)):
        if not explicit:
            return False  # a subclass of a float layer, under a default config: left alone
        cls = type(get_node_actual_target(node))
        base = QUANTIZED_OPS[op].float_class.__name__
        raise ValueError(f"{where}: layer {node.target!r} is a {cls.__name__}, a subclass of {base} but not "
                         f"{base} itself; its quantised twin would run {base}'s forward() instead of "
                         f"{cls.__name__}'s. Only exact {base} layers (or already quantised ones) are converted")
    return True


def _match(name: str, op: str, by: str, configs: dict, default):
    """``(config, explicit, the key that matched)`` for one node; config None: leave it alone."""
    if by == "regex_name":  # like MASE: the first pattern that matches the whole name, else default
        pattern = next((p for p in configs if p.fullmatch(name)), None)
        # a pattern may match any op, so it is never "explicit"
        return (configs[pattern], False, pattern.pattern) if pattern is not None else (default, False, None)
    lookup = op if by == "type" else name
    if lookup in configs:
        return configs[lookup], True, lookup
    return default, False, None


def plan_quantization(graph, pass_args: dict) -> QuantPlan:
    """Parse ``pass_args`` once against the graph into a :class:`QuantPlan` of the nodes to
    quantise, in graph order.

    Every config is checked in full (keys, format, widths) once, also for ops the graph
    lacks, so a typo never passes silently. Raises ValueError naming the key, value and node/op.
    """
    gm = graph_module(graph, "quantize_transform_pass")
    by = _check_by(pass_args)
    nodes = {n.name: (n, node_mase_op(n, gm)[0]) for n in gm.graph.nodes}
    ops_here = sorted({op for _, op in nodes.values()})
    configs = dict(_parse_key(key, _entry_config(pass_args, key), by, nodes, ops_here)
                   for key in pass_args if key not in ("by", "default"))
    default = _parse_default(pass_args)
    layers = {}
    for name, (node, op) in nodes.items():
        config, explicit, key = _match(name, op, by, configs, default)
        if config is None or op not in QUANTIZABLE_OPS:  # (an explicit one was rejected above)
            continue
        where = f"node {name!r} ({op})"
        if by == "regex_name":  # the pattern's config was only checked in general; check it for this op
            parse_config(config, QUANTIZED_OPS[op].operands, f"{where}, matched by pass_args[{key!r}]")
        if _swappable(node, op, where, explicit):
            layers[name] = LayerPlan(op, config)
    plan = QuantPlan(by, layers)
    _check_shared_modules(nodes, plan)
    return plan


def validate_quantize_args(graph, pass_args: dict) -> QuantPlan:
    """Check ``pass_args`` against the graph; the same :class:`QuantPlan` as :func:`plan_quantization`."""
    return plan_quantization(graph, pass_args)


def _check_shared_modules(nodes: dict, plan: dict):
    """A module called at several nodes is one layer: all its call sites get one config, or none do."""
    sites = {}
    for name, (node, _) in nodes.items():
        if node.op == "call_module":
            sites.setdefault(node.target, []).append(name)
    for target, names in sites.items():
        planned = [n for n in names if n in plan]
        if len(names) < 2 or not planned:
            continue
        if len(planned) < len(names):
            left = [n for n in names if n not in plan]
            raise ValueError(f"module {target!r} is called at nodes {', '.join(names)}: pass_args quantise it at "
                             f"{', '.join(planned)} but not at {', '.join(left)}. Its call sites share one layer, "
                             "so give every one of them the same config (or none)")
        first = plan[planned[0]].config
        other = next((n for n in planned[1:] if plan[n].config != first), None)
        if other is not None:
            raise ValueError(f"module {target!r} is called at nodes {', '.join(names)} with different configs "
                             f"({planned[0]}: {first}; {other}: {plan[other].config}); its call sites share one "
                             "layer, so give them one config")


# --- the transform ----------------------------------------------------------------------------

def _update_metadata(node: fx.Node, module: nn.Module):
    """Write the quantisers' ``type``/``precision`` into the node's common metadata."""
    meta = node.meta.get("mase")
    if meta is None:
        return
    args = meta.parameters.get("common", {}).get("args")
    if not isinstance(args, dict):
        return
    for key, formats in module.arg_metadata().items():
        if key in args and isinstance(args[key], dict):
            args[key].update(formats)
    meta.parameters["common"]["quant_config"] = dict(module.config)


def _unique_attr(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _quantize_functional(gm: fx.GraphModule, node: fx.Node, op: str, config: dict) -> nn.Module:
    """Turn ``F.relu(x)`` / ``x.relu()`` / ``x + y`` / ``x @ w`` ... into a call of a new quantised layer."""
    if op == "relu":
        inplace = bool(node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False))
        module = quantized_class("relu", config["name"])(inplace=inplace, config=config)
        args = (node.args[0],)
    else:
        module = quantized_class(op, config["name"])(config=config)
        args = tuple(node.args)
    target = _unique_attr(gm, f"{node.name}_q")
    gm.add_submodule(target, module)
    node.op, node.target = "call_module", target
    node.args, node.kwargs = args, {}
    return module


def _swap_module(gm: fx.GraphModule, node: fx.Node, layer: LayerPlan, swapped: dict) -> nn.Module:
    """Build the quantised twin of a ``call_module`` node's layer and put it in the layer's place."""
    if node.target not in swapped:  # a layer called at several nodes is built once
        own = copy.deepcopy(get_node_actual_target(node))
        module = quantize_module(own, layer.config, f"node {node.name!r} ({layer.op})")
        parent, _, leaf = node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, module)
        swapped[node.target] = module
    return swapped[node.target]


def apply_quantize_plan(graph, plan: QuantPlan) -> list[str]:
    """Quantise ``graph`` *in place* as ``plan`` (from :func:`plan_quantization`) says: build
    each planned node's quantised layer, replace the node's target, recompile. Returns the
    names of the changed nodes. Each quantised layer gets its own copy of the float layer's
    weights (as MASE's new modules do), so the model the graph was traced from keeps its
    float layers and weights."""
    gm = graph_module(graph, "apply_quantize_plan")
    swapped = {}  # module path -> its quantised layer
    for node in list(gm.graph.nodes):
        if node.name not in plan:
            continue
        layer = plan[node.name]
        if node.op == "call_module":
            module = _swap_module(gm, node, layer, swapped)
        else:
            module = _quantize_functional(gm, node, layer.op, layer.config)
        _update_metadata(node, module)
    gm.graph.lint()
    gm.recompile()
    return list(plan)


def quantize_transform_pass(graph, pass_args: dict):
    """Replace the layers ``pass_args`` selects by quantised ones, in ``graph`` itself (MASE).

    Returns ``(graph, info)``: the same :class:`MaseGraph`, now quantised, and ``info =
    {"changed": [node names], "configs": {node name: config}}``. ``pass_args`` is left as
    it was. Changed nodes' metadata (``args.data_in_0/weight/bias`` ``type`` and
    ``precision``) describe the new number formats, for later passes such as BitOPs.
    Keep a float copy first (``ori_mg = copy.deepcopy(mg)``) to compare against; the
    model ``mg`` was traced from is not changed either.
    """
    if not isinstance(graph, MaseGraph):
        raise TypeError(f"quantize_transform_pass needs a MaseGraph, got {type(graph).__name__}; "
                        "build one with MaseGraph(model=model)")
    plan = plan_quantization(graph, pass_args)  # checks everything before the graph changes
    changed = apply_quantize_plan(graph, plan)
    return graph, {"changed": changed, "configs": plan.configs()}


# --- the summary ------------------------------------------------------------------------------

def compare_nodes(graph, original_graph) -> pd.DataFrame:
    """One row per node: Name | MASE_TYPE | Mase_OP | Original type | Quantized type | Changed."""
    gm = graph_module(graph, "summarize_quantization_analysis_pass")
    ori = graph_module(original_graph, "summarize_quantization_analysis_pass (original_graph)")
    ori_nodes = {n.name: n for n in ori.graph.nodes}
    new_names = [n.name for n in gm.graph.nodes]
    if sorted(new_names) != sorted(ori_nodes):
        missing = sorted(set(ori_nodes) ^ set(new_names))
        raise ValueError(f"the graphs have different nodes ({', '.join(missing)}); "
                         "original_graph must be the graph quantize_transform_pass was given")
    rows = []
    for node in gm.graph.nodes:
        old = ori_nodes[node.name]
        op, mase_type = node_mase_op(old, ori)
        before, after = node_target_name(old), node_target_name(node)
        rows.append({"Name": node.name, "MASE_TYPE": mase_type, "Mase_OP": op,
                     "Original type": before, "Quantized type": after, "Changed": before != after})
    return pd.DataFrame(rows)


def summarize_quantization_analysis_pass(graph, pass_args: dict = None, save_dir=None):
    """Count, per original layer type, how many nodes the quantisation changed (MASE's table).

    pass_args: ``{"original_graph": ori_mg, "save_dir": None or a folder, "verbose": True}``.
    Prints MASE's "Quantized graph histogram" (an org-mode table). With ``save_dir`` it writes
    MASE's files, ``quantize_table.csv`` (one row per node: Ori name | New name | MASE_TYPE |
    Mase_OP | Original type | Quantized type | Changed) and ``quantize_histogram.csv``, and
    labkit's ``quantize_summary.{csv,md}`` and ``quantize_nodes.{csv,md}``. Returns
    ``(graph, {"summary": DataFrame, "nodes": DataFrame, "compare": DataFrame})``; ``compare``
    is MASE's per-node table.

    The lab handouts' older call ``summarize_quantization_analysis_pass(ori_mg, mg,
    save_dir="quantize_summary")`` (original graph first) works too.
    """
    if isinstance(getattr(pass_args, "model", None), fx.GraphModule):  # (ori_mg, mg, save_dir=...)
        graph, pass_args = pass_args, {"original_graph": graph, "save_dir": save_dir}
    elif save_dir is not None:
        raise TypeError("summarize_quantization_analysis_pass: save_dir= goes with the handouts' call "
                        "(ori_mg, mg, save_dir=...); otherwise put it in pass_args")
    args = check_pass_args(pass_args, {"original_graph": None, "save_dir": None, "verbose": True},
                           "summarize_quantization_analysis_pass")
    if args["original_graph"] is None:
        raise ValueError("summarize_quantization_analysis_pass needs pass_args={'original_graph': ori_mg, "
                         f"'save_dir': None}}, got {pass_args!r}")
    nodes = compare_nodes(graph, args["original_graph"])
    summary = (nodes.groupby("Original type")
               .agg(OP=("Mase_OP", "first"), Total=("Changed", "size"), Changed=("Changed", "sum"))
               .reset_index())
    summary["Changed"] = summary["Changed"].astype(int)
    summary["Unchanged"] = summary["Total"] - summary["Changed"]
    # MASE's per-node table names each node before and after (the pass keeps the names)
    compare = nodes.rename(columns={"Name": "New name"})
    compare.insert(0, "Ori name", nodes["Name"])
    table = tabulate(summary, headers="keys", tablefmt="github", showindex=False)
    if args["verbose"]:
        print("Quantized graph histogram:\n" + tabulate(summary, headers="keys", tablefmt="orgtbl", showindex=False))
    if args["save_dir"]:
        save_dir = Path(args["save_dir"])
        atomic_write_text(save_dir / "quantize_table.csv", compare.to_csv())
        atomic_write_text(save_dir / "quantize_histogram.csv", summary.set_index("Original type").to_csv())
        atomic_write_text(save_dir / "quantize_summary.csv", summary.to_csv(index=False))
        atomic_write_text(save_dir / "quantize_summary.md", table + "\n")
        atomic_write_text(save_dir / "quantize_nodes.csv", nodes.to_csv(index=False))
        atomic_write_text(save_dir / "quantize_nodes.md",
                          tabulate(nodes, headers="keys", tablefmt="github", showindex=False) + "\n")
    return graph, {"summary": summary, "nodes": nodes, "compare": compare}


# --- automatic fractional widths --------------------------------------------------------------

def integer_frac_width(lo: float, hi: float, width: int) -> int:
    """The largest ``frac_width`` for which ``width``-bit fixed point holds [lo, hi] unsaturated.

    With step s = 2^-frac the format spans [-2^(w-1) s, (2^(w-1) - 1) s]; a value may exceed
    the top by half a step and still round there, so we need (2^(w-1) - 1/2) s >= hi and
    (2^(w-1) + 1/2) s >= -lo. All-zero ranges get frac = width - 1.
    """
    half = 2 ** (width - 1)
    candidates = []
    if hi > 0:
        candidates.append(math.floor(math.log2((half - 0.5) / hi)))
    if lo < 0:
        candidates.append(math.floor(math.log2((half + 0.5) / -lo)))
    frac = min(candidates) if candidates else width - 1
    return max(-32, min(32, frac))


def default_exponent_width(width: int) -> int:
    """The exponent bits of a minifloat of ``width`` bits: 2-3 -> 1, 4-5 -> 2, 6-7 -> 3,
    8-11 -> 4 (8 bits is E4M3), 12-16 -> 5 (16 bits is IEEE half's E5M10), wider -> 8."""
    for top, e in ((3, 1), (5, 2), (7, 3), (11, 4), (16, 5)):
        if width <= top:
            return min(e, width - 1)
    return 8


def minifloat_exponent_bias(lo: float, hi: float, width: int, exponent_width: int) -> int:
    """The largest exponent bias (finest resolution) whose largest value still covers [lo, hi]."""
    m = max(abs(lo), abs(hi))
    mantissa = width - 1 - exponent_width
    top_code = 2 ** exponent_width - 1
    if m == 0:
        return 2 ** (exponent_width - 1) - 1
    # largest = 2^(top_code - bias) * (2 - 2^-M) (+ half an ulp still rounds down) >= m
    limit = (2 - 2.0 ** -mantissa + 2.0 ** -(mantissa + 1))
    bias = math.floor(top_code - math.log2(m / limit))
    return max(-126, min(max_minifloat_bias(width, exponent_width), bias))


def _ranges_from_stats(node: fx.Node) -> dict:
    """``{"data_in_0": (lo, hi), "weight": ..., ...}`` from profile_statistics_analysis_pass stats."""
    out = {}
    try:
        args = node.meta["mase"].parameters["software"]["args"]
    except (KeyError, AttributeError, TypeError):
        return out
    for key, entry in args.items():
        stat = entry.get("stat", {}) if isinstance(entry, dict) else {}
        for kind in ("range_min_max", "range_quantile", "range"):
            r = stat.get(kind)
            if isinstance(r, dict) and "min" in r and "max" in r:
                out[key] = (float(torch.as_tensor(r["min"]).min()), float(torch.as_tensor(r["max"]).max()))
                break
    return out


def _calibration_input(args: dict):
    """The calibration batch: ``dummy_in``/``data`` as a tensor or ``{"x": tensor}``; a JSCData gives
    the first ``num_samples`` rows of its training split. None when neither is given."""
    x = args["dummy_in"] if args["dummy_in"] is not None else args["data"]
    if x is None:
        return None
    if hasattr(x, "split") and hasattr(x, "info"):  # a JSCData: a slice of the training split
        return x.split("train")[0][: args["num_samples"]]
    if isinstance(x, dict) and x and all(isinstance(v, torch.Tensor) for v in x.values()):
        return x
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"auto_frac_width_pass: dummy_in must be a tensor, {{'x': tensor}} or a JSCData, "
                         f"got {type(x).__name__}")
    return x


_AUTO_DEFAULTS = {"width": None, "format": "integer", "by": "name", "ops": ["linear", "relu"], "dummy_in": None,
                  "data": None, "num_samples": 4096, "exponent_width": None, "verbose": False}


def _auto_args(pass_args) -> dict:
    """``auto_frac_width_pass``'s pass_args, checked; ``width`` becomes ``{operand: bits}``."""
    if not isinstance(pass_args, dict):
        raise ValueError(f"auto_frac_width_pass needs a dict of pass_args, got {pass_args!r}")
    args = check_pass_args(pass_args, _AUTO_DEFAULTS, "auto_frac_width_pass")
    fmt = one_of("auto_frac_width_pass: format", args["format"], ("integer", "minifloat"))
    one_of("auto_frac_width_pass: by", args["by"], BY)
    ops = args["ops"]
    if not isinstance(ops, (list, tuple)) or not all(isinstance(op, str) and op in QUANTIZABLE_OPS for op in ops):
        raise ValueError(f"auto_frac_width_pass: ops must be a list of {', '.join(QUANTIZABLE_OPS)}, got {ops!r}")
    widths = args["width"]
    if not isinstance(widths, dict):
        widths = {op: widths for op in OPERANDS}
    if set(widths) != set(OPERANDS):
        raise ValueError(f"auto_frac_width_pass: width must be an int or a dict with keys "
                         f"{', '.join(OPERANDS)}, got {args['width']!r}")
    lowest = 1 if fmt == "integer" else 2  # a minifloat needs a sign bit and an exponent bit
    for operand, w in widths.items():
        integer(f"auto_frac_width_pass: {operand} width", w, lowest, 32)
    args["width"] = widths
    if args["exponent_width"] is not None:
        if fmt != "minifloat":
            raise ValueError(f"auto_frac_width_pass: exponent_width is for format='minifloat', not {fmt!r}")
        integer("auto_frac_width_pass: exponent_width", args["exponent_width"], 1, 8)
    args["num_samples"] = positive_int("auto_frac_width_pass: num_samples", args["num_samples"])
    return args


def auto_frac_width_pass(graph, pass_args: dict):
    """Choose per-layer number formats for a total ``width`` so that no value saturates.

    pass_args:
      ``width``: total bits, an int or ``{"data_in": 8, "weight": 4, "bias": 8}``;
      ``format``: "integer" (default: picks ``frac_width``) or "minifloat" (picks the
      exponent bias; ``exponent_width`` in [1, 8] optional, capped at width - 1);
      ``ops``: which mase ops to quantise (default ``["linear", "relu"]``);
      ``by``: "name" (a config per node, default) or "type" (one per op: the smallest
      frac/bias over its nodes, so that none saturates);
      ``dummy_in`` / ``data``: a calibration batch (or a JSCData: ``num_samples`` rows of
      its training split), needed for the activation ranges unless
      ``profile_statistics_analysis_pass`` already stored them.

    Weight and bias ranges come from the parameters themselves; activation ranges from the
    profiler's ``range_min_max``/``range_quantile`` stats when present, else the profiler
    measures ``range_min_max`` on the calibration batch (these are not stored on the graph).
    Returns ``(graph, {"pass_args": ..., "table": DataFrame})``; ``info["pass_args"]`` goes
    straight into :func:`quantize_transform_pass`.
    """
    args = _auto_args(pass_args)
    gm = graph_module(graph, "auto_frac_width_pass")
    targets = [n for n in gm.graph.nodes if node_mase_op(n, gm)[0] in args["ops"]
               and (n.op == "call_module" or _is_functional(n, node_mase_op(n, gm)[0]))]
    ranges = _activation_ranges(gm, targets, args)
    rows, configs = [], {}
    for node in targets:
        op = node_mase_op(node, gm)[0]
        configs[node.name] = (op, _auto_config(node, op, ranges[node.name], args, rows))
    out = {"by": args["by"], "default": {"config": {"name": None}}}
    if args["by"] == "name":
        out.update({name: {"config": cfg} for name, (_, cfg) in configs.items()})
    else:
        out.update(_merge_by_op(configs))
    table = pd.DataFrame(rows)
    if args["verbose"] and len(table):
        print(tabulate(table, headers="keys", tablefmt="github", showindex=False, floatfmt=".4g"))
    return graph, {"pass_args": out, "table": table}


def _activation_ranges(gm: fx.GraphModule, targets: list, args: dict) -> dict:
    """``{node name: {"data_in_0": (lo, hi), ...}}``: the profiler's stored ranges, and for
    nodes without one, ``range_min_max`` measured now on the calibration batch."""
    ranges = {n.name: _ranges_from_stats(n) for n in targets}
    missing = [n for n in targets if "data_in_0" not in ranges[n.name]]
    if not missing:
        return ranges
    x = _calibration_input(args)
    if x is None:
        raise ValueError(f"auto_frac_width_pass: no activation ranges for {', '.join(n.name for n in missing)}; "
                         "pass a calibration batch as 'dummy_in' (or 'data'), or run "
                         "profile_statistics_analysis_pass first")
    stats, _ = profile_activations(gm, missing, {"range_min_max": {}}, iter([x]))
    for name, s in stats.items():
        ranges[name]["data_in_0"] = (float(s["range_min_max"]["min"]), float(s["range_min_max"]["max"]))
    return ranges


def _operand_range(node: fx.Node, operand: str, ranges: dict) -> tuple[float, float]:
    """(lo, hi) of one operand: a parameter's own values, or the activation range measured."""
    if operand == "data_in":
        return ranges.get(OPERAND_ARGS[operand], (0.0, 0.0))
    module = get_node_actual_target(node) if node.op == "call_module" else None
    t = getattr(module, operand, None) if module is not None else None
    return (0.0, 0.0) if t is None else (float(t.detach().min()), float(t.detach().max()))


def _auto_config(node: fx.Node, op: str, ranges: dict, args: dict, rows: list) -> dict:
    """The config of one node: per operand the finest format that holds its range; one row
    per operand is appended to ``rows`` (the pass's table)."""
    fmt = args["format"]
    config = {"name": fmt}
    for operand in QUANTIZED_OPS[op].operands:
        lo, hi = _operand_range(node, operand, ranges)
        w = args["width"][operand]
        config[f"{operand}_width"] = w
        if fmt == "integer":
            if op == "relu" and operand == "data_in":
                # a ReLU's input is quantised unsigned (MASE's ReLUInteger): w unsigned bits reach
                # as high as w + 1 signed ones, and negatives all become 0 anyway
                choice = integer_frac_width(0.0, max(hi, 0.0), w + 1)
            else:
                choice = integer_frac_width(lo, hi, w)
            config[f"{operand}_frac_width"] = choice
        else:
            e = min(args["exponent_width"] or default_exponent_width(w), w - 1)
            choice = minifloat_exponent_bias(lo, hi, w, e)
            config[f"{operand}_exponent_width"] = e
            config[f"{operand}_exponent_bias"] = choice
        rows.append({"node": node.name, "op": op, "operand": operand, "min": lo, "max": hi,
                     "width": w, "frac_width" if fmt == "integer" else "exponent_bias": choice})
    return config


def _merge_by_op(configs: dict) -> dict:
    """by="type": one config per op, the most conservative (smallest frac / bias) over its
    nodes, so that none of them saturates."""
    out = {}
    for name, (op, cfg) in configs.items():
        if op not in out:
            out[op] = {"config": dict(cfg)}
            continue
        merged = out[op]["config"]
        for k, v in cfg.items():
            if k.endswith(("_frac_width", "_exponent_bias")):
                merged[k] = min(merged[k], v)
    return out


def auto_quantize_config(graph, width, *, format: str = "integer", ops=("linear", "relu"), by: str = "name",
                         dummy_in=None, data=None, exponent_width=None) -> dict:
    """Shortcut: the ``pass_args`` :func:`auto_frac_width_pass` chooses for ``width`` bits."""
    args = {"width": width, "format": format, "ops": list(ops), "by": by}
    if dummy_in is not None:
        args["dummy_in"] = dummy_in
    if data is not None:
        args["data"] = data
    if exponent_width is not None:
        args["exponent_width"] = exponent_width
    return auto_frac_width_pass(graph, args)[1]["pass_args"]
