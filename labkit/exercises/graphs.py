"""Notebooks 04 and 05: walk a MASE graph's nodes yourself.

04: count the nodes of each opcode (what ``report_graph_analysis_pass`` calls the network overview).
05: traverse ``ori_mg`` and ``mg`` side by side and name the nodes the quantisation pass changed.
The references walk ``graph.fx_graph.nodes`` directly.
"""

from __future__ import annotations

from collections import Counter

from ..graph import get_node_actual_target
from .verdict import NotYet, call_student, check, ok


def reference_opcode_counts(graph) -> dict:
    return dict(Counter(node.op for node in graph.fx_graph.nodes))


def _as_counts(value, what: str) -> dict:
    try:
        counts = {str(k): int(v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        raise NotYet(f"{what} should return a dict from opcode to count, like {{'placeholder': 1, ...}}, "
                     f"but it returned {type(value).__name__} {str(value)[:60]}.")
    return {k: v for k, v in counts.items() if v}  # zero entries are optional


@check("opcode counts")
def check_opcode_counts(count_opcodes, graphs: dict):
    """``count_opcodes(graph) -> {opcode: count}`` must match the graph for every graph in ``graphs``."""
    for name, graph in graphs.items():
        got = _as_counts(call_student(count_opcodes, graph, what=f"count_opcodes({name})"), "count_opcodes")
        want = reference_opcode_counts(graph)
        if got == want:
            continue
        unknown = sorted(set(got) - {"placeholder", "get_attr", "call_function", "call_method", "call_module", "output"})
        if unknown:
            raise NotYet(f"for {name} you counted keys {unknown[:3]}, which are not opcodes: count `node.op` "
                         "(placeholder, call_module, ...), not `node.name` or `node.target`.")
        if sum(got.values()) != sum(want.values()):
            raise NotYet(f"for {name} your counts add up to {sum(got.values())} nodes, but the graph has "
                         f"{sum(want.values())}: visit every node of `graph.fx_graph.nodes` once.")
        diff = next(op for op in sorted(set(got) | set(want)) if got.get(op, 0) != want.get(op, 0))
        raise NotYet(f"for {name} you counted {got.get(diff, 0)} `{diff}` nodes; the graph has {want.get(diff, 0)}.")
    return ok(f"your counts match every graph ({', '.join(graphs)}): e.g. {name} has "
              + ", ".join(f"{v} {k}" for k, v in want.items()) + ".")


def reference_changed_nodes(ori_mg, mg) -> list[str]:
    """Nodes whose operation changed class (a module swapped for its quantised version)."""
    return [node.name for og, node in zip(ori_mg.fx_graph.nodes, mg.fx_graph.nodes)
            if type(get_node_actual_target(og)) is not type(get_node_actual_target(node))]


@check("traverse ori_mg and mg")
def check_changed_nodes(changed_nodes, ori_mg, mg):
    """``changed_nodes(ori_mg, mg) -> [node names]``: the nodes whose layer the transform replaced."""
    got = call_student(changed_nodes, ori_mg, mg, what="changed_nodes(ori_mg, mg)")
    if got is None or isinstance(got, (str, bytes)) or not hasattr(got, "__iter__"):
        raise NotYet(f"changed_nodes should return a list of node names, but it returned {got!r:.60}.")
    got = [getattr(n, "name", n) for n in got]  # accept fx nodes as well as their names
    want = reference_changed_nodes(ori_mg, mg)
    if sorted(map(str, got)) == sorted(want):
        kinds = Counter(type(get_node_actual_target(mg.node(n))).__name__ for n in want)
        return ok(f"you found the {len(want)} changed nodes ({', '.join(f'{v} {k}' for k, v in kinds.items())}); "
                  "every other node kept its class.")
    extra = [n for n in got if n not in want]
    missing = [n for n in want if n not in got]
    if extra and len(got) >= len(list(mg.fx_graph.nodes)) - 2:
        raise NotYet(f"you listed {len(got)} nodes, but only {len(want)} changed. The two graphs' fx nodes are "
                     "always different objects (and a copied layer would be too): compare the layers' classes, "
                     "`type(get_node_actual_target(node))`.")
    names = {n.name for n in mg.fx_graph.nodes}
    strangers = [n for n in extra if str(n) not in names]
    if strangers:
        raise NotYet(f"{strangers[0]!r} is not the name of a node in mg; names look like {want[0]!r} (`node.name`).")
    if extra:
        raise NotYet(f"{extra[0]!r} did not change: both graphs run {type(get_node_actual_target(mg.node(str(extra[0])))).__name__} "
                     f"there (you listed {len(got)} nodes; {len(want)} changed).")
    node = mg.node(missing[0])
    before = type(get_node_actual_target(ori_mg.node(missing[0]))).__name__
    raise NotYet(f"you missed {missing[0]!r}, which went from {before} to "
                 f"{type(get_node_actual_target(node)).__name__} ({len(missing)} of {len(want)} changed nodes missing).")
