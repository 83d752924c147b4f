"""Statistics for comparing the behavioural effects of steering conditions.

Conventions shared by every function here:

* A condition's scores are ``[n_prompts]`` (one score per prompt) or ``[n_prompts, n_samples]``
  (several sampled completions per prompt). All conditions are evaluated on the same prompts,
  so arrays are paired by prompt index (the first axis).
* The prompt is the unit of inference (the cluster): samples of one prompt are averaged into a
  per-prompt mean, and bootstrap replicates resample whole prompts, never single samples.
* Variances are sample variances (``ddof=1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

MAX_DROPPED_FRACTION = 0.1


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a 1-D float array with at least 2 entries."""
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per prompt), got shape {a.shape}")
    if a.size < 2:
        raise ValueError(f"{name} needs at least 2 observations, got {a.size}")
    return a


def _paired_vectors(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as 1-D float arrays of equal length ``n >= 2``."""
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"paired data must have equal lengths, got {a.size} and {b.size}")
    return a, b


def _paired_sd(x: np.ndarray, y: np.ndarray) -> float:
    """The paired standardiser ``sqrt((var_x + var_y) / 2)``; ValueError when it is 0."""
    sd = float(np.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2))
    if sd == 0:
        raise ValueError("zero standardiser: both x and y are constant")
    return sd


def _hedges_j(df: int) -> float:
    """Hedges' small-sample correction ``J = 1 − 3 / (4·df − 1)``."""
    return 1 - 3 / (4 * df - 1)


def prompt_means(scores: ArrayLike) -> np.ndarray:
    """Per-prompt means ``[n_prompts]`` of ``[n_prompts]`` or ``[n_prompts, n_samples]`` scores."""
    a = np.asarray(scores, dtype=float)
    if a.ndim == 1:
        return a
    if a.ndim == 2:
        return a.mean(axis=1)
    raise ValueError(f"scores must be [n_prompts] or [n_prompts, n_samples], got shape {a.shape}")


def hedges_g(x: ArrayLike, y: ArrayLike, paired: bool = True) -> float:
    """Hedges' g for ``x − y`` (positive when x is larger).

    Paired (``x``, ``y``: per-prompt means of the same prompts, ``[n]``): ``d_av = mean(x − y) /
    sqrt((var_x + var_y) / 2)`` with ``df = n − 1``. Unpaired (``[n1]``, ``[n2]``):
    ``d = (mean(x) − mean(y)) / s_pooled`` with ``s_pooled² = ((n1−1)·var_x + (n2−1)·var_y) / df``,
    ``df = n1 + n2 − 2``. Both return ``J·d`` with ``J = 1 − 3 / (4·df − 1)``.
    Raises ValueError on fewer than 2 observations (per group) or a zero standardiser.
    """
    if paired:
        a, b = _paired_vectors(x, y)
        return _hedges_j(a.size - 1) * float(np.mean(a - b)) / _paired_sd(a, b)
    a, b = _vector(x, "x"), _vector(y, "y")
    df = a.size + b.size - 2
    pooled = float(np.sqrt(((a.size - 1) * np.var(a, ddof=1) + (b.size - 1) * np.var(b, ddof=1)) / df))
    if pooled == 0:
        raise ValueError("zero standardiser: both x and y are constant")
    return _hedges_j(df) * float(a.mean() - b.mean()) / pooled


def cluster_bootstrap(
    statistic: Callable[..., float],
    arrays: Sequence[ArrayLike],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Percentile cluster-bootstrap interval: ``(estimate, low, high)``.

    ``arrays`` all have the prompt (cluster) on the first axis, with equal lengths. Each replicate
    draws ``n_prompts`` prompt indices with replacement from ``numpy.random.default_rng(seed)``
    and evaluates ``statistic(*[a[idx] for a in arrays])`` — the same indices for every array,
    so the pairing is preserved. Replicates whose statistic is not finite or raises ValueError
    (e.g. zero variance) are dropped; more than 10 % dropped raises ValueError. ``estimate`` is
    the statistic on the original data (which must be finite).
    """
    data = [np.asarray(a) for a in arrays]
    if not data:
        raise ValueError("cluster_bootstrap needs at least one array")
    n = data[0].shape[0] if data[0].ndim else 0
    if n < 1 or any(a.ndim == 0 or a.shape[0] != n for a in data):
        raise ValueError(f"arrays must share a non-empty first (prompt) axis, got shapes {[a.shape for a in data]}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    estimate = float(statistic(*data))
    if not np.isfinite(estimate):
        raise ValueError(f"statistic is not finite on the original data ({estimate})")
    rng = np.random.default_rng(seed)
    replicates, last_error = [], None
    for idx in rng.integers(0, n, size=(n_boot, n)):
        try:
            replicates.append(float(statistic(*[a[idx] for a in data])))
        except ValueError as err:
            replicates.append(np.nan)
            last_error = err
    values = np.asarray(replicates)
    values = values[np.isfinite(values)]
    dropped = n_boot - values.size
    if dropped > MAX_DROPPED_FRACTION * n_boot:
        raise ValueError(f"{dropped} of {n_boot} bootstrap replicates undefined (> 10 %)") from last_error
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return estimate, float(low), float(high)


def efficacy(cond: ArrayLike, none: ArrayLike, v: ArrayLike) -> float:
    """``(mean(cond) − mean(none)) / (mean(v) − mean(none))``, means over all entries.

    1 means ``cond`` has the full effect of the vector ``v``, 0 no effect over the unsteered
    baseline ``none``. Arrays are ``[n_prompts]`` or ``[n_prompts, n_samples]``. Raises
    ValueError when ``mean(v) == mean(none)`` (the vector has no effect: efficacy undefined).
    """
    base = float(np.asarray(none).mean())
    denominator = float(np.asarray(v).mean()) - base
    if denominator == 0:
        raise ValueError("efficacy undefined: the vector has no effect (mean(v) == mean(none))")
    return (float(np.asarray(cond).mean()) - base) / denominator


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("p_values must be a 1-D sequence of values in [0, 1]")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
