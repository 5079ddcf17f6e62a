"""One rule for every number a user types into the workbench (scales, clamp values, coefficients)."""

from __future__ import annotations

import math

# Past this an edited activation overflows float16/bfloat16 arithmetic in the next layers.
MAX_ABS = 1e6


def number_problem(name: str, value: float) -> str | None:
    """Why `value` cannot be used for field `name`, or None when it can."""
    if not math.isfinite(value):
        return f"{name}: must be a finite number, got {value!r}"
    if abs(value) > MAX_ABS:
        return f"{name}: {value:g} is out of range ±{MAX_ABS:g}"
    return None


def parse_number(name: str, text: str) -> float:
    """A typed number, or ValueError with one line saying what is wrong."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    problem = number_problem(name, value)
    if problem is not None:
        raise ValueError(problem)
    return value
