"""MASE's numerics and pass semantics, pinned on hand-computed values (issue 10).

Each test states the MASE behaviour it matches (read from MASE's source, chop/nn/quantizers,
chop/passes/graph/...), or, where MASE is wrong, what labkit does instead and why; those
rows are in docs/differences_from_mase.md under "Numerics".
"""

import copy

import pytest
import torch
import torch.nn as nn

from labkit.graph import MaseGraph
from labkit.models import get_model
from labkit.passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
from labkit.passes.profile import (RangeNSigma, RangeQuantile, Record, VarianceOnline, VariancePrecise,
                                   profile_statistics_analysis_pass)
from labkit.passes.quantize import quantize_transform_pass
from labkit.quantize import IntegerQuantizer, LinearInteger, MinifloatQuantizer, ReLUInteger, parse_config

INT_4_1 = {"name": "integer", "data_in_width": 4, "data_in_frac_width": 1,
           "weight_width": 4, "weight_frac_width": 1, "bias_width": 4, "bias_frac_width": 1}


def graph_of(model, x):
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": x}})
    return mg


# --- integer: is_signed, floor, and ReLUInteger ------------------------------------------------

def test_relu_integer_is_unsigned_8_bit_frac_4_saturates_at_15_9375():
    relu = ReLUInteger(config={"name": "integer", "data_in_width": 8, "data_in_frac_width": 4})
    x = torch.tensor([-3.0, 7.96875, 16.0, 100.0, 0.04])
    # unsigned 8 bits, step 1/16: 0 .. 255/16 = 15.9375; 7.96875 * 16 = 127.5 -> 128 (half to even) -> 8.0
    assert torch.equal(relu(x), torch.tensor([0.0, 8.0, 15.9375, 15.9375, 0.0625]))
    assert relu.x_quantizer.limits() == (0.0, 15.9375)  # the signed range would stop at 7.9375
    signed = ReLUInteger(config={"name": "integer", "data_in_width": 8, "data_in_frac_width": 4,
                                 "data_in_is_signed": True})
    assert signed(torch.tensor([100.0])).item() == 7.9375


def test_integer_is_signed_false():
    q = IntegerQuantizer(width=3, frac_width=1, is_signed=False)  # 0 .. 7 steps of 1/2
    assert torch.equal(q(torch.tensor([-1.0, 0.26, 3.4, 5.0])), torch.tensor([0.0, 0.5, 3.5, 3.5]))


def test_integer_floor_rounding_as_a_shared_config_key():
    x = torch.tensor([0.3, -0.1, 1.9, -2.6])
    # floor(4x) = 1, -1, 7, -11 -> clamp to [-8, 7] -> / 4
    assert torch.equal(IntegerQuantizer(width=4, frac_width=2, floor=True)(x), torch.tensor([0.25, -0.25, 1.75, -2.0]))
    quantizers = parse_config({**INT_4_1, "floor": True})  # MASE's "floor" has no operand prefix
    assert all(q.floor for q in quantizers.values())
    assert torch.equal(quantizers["weight"](torch.tensor([0.9, -0.1])), torch.tensor([0.5, -0.5]))
    # and "fixed" is MASE's other name for the same format
    fixed = parse_config({**INT_4_1, "name": "fixed"})["data_in"]
    assert fixed.metadata() == {"type": "fixed", "precision": [4, 1]}
    assert torch.equal(fixed(x), IntegerQuantizer(width=4, frac_width=1)(x))


# --- straight-through gradient ------------------------------------------------------------------

def test_ste_passes_the_gradient_everywhere_by_default_and_clips_on_request():
    x = torch.tensor([-9.0, -0.3, 0.4, 9.0], requires_grad=True)
    IntegerQuantizer(width=4, frac_width=1)(x).sum().backward()  # range [-4, 3.5]
    assert torch.equal(x.grad, torch.ones(4))  # MASE: the identity everywhere, also outside the range
    x.grad = None
    IntegerQuantizer(width=4, frac_width=1, ste="clipped")(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    # in a layer, through the config
    layer = LinearInteger(2, 1, bias=False, config={**INT_4_1, "ste": "clipped"})
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0]]))
    inp = torch.tensor([[9.0, 0.5]], requires_grad=True)
    layer(inp).sum().backward()
    assert torch.equal(inp.grad, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="ste must be one of 'identity', 'clipped'.*got 'clip'"):
        parse_config({**INT_4_1, "ste": "clip"}, where="node 'fc'")


