"""Number formats: functions that round a float tensor onto a small grid of values.

A quantiser maps float32 values onto the values a narrow number format can hold, and
hands back float32 again ("fake quantisation"): the rest of the network runs unchanged,
but only sees values the hardware could represent.

    q = IntegerQuantizer(width=2, frac_width=2)      # 2-bit fixed point, step 1/4
    q(torch.tensor([0.1840, -0.5085, 0.3600]))       # -> [0.25, -0.50, 0.25]

Every format is one class registered with ``@register_quantizer("name")``. The class says
which config keys it takes (``params``), how to round (``quantize``), the range it can hold
(``limits``, used for the gradient) and what it reports to the graph metadata (``type``
and ``precision``, where ``precision[0]`` is always the total bit width).

Gradients: rounding has zero gradient almost everywhere, so training through it needs a
straight-through estimator (STE). We use the *clipped* STE: the backward pass treats the
quantiser as the identity for inputs inside the representable range and as a constant
(gradient 0) outside it, exactly like ``clamp``. Inside the forward pass the value is
exactly the quantised one (the STE is written as ``q - (xc.detach() - xc)``, which adds
an exact zero, so even the sign of ``-0.0`` survives).
"""

from __future__ import annotations

import math

import torch

from ..checks import boolean
from ..registry import Registry

QUANTIZERS = Registry("quantiser")

# A config "name" that means "leave this node as it is" (MASE uses None, and "NA" in TOML).
NO_QUANTIZATION = (None, "NA", "na", "none", "None")

# The tensors a quantised op may quantise, as they are prefixed in configs:
# data_in_width, weight_width, bias_frac_width, ...
OPERANDS = ("data_in", "weight", "bias")

_REQUIRED = object()


def register_quantizer(name: str):
    """Decorator: register a :class:`Quantizer` subclass as the number format ``name``."""

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"register_quantizer({name!r}) expects a Quantizer subclass, got {cls!r}")
        cls.name = name
        QUANTIZERS.register(name, cls)
        return cls

    return add


def get_quantizer(name: str) -> type:
    """The quantiser class registered as ``name`` (ValueError listing the known ones)."""
    return QUANTIZERS.get(name)


