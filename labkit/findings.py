"""Sentences about a run, chosen from the run's own numbers.

A notebook that states "larger batches need larger learning rates" next to a table where the
best rate was the same for every batch is wrong for its own data. So every sentence here that
states a trend is picked by the measurements: each helper classifies the data (the ``case`` of
the :class:`Finding` it returns) and words only what that case supports. General background
(why a rule of thumb exists) is kept apart, in :func:`background`, and is labelled as such.

    f = trend_finding(table, "batch_size", "final_val_acc")
    f.case        # "rises" | "falls" | "flat" | "peaks" | "dips" | "mixed"
    f.text        # the Markdown sentence (what the notebook shows)

tests/test_findings.py feeds each helper tables showing every case and checks the sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

TRENDS = ("flat", "rises", "falls", "peaks", "dips", "mixed")


@dataclass(frozen=True)
class Finding:
    """What the data showed (``case``) and the sentence that says it (``text``, Markdown)."""

    case: str
    text: str

    def __str__(self):
        return self.text

    def _repr_markdown_(self):
        return self.text


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]  # str.capitalize would lower-case the rest (lr 1E-5, QAT)


def _pts(delta: float) -> str:
    return f"{100 * delta:+.1f} points"


def spearman(a, b) -> float:
    """Rank correlation: +1 when b always rises with a, -1 when it always falls (0 if b is constant)."""
    a, b = pd.Series(list(a), dtype=float), pd.Series(list(b), dtype=float)
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} x values but {len(b)} y values")
    if len(a) < 2 or b.nunique() < 2 or a.nunique() < 2:
        return 0.0
    return float(a.rank().corr(b.rank()))


def classify_trend(x, y, min_change: float) -> str:
    """The shape of ``y`` against ``x`` (sorted by x), one of :data:`TRENDS`.

    ``flat``: everything within ``min_change``; ``peaks``/``dips``: the extreme is inside the
    range with both ends at least ``min_change`` away from it; ``rises``/``falls``: rank
    correlation at least +-0.5; otherwise ``mixed``.
    """
    if min_change < 0:
        raise ValueError(f"min_change must be >= 0, got {min_change!r}")
    order = np.argsort(np.asarray(list(x), dtype=float), kind="stable")
    xs = np.asarray(list(x), dtype=float)[order]
    ys = np.asarray(list(y), dtype=float)[order]
    if len(ys) == 0:
        raise ValueError("classify_trend: no values")
    if np.nanmax(ys) - np.nanmin(ys) < min_change or len(ys) < 2:
        return "flat"
    hi, lo = int(np.nanargmax(ys)), int(np.nanargmin(ys))
    if 0 < hi < len(ys) - 1 and ys[0] <= ys[hi] - min_change and ys[-1] <= ys[hi] - min_change:
        return "peaks"
    if 0 < lo < len(ys) - 1 and ys[0] >= ys[lo] + min_change and ys[-1] >= ys[lo] + min_change:
        return "dips"
    rho = spearman(xs, ys)
    return "rises" if rho >= 0.5 else "falls" if rho <= -0.5 else "mixed"


def trend_finding(table: pd.DataFrame, setting: str, metric: str = "final_val_acc", *,
                  min_change: float = 0.005, what: str | None = None) -> Finding:
    """How ``metric`` moves with ``setting`` across a sweep's rows, in one measured sentence."""
    for col in (setting, metric):
        if col not in table.columns:
            raise ValueError(f"table has no column {col!r}; columns: {list(table.columns)}")
    t = table.sort_values(setting)
    case = classify_trend(t[setting], t[metric], min_change)
    what = what or metric.replace("_", " ")
    name = setting.replace("_", " ")
    first, last = t.iloc[0], t.iloc[-1]
    ends = (f"{first[metric]:.4f} at {name} {_fmt(first[setting])}, "
            f"{last[metric]:.4f} at {_fmt(last[setting])}")
    top = t.loc[t[metric].idxmax()]
    bottom = t.loc[t[metric].idxmin()]
    if case == "flat":
        text = (f"{_cap(what)} hardly depends on the {name}: every run is within "
                f"{100 * (t[metric].max() - t[metric].min()):.2f} points ({ends}).")
    elif case in ("rises", "falls"):
        text = f"{_cap(what)} {case} as the {name} grows ({ends})."
    elif case == "peaks":
        text = (f"{_cap(what)} is highest in the middle: {top[metric]:.4f} at {name} "
                f"{_fmt(top[setting])}, lower at both ends ({ends}).")
    elif case == "dips":
        text = (f"{_cap(what)} is lowest in the middle: {bottom[metric]:.4f} at {name} "
                f"{_fmt(bottom[setting])}, higher at both ends ({ends}).")
    else:
        text = (f"{_cap(what)} shows no consistent trend with the {name}: best {top[metric]:.4f} at "
                f"{_fmt(top[setting])}, worst {bottom[metric]:.4f} at {_fmt(bottom[setting])}.")
    return Finding(case, text)


