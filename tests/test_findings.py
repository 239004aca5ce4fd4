"""Every sentence labkit.findings writes is chosen by the data: feed each case, check the words."""

import pandas as pd
import pytest
import torch.nn as nn

from labkit.findings import (Finding, background, best_per_group, classify_trend, cost_finding, curve_finding,
                             epochs_lesson, epochs_to_plateau, flops_parameter_note, gap_finding,
                             learning_rate_curves, qat_finding, spearman, trend_finding)

X = [64, 128, 256, 512, 1024, 2048]


@pytest.mark.parametrize("ys, case", [
    ([0.70, 0.701, 0.699, 0.702, 0.700, 0.701], "flat"),
    ([0.60, 0.62, 0.64, 0.66, 0.68, 0.70], "rises"),
    ([0.70, 0.68, 0.66, 0.64, 0.62, 0.60], "falls"),
    ([0.50, 0.60, 0.70, 0.65, 0.55, 0.40], "peaks"),
    ([0.70, 0.60, 0.50, 0.55, 0.65, 0.72], "dips"),
    ([0.60, 0.70, 0.60, 0.70, 0.60, 0.70], "mixed"),
])
def test_classify_trend_each_case(ys, case):
    assert classify_trend(X, ys, 0.005) == case
    # order of the rows must not matter
    assert classify_trend(X[::-1], ys[::-1], 0.005) == case


@pytest.mark.parametrize("ys, case, words", [
    ([0.70, 0.701, 0.699, 0.702, 0.700, 0.701], "flat", "hardly depends on the batch size"),
    ([0.60, 0.62, 0.64, 0.66, 0.68, 0.70], "rises", "rises as the batch size grows"),
    ([0.70, 0.68, 0.66, 0.64, 0.62, 0.60], "falls", "falls as the batch size grows"),
    ([0.50, 0.60, 0.70, 0.65, 0.55, 0.40], "peaks", "highest in the middle: 0.7000 at batch size 256"),
    ([0.70, 0.60, 0.50, 0.55, 0.65, 0.72], "dips", "lowest in the middle: 0.5000 at batch size 256"),
    ([0.60, 0.70, 0.60, 0.70, 0.60, 0.70], "mixed", "no consistent trend"),
])
def test_trend_finding_sentence(ys, case, words):
    f = trend_finding(pd.DataFrame({"batch_size": X, "final_val_acc": ys}), "batch_size", what="accuracy")
    assert isinstance(f, Finding) and f.case == case
    assert words in f.text
    others = {"rises as", "falls as", "hardly depends", "in the middle", "no consistent"} - {words.split(" the")[0]}
    assert sum(o in f.text for o in others) <= 1  # never two contradicting claims
    assert f._repr_markdown_() == f.text == str(f)


def test_trend_finding_names_the_missing_column():
    with pytest.raises(ValueError, match="no column 'batch_size'"):
        trend_finding(pd.DataFrame({"x": [1]}), "batch_size")


@pytest.mark.parametrize("times, case, words", [
    ([40.0, 41.0, 39.5, 40.2, 40.8, 40.1], "flat", "barely depends on the learning rate"),
    ([39.0, 45.0, 50.0, 55.0, 60.0, 68.0], "rises", "grows with the learning rate"),
    ([68.0, 60.0, 55.0, 50.0, 45.0, 39.0], "falls", "falls as the learning rate grows"),
    ([39.0, 68.0, 40.0, 66.0, 41.0, 60.0], "mixed", "no consistent trend"),
])
def test_cost_finding_each_case_and_same_work(times, case, words):
    lrs = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    t = pd.DataFrame({"learning_rate": lrs, "wall_time_s": times, "steps": [7810] * 6})
    f = cost_finding(t, "learning_rate")
    assert f.case == case and words in f.text
    assert "same 7,810 optimiser steps" in f.text
    assert ("come from the machine" in f.text) == (case != "flat")
    # the example: 68 s vs 39 s must never be called "no change in cost"
    if case != "flat":
        assert "barely" not in f.text


def test_cost_finding_without_equal_steps_claims_nothing_about_work():
    t = pd.DataFrame({"batch_size": [64, 2048], "wall_time_s": [60.0, 10.0], "steps": [100, 4]})
    f = cost_finding(t, "batch_size")
    assert f.case == "falls" and "same" not in f.text and "6.0x" in f.text


