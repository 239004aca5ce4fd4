"""How many operations does one op cost?  Pure functions of shapes, no graphs.

Each calculator takes an :class:`OpCall` (the op's name, its input/output shapes and,
for a module, the module itself) and returns an :class:`OpCount`::

    call = OpCall("linear", inputs=[(8, 16)], output=(8, 32), module=nn.Linear(16, 32))
    count_op(call)   # OpCount(params=512, forward=4096, backward=8192, macs=True, bitops='weighted')

The conventions are MASE's ``calc_modules`` ones, which the lab report's table uses:

* linear / conv / matmul: forward = multiply-accumulates (MACs), bias ignored;
  backward = 2 x forward (one product for the input gradient, one for the weight's).
* batch norm: 4 ops per element (subtract mean, divide by std, scale, shift), backward the same.
* layer norm: 5 ops per element; activations and elementwise arithmetic: a few ops per
  element (table below), backward = forward.
* pooling: one op per (output element x window element); adaptive pooling: one per input.
* dropout, reshapes, indexing: 0.

"Parameters" counts what the op owns: a module's weights as MASE counts them (linear and
conv: the weight matrix only; batch norm and layer norm: their real parameters, gamma and
beta, so 2 x channels, or none with ``affine=False``). A functional call owns nothing: its
tensors enter the graph elsewhere (a ``get_attr`` node or an input).

``bitops`` says how the pass turns FLOPs into BitOPs: ``"weighted"`` multiplies by the
input and weight widths, ``"two_inputs"`` by the widths of both operands (matmul), and
``"elementwise"`` by the widest input width.

An op with no calculator raises :class:`UnsupportedOpError`; add one with
``@register_flop_calculator("my_op")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import torch.nn as nn

from ..registry import Registry

Shape = tuple[int, ...]

FLOP_CALCULATORS = Registry("flop calculator")

BITOPS_KINDS = ("weighted", "two_inputs", "elementwise")


class UnsupportedOpError(Exception):
    """The op has no calculator, or lacks the shapes its calculator needs."""


@dataclass(frozen=True)
class OpCall:
    """One call of an op, as the calculators see it."""

    op: str                                # MASE op name: "linear", "relu", "conv2d", ...
    inputs: list = field(default_factory=list)   # shapes of the tensor inputs, in order
    output: Shape | None = None            # shape of the (first) output
    weight: Shape | None = None            # the weight's shape, when the op has one
    module: nn.Module | None = None        # the nn.Module for call_module nodes
    attrs: dict = field(default_factory=dict)    # non-tensor arguments (kernel_size, ...)

    def input(self, i: int = 0) -> Shape:
        if len(self.inputs) <= i or self.inputs[i] is None:
            raise UnsupportedOpError(f"{self.op}: needs the shape of input {i}, got inputs {self.inputs}")
        return tuple(self.inputs[i])

    def out(self) -> Shape:
        if self.output is None:
            raise UnsupportedOpError(f"{self.op}: needs its output shape")
        return tuple(self.output)

    def weight_shape(self) -> Shape:
        """The weight's shape: the module's, else the ``weight`` argument's, else input 1's."""
        w = getattr(self.module, "weight", None)
        if w is not None:
            return tuple(w.shape)
        if self.weight is not None:
            return tuple(self.weight)
        return self.input(1)

    def attr(self, name: str):
        """A setting such as ``kernel_size``: from the module, else from the call's arguments."""
        if self.module is not None and hasattr(self.module, name):
            return getattr(self.module, name)
        if name in self.attrs:
            return self.attrs[name]
        raise UnsupportedOpError(f"{self.op}: needs argument {name!r}, which the call does not show")


@dataclass(frozen=True)
class OpCount:
    """What one call costs. ``forward``/``backward`` are MACs when ``macs`` else plain ops."""

    params: int
    forward: int
    backward: int
    macs: bool = False
    bitops: str = "elementwise"

    def __post_init__(self):
        if self.bitops not in BITOPS_KINDS:
            raise ValueError(f"bitops must be one of {BITOPS_KINDS}, got {self.bitops!r}")


def register_flop_calculator(*ops: str):
    """Decorator: register ``fn(call: OpCall) -> OpCount`` for one or more op names."""

    def add(fn):
        for op in ops:
            FLOP_CALCULATORS.register(op, fn)
        return fn

    return add


def count_op(call: OpCall) -> OpCount:
    """The cost of ``call``; :class:`UnsupportedOpError` when no calculator knows its op."""
    if call.op not in FLOP_CALCULATORS:
        raise UnsupportedOpError(f"no FLOP calculator for op {call.op!r}")
    return FLOP_CALCULATORS.get(call.op)(call)


def _owned(call: OpCall, n: int) -> int:
    """Parameters are counted on the module that owns them, never on a functional call."""
    return int(n) if call.module is not None else 0


def _module_params(call: OpCall) -> int:
    """Every parameter the module really has (0 for a functional call)."""
    return sum(p.numel() for p in call.module.parameters()) if call.module is not None else 0


# --- ops with weights: multiply-accumulates ---------------------------------------------


@register_flop_calculator("linear")
def linear(call: OpCall) -> OpCount:
    """Every weight is used once per row of the input: rows x in x out MACs."""
    x, w = call.input(0), call.weight_shape()
    rows = prod(x[:-1])
    macs = rows * prod(w)
    return OpCount(_owned(call, prod(w)), macs, 2 * macs, macs=True, bitops="weighted")


