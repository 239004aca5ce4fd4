"""The FLOPs/BitOPs pass: the lab report's table, BitOPs under quantisation, and agreement
with torch's own counter (``torch.utils.flop_counter.FlopCounterMode``)."""

import math

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from labkit.graph import MaseGraph
from labkit.models import get_model
from labkit.passes.flop_calculators import (
    OpCall, OpCount, UnsupportedOpError, count_op, register_flop_calculator,
)
from labkit.passes.flops import analyse_flops_pass, format_flops_table
from labkit.passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
from labkit.passes.quantize import quantize_transform_pass
from models_zoo import EXTRA_MODELS, dummy_input

# The "Computations summary" of the lab report (jsc-custom, dummy batch of 8), verbatim.
SPEC_TABLE = """\
| Node name     | Node type    |   Parameters |   Forward FLOPS |   Backward FLOPS |   Forward bitops |   Backward bitops |
|---------------|--------------|--------------|-----------------|------------------|------------------|-------------------|
| x             | placeholder  |              |                 |                  |                  |                   |
| seq_blocks_0  | batch_norm1d |           32 |             512 |              512 | 524288           |  524288           |
| seq_blocks_1  | relu         |            0 |             128 |              128 |   4096           |    4096           |
| seq_blocks_2  | linear       |          512 |            4096 |             8192 |      4.1943e+06  |       8.38861e+06 |
| seq_blocks_3  | batch_norm1d |           64 |            1024 |             1024 |      1.04858e+06 |       1.04858e+06 |
| seq_blocks_4  | relu         |            0 |             256 |              256 |   8192           |    8192           |
| seq_blocks_5  | dropout      |            0 |               0 |                0 |      0           |       0           |
| seq_blocks_6  | linear       |          512 |            4096 |             8192 |      4.1943e+06  |       8.38861e+06 |
| seq_blocks_7  | batch_norm1d |           32 |             512 |              512 | 524288           |  524288           |
| seq_blocks_8  | relu         |            0 |             128 |              128 |   4096           |    4096           |
| seq_blocks_9  | dropout      |            0 |               0 |                0 |      0           |       0           |
| seq_blocks_10 | linear       |           80 |             640 |             1280 | 655360           |       1.31072e+06 |
| seq_blocks_11 | batch_norm1d |           10 |             160 |              160 | 163840           |  163840           |
| seq_blocks_12 | relu         |            0 |              40 |               40 |   1280           |    1280           |
| output        | output       |              |                 |                  |                  |                   |"""

# The same table's numbers, exact: (name, op, params, fwd, bwd, fwd bitops, bwd bitops).
F32 = 32 * 32
SPEC_ROWS = [
    ("seq_blocks_0", "batch_norm1d", 32, 512, 512, 512 * F32, 512 * F32),
    ("seq_blocks_1", "relu", 0, 128, 128, 128 * 32, 128 * 32),
    ("seq_blocks_2", "linear", 512, 4096, 8192, 4096 * F32, 8192 * F32),
    ("seq_blocks_3", "batch_norm1d", 64, 1024, 1024, 1024 * F32, 1024 * F32),
    ("seq_blocks_4", "relu", 0, 256, 256, 256 * 32, 256 * 32),
    ("seq_blocks_5", "dropout", 0, 0, 0, 0, 0),
    ("seq_blocks_6", "linear", 512, 4096, 8192, 4096 * F32, 8192 * F32),
    ("seq_blocks_7", "batch_norm1d", 32, 512, 512, 512 * F32, 512 * F32),
    ("seq_blocks_8", "relu", 0, 128, 128, 128 * 32, 128 * 32),
    ("seq_blocks_9", "dropout", 0, 0, 0, 0, 0),
    ("seq_blocks_10", "linear", 80, 640, 1280, 640 * F32, 1280 * F32),
    ("seq_blocks_11", "batch_norm1d", 10, 160, 160, 160 * F32, 160 * F32),
    ("seq_blocks_12", "relu", 0, 40, 40, 40 * 32, 40 * 32),
]
NUMBERS = ["Parameters", "Forward FLOPS", "Backward FLOPS", "Forward bitops", "Backward bitops"]


