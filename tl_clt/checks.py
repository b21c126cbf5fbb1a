"""Checks of user arguments shared across tl_clt: numbers and dtypes.

One policy everywhere: a number may be a Python int or float, a numpy scalar or a 0-d tensor (all are
unambiguous numbers); a string, a bool or a tensor with several values is a TypeError that says what to
pass. Dtypes may be a floating torch.dtype or one of its common names ("float32", "bfloat16", ...).
"""

from __future__ import annotations

import numbers

import numpy as np
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


def as_number(name: str, value) -> float:
    """`value` as a float if it is one number (int, float, numpy scalar, 0-d tensor); else TypeError."""
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 0):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = f"; pass {value.strip()} without quotes" if isinstance(value, str) and _is_float(value) else ""
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}){hint}.")
    return float(value)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fraction(name: str, value) -> float:
    """`value` as a float in [0, 1] (see `as_number`); ValueError for NaN or outside the interval."""
    x = as_number(name, value)
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
