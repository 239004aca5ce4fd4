"""MASE's other number formats, with MASE's config keys: minifloat_denorm, ternary, binary
(stochastic, bipolar, residual), block_fp, block_minifloat and block_log.

    {"name": "block_fp", "weight_width": 8, "weight_exponent_width": 8,
     "weight_exponent_bias": None, "weight_block_size": [16], ...}

Each is a :class:`~labkit.quantize.quantizers.Quantizer` registered under MASE's name, so
the layers (``LinearBlockFP``, ``ReLUTernary``, ...) and the transform pass take them like
``integer``. Where MASE's code does something its own docstring says it should not (a
shared bias pointing the wrong way, statistics that are computed and then ignored), the
class docstring says what labkit does instead; docs/differences_from_mase.md lists them.

Block formats share one exponent (or bias) per block of values. ``block_size`` is aligned
with the tensor's last dims (``[16]`` on a ``[out, in]`` weight: blocks of all rows x 16
columns, as MASE); a missing or -1 entry spans the whole dim. ``skip_first_dim`` (default
true for ``data_in``, as MASE's ``data_in_skip_first_dim``) keeps every sample of a batch in
blocks of its own. Tensors are padded with zeros to whole blocks, which never changes a
block's largest magnitude. Block arithmetic runs in float64 and returns the input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..checks import finite_number, positive_float
from .quantizers import _REQUIRED, FLOAT32_MAX_EXPONENT, FLOAT32_MIN_EXPONENT, Quantizer, log_round, register_quantizer

# float64, where the block formats compute: its largest finite power of two and smallest step
FLOAT64_MAX_EXPONENT, FLOAT64_MIN_EXPONENT = 1023, -1074


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, rest]: one row per item of dim 0 (a 0/1-d tensor is one row)."""
    return x.reshape(1, -1) if x.dim() <= 1 else x.reshape(x.shape[0], -1)


# --- minifloat without the implicit bit -----------------------------------------------------------

@register_quantizer("minifloat_denorm")
class MinifloatDenormQuantizer(Quantizer):
    """A float whose mantissa has no implicit leading 1: every value is k * 2^(e - M) with
    k in 0 .. 2^M - 1 (M = width - 1 - exponent_width) and e in [-bias, 2^E - 1 - bias],
    bias defaulting to 2^(E-1) - 1 (MASE's ``minifloat_denorm``).

    Values round to the nearest representable number and saturate at the largest,
    (2^M - 1) * 2^(e_max - M). MASE picks e = ceil(log2|x|) and clamps the mantissa, so a
    value at or just below a power of two saturates within its exponent: E4M3 rounds 4.0 to
    3.5 and 1.9 to 1.75; here they stay 4.0 and become 2.0, the nearest values the format has.
    """

    type = "minifloat_denorm"
    params = {"width": _REQUIRED, "exponent_width": _REQUIRED, "exponent_bias": None}

    def check(self):
        self._int_param("width", 2)
        self._int_param("exponent_width", 1, self.width - 1)
        self._exponent_bias_param(2 ** (self.exponent_width - 1) - 1)
        e_min, e_max = self._exponent_range()
        if e_max > FLOAT32_MAX_EXPONENT:
            self._float32_error("the largest exponent", e_max, "use a larger exponent_bias or fewer exponent bits")
        if e_min - self.mantissa_width < FLOAT32_MIN_EXPONENT:
            self._float32_error("the smallest step", e_min - self.mantissa_width, "use a smaller exponent_bias")

    @property
    def mantissa_width(self) -> int:
        return self.width - 1 - self.exponent_width

    def _exponent_range(self):
        return -self.exponent_bias, 2 ** self.exponent_width - 1 - self.exponent_bias

    def max_value(self) -> float:
        m = self.mantissa_width
        return (2 ** m - 1) * 2.0 ** (self._exponent_range()[1] - m)

    def limits(self):
        return -self.max_value(), self.max_value()

    def quantize(self, x):
        e_min, e_max = self._exponent_range()
        m = self.mantissa_width
        a = x.abs().double()
        # the finest exponent whose grid k * 2^(e - M), k < 2^M, holds |x| without rounding up to
        # 2^M: |x| < 2^e (1 - 2^-(M+1)). frexp gives 2^(p-1) <= |x| < 2^p, so e is p or p + 1.
        _, p = torch.frexp(a)
        p = p.double()
        e = torch.where(a < torch.exp2(p) * (1 - 2.0 ** -(m + 1)), p, p + 1)
        step = torch.exp2(torch.clamp(e, e_min, e_max) - m)
        q = torch.clamp(torch.round(a / step), 0, 2 ** m - 1) * step
        return torch.copysign(q.to(x.dtype), x)

    @property
    def precision(self):
        return [self.width, self.exponent_width, self.exponent_bias]