# --- profile_statistics_analysis_pass ---------------------------------------------------------------

def lab_profile_args(batches, num_samples, **extra):
    return {"by": "type", "target_weight_nodes": ["linear"], "target_activation_nodes": ["relu"],
            "weight_statistics": {"variance_precise": {"device": "cpu", "dims": "all"}},
            "activation_statistics": {"record": {}, "range_quantile": {"device": "cpu", "dims": "all"}},
            "input_generator": batches, "num_samples": num_samples, "progress": False, **extra}


def test_num_samples_counts_samples_the_labs_8_by_32_is_4_batches():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 16, generator=g) for _ in range(10)]
    mg = graph_of(get_model("jsc-tiny"), batches[0])
    _, info = profile_statistics_analysis_pass(mg, lab_profile_args(batches, 32))
    assert info["num_batches"] == 4
    stat = mg.node("seq_blocks_1").meta["mase"].parameters["software"]["args"]["data_in_0"]["stat"]
    assert stat["record"]["count"] == 32 and len(stat["record"]["data"]) == 32
    assert stat["record"]["size_in_bytes"] == 32 * 16 * 4
    _, info = profile_statistics_analysis_pass(mg, lab_profile_args(batches, 30))  # whole batches: ceil(30/8)
    assert info["num_batches"] == 4


def test_biases_are_profiled_and_variance_precise_is_unbiased():
    model = get_model("jsc-tiny")
    mg = graph_of(model, torch.randn(8, 16))
    with torch.no_grad():
        model.seq_blocks[2].bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    profile_statistics_analysis_pass(mg, lab_profile_args([torch.randn(8, 16)], 8))
    args = mg.node("seq_blocks_2").meta["mase"].parameters["software"]["args"]
    # var([1..5]) with N - 1: 10 / 4 = 2.5 (torch.var's default, MASE's variance_precise)
    assert args["bias"]["stat"]["variance_precise"] == {"mean": 3.0, "variance": 2.5, "count": 5}


def test_range_quantile_default_is_0_975():
    mg = graph_of(get_model("jsc-tiny"), torch.randn(8, 16))
    x = torch.arange(0, 16 * 25.0).reshape(25, 16) / 10 - 20  # BatchNorm (fresh, eval) ~ identity
    args = lab_profile_args([x], 25, activation_statistics={"range_quantile": {}})
    profile_statistics_analysis_pass(mg, args)
    stat = mg.node("seq_blocks_1").meta["mase"].parameters["software"]["args"]["data_in_0"]["stat"]
    expected = torch.quantile(x.double() / (1 + 1e-5) ** 0.5, 0.975).item()
    assert stat["range_quantile"]["max"] == pytest.approx(expected, rel=1e-6)
    q = RangeQuantile()
    q.update(torch.arange(0, 101.0))  # 0..100: the 0.975-quantile is 97.5, the 0.025-quantile 2.5
    assert q.compute() == {"min": pytest.approx(2.5), "max": pytest.approx(97.5), "range": pytest.approx(95.0)}


def test_online_variance_does_not_depend_on_the_batches():
    # [1, 2, 3, 4]: population variance 1.25. MASE's online update adds each batch's *unbiased*
    # variance times its size and divides by N, which gives 1.6667 as one batch but 1.5 as
    # [1, 2] + [3, 4]. labkit's Welford/Chan merge gives 1.25 however the data is split.
    for split in ([[1.0, 2.0, 3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]], [[1.0], [2.0, 3.0, 4.0]]):
        s = VarianceOnline()
        for chunk in split:
            s.update(torch.tensor(chunk))
        assert s.compute() == {"mean": 2.5, "variance": 1.25, "count": 4}
    p = VariancePrecise()
    p.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert p.compute()["variance"] == pytest.approx(5 / 3)


def test_range_n_sigma_and_record():
    s = RangeNSigma(num_sigma=2)  # online variance: mean 2.5, sigma sqrt(1.25)
    s.update(torch.tensor([1.0, 2.0]))
    s.update(torch.tensor([3.0, 4.0]))
    out = s.compute()
    assert out["min"] == pytest.approx(2.5 - 2 * 1.25 ** 0.5) and out["max"] == pytest.approx(2.5 + 2 * 1.25 ** 0.5)
    assert out["count"] == 4
    precise = RangeNSigma(var_mode="precise", num_sigma=1, abs=True)
    precise.update(torch.tensor([-1.0, 2.0, -3.0, 4.0]))
    assert precise.compute()["max"] == pytest.approx(2.5 + (5 / 3) ** 0.5)
    r = Record(add_new_dim_before_concat=True)
    r.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), samples=2)
    assert r.compute() == {"data": [[[1.0, 2.0]], [[3.0, 4.0]]], "count": 2, "size_in_bytes": 16.0}
    with pytest.raises(ValueError, match="var_mode must be 'online' or 'precise'"):
        RangeNSigma(var_mode="exact")


