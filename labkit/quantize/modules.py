"""Quantised layers: the float layer, with its input, weight and bias quantised on the fly.

Each class subclasses the float layer, so it has the same parameters, the same state dict
and the same ``repr`` arguments; only ``forward`` differs. Weights stay in float32 (so
quantisation-aware training can keep nudging them) and are rounded on every call:

    layer = LinearInteger(16, 5, config={"name": "integer",
                                         "data_in_width": 8, "data_in_frac_width": 4,
                                         "weight_width": 2, "weight_frac_width": 2,
                                         "bias_width": 2, "bias_frac_width": 2})
    layer.w_quantizer(layer.weight)   # the weights the forward pass really uses

There is one class per (layer, format): ``LinearInteger``, ``LinearMinifloat``,
``ReLULog``, ``Conv2dBinary``, ... They are made from the five generic classes below
(``QuantizedLinear`` & co.) by :func:`quantized_class`, also for formats registered later.

``module.bypass = True`` switches a layer back to the float forward pass (for ablations).
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantizers import OPERANDS, QUANTIZERS, is_no_quantization, parse_config

# Where each operand's quantiser shows up in a node's metadata (``common["args"][...]``).
OPERAND_ARGS = {"data_in": "data_in_0", "weight": "weight", "bias": "bias"}


class QuantizedMixin:
    """Holds the config and the three quantisers; ``forward`` lives in the layer classes."""

    format: str | None = None  # set on the per-format classes, e.g. "integer"
    operands: tuple = OPERANDS  # what this layer quantises (a ReLU: only its input)

    def set_quantization(self, config: dict, where: str | None = None):
        """(Re)build the quantisers from a config such as ``{"name": "integer", ...}``."""
        where = where or type(self).__name__
        config = dict(config)
        if self.format is not None:
            config.setdefault("name", self.format)
            if config["name"] != self.format:
                raise ValueError(f"{where}: a {type(self).__name__} takes {self.format!r} configs, "
                                 f"got name {config['name']!r}")
        if is_no_quantization(config):
            raise ValueError(f"{where}: config {config!r} means 'no quantisation'; "
                             f"keep the float layer instead")
        quantizers = parse_config(config, self.operands, where)
        self.config = config
        self.bypass = False
        self.x_quantizer = quantizers["data_in"]
        self.w_quantizer = quantizers.get("weight")
        self.b_quantizer = quantizers.get("bias")

    def quantizers(self) -> dict:
        """``{"data_in": ..., "weight": ..., "bias": ...}`` for the operands this layer has."""
        out = {"data_in": self.x_quantizer, "weight": self.w_quantizer, "bias": self.b_quantizer}
        return {k: v for k, v in out.items() if k in self.operands and v is not None}

    def arg_metadata(self) -> dict:
        """What the node metadata should say about this layer's inputs, by argument name:
        ``{"data_in_0": {"type": "integer", "precision": [8, 4]}, "weight": ..., "bias": ...}``.
        Empty while ``bypass`` is on (the layer then computes in float)."""
        if self.bypass:
            return {}
        return {OPERAND_ARGS[operand]: q.metadata() for operand, q in self.quantizers().items()}

    def _q(self, quantizer, t):
        return t if self.bypass or t is None else quantizer(t)

    @classmethod
    def from_float(cls, module: nn.Module, config: dict, where: str | None = None) -> nn.Module:
        """A quantised copy of the float ``module``: same hyper-parameters, weights, device,
        dtype and train/eval mode. ``cls`` may be generic (``QuantizedLinear``): the
        config's ``name`` then picks the per-format class."""
        if not isinstance(config, dict) or "name" not in config:
            raise ValueError(f"{where or cls.__name__}: config needs a 'name', got {config!r}")
        target = quantized_class(cls.float_class, config["name"]) if cls.format is None else cls
        if not isinstance(module, target.float_class):
            raise TypeError(f"{target.__name__}.from_float expects a {target.float_class.__name__}, "
                            f"got {type(module).__name__}")
        if not can_quantize(module):
            raise TypeError(f"{where or target.__name__}: {type(module).__name__} is a subclass of "
                            f"{target.float_class.__name__}, not {target.float_class.__name__} itself; "
                            f"{target.__name__} would replace its forward() with the plain "
                            f"{target.float_class.__name__}'s. Only exact {target.float_class.__name__} "
                            "layers (or already quantised ones) can be converted")
        new = target.__new__(target)
        nn.Module.__init__(new)
        # copy the float layer's state: hyper-parameters, parameters, buffers, hooks, mode
        for key, value in module.__dict__.items():  # own containers (hooks, ...), shared tensors
            new.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set, list)) else value
        new.set_quantization(config, where)
        return new


class QuantizedLinear(QuantizedMixin, nn.Linear):
    float_class = nn.Linear

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, config=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.set_quantization(config or {})

    def forward(self, x):
        return F.linear(self._q(self.x_quantizer, x), self._q(self.w_quantizer, self.weight),
                        self._q(self.b_quantizer, self.bias))


