"""ICA recovery: the trait is one independent source of the activations (``h = A s + noise``).

Independent components (FastICA, after PCA whitening to ``n_components``) identify the columns of
``A`` up to permutation, sign and scale provided at most one source is Gaussian (Comon 1994).
Contrastive labels fix the permutation (the component whose source best separates the labels)
and the sign (positive label → larger source). Identifiability is checked on the estimated
sources: if the matched source and at least one other are compatible with a Gaussian
(see below), the direction is only determined up to a rotation
within the span of the Gaussian sources; ``class_dim`` is then that span's dimension minus one.

Gaussianity is judged against ICA's own selection bias: FastICA returns maximally non-Gaussian
directions, so even Gaussian data yields components that fail a plain normality test. A source is
called Gaussian-like when its Jarque–Bera statistic does not exceed the ``1 − gauss_alpha``
quantile of the statistics of components that FastICA extracts from pure Gaussian data of the
same size (``n_null`` simulated fits, seeded).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from steerscope.errors import SteerscopeError
from steerscope.recover.assumptions import ica_separable
from steerscope.recover.registry import TraitInputs, register_recovery
from steerscope.recover.result import Recovery, unit
from steerscope.recover.stability import bootstrap_stability


def _fit(x: np.ndarray, labels: np.ndarray, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """``(sources [N, k], mixing [d, k], matched index, label effects [k])`` of one FastICA fit."""
    from sklearn.decomposition import FastICA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: stability over resamples reports the consequence
        ica = FastICA(n_components=n_components, whiten="unit-variance", random_state=seed, max_iter=2000, tol=1e-5)
        try:
            sources = ica.fit_transform(x)
        except (ValueError, np.linalg.LinAlgError) as exc:  # e.g. whitening of nearly collinear activations gives NaN
            raise SteerscopeError(f"FastICA failed on these activations ({exc}); the pairs may be too similar to one another") from None
    pos, neg = sources[labels == 1], sources[labels == 0]
    pooled = np.sqrt((pos.var(axis=0, ddof=1) + neg.var(axis=0, ddof=1)) / 2) + 1e-12
    effects = (pos.mean(axis=0) - neg.mean(axis=0)) / pooled
    return sources, ica.mixing_, int(np.argmax(np.abs(effects))), effects


def _jb(sources: np.ndarray) -> np.ndarray:
    return np.array([stats.jarque_bera(sources[:, j]).statistic for j in range(sources.shape[1])])


def gaussian_null_threshold(n: int, k: int, alpha: float, n_null: int, seed: int) -> float:
    """``1 − alpha`` quantile of Jarque–Bera statistics of FastICA components of Gaussian ``[n, k]`` data."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    null = np.concatenate([_jb(_fit(rng.standard_normal((n, k)), labels, k, seed)[0]) for _ in range(n_null)])
    return float(np.quantile(null, 1 - alpha))


def _direction(mixing: np.ndarray, matched: int, effects: np.ndarray) -> np.ndarray:
    return unit(mixing[:, matched] * np.sign(effects[matched]))


def ica_direction(acts: np.ndarray, labels: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Unit ``[d]`` direction of the source that best separates ``labels`` (one fit, no Gaussianity test)."""
    _, mixing, matched, effects = _fit(np.asarray(acts, dtype=np.float64), np.asarray(labels).astype(int), n_components, seed)
    return _direction(mixing, matched, effects)


def recover_ica(
    acts: np.ndarray, labels: np.ndarray, n_components: int | None = None, seed: int = 0,
    gauss_alpha: float = 0.01, n_boot: int = 0, n_null: int = 10,
) -> Recovery:
    """Recover the trait direction from activations ``acts`` (``[N, d]``) and 0/1 ``labels`` (``[N]``).

    ``n_components`` defaults to ``min(d, N // 10, 32)``. ``n_boot > 0`` adds bootstrap stability
    (rows resampled, ICA refitted with the same seed).
    """
    x = np.asarray(acts, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    if x.ndim != 2 or len(x) != len(y) or set(np.unique(y)) != {0, 1}:
        raise SteerscopeError("ICA recovery needs activations [N, d] and labels of both classes 0 and 1")
    k = n_components or max(2, min(x.shape[1], len(x) // 10, 32))
    sources, mixing, matched, effects = _fit(x, y, k, seed)
    jb = _jb(sources)
    threshold = gaussian_null_threshold(len(x), k, gauss_alpha, n_null, seed)
    gaussian = jb <= threshold
    direction = _direction(mixing, matched, effects)
    if gaussian[matched] and gaussian.sum() >= 2:
        identifiable, class_dim = False, int(gaussian.sum()) - 1
        reason = (f"the matched source and {int(gaussian.sum()) - 1} other(s) are compatible with a Gaussian "
                  f"(Jarque–Bera within the Gaussian null of FastICA at level {gauss_alpha}): ICA cannot separate Gaussian sources, the direction can rotate within their span")
    else:
        identifiable, class_dim = True, 0
        reason = "the matched source is non-Gaussian (at most one Gaussian source among the rest): identified up to sign and scale; labels fix the sign"
    result = Recovery("ica", direction, identifiable, class_dim, reason, symmetry="sign and scale (sign fixed by labels)",
                      details={"n_components": k, "matched_component": matched, "label_effect": float(effects[matched]),
                               "jarque_bera": jb.tolist(), "gaussian_null_threshold": threshold, "n_gaussian_like": int(gaussian.sum()), "seed": seed},
                      assumption=ica_separable(float(jb[matched]), threshold, int(gaussian.sum()), gauss_alpha).to_dict())
    if n_boot:
        def refit(idx: np.ndarray) -> np.ndarray:
            return ica_direction(x[idx], y[idx], k, seed)
        result.stability = bootstrap_stability(refit, len(x), direction, n_boot, seed)
    return result


@register_recovery("ica")
def ica_from_pairs(inputs: TraitInputs) -> Recovery:
    """:func:`recover_ica` on both members of every pair; stability resamples pairs."""
    pos, neg, seed = inputs.pos, inputs.neg, inputs.seed
    x = np.concatenate([pos, neg])
    labels = np.r_[np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)]
    result = recover_ica(x, labels, inputs.n_components, seed, n_boot=0)
    if inputs.n_boot:
        def refit(idx: np.ndarray) -> np.ndarray:
            rows = np.r_[idx, idx + len(pos)]  # resample pairs, keep both members
            return ica_direction(x[rows], labels[rows], result.details["n_components"], seed)
        result.stability = bootstrap_stability(refit, len(pos), result.direction, inputs.n_boot, seed, audited=inputs.reference)
    return result
