"""Metadata passes: attach ``node.meta["mase"]`` and fill in what every node computes.

After ``init_metadata_analysis_pass`` each node carries a :class:`MaseMetadata` with three
empty dicts, ``parameters = {"common": {}, "software": {}, "hardware": {}}``.
``add_common_metadata_analysis_pass`` then runs a dummy input through the graph
(a ``torch.fx.Interpreter``, so shapes are real, batch dimension included) and records::

    common = {
      "mase_type": "module_related_func",       # what kind of node (table below)
      "mase_op":   "linear",                    # which operation, snake_case
      "args": {                                 # inputs, in call order
        "data_in_0": {"shape": [8, 16], "torch_dtype": torch.float32,
                      "type": "float", "precision": [32], "from": "seq_blocks_1"},
        "weight":    {"shape": [5, 16], ..., "from": None},   # the module's parameters
        "bias":      {"shape": [5], ...,     "from": None},
      },
      "results": {"data_out_0": {"shape": [8, 5], "torch_dtype": torch.float32,
                                 "type": "float", "precision": [32]}},
    }

``precision[0]`` is always the total bit width: float32 is ``type="float", precision=[32]``;
a fixed-point quantiser later writes ``type="integer", precision=[width, frac_width]``. The
inputs of a quantised layer (``LinearInteger`` ...) are described by its quantisers, so
re-running this pass after ``quantize_transform_pass`` keeps their formats.
Non-tensor arguments (``x.view(-1, 16)``'s ``-1``) get ``type`` = the Python type name,
``shape``/``torch_dtype``/``precision`` = None and their ``value``. Keyword arguments are
stored under their own name (``"dim"``, ``"stride"``, ...).

``mase_type`` follows MASE:

    placeholder / get_attr / output   the fx opcodes of the same name
    module_related_func               a layer-like op, as a module or a function:
                                      Linear, ReLU, Dropout, Conv, pooling, softmax, F.relu ...
    module                            a stateful module that is not in that list (BatchNorm, LayerNorm)
    builtin_func                      arithmetic and other tensor functions: +, *, matmul, cat, mean
    implicit_func                     shape bookkeeping: size, view, reshape, flatten, getitem ...
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict

import torch
import torch.fx as fx
import torch.nn as nn

from ..graph import get_node_actual_target
from ..quantize.modules import QuantizedMixin
from .interpreter import NodeCapture
from .utils import check_pass_args, graph_module

__all__ = [
    "MaseMetadata", "init_metadata_analysis_pass", "add_common_metadata_analysis_pass",
    "add_software_metadata_analysis_pass", "dtype_precision", "MODULE_OPS",
]


class MaseMetadata:
    """The metadata of one node: ``.module`` and ``.parameters`` (common/software/hardware).

    ``meta["common"]`` is short for ``meta.parameters["common"]``. ``.module`` is looked up
    in the model each time, so it always shows the layer the graph actually runs (also after
    a transform swapped it); setting it swaps the layer in the model.
    """

    def __init__(self, node: fx.Node | None = None, model: nn.Module | None = None):
        self.node = node
        self.model = model
        self.parameters = {"common": {}, "software": {}, "hardware": {}}

    @property
    def module(self) -> nn.Module | None:
        if self.node is None or self.node.op != "call_module" or self.model is None:
            return None
        return self.model.get_submodule(self.node.target)

    @module.setter
    def module(self, new: nn.Module):
        if self.node is None or self.node.op != "call_module":
            raise ValueError(f"only call_module nodes have a module; {self.node} is {getattr(self.node, 'op', None)}")
        if not isinstance(new, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(new).__name__}")
        parent, _, leaf = self.node.target.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, leaf, new)

    def __getitem__(self, key: str):
        return self.parameters[key]

    def __setitem__(self, key: str, value):
        self.parameters[key] = value

    def __contains__(self, key) -> bool:
        return key in self.parameters

    def copy_to(self, node: fx.Node, model: nn.Module) -> "MaseMetadata":
        """A deep copy of the parameters, attached to another node/model (for graph copies)."""
        new = MaseMetadata(node=node, model=model)
        new.parameters = copy.deepcopy(self.parameters)
        return new

    def __deepcopy__(self, memo):
        # A copy of the parameters that still points at the same node and model: those are
        # back-references owned by the graph, and copying them would copy the whole graph.
        # (Looking up their copies in ``memo`` does not work: torch.fx keys its memo
        # Node -> Node, not by id, and copies ``node.meta`` shallowly anyway. Graph copies go
        # through ``deepcopy_mase_graph``, which re-attaches metadata with ``copy_to``.)
        new = MaseMetadata(node=self.node, model=self.model)
        new.parameters = copy.deepcopy(self.parameters, memo)
        return new

    def __repr__(self) -> str:
        common = self.parameters.get("common", {})
        name = self.node.name if self.node is not None else None
        return f"MaseMetadata(node={name!r}, mase_type={common.get('mase_type')!r}, mase_op={common.get('mase_op')!r})"


# --- what kind of node is it -----------------------------------------------------------------

# module class -> (mase_op, mase_type); looked up along the class's MRO, so subclasses
# (a quantised ``LinearInteger(nn.Linear)``) keep their parent's op.
MODULE_OPS: dict[type, tuple[str, str]] = {
    nn.Linear: ("linear", "module_related_func"),
    nn.ReLU: ("relu", "module_related_func"),
    nn.ReLU6: ("relu6", "module_related_func"),
    nn.LeakyReLU: ("leaky_relu", "module_related_func"),
    nn.Hardtanh: ("hardtanh", "module_related_func"),
    nn.GELU: ("gelu", "module_related_func"),
    nn.SiLU: ("silu", "module_related_func"),
    nn.Sigmoid: ("sigmoid", "module_related_func"),
    nn.Tanh: ("tanh", "module_related_func"),
    nn.Softmax: ("softmax", "module_related_func"),
    nn.Dropout: ("dropout", "module_related_func"),
    nn.Conv1d: ("conv1d", "module_related_func"),
    nn.Conv2d: ("conv2d", "module_related_func"),
    nn.Conv3d: ("conv3d", "module_related_func"),
    nn.MaxPool1d: ("max_pool1d", "module_related_func"),
    nn.MaxPool2d: ("max_pool2d", "module_related_func"),
    nn.AvgPool1d: ("avg_pool1d", "module_related_func"),
    nn.AvgPool2d: ("avg_pool2d", "module_related_func"),
    nn.AdaptiveAvgPool1d: ("adaptive_avg_pool1d", "module_related_func"),
    nn.AdaptiveAvgPool2d: ("adaptive_avg_pool2d", "module_related_func"),
    nn.AdaptiveMaxPool2d: ("adaptive_max_pool2d", "module_related_func"),
    nn.Embedding: ("embedding", "module_related_func"),
    nn.BatchNorm1d: ("batch_norm1d", "module"),
    nn.BatchNorm2d: ("batch_norm2d", "module"),
    nn.LayerNorm: ("layer_norm", "module"),
    nn.GroupNorm: ("group_norm", "module"),
    nn.Flatten: ("flatten", "implicit_func"),
    nn.Identity: ("identity", "implicit_func"),
}

MODULE_RELATED_FUNCS = {
    "linear", "relu", "relu6", "leaky_relu", "hardtanh", "gelu", "silu", "sigmoid", "tanh",
    "softmax", "log_softmax", "dropout", "conv1d", "conv2d", "conv3d", "batch_norm", "layer_norm",
    "group_norm", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "embedding",
}
IMPLICIT_FUNCS = {
    "size", "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
    "squeeze", "unsqueeze", "getitem", "getattr", "expand", "expand_as", "type", "to", "dim",
    "numel", "detach", "identity",
}
# function names that differ from the op name we want
_FUNC_ALIASES = {"truediv": "div", "iadd": "add", "imul": "mul", "isub": "sub", "itruediv": "div"}


def _snake(name: str) -> str:
    """CamelCase class name -> snake_case op name: ``BatchNorm1d`` -> ``batch_norm1d``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _module_op(module: nn.Module) -> tuple[str, str]:
    for cls in type(module).__mro__:
        if cls in MODULE_OPS:
            return MODULE_OPS[cls]
    return _snake(type(module).__name__), "module"