class Quantizer:
    """Base class of the number formats. Subclasses set ``params``/``type`` and implement
    ``check``, ``quantize``, ``limits`` and ``precision``."""

    name = "?"  # set by @register_quantizer
    type = "?"  # the metadata "type" (MASE: "integer", "minifloat", ...)
    # config key (without the data_in_/weight_/bias_ prefix) -> default (_REQUIRED if none)
    params: dict = {}

    def __init__(self, **params):
        self._build(params, where=f"{self.name} quantiser", prefix="")

    @classmethod
    def from_config(cls, config: dict, operand: str, where: str = "config") -> "Quantizer":
        """Build from the ``{operand}_*`` keys of a node config (``weight_width`` -> width);
        errors name the full key and ``where``."""
        prefix = f"{operand}_"
        params = {k[len(prefix):]: v for k, v in config.items()
                  if k.startswith(prefix) and k[len(prefix):] in cls.params}
        q = cls.__new__(cls)
        q._build(params, where=where, prefix=prefix)
        return q

    def _build(self, params: dict, where: str, prefix: str):
        self._where, self._prefix = where, prefix
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ValueError(f"{where}: unknown parameter {prefix}{unknown[0]!r}; "
                             f"allowed: {', '.join(prefix + k for k in self.params)}")
        for key, default in self.params.items():
            if key not in params and default is _REQUIRED:
                raise ValueError(f"{where}: missing key {prefix + key!r} for the {self.name!r} quantiser")
            setattr(self, key, params.get(key, default))
        self.check()

    def _int_param(self, key: str, lo: int, hi: int) -> int:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{self._where}: {self._prefix + key} must be an integer in "
                             f"[{lo}, {hi}], got {value!r}")
        return value

    # --- what a format implements -------------------------------------------------------
    def check(self):
        """Raise ValueError if the parameters make no sense."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The forward values (no gradient handling needed here)."""
        raise NotImplementedError

    def limits(self) -> tuple[float, float]:
        """The smallest and largest representable values (the STE passes gradients between)."""
        raise NotImplementedError

    @property
    def precision(self) -> list:
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total bits per value."""
        return int(self.precision[0])

    def metadata(self) -> dict:
        return {"type": self.type, "precision": list(self.precision)}

    def config(self) -> dict:
        return {key: getattr(self, key) for key in self.params}

    def __call__(self, x):
        if x is None:
            return None
        q = self.quantize(x.detach())
        lo, hi = self.limits()
        xc = x.clamp(lo, hi)
        return q - (xc.detach() - xc)  # value q, gradient of clamp: the clipped STE

    def __eq__(self, other):
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------
# integer: signed fixed point
# ---------------------------------------------------------------------------------------


@register_quantizer("integer")
class IntegerQuantizer(Quantizer):
    """Signed fixed point with ``width`` bits, ``frac_width`` of them after the binary point.

    x -> clamp(round(x * 2^frac), -2^(width-1), 2^(width-1) - 1) / 2^frac

    Rounding is round-half-to-even (``torch.round``): 0.125 at frac 2 -> 0.0, 0.375 -> 0.5.
    ``frac_width`` may be negative (a step larger than 1) or above ``width`` (all values
    below 1/2 in magnitude); it must lie in [-32, 32].
    """

    type = "integer"
    params = {"width": _REQUIRED, "frac_width": _REQUIRED}

    def check(self):
        self._int_param("width", 1, 32)
        self._int_param("frac_width", -32, 32)

    def limits(self):
        step = 2.0 ** -self.frac_width
        return -(2 ** (self.width - 1)) * step, (2 ** (self.width - 1) - 1) * step

    def quantize(self, x):
        scale = 2.0 ** self.frac_width
        top = 2 ** (self.width - 1)
        return torch.clamp(torch.round(x * scale), -top, top - 1) / scale

    @property
    def precision(self):
        return [self.width, self.frac_width]


# ---------------------------------------------------------------------------------------
# minifloat: sign, exponent, mantissa, with subnormals
# ---------------------------------------------------------------------------------------


FLOAT32_MIN_EXPONENT = -149  # float32's smallest subnormal is 2^-149


def max_minifloat_bias(width: int, exponent_width: int) -> int:
    """The largest exponent bias whose finest step, 2^(1 - bias - mantissa), float32 can hold."""
    return 1 - FLOAT32_MIN_EXPONENT - (width - 1 - exponent_width)


@register_quantizer("minifloat")
class MinifloatQuantizer(Quantizer):
    """A small IEEE-style float: 1 sign bit, ``exponent_width`` exponent bits and
    ``width - 1 - exponent_width`` mantissa bits.

    The exponent bias defaults to IEEE's 2^(E-1) - 1. Exponent code 0 holds the subnormals
    (0, and steps of 2^(1 - bias - M) up to the smallest normal); every other code is a
    normal number, including the top one: no codes are spent on inf/NaN, and values
    beyond the largest finite number saturate to it. Rounding is to nearest, ties to even.

    E4M3 (width 8, exponent_width 4): bias 7, largest 2^8 * 1.875 = 480, smallest
    subnormal 2^-9.
    """

    type = "minifloat"
    params = {"width": _REQUIRED, "exponent_width": _REQUIRED, "exponent_bias": None}

    def check(self):
        self._int_param("width", 2, 32)
        self._int_param("exponent_width", 1, min(8, self.width - 1))
        # every exponent code is a normal number (no inf/NaN codes), so the largest value,
        # 2^(2^E - 1 - bias) * (2 - 2^-M), must stay a float32 number: bias >= 2^E - 128
        lowest = max(-126, 2 ** self.exponent_width - 128)
        if self.exponent_bias is None:  # IEEE's 2^(E-1) - 1, shifted up by one for E = 8
            self.exponent_bias = max(2 ** (self.exponent_width - 1) - 1, lowest)
        self._int_param("exponent_bias", lowest, max(126, max_minifloat_bias(self.width, self.exponent_width)))
        # the grid's finest step, 2^(1 - bias - M), must be a float32 number (else it is 0 and x / 0 = NaN)
        finest = 1 - self.exponent_bias - self.mantissa_width
        if finest < FLOAT32_MIN_EXPONENT:
            p = self._prefix
            raise ValueError(
                f"{self._where}: {p}width={self.width}, {p}exponent_width={self.exponent_width} and "
                f"{p}exponent_bias={self.exponent_bias} make the smallest step 2^{finest}, below float32's "
                f"smallest number 2^{FLOAT32_MIN_EXPONENT} (values are fake-quantised in float32); use "
                f"{p}exponent_bias <= {max_minifloat_bias(self.width, self.exponent_width)} "
                f"or fewer mantissa bits")

    @property
    def mantissa_width(self) -> int:
        return self.width - 1 - self.exponent_width

    def _exponent_range(self):
        e_min = 1 - self.exponent_bias  # the smallest normal exponent (subnormals share it)
        e_max = 2 ** self.exponent_width - 1 - self.exponent_bias
        return e_min, e_max

    def max_value(self) -> float:
        _, e_max = self._exponent_range()
        return 2.0 ** e_max * (2 - 2.0 ** -self.mantissa_width)

    def limits(self):
        return -self.max_value(), self.max_value()

    def quantize(self, x):
        e_min, e_max = self._exponent_range()
        m = self.mantissa_width
        a = x.abs()
        # frexp: a = f * 2^e with f in [0.5, 1), so floor(log2 a) = e - 1, exactly.
        _, e = torch.frexp(a)
        exponent = torch.clamp(e.to(x.dtype) - 1, e_min, e_max)  # below e_min: subnormal grid
        step = torch.exp2(exponent - m)
        q = torch.clamp(torch.round(a / step) * step, max=self.max_value())
        return torch.copysign(q, x)

    @property
    def precision(self):
        return [self.width, self.exponent_width, self.exponent_bias]


# ---------------------------------------------------------------------------------------
# log: powers of two (multiplication becomes a shift)
# ---------------------------------------------------------------------------------------


@register_quantizer("log")
class LogQuantizer(Quantizer):
    """Signed powers of two: 1 sign bit and a (``width`` - 1)-bit code.

    Code 0 is zero; codes c = 1 .. 2^(width-1) - 1 are 2^(c - exponent_bias). The bias
    defaults to 2^(width-2), which centres the exponents around 2^0 (width 4: 0, 2^-3 ..
    2^3). A magnitude rounds to the nearest power in the log domain (ties to even
    exponents), flushes to 0 below half the smallest power, and saturates at the largest.
    """

    type = "log"
    params = {"width": _REQUIRED, "exponent_bias": None}

    def check(self):
        self._int_param("width", 2, 9)
        if self.exponent_bias is None:
            self.exponent_bias = 2 ** (self.width - 2)
        self._int_param("exponent_bias", -120, 120)

    def _exponent_range(self):
        return 1 - self.exponent_bias, 2 ** (self.width - 1) - 1 - self.exponent_bias

    def limits(self):
        top = 2.0 ** self._exponent_range()[1]
        return -top, top

    def quantize(self, x):
        e_min, e_max = self._exponent_range()
        a = x.abs()
        exponent = torch.clamp(torch.round(torch.log2(a)), e_min, e_max)
        q = torch.where(a < 2.0 ** (e_min - 1), torch.zeros_like(a), torch.exp2(exponent))
        return torch.copysign(q, x)

    @property
    def precision(self):
        return [self.width, self.exponent_bias]


# ---------------------------------------------------------------------------------------
# binary: one bit, the sign
# ---------------------------------------------------------------------------------------


@register_quantizer("binary")
class BinaryQuantizer(Quantizer):
    """One bit: x -> +scale if x >= 0 else -scale (BinaryConnect). The STE passes gradients
    for |x| <= scale (the "hardtanh" STE of BinaryNet). Best for weights; after a ReLU every
    activation is >= 0 and becomes +scale."""

    type = "binary"
    params = {"scale": 1.0}

    def check(self):
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"{self._where}: {self._prefix}scale must be a positive number, "
                             f"got {self.scale!r}")
        self.scale = float(self.scale)

    def limits(self):
        return -self.scale, self.scale

    def quantize(self, x):
        return torch.where(x >= 0, self.scale, -self.scale).to(x.dtype)

    @property
    def precision(self):
        return [1]


# ---------------------------------------------------------------------------------------
# configs: {"name": "integer", "weight_width": 8, "weight_frac_width": 4, ...}
# ---------------------------------------------------------------------------------------


def is_no_quantization(config) -> bool:
    """True for a config that means "leave unchanged": None, name None/"NA", or bypass = true."""
    if config is None:
        return True
    if not isinstance(config, dict):
        return False
    if boolean("bypass", config.get("bypass", False)):  # "yes" or 1 is a mistake, not a truthy value
        return True
    return "name" in config and config["name"] in NO_QUANTIZATION


def config_keys(name: str) -> list[str]:
    """Every key a config of format ``name`` may hold."""
    cls = get_quantizer(name)
    return ["name", "bypass"] + [f"{op}_{key}" for op in OPERANDS for key in cls.params]


def parse_config(config: dict, operands=OPERANDS, where: str = "config") -> dict:
    """Validate a per-node config and build one quantiser per operand.

    Keys are checked against the format (a key the format never takes is an error); keys
    of operands this op does not have (``weight_*`` on a ReLU) are ignored, so one default
    config can serve every op. ``where`` names the node/op in error messages.
    Returns ``{"data_in": Quantizer, "weight": ..., "bias": ...}`` for ``operands``.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a quantisation config must be a dict, got {config!r}")
    name = config.get("name", _REQUIRED)
    if name is _REQUIRED:
        raise ValueError(f"{where}: config has no 'name'; give a format "
                         f"({', '.join(QUANTIZERS.names())}) or None/'NA' to leave it unchanged")
    if name in NO_QUANTIZATION:
        raise ValueError(f"{where}: config name {name!r} means 'no quantisation'; nothing to parse")
    if name not in QUANTIZERS:
        raise ValueError(f"{where}: {QUANTIZERS.unknown_message(name)}")
    allowed = config_keys(name)
    for key in config:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r} (value {config[key]!r}) for the {name!r} "
                             f"quantiser; allowed keys: {', '.join(allowed)}")
    cls = get_quantizer(name)
    return {op: cls.from_config(config, op, where) for op in operands}
