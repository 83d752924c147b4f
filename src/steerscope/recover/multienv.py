"""Multi-environment recovery: a direction must act the same way in every environment.

In environment ``e`` the behavioural equivalence class of ``v`` is ``v + ker J_e`` (first order),
with ``J_e`` the stacked output Jacobian over that environment's prompts (Gram ``G_e = J_eᵀ J_e``).
Requiring equivalence in all environments leaves ``v + ⋂_e ker J_e = v + ker Σ_e G_e``: the
direction is unique iff the stacked Jacobian ``[J_1; …; J_E]`` has full column rank, and
``class_dim = dim ker Σ_e G_e`` (at a relative gain tolerance) otherwise.

The recovered direction is the one whose effect matches every environment's estimate ``v_e``:
``w = argmin Σ_e ‖J_e (w − v_e)‖² = (Σ G_e)⁺ Σ G_e v_e`` (minimum norm within the remaining class).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steerscope.errors import SteerscopeError
from steerscope.recover.registry import TraitInputs, register_recovery
from steerscope.recover.result import Recovery, cosine, null_dim, unit
from steerscope.recover.stability import bootstrap_stability


def _solve(grams: Sequence[np.ndarray], vectors: Sequence[np.ndarray], tol: float) -> tuple[np.ndarray, int]:
    total = np.sum(grams, axis=0)
    k, lam, vecs = null_dim(total, tol)
    keep = vecs[:, k:]  # eigh sorts ascending: the first k are the null space
    rhs = np.sum([g @ v for g, v in zip(grams, vectors)], axis=0)
    return keep @ ((keep.T @ rhs) / lam[k:]), k


def recover_multienv(
    grams: Sequence[Sequence[np.ndarray]], vectors: Sequence[np.ndarray], tol: float = 1e-3,
    n_boot: int = 0, seed: int = 0,
) -> Recovery:
    """Recover from per-environment lists of per-prompt Gram matrices and per-environment vectors.

    ``grams[e]``: the ``[d, d]`` Gram matrices of environment ``e``'s prompts; ``vectors[e]``: that
    environment's estimate ``v_e`` (``[d]``; pass the same vector for every environment when only
    one extraction exists). ``n_boot`` resamples prompts within each environment.
    """
    if len(grams) != len(vectors) or not grams or any(len(g) == 0 for g in grams):
        raise SteerscopeError("multi-environment recovery needs, per environment, at least one Gram matrix and a vector")
    env_grams = [np.sum(np.asarray(g, dtype=np.float64), axis=0) for g in grams]
    vecs = [np.asarray(v, dtype=np.float64) for v in vectors]
    w, k = _solve(env_grams, vecs, tol)
    direction = unit(w)
    per_env = [null_dim(g, tol)[0] for g in env_grams]
    identifiable = k == 0
    reason = (f"the stacked Jacobian of {len(grams)} environment(s) has full column rank at tolerance {tol:g}: unique"
              if identifiable else
              f"{k} direction(s) have gain ≤ {tol:g} × the largest in every environment: v is determined only up to that subspace")
    details = {"n_environments": len(grams), "tol": tol, "class_dim_per_environment": per_env,
               "cos_with_environment_vectors": [cosine(direction, v) for v in vecs]}
    result = Recovery("multienv", direction, identifiable, k, reason, details=details)
    if n_boot:
        rng = np.random.default_rng(seed)
        stacks = [np.asarray(g, dtype=np.float64) for g in grams]

        def refit(_idx: np.ndarray) -> np.ndarray:
            resampled = [s[rng.integers(0, len(s), len(s))].sum(axis=0) for s in stacks]
            return unit(_solve(resampled, vecs, tol)[0])
        result.stability = bootstrap_stability(refit, 1, direction, n_boot, seed)
    return result


@register_recovery("multienv")
def multienv_from_pairs(inputs: TraitInputs) -> Recovery:
    """:func:`recover_multienv` with the mean difference as every environment's vector."""
    grams = inputs.grams
    if not grams:
        raise SteerscopeError("multi-environment recovery needs per-environment Gram matrices")
    result = recover_multienv(list(grams.values()), [inputs.mean_diff] * len(grams), inputs.tol, inputs.n_boot, inputs.seed)
    result.details["environments"] = list(grams)
    return result
