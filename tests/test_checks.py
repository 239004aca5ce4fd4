"""labkit.checks: each check passes a good value through and names the bad one."""

import math

import pytest

from labkit.checks import finite_number, integer


def test_integer_takes_whole_ints_within_the_bounds():
    assert integer("w", 8, 1, 32) == 8
    assert integer("n", 0, 0) == 0 and integer("n", -5) == -5 and integer("b", 3, hi=3) == 3
    for bad, lo, hi, span in [(0, 1, 32, " in [1, 32]"), (33, 1, 32, " in [1, 32]"), (8.0, 1, 32, " in [1, 32]"),
                              (True, 1, None, " >= 1"), ("8", None, 4, " <= 4"), (None, None, None, "")]:
        with pytest.raises(ValueError) as err:
            integer("weight_width", bad, lo, hi)
        assert str(err.value) == f"weight_width must be an integer{span}, got {bad!r}"


def test_finite_number_takes_any_finite_real():
    assert finite_number("scale", -1) == -1.0 and finite_number("scale", 0.5) == 0.5
    for bad in (math.inf, math.nan, True, "1", None):
        with pytest.raises(ValueError, match=r"^scale must be a finite number, got "):
            finite_number("scale", bad)
