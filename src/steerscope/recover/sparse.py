"""Sparse recovery: the direction is a k-sparse combination of dictionary atoms.

Observed is ``y = M v`` for an observation operator ``M`` (the identity when the direction is seen
in activation space; a stacked Jacobian when only its effect on the output is seen). With
dictionary rows ``D`` (``[K, d]``: neuron basis, a learned dictionary, SAE decoder rows, …), the code
``c`` solves ``y ≈ Φ c`` with ``Φ = M Dᵀ``, ``‖c‖₀ ≤ k`` (orthogonal matching pursuit), and
``v = Dᵀ c``.

Uniqueness: every k-sparse solution is unique if ``2k < spark(Φ)``; with ``μ`` the mutual
coherence of Φ's normalised columns, ``spark ≥ 1 + 1/μ``, so ``2k < 1 + 1/μ`` *certifies* it.
The Welch bound ``μ ≥ sqrt((K − m)/(m (K − 1)))`` (K columns in rank m) limits what any dictionary
of that size can certify. When the bound does not certify, a constructive search looks for a
*witness*: another support (one atom swapped) that fits ``y`` as well but gives a different
direction — proof that sparsity does not identify the direction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steerscope.errors import SteerscopeError
from steerscope.recover.assumptions import sparse_energy
from steerscope.recover.registry import TraitInputs, register_recovery
from steerscope.recover.result import Recovery, cosine, unit
from steerscope.recover.stability import bootstrap_stability


def coherence(columns: np.ndarray) -> float:
    """Mutual coherence: largest |cos| between two distinct columns of ``columns`` (``[m, K]``)."""
    norms = np.linalg.norm(columns, axis=0)
    normed = columns[:, norms > 0] / norms[norms > 0]
    gram = np.abs(normed.T @ normed)
    np.fill_diagonal(gram, 0.0)
    return float(gram.max()) if gram.size > 1 else 0.0


def welch_bound(n_columns: int, rank: int) -> float:
    """Smallest coherence any ``n_columns`` unit vectors in ``rank`` dimensions can have."""
    return float(np.sqrt((n_columns - rank) / (rank * (n_columns - 1)))) if n_columns > rank else 0.0


def omp(phi: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-sparse code ``[K]`` of ``y`` (``[m]``) over the columns of ``phi`` (``[m, K]``), by orthogonal matching pursuit
    (fewer atoms when they already fit ``y`` exactly)."""
    import warnings

    from sklearn.linear_model import OrthogonalMatchingPursuit

    norms = np.linalg.norm(phi, axis=0)
    norms[norms == 0] = 1.0
    with warnings.catch_warnings():  # an exact fit with fewer atoms stops the pursuit early: expected, not a problem
        warnings.filterwarnings("ignore", message="Orthogonal matching pursuit ended prematurely", category=RuntimeWarning)
        fitted = OrthogonalMatchingPursuit(n_nonzero_coefs=k, fit_intercept=False).fit(phi / norms, y)
    return fitted.coef_ / norms


def _witness(phi: np.ndarray, dictionary: np.ndarray, y: np.ndarray, support: np.ndarray, direction: np.ndarray, tol: float) -> dict | None:
    """An equally good support with one atom swapped and a different direction, if one exists."""
    base = np.linalg.norm(phi[:, support] @ np.linalg.lstsq(phi[:, support], y, rcond=None)[0] - y)
    slack = base + tol * np.linalg.norm(y)
    for out in support:
        for atom in np.setdiff1d(np.arange(phi.shape[1]), support):
            alt = np.append(support[support != out], atom)
            coef = np.linalg.lstsq(phi[:, alt], y, rcond=None)[0]
            if np.linalg.norm(phi[:, alt] @ coef - y) <= slack:
                other = unit(dictionary[alt].T @ coef)
                cos = cosine(other, direction)
                if abs(cos) < 0.99:
                    return {"swap_out": int(out), "swap_in": int(atom), "cos_with_recovered": cos}
    return None


