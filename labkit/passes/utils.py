"""Small helpers shared by the analysis passes."""

from __future__ import annotations

import operator

import torch.fx as fx

__all__ = ["check_pass_args", "node_common", "target_name"]


def check_pass_args(pass_args, defaults: dict, pass_name: str) -> dict:
    """``pass_args`` (a dict or None) merged over ``defaults``; unknown keys are an error."""
    if pass_args is None:
        return dict(defaults)
    if not isinstance(pass_args, dict):
        raise TypeError(f"{pass_name}: pass_args must be a dict or None, got {type(pass_args).__name__}")
    unknown = sorted(set(pass_args) - set(defaults))
    if unknown:
        raise ValueError(f"{pass_name}: unknown pass_args {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **pass_args}


def node_common(node: fx.Node, pass_name: str = "this pass") -> dict:
    """The node's ``meta["mase"]["common"]``, or a ValueError saying which pass to run first."""
    meta = node.meta.get("mase")
    common = meta.parameters.get("common", {}) if meta is not None else {}
    if "mase_op" not in common:
        raise ValueError(f"{pass_name}: node {node.name!r} has no common metadata; run "
                         "init_metadata_analysis_pass(mg, None) and "
                         "add_common_metadata_analysis_pass(mg, {'dummy_in': ...}) first")
    return common


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
