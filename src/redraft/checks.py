"""Checks of the numbers the API takes (guidance scale, steps, ...): an InputError naming the value,
what it may be, and the fix, before any work is done."""

from __future__ import annotations

import math
import numbers

from .errors import InputError


def finite(name: str, value, minimum: float | None = None, maximum: float | None = None, fix: str = "") -> float:
    """`value` as a float: a real number (not a bool, NaN or infinite) within [minimum, maximum]."""
    number = _real(value)
    if number is None or not math.isfinite(number) or not _within(number, minimum, maximum):
        _refuse(name, value, f"a finite number{_range(minimum, maximum)}", fix)
    return number


def whole(name: str, value, minimum: int | None = 1, maximum: int | None = None, fix: str = "") -> int:
    """`value` as an int: a whole number (not a bool; 4.0 counts, 4.5 does not) within [minimum, maximum]."""
    number = _real(value)
    if number is None or not math.isfinite(number) or number != int(number) or not _within(number, minimum, maximum):
        _refuse(name, value, f"a whole number{_range(minimum, maximum)}", fix)
    return int(number)


def _real(value) -> float | None:
    """A float for an int or float (numpy's too), else None: a bool or a string is not a number here."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _within(number: float, minimum, maximum) -> bool:
    return (minimum is None or number >= minimum) and (maximum is None or number <= maximum)


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f" of at least {minimum:g}"
    return f" of at most {maximum:g}" if maximum is not None else ""


def _refuse(name: str, value, allowed: str, fix: str) -> None:
    shown = f"{value!r}" + ("" if isinstance(value, numbers.Real) else f" (a {type(value).__name__})")
    raise InputError(f"{name} is {shown}, but it must be {allowed}" + (f"; {fix}" if fix else ".")
                     + ("" if not fix or fix.endswith(".") else "."))
