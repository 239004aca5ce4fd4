"""Quantisers (number formats) and quantised layers."""

import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from labkit.quantize.modules import (
    BatchNorm1dInteger,
    Conv1dInteger,
    Conv2dInteger,
    LinearInteger,
    LinearMinifloat,
    QuantizedLinear,
    ReLUInteger,
    quantize_module,
    quantized_class,
)
from labkit.quantize import BinaryQuantizer
from labkit.quantize.quantizers import (
    QUANTIZERS,
    IntegerQuantizer,
    LogQuantizer,
    MinifloatQuantizer,
    Quantizer,
    is_no_quantization,
    parse_config,
    register_quantizer,
)

# The lab report's example: 2 rows of jsc-custom's first Linear, and the same rows after
# integer quantisation with width 2, frac_width 2 (printed to 4 decimals in the report).
SPEC_WEIGHTS = torch.tensor([
    [0.0146, 0.0996, -0.0316, 0.0403, 0.0685, 0.1840, -0.0285, 0.0622,
     -0.0455, 0.0711, 0.0172, 0.0250, -0.1422, -0.1315, -0.5085, -0.0726],
    [0.0727, 0.1423, -0.3114, -0.0457, 0.0154, 0.1282, -0.0300, 0.0711,
     -0.0192, 0.0455, 0.2072, -0.1718, -0.0718, -0.0205, -0.0191, 0.3600]])
SPEC_QUANTISED = torch.tensor([
    [0.0000, 0.0000, -0.0000, 0.0000, 0.0000, 0.2500, -0.0000, 0.0000,
     -0.0000, 0.0000, 0.0000, 0.0000, -0.2500, -0.2500, -0.5000, -0.0000],
    [0.0000, 0.2500, -0.2500, -0.0000, 0.0000, 0.2500, -0.0000, 0.0000,
     -0.0000, 0.0000, 0.2500, -0.2500, -0.0000, -0.0000, -0.0000, 0.2500]])

INT8 = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
        "weight_width": 6, "weight_frac_width": 5, "bias_width": 8, "bias_frac_width": 6}


def int_ref(x, width, frac):
    """Fixed point written out with plain torch ops, as the reference."""
    scale = 2.0 ** frac
    return torch.clamp(torch.round(x * scale), -(2 ** (width - 1)), 2 ** (width - 1) - 1) / scale


# --- integer ----------------------------------------------------------------------------------

def test_integer_reproduces_the_spec_example_exactly():
    q = IntegerQuantizer(width=2, frac_width=2)
    out = q(SPEC_WEIGHTS)
    assert torch.equal(out, SPEC_QUANTISED)
    # the signs of the zeros too: the report prints -0.0000 for small negative weights
    assert torch.equal(torch.signbit(out), torch.signbit(SPEC_WEIGHTS))
    assert "-0.0000" in str(out) and "-0.5000" in str(out)


def test_integer_rounds_half_to_even_and_clamps():
    q = IntegerQuantizer(width=4, frac_width=2)  # step 0.25, range [-2, 1.75]
    x = torch.tensor([0.125, 0.375, 0.625, -0.125, -0.375, 1.75, 1.8, 1.9, 100.0, -2.0, -2.1, -100.0])
    expected = torch.tensor([0.0, 0.5, 0.5, -0.0, -0.5, 1.75, 1.75, 1.75, 1.75, -2.0, -2.0, -2.0])
    assert torch.equal(q(x), expected)
    assert q.limits() == (-2.0, 1.75)


def test_integer_negative_and_large_frac_widths():
    assert torch.equal(IntegerQuantizer(width=3, frac_width=-2)(torch.tensor([5.0, 6.0, 100.0, -100.0])),
                       torch.tensor([4.0, 8.0, 12.0, -16.0]))  # 6/4 = 1.5 -> 2 (half to even)
    assert torch.equal(IntegerQuantizer(width=2, frac_width=4)(torch.tensor([0.03, 0.04, 0.2, -0.2])),
                       torch.tensor([0.0, 0.0625, 0.0625, -0.125]))