def cost_finding(table: pd.DataFrame, setting: str, *, time: str = "wall_time_s", steps: str | None = "steps",
                 min_ratio: float = 1.2) -> Finding:
    """Does the time a run costs depend on ``setting``? Measured, and with the work done.

    ``case``: ``rises``/``falls``/``mixed`` when the slowest run took at least ``min_ratio``
    times the fastest, else ``flat``. When the table has a ``steps`` column and every run did
    the same number of optimiser steps, the sentence says so: then the setting did not change
    the work, and the time differences come from the machine (other runs sharing its cores).
    """
    if min_ratio < 1:
        raise ValueError(f"min_ratio must be >= 1, got {min_ratio!r}")
    for col in (setting, time):
        if col not in table.columns:
            raise ValueError(f"table has no column {col!r}; columns: {list(table.columns)}")
    t = table.sort_values(setting)
    fast, slow = t[time].min(), t[time].max()
    name = setting.replace("_", " ")
    ratio = slow / fast if fast > 0 else math.inf
    if ratio < min_ratio:
        case = "flat"
        text = (f"Time per run barely depends on the {name}: {fast:.1f} to {slow:.1f} s "
                f"(within {100 * (ratio - 1):.0f}%).")
    else:
        rho = spearman(t[setting], t[time])
        case = "rises" if rho >= 0.5 else "falls" if rho <= -0.5 else "mixed"
        first, last = t.iloc[0], t.iloc[-1]
        how = {"rises": f"grows with the {name}", "falls": f"falls as the {name} grows",
               "mixed": f"varies with no consistent trend in the {name}"}[case]
        text = (f"Time per run {how}: {first[time]:.1f} s at {name} {_fmt(first[setting])}, "
                f"{last[time]:.1f} s at {_fmt(last[setting])} ({fast:.1f} to {slow:.1f} s, {ratio:.1f}x).")
    if steps and steps in t.columns and t[steps].nunique() == 1:
        text += (f" Every run did the same {int(t[steps].iloc[0]):,} optimiser steps on the same data, so the "
                 f"{name} does not change the work done")
        text += (": the differences in time come from the machine (runs sharing its cores, other jobs), "
                 "not from the setting." if case != "flat" else ".")
    return Finding(case, text)


def curve_finding(history: pd.DataFrame, label: str, metric: str = "val_acc", *,
                  min_change: float = 0.01, tail: int = 3) -> Finding:
    """How far one learning curve moved, and whether it was still moving at the end.

    ``case``: ``flat`` (moved less than ``min_change`` from first to last epoch), ``rising`` or
    ``falling``; with ``_still`` appended when the last ``tail`` epochs still moved it by more
    than ``min_change / 2`` in the same direction (so more epochs would change it).
    """
    if metric not in history.columns or len(history) == 0:
        raise ValueError(f"history of {label!r} has no {metric!r} values")
    v = history[metric].astype(float).reset_index(drop=True)
    moved = v.iloc[-1] - v.iloc[0]
    recent = v.iloc[-1] - v.iloc[max(0, len(v) - 1 - tail)]
    if abs(moved) < min_change:
        return Finding("flat", f"{label}: {metric.replace('_', ' ')} barely moved ({_pts(moved)} over "
                               f"{len(v)} epochs).")
    case = "rising" if moved > 0 else "falling"
    text = f"{label}: {metric.replace('_', ' ')} {'rose' if moved > 0 else 'fell'} {abs(100 * moved):.1f} points over {len(v)} epochs"
    if np.sign(recent) == np.sign(moved) and abs(recent) > min_change / 2:
        case += "_still"
        text += f" and was still {case.split('_')[0]} at the end ({_pts(recent)} in the last {min(tail, len(v) - 1)})"
    return Finding(case, text + ".")


