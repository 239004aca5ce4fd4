"""Notebook 07: find the Pareto front of a multi-objective search yourself.

``is_pareto(values, directions)`` gets one tuple of objective values per trial and each
objective's direction ("maximize" or "minimize"), and returns one bool per trial: True when no
other trial is at least as good in every objective and strictly better in one. The reference
is the one :func:`labkit.precision_search.search` uses for its ``pareto`` table.
"""

from __future__ import annotations

import random

from ..precision_search import _pareto_mask
from .verdict import NotYet, call_student, check, ok

# (what the case tests, values, directions)
CASES = [
    ("one objective, maximised", [(0.5,), (0.7,), (0.6,)], ["maximize"]),
    ("accuracy up, cost down", [(0.70, 100), (0.72, 150), (0.69, 120), (0.60, 50)], ["maximize", "minimize"]),
    ("equal points (neither dominates the other)", [(0.7, 100), (0.7, 100), (0.6, 100)], ["maximize", "minimize"]),
    ("a tie in one objective", [(0.7, 100), (0.7, 90)], ["maximize", "minimize"]),
    ("both minimised", [(3, 1), (1, 3), (2, 2), (3, 3)], ["minimize", "minimize"]),
]


def _bools(got, n, call):
    try:
        got = [bool(g) for g in got]
    except TypeError:
        raise NotYet(f"{call} should return one True/False per trial, got {got!r:.80}") from None
    if len(got) != n:
        raise NotYet(f"{call} returned {len(got)} values for {n} trials; give one per trial")
    return got


@check("the Pareto front is_pareto(values, directions)")
def check_pareto(is_pareto, trials=None, objectives=(("accuracy", "maximize"), ("bitops", "minimize"))):
    rng = random.Random(0)
    cases = list(CASES) + [("40 random points", [(rng.random(), rng.random()) for _ in range(40)],
                            ["maximize", "minimize"])]
    if trials is not None:
        names, directions = zip(*objectives)
        cases.append(("this notebook's trials", [tuple(map(float, r)) for r in trials[list(names)].itertuples(index=False)],
                      list(directions)))
    for what, values, directions in cases:
        call = f"is_pareto(<{what}>, {directions})"
        got = _bools(call_student(is_pareto, [tuple(v) for v in values], list(directions), what=call), len(values), call)
        want = _pareto_mask([list(v) for v in values], list(directions))
        if got != want:
            i = next(k for k, (g, w) in enumerate(zip(got, want)) if g != w)
            reason = ("no other trial dominates it" if want[i] else
                      "another trial is at least as good in every objective and better in one")
            raise NotYet(f"{what}: trial {i} {values[i]} should be {'on' if want[i] else 'off'} the front "
                         f"({reason}), your function says {got[i]}.")
    return ok(f"your front matches labkit's on {len(cases)} sets of trials, ties and equal points included.")