def test_integer_width_one_is_sign_only():
    q = IntegerQuantizer(width=1, frac_width=0)  # values {-1, 0}
    assert torch.equal(q(torch.tensor([-3.0, -0.7, 0.2, 5.0])), torch.tensor([-1.0, -1.0, 0.0, 0.0]))


def test_integer_matches_reference_on_random_values():
    x = torch.randn(1000) * 3
    for width, frac in [(8, 4), (4, 1), (16, 10), (3, 0)]:
        assert torch.equal(IntegerQuantizer(width=width, frac_width=frac)(x), int_ref(x, width, frac))


def test_clipped_straight_through_gradient():
    q = IntegerQuantizer(width=4, frac_width=2, ste="clipped")  # representable range [-2, 1.75]
    x = torch.tensor([-3.0, -2.0, -0.3, 0.1, 1.75, 1.9, 5.0], requires_grad=True)
    y = q(x)
    (y * torch.arange(1.0, 8.0)).sum().backward()
    # identity inside the range (upstream gradient passed through), zero outside it
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]))
    assert torch.equal(y.detach(), q(x.detach()))


def test_quantiser_metadata_and_repr():
    q = IntegerQuantizer(width=8, frac_width=3)
    assert q.metadata() == {"type": "integer", "precision": [8, 3]}
    assert q.bits == 8 and repr(q) == "IntegerQuantizer(width=8, frac_width=3)"
    assert q == IntegerQuantizer(width=8, frac_width=3) != IntegerQuantizer(width=8, frac_width=2)
    assert MinifloatQuantizer(width=8, exponent_width=4).metadata() == {"type": "minifloat", "precision": [8, 4, 7]}
    assert LogQuantizer(width=4).precision[0] == 4 and BinaryQuantizer().bits == 1


@pytest.mark.parametrize("params, match", [
    ({"width": 0, "frac_width": 0}, "width must be an integer >= 1, got 0"),
    ({"width": 8.0, "frac_width": 4}, "width must be an integer"),
    ({"width": True, "frac_width": 4}, "width must be an integer"),
    ({"width": 8, "frac_width": 199}, "frac_width=199.* make the scale 2\\^199, outside float32"),
    ({"width": 8}, "missing key 'frac_width'"),
    ({"width": 8, "frac_width": 2, "exponent_width": 3}, "unknown parameter 'exponent_width'"),
])
def test_integer_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        IntegerQuantizer(**params)


# --- the other formats ------------------------------------------------------------------------

def test_minifloat_e4m3_hand_checked():
    q = MinifloatQuantizer(width=8, exponent_width=4)  # bias 7, 3 mantissa bits, no inf/nan codes
    assert q.exponent_bias == 7 and q.mantissa_width == 3 and q.max_value() == 480.0
    x = torch.tensor([0.0, 1.0, 1.0625, 1.0626, 1.1875, 0.3, 2.0 ** -9, 2.0 ** -10, 1.5 * 2.0 ** -10,
                      2.0 ** -6 * 1.9, 448.0, 470.0, 1e6, -1e6, -0.3, float("inf")])
    expected = torch.tensor([0.0, 1.0, 1.0, 1.125, 1.25, 0.3125, 2.0 ** -9, 0.0, 2.0 ** -9,
                             2.0 ** -6 * 1.875, 448.0, 480.0, 480.0, -480.0, -0.3125, 480.0])
    assert torch.equal(q(x), expected)


def test_minifloat_subnormals_are_evenly_spaced():
    q = MinifloatQuantizer(width=6, exponent_width=3)  # bias 3, M=2: subnormal step 2^(1-3-2) = 1/16
    # subnormals k/16 for k < 4, then normals with step 1/16 in [1/4, 1/2) and 1/8 in [1/2, 1)
    x = torch.arange(0, 12) / 16.0
    out = q(x)
    assert torch.equal(out[:9], x[:9])
    # 9/16 and 11/16 are ties between neighbours 1/8 apart: to the even mantissa
    assert torch.equal(out[9:], torch.tensor([8 / 16, 10 / 16, 12 / 16]))
    values = torch.unique(q(torch.linspace(-30, 30, 60001)))  # max 2^4 * 1.75 = 28
    assert len(values) == 2 ** 6 - 1  # every code is a distinct finite value; +0 and -0 coincide