# --- ternary ---------------------------------------------------------------------------------------

@register_quantizer("ternary")
class TernaryQuantizer(Quantizer):
    """Three levels: +1, 0, -1 (or +alpha, 0, -alpha with ``scaling_factor``), MASE's ``ternary``.

    A value becomes +1 above a threshold delta, -1 below -delta and 0 in between. delta is
    what MASE's ternary_quantizer computes from the profiled statistics in the config:
    0.75 * ``mean`` (mean |x|), else 0.05 * ``max``, else 0.75 * ``median``; with none of
    them, 0.75 * mean |x| of each row of the tensor itself (each item of dim 0), which is
    what MASE's forward pass always uses (it computes the statistics-based threshold and
    then ignores it). ``scaling_factor``: alpha = mean |x| of the row's values above delta
    (0 for a row with none, where MASE divides 0 by 0).
    """

    type = "ternary"
    params = {"width": 2, "scaling_factor": False, "mean": None, "median": None, "max": None}

    def check(self):
        self._int_param("width", 2)
        self._bool_param("scaling_factor")
        for key in ("mean", "median", "max"):
            if getattr(self, key) is not None:
                finite_number(f"{self._where}: {self._key(key)} (a profiled statistic, or None)", getattr(self, key))

    def _threshold(self, x):
        if self.mean is not None:  # MASE's order: mean, then max, then median
            return torch.full((_rows(x).shape[0], 1), 0.75 * abs(self.mean), dtype=x.dtype, device=x.device)
        if self.max is not None:
            return torch.full((_rows(x).shape[0], 1), 0.05 * abs(self.max), dtype=x.dtype, device=x.device)
        if self.median is not None:
            return torch.full((_rows(x).shape[0], 1), 0.75 * abs(self.median), dtype=x.dtype, device=x.device)
        return 0.75 * _rows(x).abs().mean(1, keepdim=True)

    def limits(self):
        return None if self.scaling_factor else (-1.0, 1.0)

    def quantize(self, x):
        rows = _rows(x)
        delta = self._threshold(x)
        q = (rows > delta).to(x.dtype) - (rows < -delta).to(x.dtype)
        if self.scaling_factor:
            above = rows.abs() > delta
            alpha = (rows.abs() * above).sum(1, keepdim=True) / above.sum(1, keepdim=True).clamp(min=1)
            q = q * alpha
        return q.reshape(x.shape)

    @property
    def precision(self):
        return [self.width, self.scaling_factor, self.mean, self.median, self.max]


# --- binary ----------------------------------------------------------------------------------------

def _binarise(x, stochastic: bool, bipolar: bool, scale: float):
    """+-scale (bipolar) or {0, alpha} with alpha = mean |x| of the row; stochastic: with
    probability clamp((x + 1) / 2, 0, 1) the upper level."""
    if stochastic:
        upper = torch.clamp((x + 1) / 2, 0, 1) >= torch.rand_like(x)
    else:
        upper = x >= 0 if bipolar else x > 0
    if bipolar:
        return torch.where(upper, scale, -scale).to(x.dtype)
    alpha = _rows(x).abs().mean(1, keepdim=True)
    return (_rows(upper).to(x.dtype) * alpha).reshape(x.shape)


