"""MaseGraph: a model as a torch.fx graph that passes can read, annotate and rewrite.

``torch.fx.symbolic_trace`` runs ``model.forward`` on *Proxy* objects instead of tensors and
records every operation as a :class:`torch.fx.Node`. Each node has an ``op`` (its opcode):

    placeholder    an input of ``forward`` (``x``)
    get_attr       reads a parameter/buffer/attribute of the model (``self.scale``)
    call_module    calls a leaf sub-module (``self.seq_blocks[0](x)``)
    call_function  calls a free function (``F.relu(x)``, ``torch.flatten(x)``, ``x + y``)
    call_method    calls a method of a value (``x.view(-1, 16)``, ``x.relu()``)
    output         what ``forward`` returns

MASE wraps the traced ``GraphModule`` in a ``MaseGraph``; passes then attach metadata to
``node.meta["mase"]`` (see :mod:`labkit.passes.metadata`)::

    mg = MaseGraph(model=model)
    print(mg.to_text())          # or mg.draw("graph.png")
"""

from __future__ import annotations

import copy
import os
import traceback
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ["MaseGraph", "GraphTraceError", "get_node_actual_target", "deepcopy_mase_graph"]

_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)
_TORCH_DIR = os.path.dirname(torch.__file__)


class GraphTraceError(RuntimeError):
    """The model could not be traced into a static graph by torch.fx."""


class MaseTracer(fx.Tracer):
    """torch.fx's tracer, with one change: modules *derived* from a torch.nn layer stay leaves.

    The stock tracer keeps ``torch.nn`` layers (Linear, ReLU, ...) as single ``call_module``
    nodes and traces through user modules. We also keep subclasses of torch.nn layers as
    leaves (e.g. a quantised ``LinearInteger(nn.Linear)``), plus any class in ``leaf_modules``,
    so a transformed model traces to the same graph as the original.
    """

    def __init__(self, leaf_modules=()):
        super().__init__()
        self.leaf_modules = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_modules) or super().is_leaf_module(m, qualname):
            return True
        return any(c.__module__.startswith("torch.nn") and c not in _CONTAINERS
                   for c in type(m).__mro__[1:] if issubclass(c, nn.Module))


def _user_frame(exc: BaseException):
    """The innermost traceback frame outside torch itself: the user's line that failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_TORCH_DIR) and not f.filename.endswith("labkit/graph.py")]
    return frames[-1] if frames else None


def trace(model: nn.Module, cf_args: dict | None = None, leaf_modules=()) -> fx.GraphModule:
    """Symbolically trace ``model``; on failure raise a :class:`GraphTraceError` that says where."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"MaseGraph needs an nn.Module, got {type(model).__name__}")
    if cf_args is not None and not isinstance(cf_args, dict):
        raise TypeError(f"cf_args must be a dict of concrete forward() arguments, got {type(cf_args).__name__}")
    tracer = MaseTracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=cf_args)
    except Exception as exc:  # TraceError, TypeError from Proxy.__bool__/__iter__, ...
        frame = _user_frame(exc)
        where = (f"\n  at {frame.filename}:{frame.lineno} in {frame.name}():  {frame.line}"
                 if frame is not None else "")
        raise GraphTraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}{where}\n"
            "Tracing runs forward() on symbolic Proxies, so Python control flow that depends on "
            "tensor *values* or dynamic shapes (if x.sum() > 0, for i in range(x.shape[0]), "
            "len(x)) cannot be recorded. To fix it: make the branch static (decide it in "
            "__init__), pass fixed values with MaseGraph(model, cf_args={'flag': True}), or hide "
            "the dynamic part in a function decorated with @torch.fx.wrap (or a module listed in "
            "leaf_modules=[...]) so it becomes one opaque node."
        ) from exc
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def get_node_actual_target(node: fx.Node):
    """What a node really runs: the module object for ``call_module``, the function for
    ``call_function``, the method name for ``call_method``, else ``node.target``
    (the input name for a placeholder, the attribute path for get_attr, "output")."""
    if node.op == "call_module":
        gm = node.graph.owning_module
        if gm is not None:
            return gm.get_submodule(node.target)
        meta = node.meta.get("mase")
        if meta is not None and meta.module is not None:
            return meta.module
        raise ValueError(f"node {node.name!r} calls module {node.target!r} but its graph has no owning module")
    return node.target


