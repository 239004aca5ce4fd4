"""The one fx Interpreter (NodeCapture) that metadata, profiling and the Lab-2 plots share."""

import ast
import pathlib

import pytest
import torch
import torch.nn as nn

import labkit
from labkit.graph import MaseGraph
from labkit.passes.interpreter import NodeCapture, first_tensor
from labkit.passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
from labkit.passes.profile import profile_activations
from labkit.plots import layer_values


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.relu(self.fc(self.bn(x))))


def _frozen_bn_graph():
    """A training model whose BatchNorm is frozen in eval mode (fine-tuning with fixed statistics)."""
    torch.manual_seed(0)
    mg = MaseGraph(model=_Net())
    mg.model.train()
    mg.model.get_submodule("bn").eval()
    return mg


def _modes(gm):
    return {name: m.training for name, m in gm.named_modules()}


def _metadata(mg, x):
    init_metadata_analysis_pass(mg, None)
    add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": x}})


def _profile(mg, x):
    nodes = [n for n in mg.model.graph.nodes if n.op == "call_module"]
    profile_activations(mg.model, nodes, {"range_min_max": {}}, iter([x]))


@pytest.mark.parametrize("run", [lambda mg, x: NodeCapture(mg.model).run(x), _metadata, _profile,
                                 lambda mg, x: layer_values(mg, x)],
                         ids=["NodeCapture", "metadata", "profile", "layer_values"])
def test_every_user_runs_in_eval_mode_and_gives_each_module_its_own_mode_back(run):
    mg = _frozen_bn_graph()
    before = _modes(mg.model)
    bn = mg.model.get_submodule("bn")
    stats = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(8, 4)
    run(mg, x)
    assert _modes(mg.model) == before  # the model trains, the BatchNorm stays frozen
    assert before["bn"] is False and before["fc"] is True
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_node_capture_sees_inputs_before_an_inplace_layer_and_outputs_after():
    mg = _frozen_bn_graph()
    x = torch.randn(8, 4)
    seen = {}

    def before(n, args, kwargs):
        return first_tensor(n, args, "none").clone()

    def after(n, inputs, result):
        seen[n.name] = (inputs, result.clone())

    out = NodeCapture(mg.model, before=before, after=after, nodes=[n for n in mg.model.graph.nodes
                                                                  if n.name in ("fc", "relu")]).run(x)
    assert set(seen) == {"fc", "relu"}  # only the watched nodes
    relu_in, relu_out = seen["relu"]
    assert (relu_in < 0).any() and torch.equal(relu_out, relu_in.clamp(min=0))  # input kept before ReLU ran
    assert torch.equal(seen["fc"][1], relu_in)
    assert torch.equal(out, relu_out)  # eval mode: the Dropout passes values through
    assert not out.requires_grad  # no grad


def test_node_capture_hands_a_failing_node_to_on_error_and_first_tensor_names_the_node():
    mg = MaseGraph(model=_Net())
    failed = []

    def on_error(n, args, exc):
        failed.append(n.name)
        raise ValueError(f"node {n.name} failed") from exc

    with pytest.raises(ValueError, match="node bn failed"):
        NodeCapture(mg.model, on_error=on_error).run(torch.randn(8, 5))
    assert failed == ["bn"]
    with pytest.raises(RuntimeError):  # no handler: the error as it was
        NodeCapture(mg.model).run(torch.randn(8, 5))
    node = next(iter(mg.model.graph.nodes))
    with pytest.raises(ValueError, match="node x has none"):
        first_tensor(node, (1, "a"), "node x has none")


def test_no_other_interpreter_or_forward_hook_in_labkit():
    # one capture for everyone: a new hand-rolled Interpreter subclass or forward hook would split it again
    root = pathlib.Path(labkit.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("Interpreter" in ast.unparse(b) for b in node.bases):
                found.append(f"{path.relative_to(root)}:{node.name}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("register_forward"):
                found.append(f"{path.relative_to(root)}:{node.attr}")
    assert found == ["passes/interpreter.py:NodeCapture"]