def _function_op(name: str) -> tuple[str, str]:
    op = _FUNC_ALIASES.get(name.lstrip("_"), name.lstrip("_"))
    if op in MODULE_RELATED_FUNCS:
        return op, "module_related_func"
    if op in IMPLICIT_FUNCS:
        return op, "implicit_func"
    return op, "builtin_func"


def node_op_and_type(node: fx.Node, model: nn.Module) -> tuple[str, str]:
    """``(mase_op, mase_type)`` of a node (see the module docstring for the categories)."""
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op, node.op
    if node.op == "call_module":
        return _module_op(model.get_submodule(node.target))
    if node.op == "call_function":
        return _function_op(getattr(node.target, "__name__", str(node.target)))
    if node.op == "call_method":
        return _function_op(node.target)
    raise ValueError(f"unknown fx opcode {node.op!r} on node {node.name!r}")


# --- what does each value look like ------------------------------------------------------------

def dtype_precision(dtype: torch.dtype) -> tuple[str, list[int]]:
    """``(type, precision)`` for a torch dtype: float32 -> ("float", [32]), int8 -> ("integer", [8, 0])."""
    if dtype == torch.bool:
        return "bool", [1]
    if dtype.is_floating_point:
        return ("bfloat" if dtype == torch.bfloat16 else "float"), [torch.finfo(dtype).bits]
    if dtype.is_complex:
        return "complex", [torch.empty((), dtype=dtype).element_size() * 8]
    return "integer", [torch.iinfo(dtype).bits, 0]