class QuantizedReLU(QuantizedMixin, nn.ReLU):
    """ReLU of the quantised input (MASE's ReLUInteger): only ``data_in_*`` keys apply.

    As in MASE, a fixed-point input is quantised as *unsigned* (``is_signed=False``): the
    ReLU zeroes negatives anyway, so all ``width`` bits go to the magnitude and 8-bit/frac 4
    holds 0 .. 15.9375. ``data_in_is_signed: true`` in the config asks for the signed range.

    ``inplace=True`` is kept from the float layer (its repr, ``ReLUInteger(inplace=True)``,
    is what the lab report prints), but what it overwrites changes: the quantiser returns
    a new tensor, and the ReLU runs in place on *that*. The caller's ``x`` is left as it
    was, where a float ``ReLU(inplace=True)`` would have clipped it (and a bypassed layer
    still does).
    """

    float_class = nn.ReLU
    operands = ("data_in",)

    def __init__(self, inplace: bool = False, config=None):
        super().__init__(inplace)
        self.set_quantization(config or {})

    def set_quantization(self, config: dict, where: str | None = None):
        super().set_quantization(config, where)
        q = self.x_quantizer
        if "is_signed" in type(q).params and "data_in_is_signed" not in config:
            q.is_signed = False  # MASE's ReLUInteger: negatives become 0 anyway, keep the top bit
            q.check()

    def forward(self, x):
        return F.relu(self._q(self.x_quantizer, x), inplace=self.inplace)


