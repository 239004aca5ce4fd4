"""Fixed-point and other low-precision number formats, and the layers that use them.

    from labkit.quantize import IntegerQuantizer, LinearInteger, quantize_module
    q = IntegerQuantizer(width=8, frac_width=4)        # 8-bit fixed point, step 1/16

Add a format with ``@register_quantizer("name")`` on a :class:`Quantizer` subclass; the
layers (``LinearName``, ``ReLUName``, ...) and the transform pass pick it up by name.
"""

from .quantizers import (
    QUANTIZERS,
    FixedQuantizer,
    IntegerQuantizer,
    LogQuantizer,
    MinifloatIEEEQuantizer,
    MinifloatQuantizer,
    Quantizer,
    config_keys,
    get_quantizer,
    is_no_quantization,
    parse_config,
    register_quantizer,
)
from .formats import (  # MASE's other formats; imported before .modules, which makes their layer classes
    BinaryQuantizer,
    BinaryResidualQuantizer,
    BlockFPQuantizer,
    BlockLogQuantizer,
    BlockMinifloatQuantizer,
    MinifloatDenormQuantizer,
    TernaryQuantizer,
)
from .modules import (
    QUANTIZED_OPS,
    BatchNorm1dInteger,
    BatchNorm1dMinifloat,
    Conv1dInteger,
    Conv1dMinifloat,
    Conv2dInteger,
    Conv2dMinifloat,
    LinearInteger,
    LinearMinifloat,
    QuantizedBatchNorm1d,
    QuantizedConv1d,
    QuantizedConv2d,
    QuantizedLinear,
    QuantizedReLU,
    ReLUInteger,
    ReLUMinifloat,
    quantize_module,
    quantized_class,
)

__all__ = [
    "QUANTIZERS", "Quantizer", "register_quantizer", "get_quantizer", "config_keys", "parse_config",
    "is_no_quantization", "IntegerQuantizer", "FixedQuantizer", "MinifloatQuantizer", "MinifloatIEEEQuantizer",
    "MinifloatDenormQuantizer", "LogQuantizer", "BinaryQuantizer", "BinaryResidualQuantizer", "TernaryQuantizer",
    "BlockFPQuantizer", "BlockMinifloatQuantizer", "BlockLogQuantizer",
    "QUANTIZED_OPS", "quantize_module", "quantized_class", "QuantizedLinear", "QuantizedReLU",
    "QuantizedBatchNorm1d", "QuantizedConv1d", "QuantizedConv2d", "LinearInteger", "ReLUInteger",
    "BatchNorm1dInteger", "Conv1dInteger", "Conv2dInteger", "LinearMinifloat", "ReLUMinifloat",
    "BatchNorm1dMinifloat", "Conv1dMinifloat", "Conv2dMinifloat",
    "compare_quantization", "plot_accuracy_vs_bits", "model_size_bits",
]


def __getattr__(name):  # the comparison driver needs the trainer: import it only when asked
    if name in ("compare_quantization", "plot_accuracy_vs_bits", "model_size_bits"):
        from . import compare
        return getattr(compare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
