"""Multi-environment recovery: a direction must act the same way in every environment.

In environment ``e`` the behavioural equivalence class of ``v`` is ``v + ker J_e`` (first order),
with ``J_e`` the stacked output Jacobian over that environment's prompts (Gram ``G_e = J_eᵀ J_e``).
Requiring equivalence in all environments leaves ``v + ⋂_e ker J_e = v + ker Σ_e G_e``: the
direction is unique iff the stacked Jacobian ``[J_1; …; J_E]`` has full column rank, and
``class_dim = dim ker Σ_e G_e`` (at a relative gain tolerance) otherwise.

The vectors ``v_e`` are extracted *separately* in each environment (from pairs written in it). The
recovered direction is the one whose effect matches every environment's estimate:
``w = argmin Σ_e ‖J_e (w − v_e)‖² = (Σ G_e)⁺ Σ G_e v_e`` (minimum norm within the remaining class).
Whether the ``v_e`` do share one direction is tested on the data
(:func:`~steerscope.recover.assumptions.multienv_consistency`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steerscope.errors import SteerscopeError
from steerscope.recover.assumptions import SharedFit, multienv_consistency
from steerscope.recover.registry import TraitInputs, register_recovery
from steerscope.recover.result import Recovery, cosine, null_dim, unit
from steerscope.recover.stability import bootstrap_stability


def recover_multienv(
    grams: Sequence[Sequence[np.ndarray]], vectors: Sequence[np.ndarray], tol: float = 1e-3,
    n_boot: int = 0, seed: int = 0, contrasts: Sequence[np.ndarray] | None = None, audited: np.ndarray | None = None,
) -> Recovery:
    """Recover from per-environment lists of per-prompt Gram matrices and per-environment vectors.

    ``grams[e]``: the ``[d, d]`` Gram matrices of environment ``e``'s prompts; ``vectors[e]``: the
    vector ``v_e`` extracted in environment ``e`` (``[d]``). ``contrasts[e]`` (``[N_e, d]``, the
    per-pair differences whose mean is ``v_e``) enable the consistency test, and bootstrap refits
    that resample prompts and pairs within each environment (``n_boot``); ``audited``: the vector
    the recovered direction is compared with.
    """
    if len(grams) != len(vectors) or not grams or any(len(g) == 0 for g in grams):
        raise SteerscopeError("multi-environment recovery needs, per environment, at least one Gram matrix and a vector")
    env_grams = [np.sum(np.asarray(g, dtype=np.float64), axis=0) for g in grams]
    vecs = [np.asarray(v, dtype=np.float64) for v in vectors]
    fit = SharedFit(env_grams, tol)
    direction = unit(fit.fit(vecs))
    identifiable = fit.k == 0
    reason = (f"the stacked Jacobian of {len(grams)} environment(s) has full column rank at tolerance {tol:g}: unique"
              if identifiable else
              f"{fit.k} direction(s) have gain ≤ {tol:g} × the largest in every environment: v is determined only up to that subspace")
    details = {"n_environments": len(grams), "tol": tol, "class_dim_per_environment": [null_dim(g, tol)[0] for g in env_grams],
               "cos_with_environment_vectors": [cosine(direction, v) for v in vecs],
               "cos_between_environment_vectors": [[cosine(a, b) for b in vecs] for a in vecs]}
    result = Recovery("multienv", direction, identifiable, fit.k, reason, details=details)
    rows = [np.asarray(c, dtype=np.float64) for c in contrasts] if contrasts is not None else None
    if rows is not None:
        result.assumption = multienv_consistency(fit, rows, seed=seed).to_dict()
    if n_boot:
        rng = np.random.default_rng(seed)
        stacks = [np.asarray(g, dtype=np.float64) for g in grams]

        def refit(_idx: np.ndarray) -> np.ndarray:
            resampled = [s[rng.integers(0, len(s), len(s))].sum(axis=0) for s in stacks]
            targets = [r[rng.integers(0, len(r), len(r))].mean(axis=0) for r in rows] if rows is not None else vecs
            return unit(SharedFit(resampled, tol).fit(targets))
        result.stability = bootstrap_stability(refit, 1, direction, n_boot, seed, audited=audited)
    return result


@register_recovery("multienv")
def multienv_from_pairs(inputs: TraitInputs) -> Recovery:
    """:func:`recover_multienv` with one vector per environment, the mean difference of the pairs
    written in it, for the environments that have both pairs and Gram matrices."""
    grams, env_acts = inputs.grams or {}, inputs.env_acts or {}
    shared = [e for e in grams if e in env_acts]
    if len(shared) < 2:
        raise SteerscopeError(f"multi-environment recovery needs pairs written in at least 2 environments with Jacobians "
                              f"({', '.join(grams) or 'none'}); this trait has pairs in {', '.join(env_acts) or 'no environment'} "
                              "(give pairs an 'environment' field)")
    contrasts = [env_acts[e][0] - env_acts[e][1] for e in shared]
    result = recover_multienv([grams[e] for e in shared], [c.mean(axis=0) for c in contrasts], inputs.tol, inputs.n_boot, inputs.seed,
                              contrasts=contrasts, audited=inputs.reference)
    result.details["environments"] = shared
    return result