def learning_rate_curves(table: pd.DataFrame, histories: dict, *, setting: str = "learning_rate",
                         metric: str = "val_acc", min_change: float = 0.01) -> Finding:
    """What the smallest and the largest learning rates did, from their own curves.

    ``case`` is ``"<smallest>/<largest>"``: the smallest part is ``slow`` when that rate ended more
    than ``min_change`` below the best run, else ``fine``; the largest part is ``unstable`` when
    that rate ended more than ``min_change`` below the best, or its curve's epoch-to-epoch drops
    averaged over 3x the best run's, else ``fine``.
    """
    t = table.sort_values(setting).reset_index(drop=True)
    best = t.loc[t["final_val_acc"].idxmax()]
    lo, hi = t.iloc[0], t.iloc[-1]

    def drops(label):
        d = histories[label][metric].astype(float).diff().dropna()
        return float(-d[d < 0].sum()) / max(1, len(d))

    lo_curve = curve_finding(histories[lo.label], f"lr {_fmt(lo[setting])}", metric, min_change=min_change)
    small = "slow" if lo[setting] < best[setting] and lo.final_val_acc < best.final_val_acc - min_change else "fine"
    big_drop, best_drop = drops(hi.label), drops(best.label)
    large = ("unstable" if hi[setting] > best[setting] and (hi.final_val_acc < best.final_val_acc - min_change
                                                            or big_drop > max(3 * best_drop, min_change / 2))
             else "fine")
    text = f"The best rate is {_fmt(best[setting])} (final {metric.replace('_', ' ')} {best.final_val_acc:.4f}). "
    if small == "slow":
        text += (f"The smallest is too slow for this many epochs: it ends {100 * (best.final_val_acc - lo.final_val_acc):.1f} "
                 f"points below the best. {lo_curve.text} ")
    else:
        text += f"Even the smallest rate, {_fmt(lo[setting])}, is not too small here ({lo.final_val_acc:.4f}). "
    if large == "unstable":
        text += (f"The largest, {_fmt(hi[setting])}, ends at {hi.final_val_acc:.4f} (its best epoch {hi.best_val_acc:.4f}) "
                 f"and its curve dropped {100 * big_drop:.2f} points per epoch on average, against "
                 f"{100 * best_drop:.2f} for the best rate: too large steps overshoot.")
    else:
        text += (f"The largest, {_fmt(hi[setting])}, is not unstable here ({hi.final_val_acc:.4f}, "
                 f"{100 * big_drop:.2f} points of drops per epoch against {100 * best_drop:.2f} for the best rate).")
    return Finding(f"{small}/{large}", text)


def best_per_group(pivot: pd.DataFrame, *, row_name: str = "learning rate", col_name: str = "batch size") -> Finding:
    """The best row (e.g. learning rate) for each column (e.g. batch size) of a pivot table of
    accuracies, and how it moves as the column value grows: ``same`` (one row wins everywhere),
    ``rises`` / ``falls`` (never moves the other way), or ``mixed``."""
    if pivot.empty:
        raise ValueError("best_per_group: the table is empty")
    best = pivot.idxmax()
    pairs = ", ".join(f"{col_name} {_fmt(c)}: {_fmt(r)}" for c, r in best.items())
    if best.nunique() == 1:
        case = "same"
        text = (f"The best {row_name} is {_fmt(best.iloc[0])} for every {col_name} ({pairs}): on this grid the "
                f"best {row_name} does not move with the {col_name}.")
    else:
        steps = np.diff(np.asarray(best.sort_index().values, dtype=float))
        case = "rises" if (steps >= 0).all() else "falls" if (steps <= 0).all() else "mixed"
        how = {"rises": f"larger {col_name}s did best with larger {row_name}s",
               "falls": f"larger {col_name}s did best with *smaller* {row_name}s",
               "mixed": f"the best {row_name} moves with no consistent direction"}[case]
        text = f"The best {row_name} per {col_name}: {pairs}; {how}."
    return Finding(case, text)


def gap_finding(pivot: pd.DataFrame, *, row_name: str = "learning rate", col_name: str = "batch size",
                min_change: float = 0.005) -> Finding:
    """How much the largest column (e.g. batch 2048) trails the smallest at each row value,
    and whether that gap ``shrinks`` or ``grows`` steadily as the row value grows, is ``flat``, or ``mixed``."""
    small, large = pivot.columns[0], pivot.columns[-1]
    gap = (pivot[small] - pivot[large]).sort_index()
    parts = ", ".join(f"{100 * abs(g):.1f} points {'behind' if g > 0 else 'ahead'} at {row_name} {_fmt(r)}"
                      for r, g in gap.items())
    text = f"{_cap(col_name)} {_fmt(large)} against {_fmt(small)}: {parts}. "
    if gap.max() - gap.min() < min_change:
        case, more = "flat", f"The gap hardly changes with the {row_name}."
    else:
        steps = np.diff(gap.values.astype(float))
        case = "shrinks" if (steps <= 0).all() else "grows" if (steps >= 0).all() else "mixed"
        more = {"shrinks": f"The larger the {row_name}, the less the large {col_name} loses.",
                "grows": f"The large {col_name} loses *more* at larger {row_name}s.",
                "mixed": f"The gap does not change steadily with the {row_name}."}[case]
    return Finding(case, text + more)


