"""Stability of a recovered direction over bootstrap resamples of its input rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from steerscope.recover.result import cosine


def bootstrap_stability(
    recover: Callable[[np.ndarray], np.ndarray], n_rows: int, reference: np.ndarray,
    n_boot: int = 50, seed: int = 0, signed: bool = True, audited: np.ndarray | None = None,
) -> dict:
    """Cosines between ``reference`` and directions recovered from bootstrap resamples.

    ``recover(idx)`` refits on the rows ``idx`` (drawn with replacement from ``range(n_rows)``)
    and returns a ``[d]`` direction. ``signed=False`` uses ``|cos|`` (for sign-free methods).
    Returns the mean, the 2.5/97.5 % percentile interval, the minimum and the seed; with ``audited``
    (``[d]``), also the same summary of the refits' cosines with it under ``audited``.
    """
    rng = np.random.default_rng(seed)
    cosines, with_audited = [], []
    for _ in range(n_boot):
        direction = recover(rng.integers(0, n_rows, n_rows))
        cos = cosine(direction, reference)
        cosines.append(cos if signed else abs(cos))
        if audited is not None:
            with_audited.append(cosine(direction, audited))
    out = _summary(np.array(cosines)) | {"n_boot": n_boot, "seed": seed, "signed": signed}
    return out | ({"audited": _summary(np.array(with_audited))} if audited is not None else {})


def _summary(cosines: np.ndarray) -> dict:
    return {"mean_cos": float(cosines.mean()), "ci_low": float(np.percentile(cosines, 2.5)),
            "ci_high": float(np.percentile(cosines, 97.5)), "min_cos": float(cosines.min())}