def annotated(model: nn.Module, *dummy) -> MaseGraph:
    """A MaseGraph with common metadata from one dummy batch."""
    mg = MaseGraph(model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": dummy})
    return mg


def flops(model, *dummy, **pass_args):
    _, info = analyse_flops_pass(annotated(model, *dummy), {"print": False, **pass_args})
    return info


def row(info, name) -> pd.Series:
    table = info["table"]
    return table[table["Node name"] == name].iloc[0]


@pytest.fixture(scope="module")
def jsc_custom():
    torch.manual_seed(0)
    return annotated(get_model("jsc-custom"), torch.randn(8, 16))


# --- the lab report's table -------------------------------------------------------------------


def test_spec_table_every_cell(jsc_custom):
    _, info = analyse_flops_pass(jsc_custom, {"print": False})
    body = info["table"].iloc[1:-2]  # without placeholder, output and total
    got = [(r["Node name"], r["Node type"], *(r[c] for c in NUMBERS)) for _, r in body.iterrows()]
    assert got == SPEC_ROWS
    for name in ("x", "output"):  # placeholder and output rows are blank (NaN), not zero
        assert row(info, name)[NUMBERS].isna().all()


def test_spec_table_printed_verbatim(jsc_custom, capsys):
    _, info = analyse_flops_pass(jsc_custom)  # prints by default
    printed = capsys.readouterr().out
    assert printed.startswith("Computations summary:\n---------------------\n")
    assert format_flops_table(info["table"].iloc[:-1]) == SPEC_TABLE
    for line in SPEC_TABLE.splitlines()[2:]:  # same cells once the total row widens columns
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert any([c.strip() for c in p.split("|")[1:-1]] == cells for p in printed.splitlines())


def test_totals_row(jsc_custom):
    _, info = analyse_flops_pass(jsc_custom, {"print": False})
    total = info["table"].iloc[-1]
    assert total["Node name"] == "total"
    for i, column in enumerate(NUMBERS):
        expected = sum(r[2 + i] for r in SPEC_ROWS)
        assert total[column] == expected == info["totals"][column]
    assert info["totals"]["Parameters"] == 1242  # weights only for linear, 2C for batch norm
    assert info["totals"]["Forward FLOPS"] == 11592 and info["unsupported"] == []


def test_results_stored_on_each_node(jsc_custom):
    analyse_flops_pass(jsc_custom, {"print": False})
    lin = jsc_custom.node("seq_blocks_2").meta["mase"].parameters["software"]["flops"]
    assert lin["forward_flops"] == 4096 and lin["backward_bitops"] == 8192 * F32
    assert lin["convention"] == "mac" and lin["supported"]


def test_batch_size_counts():
    info = flops(get_model("jsc-custom"), torch.randn(32, 16))
    assert row(info, "seq_blocks_2")["Forward FLOPS"] == 4 * 4096
    assert row(info, "seq_blocks_2")["Parameters"] == 512  # parameters do not scale


# --- BitOPs follow the precision in the metadata ---------------------------------------------


def set_precision(mg, node_name, *, data_in=None, weight=None):
    args = mg.node(node_name).meta["mase"].parameters["common"]["args"]
    if data_in is not None:
        args["data_in_0"].update(type="integer", precision=[data_in, data_in // 2])
    if weight is not None:
        args["weight"].update(type="integer", precision=[weight, weight // 2])


def test_bitops_follow_metadata_precision():
    mg = annotated(get_model("jsc-custom"), torch.randn(8, 16))
    set_precision(mg, "seq_blocks_2", data_in=8, weight=8)
    set_precision(mg, "seq_blocks_6", data_in=2, weight=4)
    set_precision(mg, "seq_blocks_1", data_in=8)
    _, info = analyse_flops_pass(mg, {"print": False})
    assert row(info, "seq_blocks_2")["Forward bitops"] == 4096 * 64
    assert row(info, "seq_blocks_2")["Backward bitops"] == 8192 * 64
    assert row(info, "seq_blocks_6")["Forward bitops"] == 4096 * 8
    assert row(info, "seq_blocks_1")["Forward bitops"] == 128 * 8
    assert row(info, "seq_blocks_10")["Forward bitops"] == 640 * F32       # untouched: float32
    assert row(info, "seq_blocks_2")["Forward FLOPS"] == 4096              # FLOPs do not see it


def integer(width, operands=("data_in", "weight", "bias")):
    """An integer (fixed-point) quantisation config of ``width`` bits for ``operands``."""
    config = {"name": "integer"}
    for operand in operands:
        config.update({f"{operand}_width": width, f"{operand}_frac_width": width // 2})
    return {"config": config}


# The lab report's pass_args for jsc-custom: 2-bit linear layers, 8-bit ReLUs.
SPEC_QUANT_ARGS = {
    "by": "type",
    "default": {"config": {"name": None}},
    "linear": {"config": {"name": "integer", "data_in_width": 2, "data_in_frac_width": 2,
                          "weight_width": 2, "weight_frac_width": 2,
                          "bias_width": 2, "bias_frac_width": 2}},
    "relu": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4}},
}


def test_bitops_after_quantize_transform_pass(jsc_custom):
    _, before = analyse_flops_pass(jsc_custom, {"print": False})  # float32, before the pass changes the graph
    qmg, _ = quantize_transform_pass(jsc_custom, SPEC_QUANT_ARGS)
    _, info = analyse_flops_pass(qmg, {"print": False})
    for name, op, params, fwd, bwd, *_ in SPEC_ROWS:
        r = row(info, name)
        assert (r["Parameters"], r["Forward FLOPS"], r["Backward FLOPS"]) == (params, fwd, bwd)
        scale = {"linear": 2 * 2, "relu": 8, "batch_norm1d": F32, "dropout": 0}[op]
        assert r["Forward bitops"] == fwd * scale and r["Backward bitops"] == bwd * scale
        assert row(before, name)["Forward bitops"] == row(before, name)["Forward FLOPS"] * (
            32 if op == "relu" else F32)
    assert info["totals"]["Forward bitops"] < before["totals"]["Forward bitops"] / 4


def test_bitops_after_quantising_convs_and_linears_to_8_bits():
    mg = annotated(EXTRA_MODELS["conv2d"](), dummy_input())
    eight = integer(8)
    qmg, _ = quantize_transform_pass(mg, {"by": "type", "conv2d": eight, "linear": eight})
    _, info = analyse_flops_pass(qmg, {"print": False})
    for name in ("conv1", "conv2", "fc"):
        assert row(info, name)["Forward bitops"] == row(info, name)["Forward FLOPS"] * 64 > 0
    assert row(info, "bn1")["Forward bitops"] == row(info, "bn1")["Forward FLOPS"] * F32


# --- the 2-FLOPs-per-MAC convention against torch's FlopCounterMode ---------------------------


def torch_flops(model, x):
    """(forward, backward) FLOPs as torch counts them, with the input needing a gradient."""
    x = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fwd:
        y = model(x)
    with FlopCounterMode(display=False) as bwd:
        y.sum().backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


class Tokens(nn.Module):
    """A linear layer on a 3-d input (batch, tokens, features)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 24)
        self.head = nn.Linear(24, 5, bias=False)

    def forward(self, x):
        return self.head(self.proj(x))


class Attention(nn.Module):
    """matmul and bmm between activations: no weights, both operands get gradients."""

    def forward(self, x):
        scores = torch.matmul(x, x.transpose(1, 2))
        return torch.bmm(scores, x)


FLOP_COUNTER_CASES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 5)),
            (8, 16)),
    "tokens": (Tokens, (4, 7, 16)),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, stride=2),
                                     nn.Conv2d(6, 4, (1, 3), dilation=2), nn.Flatten(),
                                     nn.Linear(4 * 7 * 3, 5)),             # 16 -> 16 -> 7 -> 7 x 3
               (2, 3, 16, 16)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.Conv1d(8, 8, 3, stride=2)),
               (3, 4, 20)),
    "matmul_bmm": (Attention, (2, 5, 6)),
    "conv_transpose2d": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 3, 3, stride=2)), (2, 4, 5, 5)),
}


@pytest.mark.parametrize("case", FLOP_COUNTER_CASES)
def test_two_flops_per_mac_matches_flop_counter_mode(case):
    build, shape = FLOP_COUNTER_CASES[case]
    torch.manual_seed(0)
    model, x = build(), torch.randn(*shape)
    info = flops(model, x, convention="2flops_per_mac")
    forward, backward = torch_flops(model, x)
    assert forward > 0
    assert info["totals"]["Forward FLOPS"] == forward
    assert info["totals"]["Backward FLOPS"] == backward
    # the default convention counts each multiply-accumulate once
    assert flops(model, x)["totals"]["Forward FLOPS"] == forward // 2


def test_grouped_conv_forward_matches_flop_counter_mode():
    # (FlopCounterMode over-counts the weight gradient of grouped convs by `groups`,
    #  so only the forward pass is compared here.)
    # A bare Conv2d traces *into* its forward: get_attr weight/bias + a functional conv2d.
    model, x = nn.Conv2d(8, 12, 3, groups=4), torch.randn(2, 8, 10, 10)
    forward, _ = torch_flops(model, x)
    info = flops(model, x, convention="2flops_per_mac")
    assert row(info, "conv2d")["Parameters"] == 0 and row(info, "weight")["Parameters"] == 12 * 2 * 9
    assert info["totals"]["Forward FLOPS"] == forward == 2 * 2 * 12 * 8 * 8 * (8 // 4) * 9


# --- ops it cannot count are reported, never zero -----------------------------------------------


class WithCumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return torch.cumsum(self.fc(x), dim=1)


def test_unsupported_op_is_reported(capsys):
    mg = annotated(WithCumsum(), torch.randn(8, 16))
    with pytest.warns(UserWarning, match="cumsum"):
        _, info = analyse_flops_pass(mg)
    assert info["unsupported"] == ["cumsum"]
    r = row(info, "cumsum")
    assert r["Node type"] == "cumsum" and r["Note"].startswith("unsupported")
    assert r[NUMBERS].isna().all()  # unknown, not 0
    assert info["totals"]["Forward FLOPS"] == 8 * 16 * 5  # the linear only ...
    assert "excludes unsupported: cumsum" in info["table"].iloc[-1]["Note"]  # ... and it says so
    out = capsys.readouterr().out
    assert "Note" in out and "unsupported" in out
    assert not mg.node("cumsum").meta["mase"].parameters["software"]["flops"]["supported"]


def test_custom_calculator_makes_an_op_countable():
    mg = annotated(WithCumsum(), torch.randn(8, 16))

    @register_flop_calculator("cumsum")
    def cumsum(call):
        n = math.prod(call.out())
        return OpCount(0, n, n)

    try:
        _, info = analyse_flops_pass(mg, {"print": False})
        assert info["unsupported"] == [] and row(info, "cumsum")["Forward FLOPS"] == 40
    finally:
        from labkit.passes.flop_calculators import FLOP_CALCULATORS
        del FLOP_CALCULATORS._entries["cumsum"]


def test_calculators_are_pure_functions_of_shapes():
    # the report's seq_blocks_2 / seq_blocks_0 / seq_blocks_1, without any graph
    assert count_op(OpCall("linear", inputs=[(8, 16)], output=(8, 32), module=nn.Linear(16, 32))) \
        == OpCount(512, 4096, 8192, macs=True, bitops="weighted")
    assert count_op(OpCall("batch_norm1d", inputs=[(8, 16)], module=nn.BatchNorm1d(16))) \
        == OpCount(32, 512, 512, bitops="weighted")
    assert count_op(OpCall("relu", inputs=[(8, 16)], output=(8, 16))) == OpCount(0, 128, 128)
    # a functional conv: the weight is the second input, and it owns no parameters
    conv = count_op(OpCall("conv2d", inputs=[(2, 8, 9, 9), (12, 2, 3, 3)], output=(2, 12, 7, 7)))
    assert (conv.params, conv.forward) == (0, 2 * 12 * 7 * 7 * 2 * 3 * 3)
    pool = count_op(OpCall("avg_pool1d", inputs=[(2, 3, 8)], output=(2, 3, 4), attrs={"kernel_size": 2}))
    assert pool.forward == 2 * 3 * 4 * 2


def test_calculator_errors():
    with pytest.raises(UnsupportedOpError, match="no FLOP calculator for op 'fft'"):
        count_op(OpCall("fft", inputs=[(8, 16)], output=(8, 16)))
    with pytest.raises(UnsupportedOpError, match="kernel_size"):
        count_op(OpCall("max_pool2d", inputs=[(1, 2, 8, 8)], output=(1, 2, 4, 4)))
    with pytest.raises(ValueError, match="bitops must be one of"):
        OpCount(0, 1, 1, bitops="wide")


# --- bad input -----------------------------------------------------------------------------------


def test_bad_pass_args(jsc_custom):
    with pytest.raises(ValueError, match="convention must be one of .*'flops'"):
        analyse_flops_pass(jsc_custom, {"convention": "flops"})
    with pytest.raises(ValueError, match=r"unknown pass_args \['verbose'\]"):
        analyse_flops_pass(jsc_custom, {"verbose": True})
    with pytest.raises(TypeError, match="must be a dict"):
        analyse_flops_pass(jsc_custom, "mac")
    with pytest.raises(TypeError, match="expects a MaseGraph"):
        analyse_flops_pass(get_model("jsc-tiny"))


def test_needs_metadata():
    with pytest.raises(ValueError, match="add_common_metadata_analysis_pass"):
        analyse_flops_pass(MaseGraph(get_model("jsc-tiny")))


# --- other model kinds: every node counted, numbers by hand ------------------------------------


class Functional(nn.Module):
    """F.linear on get_attr Parameters, F.relu, torch.sigmoid, x * 2."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(32, 16))
        self.b = nn.Parameter(torch.zeros(32))

    def forward(self, x):
        return torch.sigmoid(F.relu(F.linear(x, self.w, self.b))) * 2


class Residual(nn.Module):
    """x + f(x), a call_method view/relu/softmax/size, LayerNorm, GELU and dropout."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = x.view(x.size(0), 16)
        h = self.drop(self.act(self.norm(self.fc(x))))
        return (x + h).relu().softmax(dim=-1)


class ConvNet(nn.Module):
    """Conv, batch norm, module and functional pooling, adaptive pooling, flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(kernel_size=(2, 2))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = x.view(-1, 1, 4, 4)
        x = self.pool(torch.relu(self.bn(self.conv(x))))           # 4 x 4 -> 2 x 2
        x = F.max_pool2d(F.avg_pool2d(x, 1), kernel_size=1)        # functional, window 1
        x = self.gap(self.avg(x))                                  # 2 x 2 -> 1 x 1 -> 1 x 1
        return self.fc(torch.flatten(x, 1))


def test_functional_model_with_get_attr():
    info = flops(Functional(), torch.randn(8, 16))
    assert info["unsupported"] == []
    assert row(info, "w")["Parameters"] == 32 * 16 and row(info, "b")["Parameters"] == 32
    lin = row(info, "linear")
    assert (lin["Parameters"], lin["Forward FLOPS"], lin["Backward FLOPS"]) == (0, 4096, 8192)
    assert lin["Forward bitops"] == 4096 * F32  # input x weight width, weight = 2nd operand
    assert row(info, "relu")["Forward FLOPS"] == 256 and row(info, "sigmoid")["Forward FLOPS"] == 3 * 256
    assert row(info, "mul")["Forward FLOPS"] == 256 and row(info, "mul")["Forward bitops"] == 256 * 32
    assert info["totals"]["Parameters"] == 32 * 16 + 32  # each tensor counted once


def test_residual_and_call_methods():
    info = flops(Residual(), torch.randn(8, 16))
    assert info["unsupported"] == []
    assert row(info, "size")["Forward FLOPS"] == 0 and row(info, "view")["Forward FLOPS"] == 0
    assert row(info, "norm")["Forward FLOPS"] == 5 * 128 and row(info, "norm")["Parameters"] == 32
    assert row(info, "add")["Forward FLOPS"] == 128
    assert row(info, "softmax")["Forward FLOPS"] == 3 * 128
    assert row(info, "drop")["Forward FLOPS"] == 0


def test_conv_and_pooling_model():
    info = flops(ConvNet(), torch.randn(8, 16))
    assert info["unsupported"] == []
    conv = row(info, "conv")
    assert conv["Forward FLOPS"] == 8 * 4 * 4 * 4 * 9 and conv["Parameters"] == 36
    assert row(info, "bn")["Forward FLOPS"] == 4 * 8 * 4 * 16 and row(info, "bn")["Parameters"] == 8
    assert row(info, "pool")["Forward FLOPS"] == 8 * 4 * 2 * 2 * 4          # out x window 2x2
    assert row(info, "max_pool2d")["Forward FLOPS"] == 8 * 4 * 2 * 2        # kernel_size=1
    assert row(info, "avg")["Forward FLOPS"] == 8 * 4 * 1 * 1 * 4
    assert row(info, "gap")["Forward FLOPS"] == 8 * 4                       # one per input
    assert row(info, "flatten")["Forward FLOPS"] == 0


@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-toy", "jsc-s"])
def test_registry_models_fully_counted(name):
    model = get_model(name)
    info = flops(model, torch.randn(8, 16))
    assert info["unsupported"] == []
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    bn = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert info["totals"]["Parameters"] == weights + bn
    assert info["totals"]["Forward FLOPS"] > 8 * weights  # MACs plus the elementwise ops


# --- the shared extra models (tests/models_zoo.py) -----------------------------------------------

MAC_OPS = {"linear", "conv1d", "conv2d", "matmul", "mm", "bmm"}


@pytest.mark.parametrize("name", EXTRA_MODELS)
def test_extra_models_counted_and_macs_match_flop_counter_mode(name):
    torch.manual_seed(0)
    model, x = EXTRA_MODELS[name](), dummy_input()
    info = flops(model, x, convention="2flops_per_mac")
    body = info["table"].iloc[:-1]
    assert info["unsupported"] == []
    counted = body[~body["Node type"].isin(["placeholder", "output"])]
    assert counted[NUMBERS].notna().all().all()  # every node has numbers
    # torch counts only the matrix products (mm, addmm, bmm, convolution): so must we
    macs = body[body["Node type"].isin(MAC_OPS)]
    forward, backward = torch_flops(model, x)
    assert macs["Forward FLOPS"].sum() == forward > 0
    assert macs["Backward FLOPS"].sum() == backward


class WithBuffer(nn.Module):
    """A get_attr on a buffer (not a parameter): read, but not counted as parameters."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.ones(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(x * self.mask)


def test_get_attr_buffer_is_not_a_parameter():
    info = flops(WithBuffer(), torch.randn(8, 16))
    assert row(info, "mask")["Parameters"] == 0 and row(info, "mul")["Forward FLOPS"] == 128
    assert info["totals"]["Parameters"] == 80


def test_batch_norm_counts_its_real_parameters():
    model = nn.Sequential(nn.BatchNorm1d(16, affine=False), nn.BatchNorm1d(16), nn.Linear(16, 5))
    info = flops(model, torch.randn(8, 16))
    assert row(info, "_0")["Parameters"] == 0  # affine=False: no gamma or beta, only buffers
    assert row(info, "_1")["Parameters"] == 32
    assert row(info, "_0")["Forward FLOPS"] == row(info, "_1")["Forward FLOPS"] == 4 * 8 * 16
    assert info["totals"]["Parameters"] == 32 + 80
    # a functional batch norm owns nothing: its tensors are counted where they enter the graph
    call = OpCall("batch_norm", inputs=[(8, 16)], output=(8, 16))
    assert count_op(call).params == 0


def test_pass_args_and_graph_errors_say_what_to_do():
    mg = annotated(get_model("jsc-tiny"), torch.randn(8, 16))
    with pytest.raises(ValueError, match=r"analyse_flops_pass: unknown pass_args \['prnt'\] "
                                         r"\(unknown key 'prnt', did you mean 'print'\?\)"):
        analyse_flops_pass(mg, {"prnt": False})
    with pytest.raises(TypeError, match="print.* must be a bool"):
        analyse_flops_pass(mg, {"print": "no"})
    with pytest.raises(TypeError, match="build one with MaseGraph\\(model=model\\)"):
        analyse_flops_pass(mg.model)  # the GraphModule, not the MaseGraph
