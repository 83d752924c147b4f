"""Stability of a recovered direction over bootstrap resamples of its input rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from steerscope.recover.result import cosine


def bootstrap_stability(
    recover: Callable[[np.ndarray], np.ndarray], n_rows: int, reference: np.ndarray,
    n_boot: int = 50, seed: int = 0, signed: bool = True,
) -> dict:
    """Cosines between ``reference`` and directions recovered from bootstrap resamples.

    ``recover(idx)`` refits on the rows ``idx`` (drawn with replacement from ``range(n_rows)``)
    and returns a ``[d]`` direction. ``signed=False`` uses ``|cos|`` (for sign-free methods).
    Returns the mean, the 2.5/97.5 % percentile interval, the minimum and the seed.
    """
    rng = np.random.default_rng(seed)
    cosines = []
    for _ in range(n_boot):
        cos = cosine(recover(rng.integers(0, n_rows, n_rows)), reference)
        cosines.append(cos if signed else abs(cos))
    arr = np.array(cosines)
    return {"n_boot": n_boot, "seed": seed, "mean_cos": float(arr.mean()), "ci_low": float(np.percentile(arr, 2.5)),
            "ci_high": float(np.percentile(arr, 97.5)), "min_cos": float(arr.min()), "signed": signed}
