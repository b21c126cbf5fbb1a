"""Checks of user arguments shared by every public entry: numbers, ints, top-k counts and dtypes.

One policy everywhere: a number may be a Python int or float, a numpy scalar or a 0-d tensor (all are
unambiguous numbers), accepted as the number it holds; a string, a bool (for counts), None or a tensor
with several values is a TypeError naming the argument and what to pass. Dtypes may be a floating
torch.dtype or one of its common names ("float32", "bfloat16", ...).
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPE_NAMES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
    "double": torch.float64,
    "fp64": torch.float64,
}


def _unwrap(x):
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or x.ndim != 0:
            return x
        return x.item()
    item = getattr(x, "item", None)  # numpy scalars and 0-d arrays
    if callable(item) and getattr(x, "ndim", None) == 0:
        return item()
    return x


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def as_number(x, name: str, *, finite: bool = True) -> float:
    """`x` (a real number, numpy scalar or 0-d tensor) as a float; TypeError / ValueError otherwise."""
    value = _unwrap(x)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = f"; pass {x.strip()} without quotes" if isinstance(x, str) and _is_float(x) else ""
        raise TypeError(f"{name} must be a number, got {x!r} ({type(x).__name__}){hint}.")
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


def fraction(name: str, value) -> float:
    """`value` as a float in [0, 1] (see `as_number`); ValueError for NaN or outside the interval."""
    x = as_number(value, name, finite=False)
    if not 0.0 <= x <= 1.0:  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    return x


def float_dtype(dtype, *, name: str = "dtype", allow_none: bool = False) -> torch.dtype | None:
    """A floating torch.dtype from a dtype or its name; TypeError/ValueError naming what is accepted."""
    if dtype is None and allow_none:
        return None
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in FLOAT_DTYPE_NAMES:
            raise ValueError(
                f"{name}={dtype!r} is not a floating dtype name; use a torch dtype (torch.float32, "
                f"torch.bfloat16, ...) or one of {sorted(FLOAT_DTYPE_NAMES)}."
            )
        return FLOAT_DTYPE_NAMES[key]
    if dtype not in FLOAT_DTYPE_NAMES.values():
        raise TypeError(
            f"{name} must be a floating dtype (torch.float32, torch.bfloat16, torch.float16 or "
            f"torch.float64), got {dtype!r}: weights and activations are floating point."
        )
    return dtype


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in t (min/max propagate both; ~50x faster than `isfinite(t).all()` on bf16)."""
    return t.numel() == 0 or all(bool(torch.isfinite(x)) for x in torch.aminmax(t))
