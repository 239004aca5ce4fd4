"""MASE's number formats and their config keys (chop/nn/quantizers and the quant_parsers'
QUANT_ARITH_ENTRIES), pinned on hand-computed values. Where MASE's code is wrong the test
says so and docs/differences_from_mase.md has the row."""

import pytest
import torch
import torch.nn as nn

from labkit.quantize import (
    BinaryQuantizer,
    BinaryResidualQuantizer,
    BlockFPQuantizer,
    BlockLogQuantizer,
    BlockMinifloatQuantizer,
    LogQuantizer,
    MinifloatDenormQuantizer,
    TernaryQuantizer,
    config_keys,
    parse_config,
    quantize_module,
)
from labkit.quantize.formats import block_max


def mase_config(name, **per_operand):
    """A node config with the same ``per_operand`` keys for data_in, weight and bias."""
    config = {"name": name}
    for op in ("data_in", "weight", "bias"):
        config.update({f"{op}_{k}": v for k, v in per_operand.items()})
    return config


# --- log ---------------------------------------------------------------------------------------------

def test_log_default_bias_and_zero_as_mase():
    q = LogQuantizer(width=5)  # bias 2^3 - 1 = 7: powers 2^-7 .. 2^8, no zero code
    assert q.exponent_bias == 7 and q.limits() == (-256.0, 256.0)
    x = torch.tensor([0.0, -0.0, 1e-9, 0.7, 1.5, -3.0, 1000.0, -1e-9])
    # 0 -> +2^-7 (MASE: sign(0 + tiny) = +); log2(0.7) = -0.51 -> 2^-1; log2(1.5) = 0.58 -> 2^1;
    # log2(3) = 1.58 -> 2^2; 1000 -> 2^8 (saturates); a tiny negative keeps its sign here
    expected = torch.tensor([2 ** -7, 2 ** -7, 2 ** -7, 0.5, 2.0, -4.0, 256.0, -(2 ** -7)])
    assert torch.equal(q(x), expected)
    assert LogQuantizer(width=3, exponent_bias=0)(torch.tensor([0.1, 5.0, 50.0])).tolist() == [1.0, 4.0, 8.0]
    assert parse_config(mase_config("log", width=4, exponent_bias=None))["weight"].exponent_bias == 3


def test_log_limits_are_float32s_not_a_cap():
    assert LogQuantizer(width=9, exponent_bias=140).limits() == (-(2.0 ** 115), 2.0 ** 115)  # wider than before
    with pytest.raises(ValueError, match="smallest power 2\\^-2000, outside float32"):
        LogQuantizer(width=12, exponent_bias=2000)


# --- minifloat_denorm --------------------------------------------------------------------------------

def test_minifloat_denorm_e4m3_hand_checked():
    q = MinifloatDenormQuantizer(width=8, exponent_width=4)  # M = 3, bias 7: k * 2^(e - 3), e in [-7, 8]
    assert q.max_value() == 7 * 2.0 ** 5 == 224.0
    x = torch.tensor([1.0, 0.3, 300.0, 1e-4, 2.0 ** -10, -0.7, 0.0])
    # 1.0 = 4 * 2^-2; 0.3 -> 5 * 2^-4 = 0.3125; 300 saturates at 224; 1e-4 < 2^-11 -> 0;
    # 2^-10 is the smallest step; -0.7 -> -(6 * 2^-3) = -0.75 (0.7 * 8 = 5.6 -> 6)
    assert torch.equal(q(x), torch.tensor([1.0, 0.3125, 224.0, 0.0, 2.0 ** -10, -0.75, 0.0]))
    assert q.metadata() == {"type": "minifloat_denorm", "precision": [8, 4, 7]}


def test_minifloat_denorm_at_and_below_a_power_of_two_is_nearest_not_clamped():
    # MASE takes e = ceil(log2 x) and clamps the mantissa to 2^M - 1: 4.0 -> 3.5 and 1.9 -> 1.75.
    # The format holds 4.0 (4 * 2^0) and 2.0 (4 * 2^-1), which are nearer.
    q = MinifloatDenormQuantizer(width=8, exponent_width=4)
    assert torch.equal(q(torch.tensor([4.0, 1.9, -3.9])), torch.tensor([4.0, 2.0, -4.0]))


# --- ternary -----------------------------------------------------------------------------------------

X2 = torch.tensor([[0.9, -0.1, 0.3, -1.2], [0.05, 0.02, -0.5, 0.0]])