def test_minifloat_custom_bias_and_errors():
    q = MinifloatQuantizer(width=4, exponent_width=2, exponent_bias=0)  # exponents 1..3, M=1
    assert q.max_value() == 2 ** 3 * 1.5
    assert torch.equal(q(torch.tensor([13.0, 0.4, 2.6])), torch.tensor([12.0, 0.0, 3.0]))
    with pytest.raises(ValueError, match="exponent_width must be an integer in \\[1, 3\\], got 4"):
        MinifloatQuantizer(width=4, exponent_width=4)


def test_log_quantiser_hand_checked():
    q = LogQuantizer(width=4)  # MASE's default bias 2^2 - 1 = 3: +-2^-3 .. +-2^4, no zero
    x = torch.tensor([0.0, 0.06, 0.07, 0.3, 0.36, 3.0, 100.0, -0.75, -0.7])
    expected = torch.tensor([0.125, 0.125, 0.125, 0.25, 0.5, 4.0, 16.0, -1.0, -0.5])
    assert torch.equal(q(x), expected)


def test_binary_quantiser():
    q = BinaryQuantizer(scale=0.5, ste="clipped")
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3, 4.0], requires_grad=True)
    y = q(x)
    assert torch.equal(y.detach(), torch.tensor([-0.5, -0.5, 0.5, 0.5, 0.5]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))  # hardtanh STE
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        BinaryQuantizer(scale=-1)


def test_a_new_format_is_one_decorated_class():
    @register_quantizer("test-halving")
    class Halving(Quantizer):
        """x -> x rounded to multiples of ``step``, for the test."""
        type = "halving"
        params = {"width": None, "step": 0.5}

        def quantize(self, x):
            return torch.round(x / self.step) * self.step

        def limits(self):
            return -float("inf"), float("inf")

        @property
        def precision(self):
            return [self.width or 32]

    try:
        assert "test-halving" in QUANTIZERS
        layer = quantized_class(nn.Linear, "test-halving")(3, 2, config={"weight_step": 0.25})
        assert type(layer).__name__ == "LinearTestHalving"
        assert torch.equal(layer.w_quantizer(torch.tensor([0.3, 0.6])), torch.tensor([0.25, 0.5]))
        assert layer.x_quantizer.step == 0.5  # the default
    finally:
        QUANTIZERS._entries.pop("test-halving")


# --- configs ----------------------------------------------------------------------------------

def test_parse_config_builds_one_quantiser_per_operand():
    qs = parse_config(INT8, ("data_in", "weight", "bias"))
    assert qs["data_in"] == IntegerQuantizer(width=8, frac_width=4)
    assert qs["weight"] == IntegerQuantizer(width=6, frac_width=5)
    # a ReLU only takes data_in: the weight keys of a shared config are ignored
    assert list(parse_config(INT8, ("data_in",))) == ["data_in"]


