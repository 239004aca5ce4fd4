"""Small helpers shared by the analysis passes."""

from __future__ import annotations

import difflib
import operator

import torch.fx as fx

__all__ = ["check_pass_args", "get_mase_op", "get_mase_type", "graph_module", "node_common", "target_name"]


def check_pass_args(pass_args, defaults: dict, pass_name: str) -> dict:
    """``pass_args`` (a dict or None) merged over ``defaults``; unknown keys are an error."""
    if pass_args is None:
        return dict(defaults)
    if not isinstance(pass_args, dict):
        raise TypeError(f"{pass_name}: pass_args must be a dict or None, got {type(pass_args).__name__}")
    unknown = sorted(set(pass_args) - set(defaults), key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), [str(k) for k in defaults], n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{pass_name}: unknown pass_args {unknown} (unknown key {unknown[0]!r}{hint}); "
                         f"allowed: {sorted(defaults)}")
    return {**defaults, **pass_args}


def graph_module(graph, pass_name: str = "this pass") -> fx.GraphModule:
    """The traced ``GraphModule`` of a MaseGraph (``graph.model``), or a TypeError saying how to get one."""
    gm = getattr(graph, "model", None)
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"{pass_name} expects a MaseGraph (with a traced .model), got "
                        f"{type(graph).__name__}; build one with MaseGraph(model=model)")
    return gm


def node_common(node: fx.Node, pass_name: str = "this pass") -> dict:
    """The node's ``meta["mase"]["common"]``, or a ValueError saying which pass to run first."""
    meta = node.meta.get("mase")
    parameters = getattr(meta, "parameters", None)
    common = parameters.get("common", {}) if isinstance(parameters, dict) else {}
    if "mase_op" not in common:
        raise ValueError(f"{pass_name}: node {node.name!r} has no common metadata; run "
                         "init_metadata_analysis_pass(mg, None) and "
                         "add_common_metadata_analysis_pass(mg, {'dummy_in': ...}) first")
    return common


_REQUIRED = object()


def get_mase_op(node: fx.Node, default=_REQUIRED, *, pass_name: str = "this pass") -> str:
    """The node's ``mase_op`` (``"linear"``, ``"relu"``, ``"add"`` ...), as MASE's ``get_mase_op``.

    Without common metadata: ``default`` when one is given, else :func:`node_common`'s
    ValueError saying which passes to run first."""
    return _common_field(node, "mase_op", default, pass_name)


def get_mase_type(node: fx.Node, default=_REQUIRED, *, pass_name: str = "this pass") -> str:
    """The node's ``mase_type`` (``"module_related_func"``, ``"builtin_func"`` ...), as MASE's
    ``get_mase_type``; ``default`` as in :func:`get_mase_op`."""
    return _common_field(node, "mase_type", default, pass_name)


def _common_field(node: fx.Node, key: str, default, pass_name: str):
    if default is _REQUIRED:
        return node_common(node, pass_name)[key]
    try:
        return node_common(node, pass_name)[key]
    except (ValueError, KeyError):
        return default


def target_name(target) -> str:
    """A readable name for a node target: ``torch.nn.functional.relu``, ``operator.add``, ``view``."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if name is None:
        return str(target)
    if module in ("_operator", None) and getattr(operator, name, None) is target:
        module = "operator"
    if name.startswith("_VariableFunctionsClass."):  # torch's C functions: torch.flatten, ...
        module, name = "torch", target.__name__
    return f"{module}.{name}" if module else name