class MaseGraph:
    """A traced model. ``model`` may be an ``nn.Module`` (traced here) or a ``GraphModule``.

    Attributes: ``model`` (the GraphModule, callable like the original), ``fx_graph``
    (its ``torch.fx.Graph``), ``nodes`` (list of nodes in execution order) and ``modules``
    (qualified name -> sub-module). ``cf_args`` are concrete values for forward() arguments
    (torch.fx ``concrete_args``); ``leaf_modules`` are extra module classes to keep whole.
    """

    def __init__(self, model: nn.Module, cf_args: dict | None = None, leaf_modules=()):
        if isinstance(model, fx.GraphModule) and cf_args is None:
            self.model = model
        else:
            self.model = trace(model, cf_args, leaf_modules)
        self.cf_args = cf_args
        self.name = type(model).__name__ if not isinstance(model, fx.GraphModule) else model._get_name()

    # --- views -------------------------------------------------------------------------
    @property
    def fx_graph(self) -> fx.Graph:
        return self.model.graph

    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.model.graph.nodes)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.model.named_modules())

    def node(self, name: str) -> fx.Node:
        """The node called ``name`` (ValueError listing the names if there is none)."""
        for n in self.model.graph.nodes:
            if n.name == name:
                return n
        raise ValueError(f"no node named {name!r}; nodes are: {', '.join(n.name for n in self.nodes)}")

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __repr__(self) -> str:
        counts = {}
        for n in self.model.graph.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return f"MaseGraph({self.name}, {len(self.nodes)} nodes: {counts})"

    def __deepcopy__(self, memo):
        return deepcopy_mase_graph(self, memo)

    # --- text and picture ----------------------------------------------------------------
    def to_text(self) -> str:
        """One line per node: ``name = op target(inputs) -> shape``; shapes once metadata is added."""
        return _to_text(self)

    def draw(self, path: str | os.PathLike | None = None, *, title: str | None = None, dpi: int = 120):
        """Draw the graph with matplotlib: one box per node, arrows for data flow.

        Returns the matplotlib Figure; also writes a PNG when ``path`` is given.
        """
        return _draw(self, path, title=title, dpi=dpi)


def deepcopy_mase_graph(graph: MaseGraph, memo=None) -> MaseGraph:
    """An independent copy of ``graph``: its own GraphModule, parameters and metadata.

    Metadata objects point back at their node and model, so they are rebuilt on the copy
    rather than deep-copied blindly (``copy.deepcopy(mg)`` calls this).
    """
    memo = {} if memo is None else memo
    metas = {n.name: n.meta.pop("mase") for n in graph.model.graph.nodes if "mase" in n.meta}
    try:
        gm = copy.deepcopy(graph.model, memo)
    finally:
        for n in graph.model.graph.nodes:
            if n.name in metas:
                n.meta["mase"] = metas[n.name]
    new = MaseGraph.__new__(MaseGraph)
    new.model, new.cf_args, new.name = gm, copy.deepcopy(graph.cf_args, memo), graph.name
    for n in gm.graph.nodes:
        if n.name in metas:
            n.meta["mase"] = metas[n.name].copy_to(n, gm)
    return new


# --- drawing -------------------------------------------------------------------------------

_OP_COLOURS = {
    # every opcode its own colour, so the legend tells an input from the output
    "placeholder": "#cfe8cf", "output": "#d9d9d9", "get_attr": "#f3e0b5",
    "call_module": "#c9daf8", "call_function": "#f4cccc", "call_method": "#e1d5f0",
}


def node_target_name(node: fx.Node) -> str:
    """What a node runs, by name: the layer class (``Linear``), the function (``relu``) or the
    target (``x``, ``output``). The quantisation summary's "Original type" column."""
    target = get_node_actual_target(node)
    if node.op == "call_module":
        return type(target).__name__
    if node.op == "call_function":
        return getattr(target, "__name__", str(target))
    return str(target)


def _input_nodes(node: fx.Node) -> list[fx.Node]:
    return list(dict.fromkeys(node.all_input_nodes))


def _shape_of(node: fx.Node) -> str:
    meta = node.meta.get("mase")
    try:
        out = meta.parameters["common"]["results"]["data_out_0"]
    except (AttributeError, KeyError, TypeError):
        return ""
    shape = out.get("shape")
    return str(shape) if shape is not None else ""


def _mase_op(node: fx.Node) -> str:
    from .passes.utils import get_mase_op  # imported here: labkit.passes imports this module

    return get_mase_op(node, "")