def epochs_to_plateau(table: pd.DataFrame, *, setting: str = "max_epochs", metric: str = "final_val_acc",
                      tol: float = 0.005) -> dict:
    """From an epochs sweep: the fewest epochs whose run ends within ``tol`` of the best run, and
    whether the curve was still moving between the two longest runs (``still_moving``)."""
    t = table.sort_values(setting).reset_index(drop=True)
    best = t[metric].max()
    enough = t[t[metric] >= best - tol].iloc[0]
    last_step = float(t[metric].iloc[-1] - t[metric].iloc[-2]) if len(t) > 1 else 0.0
    return {"enough": int(enough[setting]), "best": float(best), "longest": int(t[setting].iloc[-1]),
            "last_step": last_step, "still_moving": abs(last_step) >= tol}


def epochs_lesson(slow: pd.DataFrame, fast: pd.DataFrame, slow_lr: float, fast_lr: float, *,
                  tol: float = 0.005) -> Finding:
    """Two epochs sweeps at two learning rates: do they need different numbers of epochs?

    ``case``: ``slow_needs_more`` (the smaller rate is still moving at the longest run or needs
    more epochs to come within ``tol`` of its best), ``same``, or ``fast_needs_more``.
    """
    a, b = epochs_to_plateau(slow, tol=tol), epochs_to_plateau(fast, tol=tol)

    def say(r, lr):
        s = f"at lr {_fmt(lr)} the best final accuracy is {r['best']:.4f}, "
        if r["still_moving"]:
            return s + (f"and it was still moving at {r['longest']} epochs ({_pts(r['last_step'])} from the "
                        f"second-longest run)")
        return s + f"and {r['enough']} epochs already come within {100 * tol:.1f} points of it"

    a_need = math.inf if a["still_moving"] else a["enough"]
    b_need = math.inf if b["still_moving"] else b["enough"]
    if a_need > b_need:
        case = "slow_needs_more"
        lesson = ("The number of epochs a run needs depends on the learning rate: the small rate takes much "
                  "smaller steps, so it needs many more epochs for the same progress. An epochs sweep at one "
                  "learning rate says nothing about the epochs needed at another.")
    elif a_need < b_need:
        case = "fast_needs_more"
        lesson = ("Here the larger rate needed more epochs to settle than the small one, so the epochs needed "
                  "depend on the learning rate, though not in the usual direction.")
    else:
        case = "same"
        lesson = "Here both learning rates needed the same number of epochs on this grid."
    return Finding(case, f"{_cap(say(a, slow_lr))}; {say(b, fast_lr)}. {lesson}")