@pytest.mark.parametrize("config, match", [
    ({"name": "integr"}, "unknown quantiser 'integr'.*Did you mean 'integer'"),
    ({**INT8, "weight_widht": 3}, "unknown key 'weight_widht' \\(value 3\\).*allowed keys"),
    ({**INT8, "data_in_exponent_width": 3}, "unknown key 'data_in_exponent_width'"),
    ({k: v for k, v in INT8.items() if k != "bias_frac_width"}, "missing key 'bias_frac_width'"),
    ({**INT8, "weight_width": 0}, "weight_width must be an integer >= 1, got 0"),
    ({**INT8, "data_in_frac_width": 1000}, "data_in_frac_width=1000.* 2\\^1000, outside float32"),
    ({"data_in_width": 8}, "config has no 'name'"),
    ("integer", "must be a dict"),
])
def test_parse_config_errors_name_the_key_and_the_place(config, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_config(config, ("data_in", "weight", "bias"), where="node 'fc1' (linear)")
    assert str(e.value).startswith("node 'fc1' (linear)")


def test_no_quantization_configs():
    for config in (None, {"name": None}, {"name": "NA"}, {"name": "integer", "bypass": True}):
        assert is_no_quantization(config)
    assert not is_no_quantization(INT8) and not is_no_quantization({})


# --- quantised layers -------------------------------------------------------------------------

def test_linear_integer_matches_plain_torch_reference():
    torch.manual_seed(0)
    layer = nn.Linear(16, 5)
    q = LinearInteger(16, 5, config=INT8)
    q.load_state_dict(layer.state_dict())  # the float layer's state dict loads as is
    x = torch.randn(32, 16) * 2
    ref = F.linear(int_ref(x, 8, 4), int_ref(layer.weight, 6, 5), int_ref(layer.bias, 8, 6))
    assert torch.allclose(q(x), ref, atol=0, rtol=0)
    assert not torch.allclose(q(x), layer(x), atol=1e-3)  # it really changes the output
    assert repr(q) == "LinearInteger(in_features=16, out_features=5, bias=True)"
    assert torch.equal(q.w_quantizer(q.weight), int_ref(layer.weight, 6, 5))


def test_from_float_keeps_weights_mode_and_state_dict():
    layer = nn.Linear(16, 5, bias=False).eval()
    q = quantize_module(layer, INT8)
    assert type(q) is LinearInteger and not q.training and q.bias is None
    assert q.weight is layer.weight  # shared: the transform pass deep-copies the model first
    assert list(q.state_dict()) == list(layer.state_dict()) == ["weight"]
    assert q.config == INT8 and q.bypass is False
    assert q(torch.ones(2, 16)).shape == (2, 5)


def test_bypass_runs_the_float_layer():
    layer = nn.Linear(4, 3)
    q = quantize_module(copy.deepcopy(layer), {**INT8, "weight_width": 2, "weight_frac_width": 0})
    x = torch.randn(5, 4)
    assert not torch.allclose(q(x), layer(x))
    q.bypass = True
    assert torch.allclose(q(x), layer(x))


def test_relu_integer_quantises_its_input():
    q = ReLUInteger(inplace=True, config={"name": "integer", "data_in_width": 4, "data_in_frac_width": 1})
    x = torch.tensor([-1.0, 0.2, 0.3, 1.24, 9.0])
    # unsigned, as MASE's ReLUInteger: 4 bits, step 1/2 -> 0 .. 7.5 (not the signed -4 .. 3.5)
    unsigned = torch.clamp(torch.round(x * 2), 0, 15) / 2
    assert torch.equal(q(x.clone()), F.relu(unsigned))
    assert q(torch.tensor([9.0])).item() == 7.5
    assert repr(q) == "ReLUInteger(inplace=True)"
    assert q.w_quantizer is None and q.b_quantizer is None


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_integer_matches_reference(training):
    torch.manual_seed(1)
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    bn.train(training)
    config = {"name": "integer", "data_in_width": 6, "data_in_frac_width": 3,
              "weight_width": 4, "weight_frac_width": 3, "bias_width": 4, "bias_frac_width": 3}
    q = BatchNorm1dInteger(6, config=config)
    q.load_state_dict(bn.state_dict())
    q.train(training)
    x = torch.randn(20, 6)
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = q(x)
    xq, w, b = int_ref(x, 6, 3), int_ref(bn.weight, 4, 3), int_ref(bn.bias, 4, 3)
    if training:
        m, v = xq.mean(0), xq.var(0, unbiased=False)
        ref = (xq - m) / torch.sqrt(v + bn.eps) * w + b
        # running statistics move as in nn.BatchNorm1d, from the quantised batch
        assert torch.allclose(q.running_mean, 0.9 * mean + 0.1 * m, atol=1e-6)
        assert torch.allclose(q.running_var, 0.9 * var + 0.1 * xq.var(0, unbiased=True), atol=1e-6)
        assert int(q.num_batches_tracked) == 1
    else:
        ref = (xq - mean) / torch.sqrt(var + bn.eps) * w + b
    assert torch.allclose(out, ref, atol=1e-5)


def test_conv_integer_layers_match_reference():
    torch.manual_seed(2)
    config = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
              "weight_width": 4, "weight_frac_width": 3, "bias_width": 8, "bias_frac_width": 5}
    c1 = nn.Conv1d(3, 4, 3, padding=1)
    q1 = Conv1dInteger(3, 4, 3, padding=1, config=config)
    q1.load_state_dict(c1.state_dict())
    x1 = torch.randn(2, 3, 10)
    ref1 = F.conv1d(int_ref(x1, 8, 4), int_ref(c1.weight, 4, 3), int_ref(c1.bias, 8, 5), padding=1)
    assert torch.allclose(q1(x1), ref1, atol=1e-6)

    c2 = nn.Conv2d(2, 3, 3, stride=2)
    q2 = quantize_module(c2, config)
    assert type(q2) is Conv2dInteger
    x2 = torch.randn(1, 2, 9, 9)
    ref2 = F.conv2d(int_ref(x2, 8, 4), int_ref(c2.weight, 4, 3), int_ref(c2.bias, 8, 5), stride=2)
    assert torch.allclose(q2(x2), ref2, atol=1e-6)
    assert repr(q2).startswith("Conv2dInteger(2, 3, kernel_size=(3, 3), stride=(2, 2)")