@register_quantizer("binary")
class BinaryQuantizer(Quantizer):
    """One bit, MASE's ``binary`` keys: ``width`` (1), ``stochastic``, ``bipolar``.

    ``bipolar`` (default): x -> +scale if x >= 0 else -scale (BinaryConnect; ``scale`` is
    labkit's, default 1). Not bipolar: x -> alpha if x > 0 else 0, alpha the mean |x| of
    the row (each item of dim 0), as MASE's zero-scaled binariser (which only works on 4-d
    tensors there). ``stochastic``: the upper level with probability clamp((x + 1)/2, 0, 1)
    (MASE draws it for bipolar only and ignores the draw otherwise). The shared key
    ``binary_training: false`` skips binarisation and only clips to [-1, 1], as MASE's
    scaled binary layer does when not training binary. The clipped STE keeps gradients for
    |x| <= scale (the "hardtanh" STE of BinaryNet). After a ReLU every activation is >= 0
    and becomes +scale.
    """

    type = "binary"
    params = {"width": 1, "stochastic": False, "bipolar": True, "scale": 1.0}
    shared = {"binary_training": True}

    def check(self):
        self._int_param("width", 1)
        self._bool_param("stochastic")
        self._bool_param("bipolar")
        self._bool_param("binary_training")
        self.scale = positive_float(f"{self._where}: {self._prefix}scale", self.scale)

    def limits(self):
        return -self.scale, self.scale

    def quantize(self, x):
        if not self.binary_training:
            return torch.clamp(x, -1.0, 1.0)
        return _binarise(x, self.stochastic, self.bipolar, self.scale)

    @property
    def precision(self):
        return [self.width, self.stochastic, self.bipolar]

    def config(self):
        out = super().config()
        if out.get("scale") == 1.0:
            out.pop("scale")
        return out


@register_quantizer("binary_residual")
class BinaryResidualQuantizer(BinaryQuantizer):
    """Residual binarisation (MASE's ``binary_residual`` keys): with ``residual_sign`` the
    value is approximated by ``levels`` (1-3) binary terms, each gamma_l * sign(r_l) with
    gamma_l = mean |r_l| of the row and r_{l+1} = r_l - gamma_l * sign(r_l) (ReBNet's scheme
    with data-driven gammas). MASE's linear layer for this format raises NotImplementedError
    and its residual quantiser stacks the levels instead of summing them."""

    type = "binary_residual"
    params = {**BinaryQuantizer.params, "residual_sign": False, "levels": 1}

    def check(self):
        super().check()
        self._bool_param("residual_sign")
        self._int_param("levels", 1, 3)

    def limits(self):
        return None if self.residual_sign else super().limits()

    def quantize(self, x):
        if not (self.residual_sign and self.binary_training):
            return super().quantize(x)
        rest, out = _rows(x), torch.zeros_like(_rows(x))
        for _ in range(self.levels):
            term = rest.abs().mean(1, keepdim=True) * torch.where(rest >= 0, 1.0, -1.0).to(x.dtype)
            out, rest = out + term, rest - term
        return out.reshape(x.shape)


# --- block formats ---------------------------------------------------------------------------------

