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
straight-through estimator (STE). By default we use MASE's: the backward pass treats the
quantiser as the identity everywhere (``"ste": "identity"``). A config may ask for the
*clipped* STE instead (``"ste": "clipped"``): identity inside the representable range and
gradient 0 outside it, exactly like ``clamp`` (formats without a fixed range, such as the
block formats, pass everything). Either way the forward value is exactly the quantised
one: the STE is written as ``q - (x.detach() - x)``, which adds an exact zero, so even the
sign of ``-0.0`` survives.
"""

from __future__ import annotations

import math

import torch

from ..checks import boolean, integer
from ..registry import Registry

QUANTIZERS = Registry("quantiser")

# A config "name" that means "leave this node as it is" (MASE uses None, and "NA" in TOML).
NO_QUANTIZATION = (None, "NA", "na", "none", "None")

# The tensors a quantised op may quantise, as they are prefixed in configs:
# data_in_width, weight_width, bias_frac_width, ...
OPERANDS = ("data_in", "weight", "bias")

_REQUIRED = object()

# straight-through estimators: "identity" passes every gradient (MASE), "clipped" only inside limits()
STE_MODES = ("identity", "clipped")

# float32, the dtype values are fake-quantised in: the exponents of its largest finite power of
# two and of its smallest (subnormal) number
FLOAT32_MAX_EXPONENT = 127
FLOAT32_MIN_EXPONENT = -149  # float32's smallest subnormal is 2^-149


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantiser's values, exactly (also for inf/NaN inputs). Backward: the
    upstream gradient, passed to ``x`` everywhere, or only where lo <= x <= hi (like clamp)."""

    @staticmethod
    def forward(ctx, x, quantizer, limits):
        ctx.mask = None if limits is None else (x >= limits[0]) & (x <= limits[1])
        return quantizer.quantize(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad if ctx.mask is None else grad * ctx.mask), None, None


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
    # config keys without a prefix that apply to every operand (MASE's "floor") -> default
    shared: dict = {}

    def __init__(self, ste: str = "identity", **params):
        self._build(params, where=f"{self.name} quantiser", prefix="", ste=ste)

    @classmethod
    def from_config(cls, config: dict, operand: str, where: str = "config") -> "Quantizer":
        """Build from the ``{operand}_*`` keys of a node config (``weight_width`` -> width),
        its shared keys (``floor``) and ``ste``; errors name the full key and ``where``."""
        prefix = f"{operand}_"
        params = {k[len(prefix):]: v for k, v in config.items()
                  if k.startswith(prefix) and k[len(prefix):] in cls.params}
        params.update({k: config[k] for k in cls.shared if k in config})
        q = cls.__new__(cls)
        q._build(params, where=where, prefix=prefix, ste=config.get("ste", "identity"))
        return q

    def _build(self, params: dict, where: str, prefix: str, ste: str = "identity"):
        self._where, self._prefix = where, prefix
        allowed = {**self.params, **self.shared}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown parameter {prefix}{unknown[0]!r}; "
                             f"allowed: {', '.join([prefix + k for k in self.params] + list(self.shared))}")
        if ste not in STE_MODES:
            raise ValueError(f"{where}: ste must be one of {', '.join(map(repr, STE_MODES))} "
                             f"(the straight-through gradient), got {ste!r}")
        self.ste = ste
        for key, default in allowed.items():
            if key not in params and default is _REQUIRED:
                raise ValueError(f"{where}: missing key {prefix + key!r} for the {self.name!r} quantiser")
            setattr(self, key, params.get(key, default))
        self.check()

    def _key(self, key: str) -> str:
        """A parameter's config key as the user wrote it: ``weight_width``, or ``floor`` (shared)."""
        return key if key in self.shared else self._prefix + key

    def _int_param(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        return integer(f"{self._where}: {self._key(key)}", getattr(self, key), lo, hi)

    def _exponent_bias_param(self, default: int) -> int:
        """``exponent_bias``: MASE's configs write "none" (or None) for "the format's default"."""
        if self.exponent_bias in (None, "none", "None"):
            self.exponent_bias = default
        return self._int_param("exponent_bias")

    def _bool_param(self, key: str) -> bool:
        return boolean(f"{self._where}: {self._key(key)}", getattr(self, key))

    def _float32_error(self, what: str, exponent: int, fix: str):
        """Values are fake-quantised in float32: a format reaching past it is an error, not a cap."""
        keys = ", ".join(f"{self._key(k)}={getattr(self, k)!r}" for k in self.params if getattr(self, k, None) is not None)
        raise ValueError(f"{self._where}: {keys} make {what} 2^{exponent}, outside float32 (2^-149 .. 2^127, "
                         f"the dtype values are fake-quantised in); {fix}")

    # --- what a format implements -------------------------------------------------------
    def check(self):
        """Raise ValueError if the parameters make no sense."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The forward values (no gradient handling needed here)."""
        raise NotImplementedError

    def limits(self) -> tuple[float, float] | None:
        """The smallest and largest representable values (the clipped STE passes gradients
        between them), or None for a format without a fixed range (block formats)."""
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
        out = {key: getattr(self, key) for key in self.params}
        out.update({key: getattr(self, key) for key in self.shared if getattr(self, key) != self.shared[key]})
        if self.ste != "identity":
            out["ste"] = self.ste
        return out

    def __call__(self, x):
        if x is None:
            return None
        if not x.requires_grad:
            return self.quantize(x.detach())
        return _StraightThrough.apply(x, self, self.limits() if self.ste == "clipped" else None)

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
    """Fixed point with ``width`` bits, ``frac_width`` of them after the binary point.

    Signed (default): x -> clamp(round(x * 2^frac), -2^(width-1), 2^(width-1) - 1) / 2^frac.
    ``is_signed=False`` (MASE's ReLUInteger input): the integer range is 0 .. 2^width - 1,
    so 8-bit/frac 4 holds 0 .. 15.9375. Rounding is round-half-to-even (``torch.round``:
    0.125 at frac 2 -> 0.0, 0.375 -> 0.5); ``floor=True`` (a config key without prefix, as
    in MASE) rounds down instead. ``frac_width`` may be negative (a step larger than 1) or
    above ``width`` (all values below 1/2 in magnitude); the only limit is float32's range.
    """

    type = "integer"
    params = {"width": _REQUIRED, "frac_width": _REQUIRED, "is_signed": True}
    shared = {"floor": False}

    def check(self):
        self._int_param("width", 1)
        self._int_param("frac_width")
        self._bool_param("is_signed")
        self._bool_param("floor")
        # the scale 2^frac and the step 2^-frac are float32 numbers, and so is the largest value
        if not -FLOAT32_MAX_EXPONENT <= self.frac_width <= FLOAT32_MAX_EXPONENT:
            self._float32_error("the scale", self.frac_width, "use a frac_width in [-127, 127]")
        top = self.width - (1 if self.is_signed else 0) - self.frac_width
        if top > FLOAT32_MAX_EXPONENT:
            self._float32_error("the largest value about", top, "use fewer integer bits (width - frac_width)")

    def _int_range(self):
        if self.is_signed:
            return -(2.0 ** (self.width - 1)), 2.0 ** (self.width - 1) - 1
        return 0.0, 2.0 ** self.width - 1

    def limits(self):
        step = 2.0 ** -self.frac_width
        lo, hi = self._int_range()
        return lo * step, hi * step

    def quantize(self, x):
        scale = 2.0 ** self.frac_width
        lo, hi = self._int_range()
        rounded = torch.floor(x * scale) if self.floor else torch.round(x * scale)
        return torch.clamp(rounded, lo, hi) / scale

    @property
    def precision(self):
        return [self.width, self.frac_width]

    def config(self):
        out = super().config()
        if self.is_signed:  # the default: keep configs (and reprs) as short as MASE's
            out.pop("is_signed")
        return out


@register_quantizer("fixed")
class FixedQuantizer(IntegerQuantizer):
    """MASE's other name for ``integer``: the same fixed point (metadata type "fixed")."""

    type = "fixed"


# ---------------------------------------------------------------------------------------
# minifloat: sign, exponent, mantissa, with subnormals
# ---------------------------------------------------------------------------------------




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
        self._int_param("width", 2)
        self._int_param("exponent_width", 1, min(8, self.width - 1))  # 9+ bits: past float32's exponents
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


@register_quantizer("minifloat_ieee")
class MinifloatIEEEQuantizer(MinifloatQuantizer):
    """MASE's name for ``minifloat`` (implicit leading bit, subnormals at exponent code 0).
    Values just below a power of two round up to it here; MASE's rounds them down (see
    docs/differences_from_mase.md)."""

    type = "minifloat_ieee"


# ---------------------------------------------------------------------------------------
# log: powers of two (multiplication becomes a shift)
# ---------------------------------------------------------------------------------------


def log_round(x: torch.Tensor, e_min, e_max) -> torch.Tensor:
    """x to the signed power of two nearest in the log domain (ties to even exponents),
    exponents clamped to [e_min, e_max] (numbers, or tensors broadcasting with x). There
    is no zero: 0 (and -0.0) becomes +2^e_min, as in MASE."""
    a = x.abs().double()
    exponent = torch.round(torch.log2(a))  # log2(0) = -inf: clamped to e_min below
    exponent = torch.minimum(torch.maximum(exponent, torch.as_tensor(e_min, dtype=a.dtype)),
                             torch.as_tensor(e_max, dtype=a.dtype))
    sign = torch.where(torch.signbit(x) & (x != 0), -1.0, 1.0).double()
    return (sign * torch.exp2(exponent)).to(x.dtype)


@register_quantizer("log")
class LogQuantizer(Quantizer):
    """Signed powers of two, MASE's ``log``: 1 sign bit and a (``width`` - 1)-bit exponent code.

    Code c = 0 .. 2^(width-1) - 1 is 2^(c - exponent_bias); the bias defaults to
    2^(width-2) - 1 (width 4: 2^-3 .. 2^4). There is no zero: a magnitude rounds to the
    nearest power in the log domain (ties to even exponents) and clamps to the range, so 0
    becomes +2^-bias, as in MASE. MASE adds 0.1 * 2^-bias to |x| before the log (so values
    within that of a rounding boundary round up) and gives a tiny negative x > -0.1 * 2^-bias
    the sign +; labkit rounds |x| itself and keeps the sign. The only limit on width and
    bias is float32's range.
    """

    type = "log"
    params = {"width": _REQUIRED, "exponent_bias": None}

    def check(self):
        self._int_param("width", 2)
        self._exponent_bias_param(2 ** (self.width - 2) - 1)
        e_min, e_max = self._exponent_range()
        if e_max > FLOAT32_MAX_EXPONENT:
            self._float32_error("the largest power", e_max, "use a larger exponent_bias or a smaller width")
        if e_min < FLOAT32_MIN_EXPONENT:
            self._float32_error("the smallest power", e_min, "use a smaller exponent_bias")

    def _exponent_range(self):
        return -self.exponent_bias, 2 ** (self.width - 1) - 1 - self.exponent_bias

    def limits(self):
        e_min, e_max = self._exponent_range()
        return -(2.0 ** e_max), 2.0 ** e_max

    def quantize(self, x):
        return log_round(x, *self._exponent_range())

    @property
    def precision(self):
        return [self.width, self.exponent_bias]


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
    return (["name", "bypass", "ste"] + list(cls.shared)
            + [f"{op}_{key}" for op in OPERANDS for key in cls.params])


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
