"""Notebook 06: write the FLOPs and BitOPs calculators for Linear, ReLU and BatchNorm1d.

The report's optional task. ``REPORT_TABLE`` is the lab report's table for jsc-custom
(a batch of 8, float32), copied from the report; ``tests/test_exercises.py`` checks it against
the report's text. The student's ``layer_counts(op, batch, in_features, out_features,
data_width, weight_width)`` returns (forward FLOPs, backward FLOPs, forward BitOPs) for one
layer; the check compares it with every row of the table, then with labkit's FLOPs pass on
an 8-bit quantised layer (where BitOPs and FLOPs part ways).
"""

from __future__ import annotations

from ..passes.flop_calculators import OpCall, count_op
from .verdict import NotYet, call_student, check, ok

BATCH = 8
# node, op, in_features, out_features, parameters, forward FLOPs, backward FLOPs, forward BitOPs, backward BitOPs
# (the report prints 6 significant digits: 4.1943e+06 is 4,194,304)
REPORT_TABLE = [
    ("seq_blocks_0", "batch_norm1d", 16, 16, 32, 512, 512, 524288, 524288),
    ("seq_blocks_1", "relu", 16, 16, 0, 128, 128, 4096, 4096),
    ("seq_blocks_2", "linear", 16, 32, 512, 4096, 8192, 4.1943e+06, 8.38861e+06),
    ("seq_blocks_3", "batch_norm1d", 32, 32, 64, 1024, 1024, 1.04858e+06, 1.04858e+06),
    ("seq_blocks_4", "relu", 32, 32, 0, 256, 256, 8192, 8192),
    ("seq_blocks_5", "dropout", 32, 32, 0, 0, 0, 0, 0),
    ("seq_blocks_6", "linear", 32, 16, 512, 4096, 8192, 4.1943e+06, 8.38861e+06),
    ("seq_blocks_7", "batch_norm1d", 16, 16, 32, 512, 512, 524288, 524288),
    ("seq_blocks_8", "relu", 16, 16, 0, 128, 128, 4096, 4096),
    ("seq_blocks_9", "dropout", 16, 16, 0, 0, 0, 0, 0),
    ("seq_blocks_10", "linear", 16, 5, 80, 640, 1280, 655360, 1.31072e+06),
    ("seq_blocks_11", "batch_norm1d", 5, 5, 10, 160, 160, 163840, 163840),
    ("seq_blocks_12", "relu", 5, 5, 0, 40, 40, 1280, 1280),
]

WHY = {
    ("linear", "forward FLOPs"): "one multiply-accumulate per weight per row, counted as one FLOP, bias not "
                                 "counted: batch x in x out",
    ("linear", "backward FLOPs"): "twice the forward count (one product for the input's gradient, one for "
                                  "the weight's)",
    ("linear", "forward BitOPs"): "FLOPs x input width x weight width",
    ("batch_norm1d", "forward FLOPs"): "4 operations per element (subtract the mean, divide by the std, scale, "
                                       "shift): 4 x batch x features",
    ("batch_norm1d", "backward FLOPs"): "the same as forward",
    ("batch_norm1d", "forward BitOPs"): "FLOPs x input width x weight width, like linear",
    ("relu", "forward FLOPs"): "one comparison per element: batch x features",
    ("relu", "backward FLOPs"): "the same as forward",
    ("relu", "forward BitOPs"): "FLOPs x input width (a ReLU has no weight)",
    ("dropout", "forward FLOPs"): "0: dropout is the identity at inference",
    ("dropout", "backward FLOPs"): "0",
    ("dropout", "forward BitOPs"): "0",
}
COLUMNS = ("forward FLOPs", "backward FLOPs", "forward BitOPs")


def reference_counts(op: str, batch: int, in_features: int, out_features: int,
                     data_width: int = 32, weight_width: int = 32) -> tuple[int, int, int]:
    """labkit's calculators (the FLOPs pass's), for one layer of the JSC networks."""
    import torch.nn as nn
    module = {"linear": lambda: nn.Linear(in_features, out_features), "relu": nn.ReLU,
              "batch_norm1d": lambda: nn.BatchNorm1d(in_features), "dropout": nn.Dropout}[op]()
    c = count_op(OpCall(op, inputs=[(batch, in_features)], output=(batch, out_features), module=module))
    widths = {"weighted": data_width * weight_width, "elementwise": data_width}.get(c.bitops, 0)
    return c.forward, c.backward, c.forward * widths


def _same(got, want) -> bool:
    try:
        got = float(got)
    except (TypeError, ValueError):
        return False
    return float(f"{got:.6g}") == float(f"{want:.6g}")  # the report prints 6 significant digits


def _numbers(value, call: str):
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise NotYet(f"{call} should return three numbers (forward FLOPs, backward FLOPs, forward BitOPs), "
                     f"but it returned {value!r:.80}.")
    return value


@check("FLOPs and BitOPs calculators")
def check_layer_counts(layer_counts):
    """Every row of the report's table (float32), then 8-bit linear and relu layers against labkit's pass."""
    for node, op, n_in, n_out, _, fwd, bwd, fwd_bitops, _ in REPORT_TABLE:
        call = f"layer_counts({op!r}, {BATCH}, {n_in}, {n_out}, 32, 32)"
        got = _numbers(call_student(layer_counts, op, BATCH, n_in, n_out, 32, 32, what=call), call)
        for column, g, w in zip(COLUMNS, got, (fwd, bwd, fwd_bitops)):
            if not _same(g, w):
                raise NotYet(f"{node} ({op}, batch {BATCH}, {n_in} -> {n_out} features, float32): your {column} "
                             f"{g!r:.20} but the report's table says {w:,.6g}. Its convention: {WHY[(op, column)]}.")
    for op, n_in, n_out, dw, ww in (("linear", 16, 32, 8, 8), ("linear", 32, 16, 4, 2), ("relu", 16, 16, 8, 32),
                                    ("batch_norm1d", 16, 16, 8, 32)):
        call = f"layer_counts({op!r}, {BATCH}, {n_in}, {n_out}, {dw}, {ww})"
        got = _numbers(call_student(layer_counts, op, BATCH, n_in, n_out, dw, ww, what=call), call)
        want = reference_counts(op, BATCH, n_in, n_out, dw, ww)
        for column, g, w in zip(COLUMNS, got, want):
            if not _same(g, w):
                raise NotYet(f"{call}: your {column} {g!r:.20}, labkit's pass counts {w:,} for a layer with "
                             f"{dw}-bit inputs and {ww}-bit weights: {WHY[(op, column)]} (use the widths "
                             "you are given, not 32).")
    return ok(f"your calculators reproduce all {len(REPORT_TABLE)} rows of the report's table (float32, batch "
              f"{BATCH}) and labkit's counts for quantised layers, where the FLOPs stay and the BitOPs shrink.")