@pytest.mark.parametrize("values, case", [
    ([0.50, 0.502, 0.503, 0.504], "flat"),
    ([0.40, 0.55, 0.60, 0.61, 0.612, 0.611, 0.612], "rising"),
    ([0.40, 0.45, 0.50, 0.55, 0.60, 0.63], "rising_still"),
    ([0.60, 0.55, 0.50, 0.45, 0.40], "falling_still"),
    ([0.60, 0.45, 0.40, 0.40, 0.40, 0.401], "falling"),
])
def test_curve_finding(values, case):
    f = curve_finding(pd.DataFrame({"epoch": range(1, len(values) + 1), "val_acc": values}), "lr 1e-06")
    assert f.case == case
    if case == "flat":
        assert "barely moved" in f.text
    else:  # a curve that rose 12 points is never called flat
        assert "barely" not in f.text and ("rose" in f.text) == case.startswith("rising")
        assert ("still" in f.text) == case.endswith("_still")


def _lr_sweep(finals, curves):
    lrs = [1e-6, 1e-4, 1e-2]
    labels = [f"learning_rate={v:g}" for v in lrs]
    table = pd.DataFrame({"learning_rate": lrs, "final_val_acc": finals, "best_val_acc": [max(c) for c in curves],
                          "label": labels})
    return table, {lab: pd.DataFrame({"epoch": range(1, len(c) + 1), "val_acc": c}) for lab, c in zip(labels, curves)}


def test_learning_rate_curves_slow_and_unstable():
    table, hist = _lr_sweep([0.55, 0.72, 0.60],
                            [[0.40, 0.47, 0.55], [0.68, 0.71, 0.72], [0.66, 0.55, 0.60]])
    f = learning_rate_curves(table, hist)
    assert f.case == "slow/unstable"
    assert "too slow" in f.text and "rose 15.0 points" in f.text and "overshoot" in f.text
    assert "flat" not in f.text


def test_learning_rate_curves_fine_at_both_ends():
    table, hist = _lr_sweep([0.715, 0.72, 0.718],
                            [[0.70, 0.71, 0.715], [0.70, 0.71, 0.72], [0.70, 0.712, 0.718]])
    f = learning_rate_curves(table, hist)
    assert f.case == "fine/fine"
    assert "not too small" in f.text and "not unstable" in f.text


def _grid(values):
    return pd.DataFrame(values, index=pd.Index([1e-4, 1e-3, 1e-2], name="learning_rate"),
                        columns=pd.Index([64, 512, 2048], name="batch_size"))


@pytest.mark.parametrize("values, case, words", [
    ([[0.6, 0.6, 0.5], [0.7, 0.7, 0.7], [0.65, 0.65, 0.6]], "same", "is 0.001 for every batch size"),
    ([[0.7, 0.6, 0.5], [0.6, 0.7, 0.6], [0.5, 0.6, 0.7]], "rises", "larger batch sizes did best with larger"),
    ([[0.5, 0.6, 0.7], [0.6, 0.7, 0.6], [0.7, 0.6, 0.5]], "falls", "*smaller*"),
    ([[0.5, 0.7, 0.5], [0.7, 0.6, 0.6], [0.6, 0.5, 0.7]], "mixed", "no consistent direction"),
])
def test_best_per_group(values, case, words):
    f = best_per_group(_grid(values))
    assert f.case == case
    if case == "same":
        assert "does not move" in f.text and "larger batch" not in f.text  # the contradiction
    assert words in f.text


@pytest.mark.parametrize("values, case", [
    ([[0.7, 0.7, 0.6], [0.7, 0.7, 0.65], [0.7, 0.7, 0.69]], "shrinks"),
    ([[0.7, 0.7, 0.69], [0.7, 0.7, 0.65], [0.7, 0.7, 0.6]], "grows"),
    ([[0.7, 0.7, 0.65], [0.7, 0.7, 0.651], [0.7, 0.7, 0.652]], "flat"),
    ([[0.7, 0.7, 0.6], [0.7, 0.7, 0.69], [0.7, 0.7, 0.62]], "mixed"),
])
def test_gap_finding(values, case):
    f = gap_finding(_grid(values))
    assert f.case == case and "Batch size 2048 against 64" in f.text


def _epochs(finals):
    return pd.DataFrame({"max_epochs": [10, 20, 50, 100, 200][:len(finals)], "final_val_acc": finals})


