"""The exercise checks: the right answer passes; typical wrong answers get the message that explains them.

A check must never raise, whatever the student's code does: it returns a Verdict.
"""

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from labkit import MaseGraph, add_common_metadata_analysis_pass, get_model, init_metadata_analysis_pass
from labkit import quantize_transform_pass
from labkit.exercises import (REPORT_TABLE, Verdict, check_changed_nodes, check_count_params, check_fixed_point,
                              check_layer_counts, check_lr_choice, check_network, check_opcode_counts, check_trained)
from labkit.graph import get_node_actual_target
from labkit.models import JSC_INFO

SEED_REPORT = Path("/work/shared/seed/000_49012a7cae039dba.txt")


def passes(v):
    assert isinstance(v, Verdict), v
    assert v.passed and str(v).startswith("✓"), str(v)


def fails(v, *phrases):
    assert isinstance(v, Verdict), v
    assert not v.passed and str(v).startswith("not yet:"), str(v)
    for phrase in phrases:
        assert phrase in v.message, f"{phrase!r} not in {v.message!r}"
    assert "Traceback" not in v.message


def stub(*args, **kwargs):
    raise NotImplementedError("your turn")


# --- Verdict ---------------------------------------------------------------------------------


def test_verdict_shows_mark_and_message():
    v = Verdict(False, "q(0.125) gave 0.25.", "q")
    assert not v and str(v) == "not yet: [q] q(0.125) gave 0.25."
    assert "not yet:" in v._repr_markdown_() and "q(0.125) gave 0.25." in v._repr_markdown_()
    assert Verdict(True, "fine")._repr_markdown_().count("✓") == 1


# --- 01: count_params --------------------------------------------------------------------------


def test_count_params_right_answer():
    passes(check_count_params(lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)))


@pytest.mark.parametrize("wrong, phrase", [
    (lambda m: len(list(m.parameters())), "number of parameter tensors"),
    (lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight")), "forgets the biases"),
    (lambda m: sum(v.numel() for v in m.state_dict().values()), "buffers"),
    (lambda m: sum(p.numel() for p in m.parameters()), "frozen"),
    (lambda m: 117, "you counted 117"),
    (lambda m: "117", "should return a number"),
    (stub, "still the stub"),
    (42, "should be a function"),
])
def test_count_params_wrong_answers(wrong, phrase):
    fails(check_count_params(wrong), phrase)


# --- 02: a learning rate for a batch size -----------------------------------------------------


@pytest.fixture
def grid_table():
    import pandas as pd
    rows = [{"batch_size": b, "learning_rate": lr, "final_val_acc": acc}
            for b, accs in ((64, (0.60, 0.70, 0.65)), (512, (0.50, 0.66, 0.68)))
            for lr, acc in zip((1e-4, 1e-3, 1e-2), accs)]
    return pd.DataFrame(rows)


def test_lr_choice_right_answer(grid_table):
    passes(check_lr_choice(grid_table, 512, 1e-2, 0.68))
    passes(check_lr_choice(grid_table, 512, 0.01, 0.680))   # the same rate written differently
    v = check_lr_choice(grid_table, 64, 1e-3, 0.7)
    passes(v)
    assert "+5.00 points" in v.message


@pytest.mark.parametrize("args, phrases", [
    ((512, None, None), ["set learning_rate, evidence"]),
    ((512, 1e-3, 0.66), ["lr 0.001 reached 0.6600", "lr 0.01 reached 0.6800"]),
    ((512, 3e-3, 0.68), ["not in the grid", "0.0001, 0.001, 0.01"]),
    ((512, 1e-2, 0.70), ["measured 0.6800", "your number 0.7"]),
    ((512, 1e-2, 68), ["percentage"]),
    ((256, 1e-2, 0.68), ["batch size 256 is not in the grid"]),
    ((512, 1e-2, "high"), ["should be a number"]),
])
def test_lr_choice_wrong_answers(grid_table, args, phrases):
    fails(check_lr_choice(grid_table, *args), *phrases)


def test_lr_choice_a_failed_run_is_not_evidence(grid_table):
    grid_table.loc[(grid_table.batch_size == 512) & (grid_table.learning_rate == 1e-4), "final_val_acc"] = float("nan")
    fails(check_lr_choice(grid_table, 512, 1e-4, float("nan")), "has no accuracy", "lr 0.01 reached 0.6800")
    passes(check_lr_choice(grid_table, 512, 1e-2, 0.68))


# --- 03: a network under a budget, trained ----------------------------------------------------


class Good(nn.Module):
    def __init__(self, info):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(info.num_features), nn.Linear(info.num_features, 24), nn.ReLU(),
                                 nn.Linear(24, info.num_classes))

    def forward(self, x):
        return self.net(x)