def recover_sparse(
    target: np.ndarray, dictionary: np.ndarray, k: int, operator: np.ndarray | None = None,
    tol: float = 1e-6, samples: np.ndarray | None = None, n_boot: int = 0, seed: int = 0, audited: np.ndarray | None = None,
) -> Recovery:
    """Sparse code of ``target`` (``[d]``) over ``dictionary`` rows (``[K, d]``) with ``k`` atoms.

    ``operator`` (``[m, d]``, default identity) is what is observed of the direction. ``samples``
    (``[N, d]``, e.g. per-pair contrasts whose mean is ``target``) enable bootstrap stability, and
    the refits' cosines with ``audited`` when given. The assumption test compares the energy the
    ``k`` atoms capture with that of random vectors (:func:`~steerscope.recover.assumptions.sparse_energy`).
    """
    v = np.asarray(target, dtype=np.float64)
    dic = np.asarray(dictionary, dtype=np.float64)
    if dic.ndim != 2 or dic.shape[1] != v.shape[0]:
        raise SteerscopeError(f"dictionary must be [K, {v.shape[0]}], got {dic.shape}")
    if not 1 <= k <= dic.shape[0]:
        raise SteerscopeError(f"sparsity k must be in 1..{dic.shape[0]}, got {k}")
    m = np.eye(len(v)) if operator is None else np.asarray(operator, dtype=np.float64)
    phi = m @ dic.T

    def solve(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coef = omp(phi, m @ t, k)
        return coef, unit(dic.T @ coef)

    coef, direction = solve(v)
    support = np.flatnonzero(coef)
    mu = coherence(phi)
    rank = int(np.linalg.matrix_rank(phi))
    welch = welch_bound(phi.shape[1], rank)
    certified = 2 * k < 1 + 1 / mu if mu > 0 else True
    witness = None if certified else _witness(phi, dic, m @ v, support, direction, tol)
    fit = float(np.linalg.norm(phi @ coef - m @ v) / max(np.linalg.norm(m @ v), 1e-300))
    if certified:
        identifiable, class_dim = True, 0
        reason = f"coherence μ = {mu:.3g} certifies uniqueness of every {k}-sparse code (2k < 1 + 1/μ)"
    elif witness is not None:
        identifiable, class_dim = False, None
        reason = (f"not identifiable: swapping atom {witness['swap_out']} for {witness['swap_in']} fits equally well "
                  f"with a different direction (cos {witness['cos_with_recovered']:.3f}); coherence μ = {mu:.3g}")
    else:
        identifiable, class_dim = None, None
        reason = f"recovered, but coherence μ = {mu:.3g} cannot certify uniqueness for k = {k} and no one-swap witness was found"
    details = {"k": k, "support": support.tolist(), "coherence": mu, "welch_bound": welch, "rank": rank,
               "max_certified_k": int(np.ceil((1 + 1 / mu) / 2) - 1) if mu > 0 else int(dic.shape[0]),
               "max_certifiable_k_any_dictionary": int(np.ceil((1 + 1 / welch) / 2) - 1) if welch > 0 else None,
               "relative_residual": fit, "witness": witness, "cos_with_target": float(direction @ unit(v))}
    result = Recovery("sparse", direction, identifiable, class_dim, reason, details=details,
                      assumption=sparse_energy(phi, m, v, k, seed=seed).to_dict())
    if n_boot and samples is not None:
        rows = np.asarray(samples, dtype=np.float64)
        result.stability = bootstrap_stability(lambda idx: solve(rows[idx].mean(axis=0))[1], len(rows), direction, n_boot, seed,
                                               audited=audited)
    return result


def load_dictionary(spec: str, d_model: int, acts: np.ndarray | None = None, n_atoms: int = 0, seed: int = 0) -> np.ndarray:
    """Dictionary rows ``[K, d]``: ``neurons`` (identity), ``learned`` (sparse dictionary learning on
    ``acts``, ``n_atoms`` atoms) or a ``.npy`` / ``.safetensors`` file of rows (e.g. SAE decoder rows;
    a safetensors file must hold exactly one 2-D tensor)."""
    if spec == "neurons":
        return np.eye(d_model)
    if spec == "learned":
        from sklearn.decomposition import MiniBatchDictionaryLearning

        if acts is None:
            raise SteerscopeError("a learned dictionary needs activations")
        learner = MiniBatchDictionaryLearning(n_components=n_atoms or 2 * d_model, alpha=1.0, random_state=seed, batch_size=64)
        return learner.fit(acts - acts.mean(axis=0)).components_
    path = Path(spec)
    if path.suffix == ".npy":
        rows = np.load(path, allow_pickle=False)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = [t for t in load_file(str(path)).values() if t.ndim == 2]
        if len(tensors) != 1:
            raise SteerscopeError(f"{path} must hold exactly one 2-D tensor of dictionary rows, found {len(tensors)}")
        rows = tensors[0]
    else:
        raise SteerscopeError(f"dictionary must be neurons, learned, or a .npy/.safetensors file, got {spec!r}")
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or d_model not in rows.shape:
        raise SteerscopeError(f"dictionary in {path} has shape {rows.shape}; expected [K, {d_model}]")
    return rows if rows.shape[1] == d_model else rows.T


def sqrt_operator(gram: np.ndarray) -> np.ndarray:
    """``M`` with ``MᵀM = gram`` (``[d, d]``): the observation operator of a stacked Jacobian."""
    lam, vecs = np.linalg.eigh(gram)
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * vecs.T


@register_recovery("sparse")
def sparse_from_pairs(inputs: TraitInputs) -> Recovery:
    """:func:`recover_sparse` of the mean difference over ``inputs.dictionary``, observed in
    activation space or (``observe="jacobian"``) through all Gram matrices; stability resamples pairs."""
    observe = inputs.observe
    if observe not in ("activations", "jacobian"):
        raise SteerscopeError(f"observe must be activations or jacobian, got {observe!r}")
    if observe == "jacobian" and not inputs.grams:
        raise SteerscopeError("sparse recovery observed through the Jacobian needs Gram matrices")
    operator = sqrt_operator(inputs.total_gram()) if observe == "jacobian" else None
    pos, neg = inputs.pos, inputs.neg
    dic = load_dictionary(inputs.dictionary, pos.shape[1], np.concatenate([pos, neg]), seed=inputs.seed)
    result = recover_sparse(inputs.mean_diff, dic, inputs.k, operator, samples=inputs.contrasts, n_boot=inputs.n_boot, seed=inputs.seed,
                            audited=inputs.reference)
    result.details["dictionary"] = inputs.dictionary
    result.details["observe"] = observe
    return result