def test_epochs_to_plateau():
    r = epochs_to_plateau(_epochs([0.5, 0.6, 0.65, 0.68, 0.70]))
    assert r["still_moving"] and r["enough"] == 200
    r = epochs_to_plateau(_epochs([0.68, 0.70, 0.701, 0.702, 0.702]))
    assert not r["still_moving"] and r["enough"] == 20


@pytest.mark.parametrize("slow, fast, case", [
    ([0.5, 0.6, 0.65, 0.68, 0.70], [0.68, 0.70, 0.701, 0.702, 0.702], "slow_needs_more"),
    ([0.68, 0.70, 0.701, 0.702, 0.702], [0.68, 0.70, 0.701, 0.702, 0.702], "same"),
    ([0.70, 0.70, 0.701, 0.702, 0.702], [0.5, 0.6, 0.65, 0.68, 0.70], "fast_needs_more"),
])
def test_epochs_lesson(slow, fast, case):
    f = epochs_lesson(_epochs(slow), _epochs(fast), 1e-5, 1e-3)
    assert f.case == case
    assert "lr 1e-05" in f.text and "lr 0.001" in f.text
    assert ("still moving at 200 epochs" in f.text) == (case != "same")
    if case == "slow_needs_more":
        assert "depends on the learning rate" in f.text


def _compare(ptq, qat, kept, float_acc=0.70):
    rows = [{"format": "float", "width": 32, "mode": "float", "test_acc": float_acc}]
    for w, p, q, k in zip((8, 6, 4), ptq, qat, kept):
        rows += [{"format": "integer", "width": w, "mode": "ptq", "test_acc": p},
                 {"format": "integer", "width": w, "mode": "qat", "test_acc": q, "qat_epoch_kept": k}]
    df = pd.DataFrame(rows)
    df["float_acc"] = float_acc
    return df


def test_qat_never_better_is_explained():
    f = qat_finding(_compare([0.69, 0.68, 0.60], [0.69, 0.68, 0.60], [0, 0, 0]))
    assert f.case == "never_better"
    assert "0 of 3" in f.text and "equal by construction" in f.text and "integer 8b, integer 6b, integer 4b" in f.text


def test_qat_sometimes_and_always_better():
    f = qat_finding(_compare([0.69, 0.68, 0.60], [0.69, 0.685, 0.66], [0, 2, 3]))
    assert f.case == "sometimes_better" and "QAT beats PTQ in 2 of 3" in f.text and "integer 8b)" in f.text
    f = qat_finding(_compare([0.60, 0.60, 0.60], [0.65, 0.66, 0.67], [1, 1, 1]))
    assert f.case == "always_better" and "equal by construction" not in f.text


def test_qat_beating_float_is_explained_with_test_noise():
    f = qat_finding(_compare([0.69, 0.68, 0.60], [0.705, 0.68, 0.62], [1, 0, 2]), n_test=4000)
    assert f.case == "sometimes_better+beats_float"
    assert "more training" in f.text and "integer 8b (0.705)" in f.text
    assert "standard errors" in f.text and "within test noise" in f.text   # 0.005 / 0.0072 < 2


def test_qat_finding_needs_both_modes():
    with pytest.raises(ValueError, match="both 'ptq' and 'qat'"):
        qat_finding(_compare([0.6], [0.6], [0]).query("mode != 'qat'"))


def test_flops_parameter_note():
    model = nn.Sequential(nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5), nn.ReLU())  # jsc-tiny: 117
    f = flops_parameter_note(model, 112)
    assert f.case == "linear_bias" and "117" in f.text and "112" in f.text and "exactly the Linear" in f.text
    assert flops_parameter_note(model, 117).case == "equal"
    assert flops_parameter_note(model, 100).case == "other"


def test_background_is_labelled_and_checked():
    assert background("lr_x_batch").startswith("**Background (general, not measured here).**")
    with pytest.raises(ValueError, match="no background for 'x'"):
        background("x")


def test_spearman_constant_is_zero():
    assert spearman([1, 2, 3], [5, 5, 5]) == 0.0
    assert spearman([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_qat_never_better_with_a_large_ptq_loss_says_so():
    f = qat_finding(_compare([0.69, 0.60, 0.40], [0.69, 0.60, 0.40], [0, 0, 0]))
    assert f.case == "never_better" and "loses up to 30.0 points" in f.text and "too short" in f.text
    f = qat_finding(_compare([0.699, 0.698, 0.695], [0.699, 0.698, 0.695], [0, 0, 0]))
    assert "at most 0.5 points below float" in f.text and "too short" not in f.text