def qat_finding(results: pd.DataFrame, *, n_test: int | None = None, min_change: float = 0.0) -> Finding:
    """Quantisation-aware training against post-training quantisation, and against float.

    Needs ``compare_quantization`` rows with ``mode`` ``ptq`` and ``qat`` and a ``qat_epoch_kept``
    column. ``case``: ``never_better`` (QAT never above PTQ), ``sometimes_better`` or
    ``always_better``, with ``+beats_float`` when some QAT run scores above the float model.
    """
    q = results[results["mode"].isin(["ptq", "qat"])]
    if not {"ptq", "qat"} <= set(q["mode"]):
        raise ValueError("qat_finding needs both 'ptq' and 'qat' rows")
    wide = q.pivot_table(index=["format", "width"], columns="mode", values="test_acc")
    gain = wide["qat"] - wide["ptq"]
    kept = q[q["mode"] == "qat"].set_index(["format", "width"])["qat_epoch_kept"].reindex(wide.index)
    float_acc = float(results["float_acc"].iloc[0])
    n_better = int((gain > min_change).sum())
    case = "never_better" if n_better == 0 else "always_better" if n_better == len(gain) else "sometimes_better"
    kept0 = [f"{f} {w}b" for (f, w), k in sorted(kept.items(), key=lambda i: (i[0][0], -i[0][1])) if k == 0]
    text = f"QAT beats PTQ in {n_better} of {len(gain)} (format, width) pairs (QAT minus PTQ: {gain.min():+.3f} to {gain.max():+.3f}). "
    if kept0:
        text += (f"Where it kept epoch 0 ({', '.join(kept0)}), no fine-tuning epoch beat the PTQ start on validation "
                 "accuracy, so the QAT model *is* the PTQ model and the two scores are equal by construction: "
                 "QAT here chooses the best epoch, counting the start, and never makes things worse on validation. ")
    if case == "never_better":
        worst = float_acc - float(wide["ptq"].min())
        text += ("So the fine-tuning found nothing better than the calibrated PTQ weights"
                 + (f"; PTQ is at most {100 * worst:.1f} points below float at these widths, which leaves "
                    "little to win back." if worst < 0.01 else
                    f", although PTQ loses up to {100 * worst:.1f} points against float: the fine-tuning "
                    "(few epochs at a small learning rate) was too short to recover them."))
    over = wide[wide["qat"] > float_acc]
    if len(over):
        case += "+beats_float"
        text = text.rstrip() + (f" QAT scores above the float model ({float_acc:.3f}) at "
                 f"{', '.join(f'{f} {w}b ({a:.3f})' for (f, w), a in over['qat'].items())}: fine-tuning is also "
                 "more training. If the float model was not fully trained (few epochs, as in quick mode), the "
                 "extra epochs help more than the rounding hurts, so this compares two different amounts of "
                 "training, not float against quantised arithmetic.")
        if n_test:
            se = math.sqrt(float_acc * (1 - float_acc) / n_test)
            margin = float(over["qat"].max() - float_acc)
            text += (f" The largest margin, {margin:.3f}, is {margin / se:.1f} standard errors of a test accuracy "
                     f"on {n_test:,} jets ({se:.3f})" + (", within test noise." if margin < 2 * se else "."))
    return Finding(case, text)


def flops_parameter_note(model, flops_params: int) -> Finding:
    """Why a FLOPs table's parameter total differs from ``count_parameters(model)``.

    The report's table (and MASE's calculators) counts a Linear layer's weight matrix but not
    its bias; BatchNorm's scale and shift are counted. ``case``: ``linear_bias`` when the
    difference is exactly the Linear biases, ``equal``, or ``other``.
    """
    import torch.nn as nn
    total = sum(p.numel() for p in model.parameters())
    biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    diff = total - int(flops_params)
    if diff == 0:
        return Finding("equal", f"The FLOPs table counts all {total:,} parameters.")
    if diff == biases:
        return Finding("linear_bias", f"The FLOPs table counts {int(flops_params):,} parameters, the model has "
                                      f"{total:,}: the difference, {diff:,}, is exactly the Linear layers' biases, "
                                      "which the report's convention leaves out (a bias is an add, not a MAC).")
    return Finding("other", f"The FLOPs table counts {int(flops_params):,} parameters, the model has {total:,} "
                            f"(difference {diff:,}; Linear biases: {biases:,}).")


BACKGROUND = {
    "batch_size": ("A batch of B samples averages B per-sample gradients, so its noise shrinks like 1/sqrt(B), "
                   "and an epoch holds N/B optimiser steps. With a fixed number of epochs a larger batch takes "
                   "fewer, better-averaged steps."),
    "learning_rate": ("The learning rate scales every update. Too small and each step barely moves the weights, "
                      "so training ends before reaching a minimum; too large and steps overshoot, so the loss "
                      "bounces and accuracy wobbles."),
    "lr_x_batch": ("A common rule of thumb scales the learning rate with the batch size (a larger batch has a "
                   "more reliable gradient, and fewer steps per epoch to cover the same ground). It is a "
                   "tendency, often smaller than a factor-of-10 grid step, not a law."),
    "epochs": ("Each epoch is one more pass over the data: too few and the model underfits, more cost time "
               "linearly while the gain shrinks once the curve flattens."),
}


def background(topic: str) -> str:
    """General background for ``topic`` (not a measurement), labelled as such."""
    if topic not in BACKGROUND:
        raise ValueError(f"no background for {topic!r}; topics: {', '.join(BACKGROUND)}")
    return f"**Background (general, not measured here).** {BACKGROUND[topic]}"


__all__ = ["Finding", "TRENDS", "spearman", "classify_trend", "trend_finding", "cost_finding", "curve_finding",
           "learning_rate_curves", "best_per_group", "gap_finding", "epochs_to_plateau", "epochs_lesson",
           "qat_finding", "flops_parameter_note", "background"]