class TooBig(Good):
    def __init__(self, info):
        super().__init__(info)
        self.net = nn.Sequential(nn.Linear(info.num_features, 64), nn.ReLU(), nn.Linear(64, info.num_classes))


class Unused(Good):
    def __init__(self, info):
        super().__init__(info)
        self.extra = nn.Linear(16, 16)


class WrongShape(Good):
    def forward(self, x):
        return self.net[:2](x)


class Empty(nn.Module):
    def __init__(self, info):
        super().__init__()

    def forward(self, x):
        raise NotImplementedError


class Dead(Good):  # outputs that never depend on the input: cannot learn
    def forward(self, x):
        return self.net(x) * 0.0


def test_network_right_answer():
    passes(check_network(Good, JSC_INFO, budget=1000))


@pytest.mark.parametrize("cls, phrase", [
    (TooBig, "over the budget of 1,000"), (Unused, "never uses extra.weight"), (WrongShape, "(8, 5) class scores"),
    (Empty, "no parameters yet"), (nn.Linear(16, 5), "pass the class itself"),
])
def test_network_wrong_answers(cls, phrase):
    fails(check_network(cls, JSC_INFO, budget=1000), phrase)


def test_network_must_be_larger_than_jsc_tiny():
    class Small(Good):
        def __init__(self, info):
            super().__init__(info)
            self.net = nn.Linear(16, 5)
    fails(check_network(Small, JSC_INFO, budget=1000), "no more than jsc-tiny's 117")


def test_trained_network(small_data):
    v = check_trained(Good, small_data, 1000, baseline=0.5, max_epochs=1, batch_size=256, learning_rate=1e-3)
    passes(v)
    assert re.search(r"test accuracy 0\.\d{4}", v.message) and "against jsc-tiny (0.5000)" in v.message
    fails(check_trained(Dead, small_data, 1000, max_epochs=1, batch_size=256, learning_rate=1e-3),
          "not clearly above always guessing")
    fails(check_trained(Empty, small_data, 1000, max_epochs=1), "fix the network first")


# --- 04 and 05: graph traversals ---------------------------------------------------------------


def graph(name_or_model):
    model = get_model(name_or_model, JSC_INFO).eval() if isinstance(name_or_model, str) else name_or_model
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": torch.randn(8, 16)}})
    return mg


@pytest.fixture(scope="module")
def graphs():
    return {"jsc-tiny": graph("jsc-tiny"), "jsc-custom": graph("jsc-custom")}


def count_right(g):
    counts = {}
    for node in g.fx_graph.nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def test_opcode_counts_right_answer(graphs):
    v = check_opcode_counts(count_right, graphs)
    passes(v)
    assert "13 call_module" in v.message  # jsc-custom's layers


@pytest.mark.parametrize("wrong, phrase", [
    (lambda g: {n.name: 1 for n in g.fx_graph.nodes}, "not opcodes"),
    (lambda g: {"call_module": sum(n.op == "call_module" for n in g.fx_graph.nodes)}, "add up to"),
    (lambda g: {**count_right(g), "call_module": count_right(g)["call_module"] - 1, "call_function": 1},
     "call_function"),
    (lambda g: [1, 2], "should return a dict"),
    (stub, "still the stub"),
])
def test_opcode_counts_wrong_answers(graphs, wrong, phrase):
    fails(check_opcode_counts(wrong, graphs), phrase)