def tensor_info(t: torch.Tensor, src=None, add_value: bool = False) -> dict:
    kind, precision = dtype_precision(t.dtype)
    info = {"shape": list(t.shape), "torch_dtype": t.dtype, "type": kind, "precision": precision, "from": src}
    if add_value:
        info["value"] = t.detach().clone()
    return info


def value_info(v, src=None) -> dict:
    """Metadata of a non-tensor value (a Python constant, torch.Size, None, ...)."""
    if isinstance(v, torch.Size):
        v = list(v)
    return {"shape": None, "torch_dtype": None, "type": type(v).__name__, "precision": None,
            "value": v, "from": src}


def _flat(raw, value):
    """Pair up an fx argument with its runtime value, flattening lists/tuples that hold tensors."""
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        raws = raw if isinstance(raw, (list, tuple)) and len(raw) == len(value) else [raw] * len(value)
        for r, v in zip(raws, value):
            yield from _flat(r, v)
    elif isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
        raws = raw if isinstance(raw, dict) else {}
        for k, v in value.items():
            yield from _flat(raws.get(k), v)
    else:
        yield raw, value


def _describe(raw, value, add_value=False) -> dict:
    src = raw.name if isinstance(raw, fx.Node) else None
    if isinstance(value, torch.Tensor):
        return tensor_info(value, src, add_value)
    return value_info(value, src)


def _args_meta(node: fx.Node, args, kwargs, module, add_value) -> OrderedDict:
    """Metadata of a node's inputs; a quantised layer's own quantisers set their type/precision."""
    meta = OrderedDict()
    i = 0
    for raw_arg, value_arg in zip(node.args, args):
        for raw, value in _flat(raw_arg, value_arg):
            meta[f"data_in_{i}"] = _describe(raw, value, add_value)
            i += 1
    for key, value in kwargs.items():
        meta[key] = _describe(node.kwargs.get(key), value, add_value)
    if module is not None:  # the layer's own learnable tensors: weight, bias, ...
        for name, p in module.named_parameters():
            meta[name.replace(".", "_")] = tensor_info(p, None, add_value)
    if isinstance(module, QuantizedMixin):
        for key, formats in module.arg_metadata().items():
            if key in meta:
                meta[key].update(formats)
    return meta


def _results_meta(result, add_value) -> OrderedDict:
    meta = OrderedDict()
    for i, (_, value) in enumerate(_flat(None, result)):
        info = _describe(None, value, add_value)
        info.pop("from")
        meta[f"data_out_{i}"] = info
    return meta


def _run_recording(gm: fx.GraphModule, inputs: list, add_value: bool, input_shapes) -> None:
    """Run the graph node by node (eval mode, no grad) and write each node's common metadata."""

    def before(n, args, kwargs):
        op_and_type = node_op_and_type(n, gm)
        # record inputs *before* running: an in-place op (ReLU(inplace=True)) rewrites them
        if n.op in ("placeholder", "get_attr"):
            return op_and_type, OrderedDict()
        module = get_node_actual_target(n) if n.op == "call_module" else None
        return op_and_type, _args_meta(n, args, kwargs, module, add_value)

    def after(n, state, result):
        (mase_op, mase_type), arg_meta = state
        n.meta["mase"].parameters["common"].update(mase_type=mase_type, mase_op=mase_op, args=arg_meta,
                                                   results=_results_meta(result, add_value))

    def on_error(n, args, exc):  # a wrongly shaped dummy_in, usually: say where and with what
        module = get_node_actual_target(n) if n.op == "call_module" else None
        what = type(module).__name__ if module is not None else getattr(n.target, "__name__", n.target)
        shapes = [list(a.shape) for a in args if isinstance(a, torch.Tensor)]
        raise ValueError(
            f"add_common_metadata_analysis_pass: node {n.name!r} ({what}) failed on inputs of shape "
            f"{shapes}, running dummy_in of shape {input_shapes}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}. Give dummy_in the shape forward() expects "
            "(e.g. [batch, 16] for the JSC models)") from exc

    NodeCapture(gm, before=before, after=after, on_error=on_error).run(*inputs)


