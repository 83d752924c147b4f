"""Does a recovery method's structural assumption hold on the data, and does the direction it
recovers agree with the audited vector?

A method's uniqueness condition (``Recovery.identifiable``) says what the assumption would pin
down *if* it held; the tests here ask whether it holds, each against a null calibrated on the same
data:

* :func:`multienv_consistency`: are the per-environment vectors one shared direction up to
  what each environment's Jacobian cannot see? The misfit of the shared fit, against the misfit
  that resampling the pairs alone produces when the environments do share it (parametric bootstrap);
* :func:`crosslayer_carry`: is the later layer's vector the base layer's carried by the layer map?
  The cosine of ``Φ̄ v`` with ``v′`` against what resampling the pairs gives when it is (next to
  the cosines with sign-shuffled later-layer pairs, what no relation gives);
* :func:`ica_separable`: is the matched source non-Gaussian beyond what FastICA finds in Gaussian
  data of the same size (the calibrated null of :mod:`steerscope.recover.ica`), or the only
  Gaussian-like one (Comon's condition)?
* :func:`sparse_energy`: does the vector put more of its (observed) energy into its best ``k``
  atoms than random vectors do?

:func:`agreement` compares the recovered direction with the audited vector over bootstrap refits,
and :func:`identifies_audited` combines the three: a method identifies the audited vector only
when its uniqueness condition holds, its assumption is not rejected, and the lower end of the
cosine's interval exceeds :data:`AGREEMENT_BOUND`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from steerscope.recover.result import cosine

#: Level of every assumption test.
LEVEL = 0.05
#: Lower end of the cosine's 95 % interval above which a recovered direction agrees with the audited vector.
AGREEMENT_BOUND = 0.9


@dataclass(frozen=True)
class AssumptionTest:
    """The outcome of one assumption test: ``holds`` (None: not testable), the statistic, the null's
    critical value (the statistic must stay below it, or exceed it, as ``detail`` says), the p-value
    when the null gives one, and a sentence."""

    name: str
    holds: bool | None
    statistic: float
    critical: float
    p: float | None
    detail: str
    extra: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["extra"] = dict(self.extra or {})
        return out


def _p_upper(observed: float, null: np.ndarray) -> float:
    """Monte Carlo p-value of ``observed`` in the upper tail of ``null`` ((1 + #≥) / (1 + n))."""
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


# --- multienv -------------------------------------------------------------------------------------

class SharedFit:
    """``w = argmin Σ_e ‖J_e (w − v_e)‖²`` for fixed environment Grams ``G_e``, factorised once
    (minimum norm within the common null space at relative gain tolerance ``tol``)."""

    def __init__(self, env_grams: Sequence[np.ndarray], tol: float):
        from steerscope.recover.result import null_dim

        self.grams = [np.asarray(g, dtype=np.float64) for g in env_grams]
        self.k, lam, vecs = null_dim(np.sum(self.grams, axis=0), tol)
        self.keep, self.lam = vecs[:, self.k:], lam[self.k:]

    def fit(self, vectors: Sequence[np.ndarray]) -> np.ndarray:
        rhs = np.sum([g @ v for g, v in zip(self.grams, vectors)], axis=0)
        return self.keep @ ((self.keep.T @ rhs) / self.lam)

    def misfit(self, vectors: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
        """``(Σ_e ‖J_e (w − v_e)‖² / Σ_e ‖J_e v_e‖², w)``: the share of the vectors' visible energy the shared fit misses."""
        w = self.fit(vectors)
        miss = sum(float((w - v) @ g @ (w - v)) for g, v in zip(self.grams, vectors))
        total = sum(float(v @ g @ v) for g, v in zip(self.grams, vectors))
        return miss / total if total > 0 else 0.0, w


def multienv_consistency(fit: SharedFit, contrasts: Sequence[np.ndarray], n_null: int = 200, seed: int = 0) -> AssumptionTest:
    """Are the environments' vectors (means of ``contrasts[e]``, ``[N_e, d]``) one shared direction?

    Null (the environments share ``w``): each ``v_e`` replaced by ``w + (v*_e − v_e)`` with ``v*_e``
    the mean of a resample of that environment's pairs; the misfit of these consistent vectors is
    what sampling alone produces. Rejected when the observed misfit is in the upper ``LEVEL`` tail.
    """
    rows = [np.asarray(c, dtype=np.float64) for c in contrasts]
    vectors = [c.mean(axis=0) for c in rows]
    observed, w = fit.misfit(vectors)
    rng = np.random.default_rng(seed)
    null = np.array([fit.misfit([w + r[rng.integers(0, len(r), len(r))].mean(axis=0) - v for r, v in zip(rows, vectors)])[0]
                     for _ in range(n_null)])
    p, critical = _p_upper(observed, null), float(np.quantile(null, 1 - LEVEL))
    holds = p >= LEVEL
    detail = (f"the shared direction misses {observed:.3g} of the per-environment vectors' visible energy; resampling the pairs of "
              f"environments that do share one misses at most {critical:.3g} (95 %), p = {p:.3g}: "
              + ("consistent with one shared direction" if holds else "the environments' vectors differ by more than sampling noise"))
    cos = [cosine(v, w) for v in vectors]
    return AssumptionTest("per-environment vectors share one direction", holds, observed, critical, p, detail,
                          {"n_null": n_null, "cos_environment_vectors_with_shared": cos,
                           "pairs_per_environment": [len(r) for r in rows]})


# --- crosslayer -----------------------------------------------------------------------------------

def crosslayer_carry(mean_map: np.ndarray, base: np.ndarray, later: np.ndarray, n_null: int = 200, seed: int = 0) -> AssumptionTest:
    """Is the later layer's vector (mean of ``later`` ``[N, d]``) the base layer's (mean of ``base``,
    the same ``N`` pairs) carried by the mean layer map ``Φ̄`` (``[d, d]``)?

    Statistic: ``c = cos(Φ̄ v, v′)``. Null (it is the carried vector, up to scale): ``v′`` replaced by
    ``s·Φ̄ v + (v′* − v′)`` and ``v`` by ``v*``, with ``(v*, v′*)`` the means of one resample of the
    pairs (the same pairs at both layers) and ``s = ‖v′‖ / ‖Φ̄ v‖``; rejected when ``c`` is in
    the lower ``LEVEL`` tail. Also reported: the 95 % quantile of ``c`` with the later pairs' signs
    shuffled (what no relation at all gives), the map's distance from the identity
    ``‖Φ̄ − I‖_F / ‖I‖_F``, and ``cos(v, v′)``, what the identity map alone gives.
    """
    phi = np.asarray(mean_map, dtype=np.float64)
    b, lat = np.asarray(base, dtype=np.float64), np.asarray(later, dtype=np.float64)
    v, target = b.mean(axis=0), lat.mean(axis=0)
    carried = phi @ v
    observed = cosine(carried, target)
    scale = float(np.linalg.norm(target) / np.linalg.norm(carried)) if carried.any() else 0.0
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_null):
        idx = rng.integers(0, len(b), len(b))
        null.append(cosine(phi @ b[idx].mean(axis=0), scale * carried + lat[idx].mean(axis=0) - target))
    null_arr = np.array(null)
    p = float((1 + np.sum(null_arr <= observed)) / (1 + n_null))
    critical = float(np.quantile(null_arr, LEVEL))
    shuffled = np.array([cosine(carried, (rng.choice([-1.0, 1.0], len(lat))[:, None] * lat).mean(axis=0)) for _ in range(n_null)])
    holds = p >= LEVEL
    identity, plain = float(np.linalg.norm(phi - np.eye(len(phi))) / np.sqrt(len(phi))), cosine(v, target)
    detail = (f"cos(Φ̄ v, v′) = {observed:.3f}; if v′ were the carried vector, resampling the pairs would give ≥ {critical:.3f} (95 %), "
              f"p = {p:.3g}; no relation at all gives ≤ {float(np.quantile(shuffled, 1 - LEVEL)):.3f}; the map is {identity:.3g} from the "
              f"identity (relative Frobenius) and cos(v, v′) = {plain:.3f}: "
              + ("consistent with the carried base vector" if holds else "the later vector is not the carried base vector"))
    return AssumptionTest("later-layer vector = layer map of the base vector", holds, observed, critical, p, detail,
                          {"n_null": n_null, "map_distance_from_identity": identity, "cos_without_map": plain,
                           "sign_shuffled_q95": float(np.quantile(shuffled, 1 - LEVEL)),
                           "relative_residual": float(np.sqrt(max(0.0, 1 - observed ** 2)))})


# --- ica and sparse -------------------------------------------------------------------------------

def ica_separable(jarque_bera: float, threshold: float, n_gaussian_like: int, level: float) -> AssumptionTest:
    """Comon's condition for the matched source: it is non-Gaussian, or the only Gaussian-like one.

    A source is Gaussian-like when its Jarque–Bera statistic is within ``threshold``, the
    ``1 − level`` quantile of FastICA components of Gaussian data of the same size.
    """
    gaussian = jarque_bera <= threshold
    holds = not gaussian or n_gaussian_like <= 1
    state = (f"non-Gaussian (Jarque–Bera {jarque_bera:.3g} > {threshold:.3g}, the {1 - level:.0%} quantile of FastICA components of "
             f"Gaussian data of this size)" if not gaussian else
             f"Gaussian-like (Jarque–Bera {jarque_bera:.3g} ≤ {threshold:.3g}, the {1 - level:.0%} quantile of FastICA components of "
             f"Gaussian data of this size)")
    detail = (f"the matched source is {state}; Gaussian-like components in all: {n_gaussian_like}; "
              + ("it is separable from the others" if holds else "it can rotate with the other Gaussian-like sources"))
    return AssumptionTest("the matched source is non-Gaussian or the only Gaussian one", holds, jarque_bera, threshold, None, detail,
                          {"n_gaussian_like": n_gaussian_like})


def captured_energy(phi: np.ndarray, y: np.ndarray, k: int) -> float:
    """Share of ``‖y‖²`` that the best ``k`` columns of ``phi`` (orthogonal matching pursuit) reproduce."""
    from steerscope.recover.sparse import omp

    coef = omp(phi, y, k)
    norm = float(y @ y)
    return 1.0 - float(np.sum((phi @ coef - y) ** 2)) / norm if norm > 0 else 0.0


def sparse_energy(phi: np.ndarray, operator: np.ndarray, v: np.ndarray, k: int, n_null: int = 100, seed: int = 0) -> AssumptionTest:
    """Does ``v`` (observed as ``operator @ v``) put more energy into ``k`` atoms of ``phi`` than
    random Gaussian vectors (observed the same way) do?"""
    observed = captured_energy(phi, operator @ v, k)
    rng = np.random.default_rng(seed)
    null = np.array([captured_energy(phi, operator @ rng.standard_normal(len(v)), k) for _ in range(n_null)])
    p, critical = _p_upper(observed, null), float(np.quantile(null, 1 - LEVEL))
    holds = p < LEVEL
    detail = (f"its best {k} atoms carry {observed:.1%} of the vector's observed energy against {critical:.1%} for random vectors "
              f"(95 %), p = {p:.3g}: " + ("sparse in this dictionary" if holds else "no sparser than a random vector in this dictionary"))
    return AssumptionTest(f"the vector is {k}-sparse in the dictionary", holds, observed, critical, p, detail,
                          {"n_null": n_null, "null_mean": float(null.mean())})


# --- agreement and the combined answer ------------------------------------------------------------

def agreement(direction: np.ndarray, audited: np.ndarray, what: str, stability: Mapping[str, Any] | None,
              bound: float = AGREEMENT_BOUND) -> dict[str, Any]:
    """Cosine of the recovered ``direction`` with the ``audited`` vector and its 95 % percentile
    interval over the bootstrap refits of ``stability`` (its ``audited`` entry, see
    :func:`~steerscope.recover.stability.bootstrap_stability`); ``agrees`` is None without refits."""
    out: dict[str, Any] = {"audited": what, "cos": cosine(direction, audited), "bound": bound}
    boot = (stability or {}).get("audited")
    if not boot:
        return out | {"ci_low": None, "ci_high": None, "agrees": None}
    return out | {"ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "agrees": bool(boot["ci_low"] > bound)}


def identifies_audited(identifiable: bool | None, assumption: Mapping[str, Any] | None,
                       agrees: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """``(identifies, why)``: True only when the uniqueness condition holds, the assumption test is
    not rejected, and the recovered direction agrees with the audited vector; otherwise which failed."""
    if assumption is not None and assumption.get("holds") is False:
        return False, f"the assumption fails on these data ({assumption['name']}: {assumption['detail']})"
    if identifiable is False:
        return False, "the assumption would not single out one direction even if it held"
    if agrees is not None and agrees.get("agrees") is False:
        return False, (f"unique under the assumption, but the recovered direction is not the audited vector "
                       f"(cos {agrees['cos']:.3f}, 95 % interval [{agrees['ci_low']:.3f}, {agrees['ci_high']:.3f}], bound {agrees['bound']:g})")
    if identifiable is None or assumption is None or assumption.get("holds") is None or agrees is None or agrees.get("agrees") is None:
        return None, "undetermined: uniqueness, the assumption test or the agreement with the audited vector could not be decided"
    return True, (f"the assumption holds on these data and singles out the audited vector "
                  f"(cos interval [{agrees['ci_low']:.3f}, {agrees['ci_high']:.3f}] above {agrees['bound']:g})")