def test_ternary_plain_and_scaled():
    # row 1: mean |x| = 0.625 -> delta = 0.46875; row 2: mean |x| = 0.1425 -> delta = 0.106875
    assert torch.equal(TernaryQuantizer()(X2), torch.tensor([[1.0, 0.0, 0.0, -1.0], [0.0, 0.0, -1.0, 0.0]]))
    # scaled: alpha = mean |x| over the row's values above delta: (0.9 + 1.2) / 2 and 0.5
    scaled = TernaryQuantizer(scaling_factor=True)(X2)
    assert torch.allclose(scaled, torch.tensor([[1.05, 0.0, 0.0, -1.05], [0.0, 0.0, -0.5, 0.0]]))
    assert torch.equal(TernaryQuantizer(scaling_factor=True)(torch.zeros(2, 3)), torch.zeros(2, 3))  # not 0/0


def test_ternary_uses_the_profiled_statistics_given():
    # MASE's ternary_quantizer: threshold 0.75 * mean, else 0.05 * max, else 0.75 * median
    # (its forward pass then ignores it; labkit uses it)
    assert torch.equal(TernaryQuantizer(mean=0.2)(X2[0]), torch.tensor([1.0, 0.0, 1.0, -1.0]))  # delta 0.15
    assert torch.equal(TernaryQuantizer(max=10.0)(X2[0]), torch.tensor([1.0, 0.0, 0.0, -1.0]))  # delta 0.5
    config = mase_config("ternary", width=2, scaling_factor=False, mean=None, median=0.2, max=None)
    assert torch.equal(parse_config(config)["weight"](X2[0]), torch.tensor([1.0, 0.0, 1.0, -1.0]))


# --- binary ------------------------------------------------------------------------------------------

def test_binary_mase_keys():
    config = mase_config("binary", width=1, stochastic=False, bipolar=True)
    q = parse_config(config)["weight"]
    assert torch.equal(q(torch.tensor([-0.3, 0.0, 2.0])), torch.tensor([-1.0, 1.0, 1.0]))
    assert q.metadata() == {"type": "binary", "precision": [1, False, True]}
    # not bipolar: {0, alpha}, alpha = mean |x| of the row (MASE's zero-scaled binariser)
    zero_one = BinaryQuantizer(bipolar=False)(X2)
    assert torch.allclose(zero_one, torch.tensor([[0.625, 0.0, 0.625, 0.0], [0.1425, 0.1425, 0.0, 0.0]]))
    # stochastic: +1 with probability (x + 1) / 2, so -1 and +1 (and beyond) are certain
    torch.manual_seed(0)
    s = BinaryQuantizer(stochastic=True)(torch.tensor([-1.0, 1.0, -5.0, 5.0] + [0.0] * 4000))
    assert s[:4].tolist() == [-1.0, 1.0, -1.0, 1.0] and abs(float(s[4:].mean())) < 0.05
    # binary_training: false (a shared key, as MASE's) only clips to [-1, 1]
    clip = parse_config({**config, "binary_training": False})["data_in"]
    assert torch.equal(clip(torch.tensor([-3.0, 0.25, 2.0])), torch.tensor([-1.0, 0.25, 1.0]))
    assert "binary_training" in config_keys("binary")


def test_binary_residual_sums_its_levels():
    x = torch.tensor([[0.9, -0.3, 0.5, -0.1]])
    one = BinaryResidualQuantizer(residual_sign=True, levels=1)(x)  # gamma = mean |x| = 0.45
    assert torch.allclose(one, torch.tensor([[0.45, -0.45, 0.45, -0.45]]))
    # level 2: residual [0.45, 0.15, 0.05, 0.35], gamma 0.25, signs all +
    two = BinaryResidualQuantizer(residual_sign=True, levels=2)(x)
    assert torch.allclose(two, torch.tensor([[0.7, -0.2, 0.7, -0.2]]))
    with pytest.raises(ValueError, match="levels must be an integer in \\[1, 3\\], got 4"):
        BinaryResidualQuantizer(residual_sign=True, levels=4)


# --- block formats ------------------------------------------------------------------------------------

def test_block_max_follows_mases_block_shapes():
    a = torch.arange(1.0, 13.0).reshape(3, 4)
    # [2] on a [3, 4] tensor: blocks of all rows x 2 columns (MASE's weight blocking)
    assert block_max(a, [2], skip_first_dim=False).tolist() == [[10.0, 10.0, 12.0, 12.0]] * 3
    # skip_first_dim (MASE's data_in default): each sample its own blocks of 2
    assert block_max(a, [2], skip_first_dim=True).tolist() == [[2, 2, 4, 4], [6, 6, 8, 8], [10, 10, 12, 12]]
    # a block longer than the dim spans it; a ragged end is padded with zeros
    assert block_max(torch.tensor([1.0, 5.0, 2.0]), [2], False).tolist() == [5.0, 5.0, 2.0]