def block_max(a: torch.Tensor, block_size, skip_first_dim: bool) -> torch.Tensor:
    """For every element of ``a`` (>= 0), the largest value of its block (same shape as ``a``)."""
    if a.dim() == 0:
        return a
    shape = list(a.shape)
    sizes = list(block_size)[-len(shape):] if len(block_size) >= len(shape) \
        else [-1] * (len(shape) - len(block_size)) + list(block_size)
    sizes = [s if b == -1 or b > s else b for b, s in zip(sizes, shape)]
    if skip_first_dim and len(shape) > 1:
        sizes[0] = 1
    counts = [math.ceil(s / b) if b else 1 for s, b in zip(shape, sizes)]
    pad = []
    for s, b, n in reversed(list(zip(shape, sizes, counts))):
        pad += [0, n * b - s]  # zeros at the end of each dim: they never raise a block's max
    padded = F.pad(a, pad) if any(pad) else a
    view = padded.reshape([v for n, b in zip(counts, sizes) for v in (n, b)])
    top = view.amax(dim=tuple(range(1, 2 * len(shape), 2)), keepdim=True).expand_as(view)
    full = top.reshape(padded.shape)
    return full[tuple(slice(0, s) for s in shape)]


class _BlockQuantizer(Quantizer):
    """Shared by the block formats: ``block_size`` and ``skip_first_dim``."""

    block_params = {"block_size": [16], "skip_first_dim": None}

    @classmethod
    def from_config(cls, config, operand, where="config"):
        q = super().from_config(config, operand, where)
        if q.skip_first_dim is None:  # MASE: data_in blocks per sample, weights and biases do not
            q.skip_first_dim = operand == "data_in"
        return q

    def _check_blocks(self):
        b = self.block_size
        if isinstance(b, int) and not isinstance(b, bool):
            b = [b]
        if not isinstance(b, (list, tuple)) or not b or \
                not all(isinstance(v, int) and not isinstance(v, bool) and (v > 0 or v == -1) for v in b):
            raise ValueError(f"{self._where}: {self._key('block_size')} must be a positive int or a list of "
                             f"positive ints (-1: the whole dim), got {self.block_size!r}")
        self.block_size = list(b)
        if self.skip_first_dim is not None:
            self._bool_param("skip_first_dim")

    def limits(self):
        return None  # the range depends on each block's values

    def _block_max(self, a):
        return block_max(a, self.block_size, bool(self.skip_first_dim))


@register_quantizer("block_fp")
class BlockFPQuantizer(_BlockQuantizer):
    """Block floating point (MSFP), MASE's ``block_fp``: each block shares the exponent
    e = clamp(ceil(log2 max|x|), -bias, 2^E - 1 - bias) and each value keeps a sign and a
    (width - 1)-bit mantissa k: x -> sign * k * 2^(e - M), k = clamp(round(|x| 2^(M - e)), 0, 2^M - 1).
    Defaults as MASE: width 12, exponent_width 8, bias 2^(E-1) - 1, blocks of 16."""

    type = "block_fp"
    params = {"width": 12, "exponent_width": 8, "exponent_bias": None, **_BlockQuantizer.block_params}

    def check(self):
        self._int_param("width", 2)
        self._int_param("exponent_width", 1)
        self._exponent_bias_param(2 ** (self.exponent_width - 1) - 1)
        self._check_blocks()
        e_min, e_max = -self.exponent_bias, 2 ** self.exponent_width - 1 - self.exponent_bias
        if e_max > FLOAT64_MAX_EXPONENT or e_min - (self.width - 1) < FLOAT64_MIN_EXPONENT:
            raise ValueError(f"{self._where}: {self._key('exponent_width')}={self.exponent_width} and "
                             f"{self._key('exponent_bias')}={self.exponent_bias} give exponents {e_min} .. {e_max}, "
                             "outside float64, where block formats are computed")

    def quantize(self, x):
        m = self.width - 1
        a = x.abs().double()
        e = torch.clamp(torch.ceil(torch.log2(self._block_max(a))), -self.exponent_bias,
                        2 ** self.exponent_width - 1 - self.exponent_bias)  # an all-zero block: -inf -> e_min
        step = torch.exp2(e - m)
        q = torch.clamp(torch.round(a / step), 0, 2 ** m - 1) * step
        return torch.copysign(q.to(x.dtype), x)

    @property
    def precision(self):
        return [self.width, self.exponent_width, self.exponent_bias, self.block_size]