# --- the passes ------------------------------------------------------------------------------

def init_metadata_analysis_pass(graph, pass_args=None):
    """Attach an empty :class:`MaseMetadata` to every node as ``node.meta["mase"]``."""
    gm = graph_module(graph, "init_metadata_analysis_pass")
    for node in gm.graph.nodes:
        node.meta["mase"] = MaseMetadata(node=node, model=gm)
    return graph, {}


def _positional_inputs(gm: fx.GraphModule, dummy_in) -> list:
    """Order ``dummy_in`` (a tensor, a tuple, or a dict keyed by input name) like forward()'s inputs."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = [n.target for n in placeholders]
    if isinstance(dummy_in, torch.Tensor):
        dummy_in = (dummy_in,)
    if isinstance(dummy_in, (list, tuple)):
        if len(dummy_in) > len(names):
            raise ValueError(f"dummy_in has {len(dummy_in)} inputs but forward() takes {len(names)}: {names}")
        dummy_in = dict(zip(names, dummy_in))
    if not isinstance(dummy_in, dict):
        raise TypeError("dummy_in must be a tensor, a tuple of tensors or a dict {input name: tensor}, "
                        f"got {type(dummy_in).__name__}")
    if len(dummy_in) == 1 and len(names) == 1:  # one input: its name does not matter
        dummy_in = {names[0]: next(iter(dummy_in.values()))}
    unknown = set(dummy_in) - set(names)
    if unknown:
        raise ValueError(f"dummy_in has unknown inputs {sorted(unknown)}; forward() takes {names}")
    inputs = []
    for n in placeholders:
        if n.target in dummy_in:
            inputs.append(dummy_in[n.target])
        elif n.args:  # forward(self, x, mask=None): use the default
            inputs.append(n.args[0])
        else:
            raise ValueError(f"dummy_in is missing input {n.target!r}; forward() takes {names}")
    return inputs


def add_common_metadata_analysis_pass(graph, pass_args=None):
    """Run ``pass_args["dummy_in"]`` through the graph and fill ``meta["mase"]["common"]``.

    pass_args: ``{"dummy_in": {"x": tensor}}`` (or a bare tensor / tuple), and
    ``"add_value"`` (default True, as in MASE): keep a copy of each tensor's value, so
    ``meta["mase"].parameters["common"]["args"]["data_in_0"]["value"]`` is the dummy batch
    as that node saw it; ``False`` stores shapes and types only. The model runs in eval
    mode under ``torch.no_grad()``: unlike MASE's pass, which runs a train-mode model as it
    is, BatchNorm running statistics are not touched; every layer's training flag is
    restored afterwards. Nodes without metadata get it initialised first.
    """

    gm = graph_module(graph, "add_common_metadata_analysis_pass")
    if isinstance(pass_args, torch.Tensor):
        pass_args = {"dummy_in": pass_args}
    args = check_pass_args(pass_args, {"dummy_in": None, "add_value": True}, "add_common_metadata_analysis_pass")
    if args["dummy_in"] is None:
        raise ValueError("add_common_metadata_analysis_pass needs pass_args={'dummy_in': {'x': tensor}} "
                         f"(a batch of example inputs), got {pass_args!r}")
    inputs = _positional_inputs(gm, args["dummy_in"])
    shapes = [list(x.shape) if isinstance(x, torch.Tensor) else x for x in inputs]
    shapes = shapes[0] if len(shapes) == 1 else shapes
    for node in gm.graph.nodes:
        if "mase" not in node.meta:
            node.meta["mase"] = MaseMetadata(node=node, model=gm)
    _run_recording(gm, inputs, bool(args["add_value"]), shapes)
    return graph, {}


def add_software_metadata_analysis_pass(graph, pass_args=None):
    """Give every tensor argument and result a software slot, ``{"stat": {}}``, for profiling."""
    gm = graph_module(graph, "add_software_metadata_analysis_pass")
    for node in gm.graph.nodes:
        meta = node.meta.get("mase")
        if meta is None or "args" not in meta["common"]:
            raise ValueError(f"node {node.name!r} has no common metadata; run "
                             "add_common_metadata_analysis_pass(mg, {'dummy_in': ...}) first")
        sw = meta.parameters["software"]
        for part in ("args", "results"):
            slot = sw.setdefault(part, {})
            for key, info in meta["common"][part].items():
                if info.get("shape") is not None:
                    slot.setdefault(key, {}).setdefault("stat", {})
    return graph, {}