def test_block_fp_hand_checked():
    q = BlockFPQuantizer(width=4, exponent_width=4, block_size=[2])  # M = 3, bias 7
    # block [0.9, -0.1]: e = ceil(log2 0.9) = 0, step 1/8 -> 0.875, -0.125
    # block [3.0, 0.4]: e = ceil(log2 3) = 2, step 1/2 -> 3.0, 0.5
    assert torch.equal(q(torch.tensor([[0.9, -0.1, 3.0, 0.4]])), torch.tensor([[0.875, -0.125, 3.0, 0.5]]))
    assert torch.equal(q(torch.zeros(1, 4)), torch.zeros(1, 4))
    d = BlockFPQuantizer()  # MASE's defaults
    assert (d.width, d.exponent_width, d.exponent_bias, d.block_size) == (12, 8, 127, [16])
    config = mase_config("block_fp", width=8, exponent_width=8, exponent_bias=None, block_size=[16])
    qs = parse_config(config)
    assert qs["data_in"].skip_first_dim and not qs["weight"].skip_first_dim


def test_block_minifloat_bias_puts_the_block_max_in_the_top_binade():
    q = BlockMinifloatQuantizer(width=8, exponent_width=4, exponent_bias_width=8, block_size=[2])
    x = torch.tensor([1000.0, 3.0, 0.01, 0.02])
    # [1000, 3]: bias 15 - 9 = 6, largest 1.875 * 2^9 = 960; [0.01, 0.02]: bias 15 + 6 = 21,
    # 0.02 = 1.28 * 2^-6 -> 10 * 2^-9, 0.01 -> 10 * 2^-10. MASE's bias floor(log2 max) = 9 and 0
    # would give 120 for 1000 and 0 for both small values.
    assert torch.equal(q(x), torch.tensor([960.0, 3.0, 10 * 2.0 ** -10, 10 * 2.0 ** -9]))


def test_block_log_hand_checked():
    q = BlockLogQuantizer(width=4, exponent_bias_width=4, block_size=[2])  # codes 0..7
    # [1000, 3]: bias 7 - 10 < 0 -> 0, powers 2^0 .. 2^7; [0.01, 0.02]: bias 7 + 5 = 12, 2^-12 .. 2^-5
    x = torch.tensor([1000.0, 3.0, 0.01, 0.02])
    assert torch.equal(q(x), torch.tensor([128.0, 4.0, 2.0 ** -7, 2.0 ** -6]))


def test_every_mase_format_makes_layers():
    configs = {
        "minifloat_denorm": mase_config("minifloat_denorm", width=8, exponent_width=4, exponent_bias=None),
        "ternary": mase_config("ternary", width=2, scaling_factor=True, mean=None, median=None, max=None),
        "binary": mase_config("binary", width=1, stochastic=False, bipolar=True),
        "block_fp": mase_config("block_fp", width=8, exponent_width=8, exponent_bias=None, block_size=[4]),
        "block_minifloat": mase_config("block_minifloat", width=8, exponent_width=4, exponent_bias_width=8,
                                       block_size=[4]),
        "block_log": mase_config("block_log", width=5, exponent_bias_width=8, block_size=[4]),
    }
    x = torch.randn(6, 8)
    for name, config in configs.items():
        layer = quantize_module(nn.Linear(8, 3), config)
        y = layer(x)
        assert y.shape == (6, 3) and torch.isfinite(y).all(), name
        y.sum().backward()  # the straight-through gradient reaches the float weights
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all(), name
    assert type(quantize_module(nn.Linear(8, 3), configs["block_fp"])).__name__ == "LinearBlockFP"


@pytest.mark.parametrize("config, match", [
    (mase_config("block_fp", width=8, exponent_width=8, exponent_bias=None, block_size=[0]),
     "data_in_block_size must be a positive int or a list"),
    (mase_config("ternary", width=2, scaling_factor="yes"), "scaling_factor must be true or false, got 'yes'"),
    (mase_config("binary", width=1, stochastic=False, bipolar=True, levels=2), "unknown key 'data_in_levels'"),
    (mase_config("minifloat_denorm", width=8, exponent_width=4, exponent_bias=200),
     "the smallest step 2\\^-203, outside float32"),
])
def test_bad_configs_are_one_clear_line(config, match):
    with pytest.raises(ValueError, match=match):
        parse_config(config, where="node 'fc'")
