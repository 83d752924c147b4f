"""Text formatting of numbers that may be missing: None and NaN/Inf render as ``n/a``."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

MISSING = "n/a"


def num(x: Any, fmt: str = ".3g") -> str:
    """``x`` formatted with ``fmt``; ``n/a`` for None or a non-finite number, ``str(x)`` for a bool
    or a non-number."""
    if x is None:
        return MISSING
    if isinstance(x, bool) or not isinstance(x, Real):
        return str(x)
    return format(x, fmt) if math.isfinite(x) else MISSING


def ci(est: Any, low: Any, high: Any, fmt: str = ".3g") -> str:
    """``est [low, high]``, each formatted by :func:`num` with ``fmt``."""
    return f"{num(est, fmt)} [{num(low, fmt)}, {num(high, fmt)}]"
