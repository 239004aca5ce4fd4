"""Notebook 05: write the fixed-point quantiser ``q(x, width, frac)`` yourself.

The reference is labkit's ``integer`` quantiser (the one ``LinearInteger`` uses):
``clamp(round(x * 2^frac), -2^(width-1), 2^(width-1) - 1) / 2^frac`` with ties to even.
The check tries groups of cases (ordinary values, negatives, ties, the top and bottom of the
range) and reports the first group that disagrees, with one example and what it means.
"""

from __future__ import annotations

import torch

from ..quantize.quantizers import IntegerQuantizer
from .verdict import NotYet, call_student, check, ok


def reference_q(x: torch.Tensor, width: int, frac: int) -> torch.Tensor:
    return IntegerQuantizer(width=width, frac_width=frac).quantize(x)


# (group name, what a failure there usually means, cases of (values, width, frac))
CASES = [
    ("ordinary values", "scale by 2^frac, round to an integer, scale back: q(0.3, 8, 2) is 0.25 (step 2^-2)",
     [([0.3, 1.1, 0.6, 2.2, 0.0], 8, 2), ([0.07, 0.51, 1.3], 8, 4), ([3.0, 1.4], 6, 0)]),
    ("negative values", "negatives round to the nearest step too (round, not floor or int(), "
     "which move them towards zero or away from it): q(-0.3, 8, 2) is -0.25 and q(-0.4, 8, 2) is -0.5",
     [([-0.3, -0.4, -1.1, -2.2], 8, 2), ([-0.07, -0.51, -1.3], 8, 4)]),
    ("ties", "a value exactly half-way between two steps goes to the even one, as torch.round does "
     "(q(0.125, 8, 2) is 0.0, q(0.375, 8, 2) is 0.5, q(-0.125, 8, 2) is -0.0)",
     [([0.125, 0.375, 0.625, -0.125, -0.375], 8, 2), ([0.5, 1.5, 2.5, -0.5, -2.5], 8, 0)]),
    ("clamping at the top", "values above the range saturate at the largest code, "
     "(2^(width-1) - 1) / 2^frac: q(100, 8, 4) is 127/16 = 7.9375",
     [([100.0, 7.99, 8.0], 8, 4), ([1.0, 5.0], 2, 2), ([3.0], 4, 1)]),
    ("clamping at the bottom", "values below the range saturate at the smallest code, "
     "-2^(width-1) / 2^frac (one more step than the top, two's complement): q(-100, 8, 4) is -128/16 = -8.0",
     [([-100.0, -8.0, -8.03], 8, 4), ([-1.0, -5.0], 2, 2), ([-3.0], 4, 1)]),
]


def _fmt(v: float) -> str:
    return f"{v:g}"


@check("fixed-point quantiser q(x, width, frac)")
def check_fixed_point(q, extra: torch.Tensor | None = None, extra_precision: tuple[int, int] = (8, 4)):
    """``q`` must match labkit's integer quantiser on every case group (and on ``extra``, e.g. real weights)."""
    cases = list(CASES)
    if extra is not None:
        cases.append(("the notebook's weights", "the same rule applied to a real weight tensor",
                      [(extra.detach().flatten()[:512].tolist(), *extra_precision)]))
    total = 0
    for group, meaning, group_cases in cases:
        for values, width, frac in group_cases:
            x = torch.tensor(values, dtype=torch.float32)
            got = call_student(q, x.clone(), width, frac, what=f"q(x, {width}, {frac})")
            if not isinstance(got, torch.Tensor):
                raise NotYet(f"q should return a tensor like its input x, but it returned a {type(got).__name__}.")
            if got.shape != x.shape:
                raise NotYet(f"q should return a tensor of x's shape {tuple(x.shape)}, got {tuple(got.shape)}.")
            want = reference_q(x, width, frac)
            bad = (got.float() != want)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise NotYet(f"{group}: q({_fmt(values[i])}, {width}, {frac}) gave {_fmt(float(got[i]))}, "
                             f"expected {_fmt(float(want[i]))}. Hint: {meaning}.")
            total += len(values)
    return ok(f"q matches labkit's fixed-point quantiser on all {total} values: ordinary values, negatives, "
              "ties (to even) and saturation at both ends of the range.")
