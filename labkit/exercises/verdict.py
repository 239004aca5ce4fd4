"""What a check cell shows: a :class:`Verdict`, one or two sentences, never a traceback.

A check runs the student's code against labkit's reference. Whatever the student's code
does (raises, returns the wrong type, is still the stub), the check returns a Verdict; the
notebook keeps running. ``@check`` turns an exception escaping a check into a Verdict that
names the exception, so no check can crash a notebook.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

PASS_MARK = "✓"
FAIL_MARK = "not yet:"


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str
    exercise: str = ""

    def __bool__(self):
        return self.passed

    def __str__(self):
        head = f"{PASS_MARK} " if self.passed else f"{FAIL_MARK} "
        where = f"[{self.exercise}] " if self.exercise else ""
        return f"{head}{where}{self.message}"

    __repr__ = __str__

    def _repr_markdown_(self):
        colour = "green" if self.passed else "#b35900"
        head = PASS_MARK if self.passed else FAIL_MARK
        where = f" *{self.exercise}*:" if self.exercise else ""
        return f'<span style="color:{colour}">**{head}**</span>{where} {self.message}'


def ok(message: str) -> Verdict:
    return Verdict(True, message)


def not_yet(message: str) -> Verdict:
    return Verdict(False, message)


class NotYet(Exception):
    """Raised inside a check to stop at the first problem: its text becomes the verdict."""


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return "it is still the stub (it raised NotImplementedError): replace the stub with your code"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"it raised {type(exc).__name__}" + (f": {text}" if text else "")


def check(exercise: str):
    """Decorator for a check function: a Verdict always comes back, labelled with ``exercise``."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                verdict = fn(*args, **kwargs)
            except NotYet as exc:
                verdict = not_yet(str(exc))
            except Exception as exc:  # the student's code (or its output) failed: say so, don't crash
                verdict = not_yet(f"running your code failed: {describe_error(exc)}.")
            return Verdict(verdict.passed, verdict.message, exercise)
        return run
    return wrap


def call_student(fn, *args, what: str, **kwargs):
    """Call the student's ``fn``; an exception becomes NotYet naming the call."""
    if not callable(fn):
        raise NotYet(f"`{what}` should be a function, but it is {type(fn).__name__} {fn!r:.60}.")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotYet(f"`{what}` is still the stub (it raised NotImplementedError): write it in the cell above.")
    except Exception as exc:
        raise NotYet(f"calling `{what}` failed: {describe_error(exc)}.")