def test_minifloat_layer_and_generic_class():
    config = {"name": "minifloat", "data_in_width": 8, "data_in_exponent_width": 4,
              "weight_width": 6, "weight_exponent_width": 3, "bias_width": 8, "bias_exponent_width": 4}
    layer = nn.Linear(8, 3)
    q = QuantizedLinear.from_float(layer, config)  # the generic class picks LinearMinifloat
    assert type(q) is LinearMinifloat and quantized_class("linear", "minifloat") is LinearMinifloat
    x = torch.randn(4, 8)
    mf = lambda w, e: MinifloatQuantizer(width=w, exponent_width=e)  # noqa: E731
    ref = F.linear(mf(8, 4)(x), mf(6, 3)(layer.weight), mf(8, 4)(layer.bias))
    assert torch.allclose(q(x), ref, atol=1e-6)
    with pytest.raises(ValueError, match="takes 'minifloat' configs, got name 'integer'"):
        LinearMinifloat(8, 3, config=INT8)


def test_layer_errors():
    with pytest.raises(ValueError, match="LinearInteger: missing key 'data_in_width'"):
        LinearInteger(4, 2)
    with pytest.raises(ValueError, match="no quantised version of Dropout"):
        quantize_module(nn.Dropout(), INT8)
    with pytest.raises(ValueError, match="unknown quantiser 'fixed_point'"):
        quantize_module(nn.Linear(2, 2), {"name": "fixed_point"})
    with pytest.raises(ValueError, match="config must be a dict with a 'name'"):
        quantize_module(nn.Linear(2, 2), {"weight_width": 3})


def test_quantised_layers_deepcopy_and_pickle():
    q = quantize_module(nn.Linear(4, 2), INT8)
    for clone in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert type(clone) is LinearInteger and clone.w_quantizer == q.w_quantizer
        x = torch.randn(3, 4)
        assert torch.equal(clone(x), q(x))


def test_qat_gradients_reach_the_float_weights():
    torch.manual_seed(3)
    q = quantize_module(nn.Linear(4, 2), {**INT8, "weight_width": 4, "weight_frac_width": 2})
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    before = q.weight.detach().clone()
    loss = q(torch.randn(8, 4)).pow(2).sum()
    loss.backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(q.weight.detach(), before)  # float weights move, quantised on the next call


# --- review fixes -----------------------------------------------------------------------------