class QuantizedBatchNorm1d(QuantizedMixin, nn.BatchNorm1d):
    """BatchNorm1d with quantised input, scale (``weight``, gamma) and shift (``bias``, beta).
    The running statistics stay in float."""

    float_class = nn.BatchNorm1d

    def __init__(self, *args, config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_quantization(config or {})

    def forward(self, x):
        self._check_input_dim(x)
        # nn.BatchNorm's bookkeeping: count batches, and pick batch or running statistics
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return F.batch_norm(
            self._q(self.x_quantizer, x),
            self.running_mean if keep_running else None,
            self.running_var if keep_running else None,
            self._q(self.w_quantizer, self.weight), self._q(self.b_quantizer, self.bias),
            use_batch_stats, factor, self.eps)


class _QuantizedConv(QuantizedMixin):
    """Shared by the convolutions: convolve the quantised input with quantised weights and bias."""

    def __init__(self, *args, config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_quantization(config or {})

    def forward(self, x):
        return self._conv_forward(self._q(self.x_quantizer, x), self._q(self.w_quantizer, self.weight),
                                  self._q(self.b_quantizer, self.bias))


class QuantizedConv1d(_QuantizedConv, nn.Conv1d):
    float_class = nn.Conv1d


class QuantizedConv2d(_QuantizedConv, nn.Conv2d):
    float_class = nn.Conv2d


class _QuantizedFunction(QuantizedMixin, nn.Module):
    """A functional op of two tensors (``x + y``, ``x @ w``) as a layer that quantises them.

    MASE quantises these nodes too (its QUANTIZEABLE_OP). add/mul/sub quantise both inputs
    with the ``data_in_*`` keys; matmul/bmm quantise the first with ``data_in_*`` and the
    second with ``weight_*``, as MASE's matmul does. A Python number operand (``x * 2``) is
    left as it is. There is no float layer behind it (``float_class`` is None).
    """

    float_class = None
    function = None  # the torch function computed

    def __init__(self, config=None):
        super().__init__()
        self.set_quantization(config or {})

    def _second(self):
        return self.w_quantizer if "weight" in self.operands else self.x_quantizer

    def forward(self, a, b):
        qa = self._q(self.x_quantizer, a) if isinstance(a, torch.Tensor) else a
        qb = self._q(self._second(), b) if isinstance(b, torch.Tensor) else b
        return type(self).function(qa, qb)

    def arg_metadata(self) -> dict:
        if self.bypass:
            return {}
        return {"data_in_0": self.x_quantizer.metadata(), "data_in_1": self._second().metadata()}

    def extra_repr(self) -> str:
        return ""


class QuantizedAdd(_QuantizedFunction):
    operands = ("data_in",)
    function = staticmethod(torch.add)


class QuantizedMul(_QuantizedFunction):
    operands = ("data_in",)
    function = staticmethod(torch.mul)


class QuantizedSub(_QuantizedFunction):
    operands = ("data_in",)
    function = staticmethod(torch.sub)


class QuantizedMatmul(_QuantizedFunction):
    operands = ("data_in", "weight")
    function = staticmethod(torch.matmul)


class QuantizedBmm(_QuantizedFunction):
    operands = ("data_in", "weight")
    function = staticmethod(torch.bmm)


# The MASE op each generic class quantises.
QUANTIZED_OPS = {
    "linear": QuantizedLinear,
    "relu": QuantizedReLU,
    "batch_norm1d": QuantizedBatchNorm1d,
    "conv1d": QuantizedConv1d,
    "conv2d": QuantizedConv2d,
    "add": QuantizedAdd,
    "mul": QuantizedMul,
    "sub": QuantizedSub,
    "matmul": QuantizedMatmul,
    "bmm": QuantizedBmm,
}
# the ops that are functions, not layers: the transform turns their nodes into calls of a new layer
FUNCTIONAL_OPS = ("add", "mul", "sub", "matmul", "bmm")

_FORMAT_NAMES = {"integer": "Integer", "minifloat": "Minifloat", "log": "Log", "binary": "Binary",
                 "minifloat_ieee": "MinifloatIEEE", "block_fp": "BlockFP"}  # MASE's spellings


def format_class_suffix(fmt: str) -> str:
    """"integer" -> "Integer", "block_fp" -> "BlockFp"."""
    return _FORMAT_NAMES.get(fmt) or "".join(p.capitalize() for p in fmt.replace("-", "_").split("_"))


def can_quantize(module: nn.Module) -> bool:
    """True for a layer the transform may swap: exactly a float class with a quantised twin
    (``nn.Linear``, ``nn.ReLU``, ...), or a quantised layer that keeps the generic forward.

    A subclass with behaviour of its own (``class MyLinear(nn.Linear)`` with another
    ``forward``) is False: its quantised twin would run ``nn.Linear``'s forward instead.
    """
    cls = type(module)
    for generic in QUANTIZED_OPS.values():
        if generic.float_class is not None and cls is generic.float_class:
            return True
        if issubclass(cls, generic):
            return cls.forward is generic.forward
    return False


def quantized_class(float_class_or_op, fmt: str) -> type:
    """The quantised layer class for a float layer (class or MASE op name) and a format:
    ``quantized_class(nn.Linear, "integer") is LinearInteger``. Classes are made once and
    live in this module (so they pickle), also for formats registered after import."""
    if isinstance(float_class_or_op, str):
        if float_class_or_op not in QUANTIZED_OPS:
            raise ValueError(f"op {float_class_or_op!r} cannot be quantised; quantisable ops: "
                             f"{', '.join(QUANTIZED_OPS)}")
        generic = QUANTIZED_OPS[float_class_or_op]
    else:
        layers = [g for g in QUANTIZED_OPS.values() if g.float_class is not None]
        matches = [g for g in layers
                   if isinstance(float_class_or_op, type) and issubclass(float_class_or_op, g.float_class)]
        if not matches:
            raise ValueError(f"no quantised version of {getattr(float_class_or_op, '__name__', float_class_or_op)}; "
                             f"quantisable layers: {', '.join(g.float_class.__name__ for g in layers)}")
        generic = matches[0]
    if fmt not in QUANTIZERS:
        raise ValueError(QUANTIZERS.unknown_message(fmt))
    base = generic.__name__[len("Quantized"):]  # Linear, ReLU, ..., Add, Matmul
    name = base + format_class_suffix(fmt)
    module = sys.modules[__name__]
    cls = getattr(module, name, None)
    if cls is None or getattr(cls, "format", None) != fmt:
        cls = type(name, (generic,), {"format": fmt, "__module__": __name__,
                                      "__doc__": f"{base} with {fmt} quantisation."})
        setattr(module, name, cls)
    return cls


def quantize_module(module: nn.Module, config: dict, where: str | None = None) -> nn.Module:
    """A quantised twin of a float layer (``nn.Linear`` -> ``LinearInteger`` ...).

    The twin *shares* the layer's parameters and buffers (no copy is made: the transform
    pass deep-copies the whole model first); ``deepcopy`` the layer for an independent one.
    """
    where = where or f"quantize_module({type(module).__name__})"
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"{where}: config must be a dict with a 'name', got {config!r}")
    return quantized_class(type(module), config["name"]).from_float(module, config, where)


# Make the classes for the built-in formats, so `from labkit.quantize.modules import LinearInteger` works.
for _fmt in QUANTIZERS.names():
    for _op in QUANTIZED_OPS:
        quantized_class(_op, _fmt)

LinearInteger = quantized_class("linear", "integer")
ReLUInteger = quantized_class("relu", "integer")
BatchNorm1dInteger = quantized_class("batch_norm1d", "integer")
Conv1dInteger = quantized_class("conv1d", "integer")
Conv2dInteger = quantized_class("conv2d", "integer")
LinearMinifloat = quantized_class("linear", "minifloat")
ReLUMinifloat = quantized_class("relu", "minifloat")
BatchNorm1dMinifloat = quantized_class("batch_norm1d", "minifloat")
Conv1dMinifloat = quantized_class("conv1d", "minifloat")
Conv2dMinifloat = quantized_class("conv2d", "minifloat")
