"""Checks of scalar arguments shared by every public entry: numbers, ints and top-k counts.

A user's scalar may be a Python number, a numpy scalar or a 0-d tensor; each is accepted as the number it
holds, the same way everywhere. Strings, bools (for counts), None and arrays are refused with a
TypeError naming the argument.
"""

from __future__ import annotations

import math
import numbers

import torch


def _unwrap(x):
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or x.ndim != 0:
            return x
        return x.item()
    item = getattr(x, "item", None)  # numpy scalars and 0-d arrays
    if callable(item) and getattr(x, "ndim", None) == 0:
        return item()
    return x


def as_number(x, name: str, *, finite: bool = True) -> float:
    """`x` (a real number, numpy scalar or 0-d tensor) as a float; TypeError / ValueError otherwise."""
    value = _unwrap(x)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {x!r} ({type(x).__name__}).")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    return value


def as_int(x, name: str) -> int:
    """`x` (an int, numpy integer or 0-d integer tensor) as an int; bools and floats are refused."""
    value = _unwrap(x)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {x!r} ({type(x).__name__}).")
    return int(value)


def check_k(k, name: str = "k", *, what: str = "how many") -> int:
    """A top-k count: an int >= 1."""
    value = _unwrap(k)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 ({what}), got {k!r}.")
    return int(value)