def test_minifloat_step_that_underflows_float32_is_rejected():
    # 1 exponent bit, 30 mantissa bits, bias 126: the finest step is 2^-155, which float32
    # cannot hold (it would be 0, and x / 0 gives NaN)
    with pytest.raises(ValueError, match=r"width=32, exponent_width=1 and exponent_bias=126 .* 2\^-155"
                                         r".*exponent_bias <= 120"):
        MinifloatQuantizer(width=32, exponent_width=1, exponent_bias=126)
    config = {"name": "minifloat", "data_in_width": 8, "data_in_exponent_width": 4,
              "weight_width": 32, "weight_exponent_width": 1, "weight_exponent_bias": 126,
              "bias_width": 8, "bias_exponent_width": 4}
    with pytest.raises(ValueError, match="node 'fc': weight_width=32, weight_exponent_width=1 and "
                                         "weight_exponent_bias=126"):
        parse_config(config, where="node 'fc'")
    # the largest allowed bias gives real numbers, not NaN
    q = MinifloatQuantizer(width=32, exponent_width=1, exponent_bias=120)
    out = q(torch.tensor([1e-38, 0.5, 0.0, -3.0]))
    assert torch.isfinite(out).all() and out[2] == 0 and out[1] == q.max_value() == -out[3]


def test_subclass_with_its_own_forward_is_not_converted():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return F.linear(x, self.weight.round(), self.bias)

    with pytest.raises(TypeError, match="MyLinear is a subclass of Linear, not Linear itself"):
        quantize_module(MyLinear(4, 2), INT8)
    # an already quantised layer may be re-quantised in another format
    q = quantize_module(quantize_module(nn.Linear(4, 2), INT8), {"name": "minifloat", "data_in_width": 8,
                                                                 "data_in_exponent_width": 4, "weight_width": 8,
                                                                 "weight_exponent_width": 4, "bias_width": 8,
                                                                 "bias_exponent_width": 4})
    assert type(q) is LinearMinifloat


def test_in_place_relu_integer_leaves_its_input_alone():
    relu = quantize_module(nn.ReLU(inplace=True), {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4})
    assert repr(relu) == "ReLUInteger(inplace=True)"  # as the lab report prints it
    x = torch.tensor([-1.0, 0.3, 2.0])
    out = relu(x)
    assert torch.equal(x, torch.tensor([-1.0, 0.3, 2.0]))  # in place on the quantiser's tensor, not on x
    assert torch.equal(out, torch.tensor([0.0, 0.3125, 2.0]))
    relu.bypass = True
    relu(x)
    assert torch.equal(x, torch.tensor([0.0, 0.3, 2.0]))  # bypassed: the float in-place ReLU


def test_quantised_layer_describes_its_inputs():
    q = quantize_module(nn.Linear(4, 2), INT8)
    assert q.arg_metadata() == {"data_in_0": {"type": "integer", "precision": [8, 4]},
                                "weight": {"type": "integer", "precision": [6, 5]},
                                "bias": {"type": "integer", "precision": [8, 6]}}
    q.bypass = True
    assert q.arg_metadata() == {}


def test_minifloat_with_an_8_bit_exponent_keeps_its_top_value_in_float32():
    # bfloat16's layout, E8M7. IEEE's bias 127 would put the top code (a normal number here,
    # no inf) at 2^128 * 1.99, beyond float32: the default moves the bias to 128.
    q = MinifloatQuantizer(width=16, exponent_width=8)
    assert q.exponent_bias == 128 and q.max_value() < torch.finfo(torch.float32).max
    with pytest.raises(ValueError, match="exponent_bias must be an integer in \\[128, "):
        MinifloatQuantizer(width=16, exponent_width=8, exponent_bias=127)
    x = torch.tensor([1.0, 3.0, 1e-30, -2.5e30])  # normal numbers: rounded like bfloat16
    torch.testing.assert_close(q(x), x.to(torch.bfloat16).float(), rtol=0, atol=0)