REPORT_PASS_ARGS = {
    "by": "type", "default": {"config": {"name": None}},
    "linear": {"config": {"name": "integer", "data_in_width": 2, "data_in_frac_width": 2, "weight_width": 2,
                          "weight_frac_width": 2, "bias_width": 2, "bias_frac_width": 2}},
    "relu": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4}},
}


@pytest.fixture(scope="module")
def quantised():
    # as notebook 05 does: quantise one trace of the model, compare with a fresh trace of it
    model = get_model("jsc-custom", JSC_INFO).eval()
    mg, _ = quantize_transform_pass(graph(model), REPORT_PASS_ARGS)
    return graph(model), mg


def changed_right(ori_mg, mg):
    return [n.name for o, n in zip(ori_mg.fx_graph.nodes, mg.fx_graph.nodes)
            if type(get_node_actual_target(o)) is not type(get_node_actual_target(n))]


def test_changed_nodes_right_answer(quantised):
    v = check_changed_nodes(changed_right, *quantised)
    passes(v)
    assert "7 changed nodes" in v.message and "3 LinearInteger" in v.message and "4 ReLUInteger" in v.message
    # fx nodes instead of names are fine too
    passes(check_changed_nodes(lambda o, m: [m.node(n) for n in changed_right(o, m)], *quantised))


def _fx_nodes_differ(ori_mg, mg):
    return [n.name for o, n in zip(ori_mg.fx_graph.nodes, mg.fx_graph.nodes) if o is not n]


@pytest.mark.parametrize("wrong, phrase", [
    (_fx_nodes_differ, "compare the layers' classes"),
    (lambda o, m: changed_right(o, m)[:-1], "you missed"),
    (lambda o, m: changed_right(o, m) + ["seq_blocks_0"], "'seq_blocks_0' did not change"),
    (lambda o, m: changed_right(o, m) + ["Linear"], "not the name of a node"),
    (lambda o, m: None, "should return a list of node names"),
    (stub, "still the stub"),
])
def test_changed_nodes_wrong_answers(quantised, wrong, phrase):
    fails(check_changed_nodes(wrong, *quantised), phrase)


# --- 05: the fixed-point quantiser --------------------------------------------------------------


def q_right(x, width, frac):
    return torch.clamp(torch.round(x * 2.0 ** frac), -2 ** (width - 1), 2 ** (width - 1) - 1) / 2.0 ** frac


def test_fixed_point_right_answer():
    passes(check_fixed_point(q_right))
    passes(check_fixed_point(q_right, extra=torch.randn(4, 16), extra_precision=(2, 2)))


@pytest.mark.parametrize("wrong, phrases", [
    (lambda x, w, f: torch.round(x * 2 ** f) / 2 ** f, ["clamping at the top", "q(100, 8, 4) gave 100"]),
    (lambda x, w, f: torch.clamp(torch.round(x * 2 ** f), -2 ** (w - 1) + 1, 2 ** (w - 1) - 1) / 2 ** f,
     ["clamping at the bottom", "expected -8", "two's complement"]),
    (lambda x, w, f: torch.clamp(torch.floor(x * 2 ** f + 0.5), -2 ** (w - 1), 2 ** (w - 1) - 1) / 2 ** f,
     ["ties", "q(0.125, 8, 2) gave 0.25, expected 0"]),
    (lambda x, w, f: torch.clamp(torch.trunc(x * 2 ** f), -2 ** (w - 1), 2 ** (w - 1) - 1) / 2 ** f,
     ["ordinary values", "round"]),
    (lambda x, w, f: torch.clamp(torch.floor(x.abs() * 2 ** f + 0.5) * x.sign(), -2 ** (w - 1), 2 ** (w - 1) - 1)
     / 2 ** f, ["ties"]),
    (lambda x, w, f: torch.clamp(torch.round(x * f), -2 ** (w - 1), 2 ** (w - 1) - 1) / f, ["ordinary values"]),
    (lambda x, w, f: [0.0] * len(x), ["should return a tensor"]),
    (lambda x, w, f: x[:1], ["of x's shape"]),
    (stub, ["still the stub"]),
])
def test_fixed_point_wrong_answers(wrong, phrases):
    fails(check_fixed_point(wrong), *phrases)