def test_train_mode_batchnorm_statistics_are_not_updated_by_metadata_or_profiling():
    # MASE runs the model as it is: a train-mode model's BatchNorm running statistics move
    # during add_common_metadata_analysis_pass and profiling. labkit runs both in eval mode.
    model = get_model("jsc-tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 16) * 5 + 3
    mg = graph_of(model, x)
    profile_statistics_analysis_pass(mg, lab_profile_args([x], 8))
    assert all(torch.equal(before[k], v) for k, v in mg.model.state_dict().items())
    assert mg.model.training and mg.modules["seq_blocks.0"].training


# --- add_common_metadata_analysis_pass ------------------------------------------------------------

def test_add_value_is_on_by_default_and_deepcopy_works():
    x = torch.randn(8, 16)
    mg = graph_of(get_model("jsc-tiny"), x)
    node = mg.node("seq_blocks_0")
    value = node.meta["mase"].parameters["common"]["args"]["data_in_0"]["value"]  # the lab's line
    assert torch.equal(value, x)
    clone = copy.deepcopy(mg)
    copied = clone.node("seq_blocks_0").meta["mase"].parameters["common"]["args"]["data_in_0"]["value"]
    assert torch.equal(copied, x) and copied is not value
    off, _ = add_common_metadata_analysis_pass(graph_of(get_model("jsc-tiny"), x), {"dummy_in": x, "add_value": False})
    assert "value" not in off.node("seq_blocks_0").meta["mase"].parameters["common"]["args"]["data_in_0"]


# --- quantize_transform_pass ---------------------------------------------------------------------------

def test_quantize_transform_pass_changes_the_graph_it_is_given_and_not_pass_args():
    model = get_model("jsc-tiny")
    mg = graph_of(model, torch.randn(8, 16))
    args = {"by": "type", "default": {"config": {"name": None}}, "linear": {"config": INT_4_1}}
    snapshot = copy.deepcopy(args)
    quantize_transform_pass(mg, args)  # no reassignment, as a student might write it
    assert isinstance(mg.modules["seq_blocks.2"], LinearInteger)
    assert args == snapshot  # MASE pops "by"; the same dict works twice here
    again, info = quantize_transform_pass(mg, args)
    assert again is mg and info["changed"] == ["seq_blocks_2"]
    assert type(model.seq_blocks[2]) is nn.Linear  # the traced model keeps its float layer


def test_by_regex_name():
    mg = graph_of(get_model("jsc-custom"), torch.randn(8, 16))
    args = {"by": "regex_name", "default": {"config": {"name": None}},
            "seq_blocks_(2|6)": {"config": INT_4_1}, "seq_blocks_1.*": {"config": INT_4_1}}
    _, info = quantize_transform_pass(mg, args)
    # patterns match whole names; seq_blocks_1.* also matches seq_blocks_10 (Linear), _11 (BatchNorm1d)
    # and _12 (ReLU), all quantisable; seq_blocks_(2|6) does not match seq_blocks_2x
    assert info["changed"] == ["seq_blocks_1", "seq_blocks_2", "seq_blocks_6", "seq_blocks_10", "seq_blocks_11",
                               "seq_blocks_12"]
    with pytest.raises(ValueError, match="key 'seq_\\[' is not a valid regular expression"):
        quantize_transform_pass(mg, {"by": "regex_name", "seq_[": {"config": INT_4_1}})


class TwoOperands(nn.Module):
    def forward(self, x):
        a, b = x[:, :4], x[:, 4:]
        return a + b, a * b, a - b, a @ b.t(), torch.bmm(a.unsqueeze(0), b.t().unsqueeze(0))


def test_functional_add_mul_sub_matmul_bmm_are_quantised():
    x = torch.tensor([[0.3, 1.2, -0.7, 2.6, 0.8, -0.2, 1.1, 0.4]])
    mg = graph_of(TwoOperands(), x)
    # matmul/bmm quantise their second operand with the weight keys: 2 bits, frac 2 -> -0.5 .. 0.25
    mm = {**INT_4_1, "weight_width": 2, "weight_frac_width": 2}
    args = {"by": "type", "add": {"config": INT_4_1}, "mul": {"config": INT_4_1}, "sub": {"config": INT_4_1},
            "matmul": {"config": mm}, "bmm": {"config": mm}}
    _, info = quantize_transform_pass(mg, args)
    assert info["changed"] == ["add", "mul", "sub", "matmul", "bmm"]
    add, mul, sub, matmul, bmm = mg.model(x)
    # a -> [0.5, 1.0, -0.5, 2.5], b -> [1.0, -0.0, 1.0, 0.5] (4 bits, step 1/2)
    assert torch.equal(add, torch.tensor([[1.5, 1.0, 0.5, 3.0]]))
    assert torch.equal(mul, torch.tensor([[0.5, -0.0, -0.5, 1.25]]))
    assert torch.equal(sub, torch.tensor([[-0.5, 1.0, -1.5, 2.0]]))
    # b as a weight -> [0.25, -0.25, 0.25, 0.25]: a . b = 0.125 - 0.25 - 0.125 + 0.625
    assert matmul.item() == 0.375 and bmm.item() == 0.375
    meta = mg.node("matmul").meta["mase"].parameters["common"]["args"]
    assert meta["data_in_0"]["precision"] == [4, 1] and meta["data_in_1"]["precision"] == [2, 2]
    assert type(mg.modules["add_q"]).__name__ == "AddInteger"


# --- where MASE is wrong, labkit stays right ------------------------------------------------------------

def test_minifloat_rounds_up_to_the_next_power_of_two():
    # E4M3: 1.97 lies between 1.875 and 2.0, nearer 2.0. MASE keeps the exponent of 1.97 and
    # clamps the mantissa, giving 1.875; the nearest E4M3 number is 2.0.
    q = MinifloatQuantizer(width=8, exponent_width=4)
    assert torch.equal(q(torch.tensor([1.97, -1.97, 3.9, 0.2421875])), torch.tensor([2.0, -2.0, 4.0, 0.25]))
    for name in ("minifloat", "minifloat_ieee"):  # MASE's name for the same format
        config = {"name": name, "data_in_width": 8, "data_in_exponent_width": 4,
                  "weight_width": 8, "weight_exponent_width": 4, "bias_width": 8, "bias_exponent_width": 4}
        assert parse_config(config)["data_in"](torch.tensor([1.97])).item() == 2.0


def test_train_val_and_test_accuracy_are_separate_metric_objects():
    # MASE's base wrapper sets acc_train = acc_val = acc_test = one Accuracy(): validation
    # updates land in the training accuracy's running state and the other way round.
    from labkit.training import LitClassifier
    lit = LitClassifier(nn.Linear(16, 5))
    assert len({id(lit.train_acc), id(lit.val_acc), id(lit.test_acc)}) == 3
    target = torch.tensor([0, 1, 2, 3])
    lit.train_acc.update(torch.eye(5)[target], target)           # all right
    lit.val_acc.update(torch.eye(5)[(target + 1) % 5], target)   # all wrong
    assert float(lit.train_acc.compute()) == 1.0 and float(lit.val_acc.compute()) == 0.0


def test_validation_rows_are_not_training_rows():
    # MASE's JSC dataset serves the same X_train_val tensor as both "train" and "validation".
    from labkit.data.prepare import split_indices
    train, val, test = split_indices(1000, seed=0, test_fraction=0.2, val_fraction=0.2)
    assert (len(train), len(val), len(test)) == (640, 160, 200)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)


def test_search_trials_each_quantise_a_float_copy():
    # quantize_transform_pass changes the graph it is given, so a caller that runs several
    # configs (search trials, compare runs) must start each from a float copy
    from labkit.precision_search import Evaluator
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(256, 16, generator=g), torch.randint(0, 5, (256,), generator=g)
    ev = Evaluator(get_model("jsc-tiny"), x, y, {"sw_runner.basic_evaluation": {}})
    none = {"by": "type", "default": {"config": {"name": None}}}
    float_loss = ev(none)["loss"]
    two_bits = {**none, "linear": {"config": {**INT_4_1, "weight_width": 2, "weight_frac_width": 1}}}
    assert ev(two_bits)["loss"] != float_loss
    assert ev(none)["loss"] == float_loss  # the 2-bit trial left no quantised layer behind
    assert not any(type(m).__name__.endswith("Integer") for m in ev.graph.modules.values())
