"""Argument checks that name the argument, the bad value and what is allowed.

A student's notebook calls the API directly, so a wrong argument must fail at the door with
a ValueError/TypeError that says what to pass, not deep inside Lightning or torch::

    chunk = positive_int("chunk", chunk)             # ValueError: chunk must be a positive integer, got 'a'
    load = path_like("load", load, "a checkpoint path")
"""

from __future__ import annotations

import math
import numbers
import os


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(name: str, value) -> int:
    """A whole number > 0 (``64`` or ``64.0``; never ``2.7`` truncated to 2, never ``True``)."""
    if not (_is_number(value) and value > 0 and math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def optional_positive_int(name: str, value):
    """``None`` or an ``int`` > 0 (a worker count: no ``2.0``, no ``True``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
    return value


def positive_float(name: str, value) -> float:
    """A finite number > 0."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def non_negative_float(name: str, value) -> float:
    """A finite number >= 0."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def seed(name: str, value) -> int:
    """A random seed: an integer in [0, 2**32), what numpy's and torch's generators take."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value < 2**32):
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {value!r}")
    return int(value)


def optional(check, name: str, value):
    """``None`` (the setting is off), or ``value`` passing ``check(name, value)``."""
    return None if value is None else check(name, value)


def fraction(name: str, value) -> float:
    """A number in [0, 1)."""
    if not (_is_number(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def proportion(name: str, value, upper: float = 0.9) -> float:
    """A share of the rows in (0, ``upper``]: a validation or test split (none, or all, is a mistake)."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number in (0, {upper}], got {value!r}")
    if not 0.0 < float(value) <= upper:
        raise ValueError(f"{name} must be in (0, {upper}], got {value!r}")
    return float(value)


def one_of(name: str, value, allowed):
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def boolean(name: str, value) -> bool:
    """``True`` or ``False`` exactly (a TOML ``"yes"`` or ``1`` is a mistake, not a truthy value)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """An ``int`` (not ``True``, not ``8.0``: a config's bit width is written as a whole number)
    within the bounds given: ``integer("weight_width", w, 1, 32)``."""
    if (isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo)
            or (hi is not None and value > hi)):
        span = (f" in [{lo}, {hi}]" if lo is not None and hi is not None else
                f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be an integer{span}, got {value!r}")
    return value


def finite_number(name: str, value) -> float:
    """Any finite number (a scale, a weight: negative is allowed)."""
    if not (_is_number(value) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def instance_of(name: str, value, types, what: str):
    """``value`` if it is an instance of ``types``; else a TypeError saying ``what`` to pass."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise TypeError(f"{name} must be {what}, got {_short(value)} ({type(value).__name__})")
    return value


def path_like(name: str, value, what: str = "a file path"):
    """A ``str`` or ``os.PathLike`` naming a file."""
    return instance_of(name, value, (str, os.PathLike), f"{what} (str or pathlib.Path)")


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..."