def _to_text(graph: MaseGraph) -> str:
    rows = []
    for n in graph.model.graph.nodes:
        ins = ", ".join(i.name for i in _input_nodes(n))
        target = node_target_name(n) if n.op not in ("placeholder", "output") else ""
        shape = _shape_of(n)
        op = _mase_op(n)
        call = "" if n.op == "placeholder" else target if n.op == "get_attr" else f"{target}({ins})"
        rows.append((n.name, n.op, call, op, shape))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for name, opcode, call, op, shape in rows:
        line = f"{name:<{w[0]}}  {opcode:<{w[1]}}  {call:<{w[2]}}"
        if w[3]:
            line += f"  {op:<{w[3]}}"
        if shape:
            line += f"  -> {shape}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _layout(nodes: list[fx.Node]) -> dict[fx.Node, tuple[float, int]]:
    """Layered layout: a node's row is one below its deepest input; columns fill left to right."""
    row = {}
    for n in nodes:
        row[n] = 1 + max((row[i] for i in _input_nodes(n)), default=-1)
    # get_attr nodes sit just above their first user rather than at the top
    for n in nodes:
        if n.op == "get_attr" and n.users:
            row[n] = max(0, min(row[u] for u in n.users) - 1)
    by_row: dict[int, list[fx.Node]] = {}
    for n in nodes:
        by_row.setdefault(row[n], []).append(n)
    pos = {}
    for r, members in by_row.items():
        k = len(members)
        for j, n in enumerate(members):
            pos[n] = (j - (k - 1) / 2, r)
    return pos


_BOX_W, _BOX_H, _DX, _DY = 2.6, 0.72, 3.0, 1.0  # a node's box and the grid it sits on


def _draw(graph: MaseGraph, path=None, *, title=None, dpi=120):
    import matplotlib.pyplot as plt

    nodes = graph.nodes
    pos = _layout(nodes)
    n_rows = 1 + max(r for _, r in pos.values())
    n_cols = max(sum(1 for p in pos.values() if p[1] == r) for r in range(n_rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + n_cols * 3.0), 0.6 + n_rows * 1.1))
    xy = {n: (x * _DX, -r * _DY) for n, (x, r) in pos.items()}
    _draw_edges(ax, nodes, pos, xy)  # edges first, boxes on top
    for n in nodes:
        _draw_box(ax, n, xy[n])

    xs = [p[0] for p in xy.values()]
    ax.set_xlim(min(xs) - _BOX_W, max(xs) + _BOX_W * 1.3)
    ax.set_ylim(-(n_rows - 1) * _DY - _BOX_H, _BOX_H)
    ax.set_aspect("auto")
    ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, fc=c, ec="#333333") for c in _OP_COLOURS.values()]
    ax.legend(handles, list(_OP_COLOURS), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_title(title or f"{graph.name}: {len(nodes)} nodes", fontsize=9)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _draw_edges(ax, nodes, pos: dict, xy: dict) -> None:
    """An arrow from each input to its user."""
    for n in nodes:
        x1, y1 = xy[n]
        for i in _input_nodes(n):
            x0, y0 = xy[i]
            skip = abs(pos[n][1] - pos[i][1]) > 1 and abs(x1 - x0) < 1e-9
            if skip:  # a skip connection: leave and enter on the right, bowing around the boxes
                start, end, style = (x0 + _BOX_W / 2, y0), (x1 + _BOX_W / 2, y1), "arc3,rad=-0.35"
            else:
                start, end, style = (x0, y0 - _BOX_H / 2), (x1, y1 + _BOX_H / 2), "arc3,rad=0"
            ax.annotate("", xy=end, xytext=start,
                        arrowprops=dict(arrowstyle="-|>", color="#555555", lw=1.0, shrinkA=0, shrinkB=0,
                                        connectionstyle=style))


def _draw_box(ax, n, at: tuple) -> None:
    """A node's box: its name, what it calls, its mase op (when that says more) and its shape."""
    from matplotlib.patches import FancyBboxPatch

    x, y = at
    ax.add_patch(FancyBboxPatch((x - _BOX_W / 2, y - _BOX_H / 2), _BOX_W, _BOX_H,
                                boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=_OP_COLOURS.get(n.op, "#eeeeee"), ec="#333333", lw=0.8))
    op = _mase_op(n)
    what = node_target_name(n) if n.op not in ("placeholder", "output") else n.op
    what = n.op if what == n.name else what
    lines = [n.name, what]
    if op and op not in (what, n.op):
        lines.append(op)
    if _shape_of(n):
        lines.append(_shape_of(n))
    ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=7, family="monospace")
