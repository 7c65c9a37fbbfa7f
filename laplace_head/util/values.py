"""Small rules for checking argument values, shared by the modules that validate their
arguments (the interactive API, the base segmenters, the quadrature)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer and not a bool (NumPy integers included): the rule for
    integer arguments (``k``, ``seed``, ``n_nodes``, ``max_side`` ...)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters (ending in ``...``), for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