@register_flop_calculator("conv1d", "conv2d", "conv3d")
def conv(call: OpCall) -> OpCount:
    """Each output element is a dot product over (in_channels / groups) x kernel inputs."""
    w = call.weight_shape()                     # (out, in / groups, *kernel)
    macs = prod(call.out()) * prod(w[1:])
    return OpCount(_owned(call, prod(w)), macs, 2 * macs, macs=True, bitops="weighted")


@register_flop_calculator("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(call: OpCall) -> OpCount:
    """Each input element is scattered through (out_channels / groups) x kernel weights."""
    w = call.weight_shape()                     # (in, out / groups, *kernel)
    macs = prod(call.input(0)) * prod(w[1:])
    return OpCount(_owned(call, prod(w)), macs, 2 * macs, macs=True, bitops="weighted")


@register_flop_calculator("matmul", "mm", "bmm")
def matmul(call: OpCall) -> OpCount:
    """Each output element is a dot product of length K (the first operand's last dim)."""
    macs = prod(call.out()) * call.input(0)[-1]
    return OpCount(0, macs, 2 * macs, macs=True, bitops="two_inputs")


# --- normalisation ------------------------------------------------------------------------


@register_flop_calculator("batch_norm1d", "batch_norm2d", "batch_norm3d", "batch_norm")
def batch_norm(call: OpCall) -> OpCount:
    """(x - mean) / std * gamma + beta: 4 ops per element; parameters gamma and beta (if affine).

    The running mean and variance are buffers, not parameters.
    """
    elements = prod(call.input(0))
    return OpCount(_module_params(call), 4 * elements, 4 * elements, bitops="weighted")


@register_flop_calculator("layer_norm", "group_norm")
def layer_norm(call: OpCall) -> OpCount:
    """Mean, variance, normalise, scale, shift: 5 ops per element; parameters: gamma and beta."""
    elements = prod(call.input(0))
    return OpCount(_module_params(call), 5 * elements, 5 * elements, bitops="weighted")


# --- elementwise ops: (ops per element), backward = forward -------------------------------

ELEMENTWISE_COST = {
    # piecewise-linear activations: compares and selects
    "relu": 1, "relu6": 2, "hardtanh": 2, "leaky_relu": 2, "hardsigmoid": 3, "hardswish": 4,
    # smooth activations: a transcendental function counts as one op
    "sigmoid": 3, "tanh": 1, "silu": 4, "gelu": 4, "elu": 3, "softplus": 3,
    # arithmetic (x + y, x * 2, ...): one op per output element
    "add": 1, "sub": 1, "mul": 1, "div": 1, "floordiv": 1, "neg": 1,
    "abs": 1, "exp": 1, "log": 1, "sqrt": 1, "rsqrt": 1, "pow": 1,
    # softmax: exp, sum, divide (log_softmax: exp, sum, subtract)
    "softmax": 3, "log_softmax": 3,
}


def _elementwise(cost: int):
    def calculator(call: OpCall) -> OpCount:
        elements = prod(call.out()) if call.output is not None else prod(call.input(0))
        return OpCount(0, cost * elements, cost * elements)

    calculator.__doc__ = f"{cost} op(s) per output element, backward the same."
    return calculator


for _op, _cost in ELEMENTWISE_COST.items():
    register_flop_calculator(_op)(_elementwise(_cost))


@register_flop_calculator("mean", "sum")
def reduce(call: OpCall) -> OpCount:
    """One add per input element (mean's final divide per output is ignored)."""
    elements = prod(call.input(0))
    return OpCount(0, elements, elements)


# --- pooling --------------------------------------------------------------------------------


def _window(call: OpCall, dims: int) -> int:
    k = call.attr("kernel_size")
    return prod(k) if isinstance(k, (tuple, list)) else int(k) ** dims


@register_flop_calculator("max_pool1d", "avg_pool1d", "max_pool2d", "avg_pool2d",
                          "max_pool3d", "avg_pool3d")
def pool(call: OpCall) -> OpCount:
    """Each output element compares (max) or adds (avg) one window of inputs."""
    ops = prod(call.out()) * _window(call, int(call.op[-2]))
    return OpCount(0, ops, ops)


@register_flop_calculator("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                          "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
def adaptive_pool(call: OpCall) -> OpCount:
    """Windows tile the input: one op per input element."""
    elements = prod(call.input(0))
    return OpCount(0, elements, elements)


# --- ops that move data but compute nothing ------------------------------------------------

FREE_OPS = (
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "identity",
    "flatten", "unflatten", "view", "reshape", "size", "getitem", "getattr", "permute",
    "transpose", "t", "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "cat",
    "stack", "split", "chunk", "clone", "detach", "to", "type", "float", "numel", "dim",
)


@register_flop_calculator(*FREE_OPS)
def free(call: OpCall) -> OpCount:
    """Reshapes, copies, indexing and dropout: no arithmetic."""
    return OpCount(0, 0, 0)


@register_flop_calculator("embedding")
def embedding(call: OpCall) -> OpCount:
    """A table lookup: no arithmetic, but the table is a parameter."""
    params = call.module.weight.numel() if call.module is not None else 0
    return OpCount(params, 0, 0)