def _minifloat_round(a, e_min, e_max, m: int):
    """|x| (float64, >= 0) to the nearest minifloat with M mantissa bits, exponents [e_min, e_max]
    (tensors allowed: one range per element), subnormals below 2^e_min, saturating at the top."""
    _, e = torch.frexp(a)
    exponent = torch.minimum(torch.maximum(e.double() - 1, e_min), e_max)
    step = torch.exp2(exponent - m)
    top = torch.exp2(e_max) * (2 - 2.0 ** -m)
    return torch.minimum(torch.round(a / step) * step, top)


@register_quantizer("block_minifloat")
class BlockMinifloatQuantizer(_BlockQuantizer):
    """Block minifloat (MASE's ``block_minifloat`` keys): a minifloat of ``width`` bits with
    ``exponent_width`` exponent bits whose exponent bias is shared per block and stored in
    ``exponent_bias_width`` bits.

    The block's bias is chosen so that its largest magnitude lies in the top binade:
    bias = clamp(2^E - 1 - floor(log2 max|x|), 0, 2^bias_width - 1). MASE uses
    bias = floor(log2 max|x|), which points the wrong way: a block of larger values gets a
    larger bias, i.e. a *smaller* range (E4M3, max 1000 -> bias 9 -> largest value 120), and
    a block of small values loses them all to zero.
    """

    type = "block_minifloat"
    params = {"width": _REQUIRED, "exponent_width": _REQUIRED, "exponent_bias_width": _REQUIRED,
              **_BlockQuantizer.block_params}

    def check(self):
        self._int_param("width", 2)
        self._int_param("exponent_width", 1, self.width - 1)
        self._int_param("exponent_bias_width", 1, 30)
        self._check_blocks()
        if 2 ** self.exponent_width - 1 > FLOAT64_MAX_EXPONENT:
            raise ValueError(f"{self._where}: {self._key('exponent_width')}={self.exponent_width} gives exponents "
                             "outside float64, where block formats are computed")

    def quantize(self, x):
        m, top_code = self.width - 1 - self.exponent_width, 2 ** self.exponent_width - 1
        a = x.abs().double()
        biggest = self._block_max(a)
        bias = torch.clamp(top_code - torch.floor(torch.log2(biggest)), 0, 2 ** self.exponent_bias_width - 1)
        bias = torch.where(biggest > 0, bias, torch.zeros_like(bias))  # an all-zero block: any bias
        q = _minifloat_round(a, 1 - bias, top_code - bias, m)
        return torch.copysign(q.to(x.dtype), x)

    @property
    def precision(self):
        return [self.width, self.exponent_width, self.exponent_bias_width, self.block_size]


@register_quantizer("block_log")
class BlockLogQuantizer(_BlockQuantizer):
    """Block logarithmic (MASE's ``block_log``): the ``log`` format (powers of two, no zero)
    with one exponent bias per block, stored in ``exponent_bias_width`` bits:
    bias = clamp(2^(width-1) - 1 - ceil(log2 max|x|), 0, 2^bias_width - 1), so the block's
    largest power is the one at or above its largest magnitude."""

    type = "block_log"
    params = {"width": _REQUIRED, "exponent_bias_width": _REQUIRED, **_BlockQuantizer.block_params}

    def check(self):
        self._int_param("width", 2, 11)  # 2^(width-1) exponent codes: beyond 11 bits, outside float64
        self._int_param("exponent_bias_width", 1, 30)
        self._check_blocks()

    def quantize(self, x):
        top_code = 2 ** (self.width - 1) - 1
        a = x.abs().double()
        biggest = self._block_max(a)
        bias = torch.clamp(top_code - torch.ceil(torch.log2(biggest)), 0, 2 ** self.exponent_bias_width - 1)
        bias = torch.where(biggest > 0, bias, torch.zeros_like(bias))
        return log_round(x, -bias, top_code - bias)

    @property
    def precision(self):
        return [self.width, self.exponent_bias_width, self.block_size]
