"""Interface passes: save a graph's node metadata to a TOML file and load it back.

    mg, _ = save_node_meta_param_interface_pass(mg, "meta.toml")
    mg2, _ = load_node_meta_param_interface_pass(mg2, "meta.toml")   # the same graph, traced again

As in MASE, the file is one TOML table per node holding ``meta["mase"].parameters`` (common,
software, hardware), with ``None`` written as the string ``"NA"`` and read back as ``None``.
Tensors are written as nested lists and ``torch.float32``-style dtypes as their names; loading
turns both back (a ``value`` list becomes a tensor of its entry's ``torch_dtype``). The file
is data: it is parsed with ``tomllib`` and checked against the graph, never executed.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import torch

from ..cache import atomic_write_text
from .utils import graph_module

__all__ = ["save_node_meta_param_interface_pass", "load_node_meta_param_interface_pass"]

NA = "NA"  # MASE's spelling of None in TOML files
PARTS = ("common", "software", "hardware")


def _path_arg(pass_args, pass_name: str, key: str) -> Path:
    """MASE passes the path itself; ``{key: path}`` works too."""
    if isinstance(pass_args, dict) and set(pass_args) == {key}:
        pass_args = pass_args[key]
    if not isinstance(pass_args, (str, Path)) or not str(pass_args):
        raise TypeError(f"{pass_name}: pass_args must be the TOML file's path (or {{{key!r}: path}}), "
                        f"got {pass_args!r}")
    return Path(pass_args)


# --- writing TOML (tomllib only reads it) ------------------------------------------------------

def _key(k) -> str:
    k = str(k)
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def _plain(value, where: str):
    """``value`` as TOML-able data: None -> "NA", tensors -> lists, dtypes -> names."""
    if value is None:
        return NA
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, torch.fx.Node):  # a node reference: its name
        return value.name
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, torch.Size)):
        return [_plain(v, where) for v in value]
    raise TypeError(f"save_node_meta_param_interface_pass: {where} holds a {type(value).__name__}, "
                    f"which a TOML file cannot hold")


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v).__name__)


def _tables(prefix: list[str], table: dict, out: list[str]):
    """``[a.b.c]`` headers with the scalar keys under them, then the sub-tables."""
    out.append("[" + ".".join(_key(p) for p in prefix) + "]")
    out += [f"{_key(k)} = {_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out.append("")
    for k, v in table.items():
        if isinstance(v, dict):
            _tables([*prefix, k], v, out)


def to_toml(data: dict) -> str:
    out: list[str] = []
    for name, table in data.items():
        _tables([name], table, out)
    return "\n".join(out)


# --- the passes ----------------------------------------------------------------------------------

def save_node_meta_param_interface_pass(graph, pass_args):
    """Write every node's ``meta["mase"].parameters`` to the TOML file ``pass_args`` (a path).
    Returns ``(graph, {"path": path, "nodes": number of nodes})``."""
    name = "save_node_meta_param_interface_pass"
    path = _path_arg(pass_args, name, "save_path")
    data = {}
    for node in graph_module(graph, name).graph.nodes:
        parameters = getattr(node.meta.get("mase"), "parameters", None)
        if not isinstance(parameters, dict):
            raise ValueError(f"{name}: node {node.name!r} has no metadata; run init_metadata_analysis_pass first")
        data[node.name] = _plain(parameters, node.name)
    atomic_write_text(path, to_toml(data))
    return graph, {"path": path, "nodes": len(data)}


def _restore(value, key=None, entry=None):
    """Undo :func:`_plain`: "NA" -> None, dtype names -> dtypes, ``value`` lists -> tensors."""
    if value == NA:
        return None
    if isinstance(value, dict):
        return {k: _restore(v, k, value) for k, v in value.items()}
    if isinstance(value, list):
        if key == "value" and isinstance(entry, dict) and isinstance(entry.get("torch_dtype"), str):
            return torch.tensor(value, dtype=_dtype(entry["torch_dtype"]))
        return [_restore(v) for v in value]
    if key == "torch_dtype" and isinstance(value, str):
        return _dtype(value)
    return value


def _dtype(text: str) -> torch.dtype:
    dtype = getattr(torch, text.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"load_node_meta_param_interface_pass: torch_dtype {text!r} is not a torch dtype")
    return dtype


def load_node_meta_param_interface_pass(graph, pass_args):
    """Set every node's ``meta["mase"].parameters`` from the TOML file ``pass_args`` (a path)
    written by :func:`save_node_meta_param_interface_pass` for a graph with the same nodes.
    Returns ``(graph, {"path": path, "nodes": number of nodes})``."""
    from .metadata import MaseMetadata

    name = "load_node_meta_param_interface_pass"
    path = _path_arg(pass_args, name, "load_path")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: metadata file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{name}: {path} is not a valid TOML file: {e}") from None
    gm = graph_module(graph, name)
    names = [n.name for n in gm.graph.nodes]
    if set(data) != set(names):
        missing, extra = sorted(set(names) - set(data)), sorted(set(data) - set(names))
        raise ValueError(f"{name}: {path} does not describe this graph: nodes missing from the file "
                         f"{missing}, nodes in the file but not in the graph {extra}")
    for node in gm.graph.nodes:
        table = data[node.name]
        if not isinstance(table, dict) or set(table) - set(PARTS):
            raise ValueError(f"{name}: {path}: node {node.name!r} must be a table of {', '.join(PARTS)}, "
                             f"got keys {sorted(table) if isinstance(table, dict) else table!r}")
        meta = node.meta.get("mase")
        if not isinstance(meta, MaseMetadata):
            meta = node.meta["mase"] = MaseMetadata(node=node, model=gm)
        meta.parameters = {part: _restore(table.get(part, {})) for part in PARTS}
    return graph, {"path": path, "nodes": len(names)}
