"""labkit.checks: each check passes a good value through and names the bad one."""

import math

import pytest

from labkit.checks import finite_number, integer, proportion


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


def test_proportion_is_a_share_in_zero_to_upper():
    assert proportion("val_fraction", 0.1) == 0.1 and proportion("test_fraction", 1, upper=1.0) == 1.0
    for bad in (0, 0.95, -0.1):
        with pytest.raises(ValueError, match=rf"^val_fraction must be in \(0, 0.9\], got {bad!r}$"):
            proportion("val_fraction", bad)
    for bad in ("0.1", None, True):
        with pytest.raises(TypeError, match=rf"^val_fraction must be a number in \(0, 0.9\], got {bad!r}$"):
            proportion("val_fraction", bad)