def test_fixed_point_negatives_message():
    # rounds negatives towards zero only: every non-negative case is right
    def q(x, w, f):
        y = q_right(x, w, f)
        return torch.where(x < 0, torch.clamp(torch.trunc(x * 2 ** f), -2 ** (w - 1), 2 ** (w - 1) - 1) / 2 ** f, y)
    fails(check_fixed_point(q), "negative values", "q(-0.4, 8, 2) gave -0.25, expected -0.5")


# --- 06: FLOPs and BitOPs ------------------------------------------------------------------------


def counts_right(op, batch, n_in, n_out, dw=32, ww=32):
    e = batch * n_in
    if op == "linear":
        f = batch * n_in * n_out
        return f, 2 * f, f * dw * ww
    if op == "batch_norm1d":
        return 4 * e, 4 * e, 4 * e * dw * ww
    if op == "relu":
        return e, e, e * dw
    return 0, 0, 0


def test_layer_counts_right_answer():
    v = check_layer_counts(counts_right)
    passes(v)
    assert f"all {len(REPORT_TABLE)} rows" in v.message


def _patch(op_wrong, column, fn):
    def counts(op, *args):
        out = list(counts_right(op, *args))
        if op == op_wrong:
            out[column] = fn(op, *args, out)
        return tuple(out)
    return counts


@pytest.mark.parametrize("wrong, phrases", [
    (_patch("linear", 0, lambda op, b, i, o, dw, ww, out: b * i * o + b * o),
     ["seq_blocks_2", "forward FLOPs", "bias not counted"]),
    (_patch("linear", 0, lambda op, b, i, o, dw, ww, out: 2 * b * i * o), ["counted as one FLOP"]),
    (_patch("linear", 1, lambda op, b, i, o, dw, ww, out: out[0]), ["backward FLOPs", "twice the forward"]),
    (_patch("batch_norm1d", 0, lambda op, b, i, o, dw, ww, out: 2 * b * i), ["seq_blocks_0", "4 operations"]),
    (_patch("relu", 2, lambda op, b, i, o, dw, ww, out: out[0] * dw * ww), ["seq_blocks_1", "no weight"]),
    (_patch("dropout", 0, lambda op, b, i, o, dw, ww, out: b * i), ["seq_blocks_5", "identity at inference"]),
    (_patch("linear", 2, lambda op, b, i, o, dw, ww, out: out[0] * 32 * 32),
     ["8-bit inputs", "use the widths"]),
    (lambda *a: 5, ["three numbers"]),
    (stub, ["still the stub"]),
])
def test_layer_counts_wrong_answers(wrong, phrases):
    fails(check_layer_counts(wrong), *phrases)


@pytest.mark.skipif(not SEED_REPORT.is_file(), reason="the seed lab report is not on this machine")
def test_report_table_is_the_reports():
    """REPORT_TABLE is the report's own 'Computations summary', row for row."""
    rows = []
    for line in SEED_REPORT.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("seq_blocks_"):
            rows.append((cells[0], cells[1], *(float(c) for c in cells[2:])))
    assert len(rows) == len(REPORT_TABLE) == 13
    for ours, theirs in zip(REPORT_TABLE, rows):
        assert ours[:2] == theirs[:2]
        assert tuple(float(v) for v in ours[4:]) == theirs[2:], ours[0]
