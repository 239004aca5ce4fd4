"""``verify_metadata_analysis_pass``: check a MaseGraph's metadata is whole and consistent.

It checks what later passes rely on, per node and along every edge, and raises one
ValueError naming the node and what is wrong:

- every node has common metadata (``mase_type``, ``mase_op``, ``args``, ``results``);
- node names are unique, and each node has at most one result (``data_out_0``);
- each data input's recorded shape is the shape its source node's output recorded;
- linear layers: weight ``[out, in]`` fits the input's last dimension, bias ``[out]``,
  output ``[..., out]``; shape-keeping ops (relu, batch norm, dropout ...) output their
  input's shape.

MASE's version knows only a handful of ops (placeholder, output, linear, relu, flatten) and
stops at any other, e.g. the BatchNorm1d of every JSC model; this one checks every op and
applies the per-op rules where it has them.
"""

from __future__ import annotations

from .utils import get_mase_op, graph_module, node_common

__all__ = ["verify_metadata_analysis_pass"]

SHAPE_KEEPING = ("relu", "batch_norm1d", "batch_norm2d", "layer_norm", "dropout", "hardtanh", "selu", "tanh",
                 "gelu", "sigmoid", "softsign", "softplus", "silu", "elu", "leaky_relu", "identity")
PASS = "verify_metadata_analysis_pass"


def _fail(node, what: str):
    raise ValueError(f"{PASS}: node {node.name!r}: {what}")


def _shape(entry):
    return list(entry["shape"]) if isinstance(entry, dict) and entry.get("shape") is not None else None


def verify_metadata_analysis_pass(graph, pass_args=None):
    """Check the common metadata (see the module's docstring). pass_args: None or ``{}``.
    Returns ``(graph, {"nodes": n, "edges": number of data edges checked})``."""
    if pass_args not in (None, {}):
        raise ValueError(f"{PASS}: takes no pass_args (None or {{}}), got {pass_args!r}")
    gm = graph_module(graph, PASS)
    names, edges = set(), 0
    for node in gm.graph.nodes:
        common = node_common(node, PASS)
        for key in ("mase_type", "args", "results"):
            if key not in common:
                _fail(node, f"common metadata has no {key!r}")
        if node.name in names:
            _fail(node, "the name is used twice")
        names.add(node.name)
        results = common["results"]
        if len(results) > 1:
            _fail(node, f"{len(results)} results ({', '.join(results)}); a node has at most one")
        for key, entry in common["args"].items():
            if not key.startswith("data_in_") or not isinstance(entry, dict) or not entry.get("from"):
                continue
            src = entry["from"]
            src_name = getattr(src, "name", src)
            src_node = next((n for n in gm.graph.nodes if n.name == src_name), None)
            if src_node is None:
                _fail(node, f"{key} comes from {src_name!r}, which is not a node of this graph")
            src_out = node_common(src_node, PASS)["results"].get("data_out_0")
            if _shape(entry) != _shape(src_out):
                _fail(node, f"{key} has shape {_shape(entry)}, but its source {src_name!r} "
                            f"outputs {_shape(src_out)}")
            edges += 1
        _check_op(node, common)
    return graph, {"nodes": len(names), "edges": edges}


def _check_op(node, common: dict):
    op, args, out = get_mase_op(node), common["args"], _shape(common["results"].get("data_out_0"))
    x = _shape(args.get("data_in_0"))
    if op == "linear" and x is not None:
        w, b = _shape(args.get("weight")), _shape(args.get("bias"))
        if w is None or len(w) != 2 or w[1] != x[-1]:
            _fail(node, f"linear weight shape {w} does not fit input shape {x} (want [out, {x[-1]}])")
        if b is not None and b != [w[0]]:
            _fail(node, f"linear bias shape {b}, want [{w[0]}]")
        if out is not None and out != [*x[:-1], w[0]]:
            _fail(node, f"linear output shape {out}, want {[*x[:-1], w[0]]}")
    elif op in SHAPE_KEEPING and x is not None and out is not None and out != x:
        _fail(node, f"{op} changes the shape from {x} to {out}; it keeps it")
