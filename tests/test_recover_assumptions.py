"""The assumption tests of the recovery methods, each seen holding and broken on planted data."""

import numpy as np
import pytest

from steerscope.recover import recover_ica
from steerscope.recover.assumptions import (
    AGREEMENT_BOUND,
    SharedFit,
    agreement,
    crosslayer_carry,
    identifies_audited,
    multienv_consistency,
    sparse_energy,
)
from steerscope.recover.multienv import recover_multienv
from steerscope.recover.planted import ica_problem
from steerscope.recover.result import cosine, unit

D = 16


def _psd(rng, d=D, rank=D):
    a = rng.standard_normal((rank, d))
    return a.T @ a


def _env_data(shift: float, seed: int = 0, n: int = 40, noise: float = 0.3):
    """Three environments whose vectors are v (+ an environment-specific component of norm ``shift``·‖v‖)."""
    rng = np.random.default_rng(seed)
    v = unit(rng.standard_normal(D)) * 2.0
    grams = [_psd(rng) for _ in range(3)]
    contrasts = [v + shift * unit(rng.standard_normal(D)) * 2.0 + noise * rng.standard_normal((n, D)) for _ in range(3)]
    return grams, contrasts, v


def test_multienv_consistency_is_calibrated_on_shared_vectors_and_rejects_environment_specific_ones():
    """At level 0.05 the test rejects about 5 % of datasets whose environments share v, and every
    dataset whose environment vectors differ by half of ‖v‖."""
    def rejected(shift: float, seed: int) -> bool:
        grams, contrasts, _ = _env_data(shift, seed)
        test = multienv_consistency(SharedFit(grams, 1e-3), contrasts, n_null=100, seed=seed)
        assert (test.p < 0.05) == (not test.holds)
        return not test.holds

    assert np.mean([rejected(0.0, 100 + s) for s in range(100)]) == pytest.approx(0.05, abs=0.04)
    assert all(rejected(0.5, s) for s in range(20))


def test_multienv_components_the_environments_cannot_see_do_not_break_consistency():
    """v_e = v + n_e with n_e in the kernel of J_e: the environments still share v."""
    rng = np.random.default_rng(3)
    v = unit(rng.standard_normal(D)) * 2.0
    grams, contrasts = [], []
    for _ in range(3):
        j = rng.standard_normal((D - 4, D))
        kernel = np.linalg.svd(j)[2][-4:]  # rows spanning ker J_e
        grams.append(j.T @ j)
        contrasts.append(v + 3.0 * kernel[0] + 0.3 * rng.standard_normal((40, D)))
    fit = SharedFit(grams, 1e-3)
    test = multienv_consistency(fit, contrasts, seed=3)
    assert fit.k == 0 and test.holds
    assert cosine(fit.fit([c.mean(axis=0) for c in contrasts]), v) > 0.99


def test_multienv_recovery_reports_the_test_and_agreement_through_the_bootstrap():
    grams, contrasts, v = _env_data(0.0, 4)
    r = recover_multienv([[g] for g in grams], [c.mean(axis=0) for c in contrasts], n_boot=20, seed=4, contrasts=contrasts, audited=v)
    assert r.assumption["holds"] and r.identifiable
    agree = agreement(r.direction, v, "planted v", r.stability)
    assert agree["agrees"] and agree["ci_low"] > AGREEMENT_BOUND
    assert identifies_audited(r.identifiable, r.assumption, agree)[0] is True


@pytest.mark.parametrize("seed", [0, 1])
def test_crosslayer_carry_accepts_the_carried_vector_and_rejects_an_unrelated_one(seed):
    rng = np.random.default_rng(seed)
    phi = np.eye(D) + 0.3 * rng.standard_normal((D, D))
    v = unit(rng.standard_normal(D)) * 2.0
    base = v + 0.5 * rng.standard_normal((30, D))
    carried = phi @ v + 0.5 * rng.standard_normal((30, D))
    other = rng.standard_normal(D)
    other -= (other @ unit(phi @ v)) * unit(phi @ v)  # orthogonal to the carried vector
    unrelated = unit(other) * np.linalg.norm(phi @ v) + 0.5 * rng.standard_normal((30, D))
    held, broken = crosslayer_carry(phi, base, carried, seed=seed), crosslayer_carry(phi, base, unrelated, seed=seed)
    assert held.holds and held.statistic > 0.9 and not broken.holds
    assert held.extra["map_distance_from_identity"] == pytest.approx(np.linalg.norm(phi - np.eye(D)) / np.sqrt(D))


def test_crosslayer_carry_is_calibrated_when_the_later_vector_is_the_carried_one():
    """Pairs whose later-layer contrasts are the carried base contrasts plus noise: about 5 % rejected at level 0.05."""
    def rejected(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        phi = np.eye(D) + 0.3 * rng.standard_normal((D, D))
        noise = 0.5 * rng.standard_normal((30, D))
        base = unit(rng.standard_normal(D)) * 2.0 + noise
        later = base @ phi.T + 0.5 * rng.standard_normal((30, D))
        return not crosslayer_carry(phi, base, later, n_null=100, seed=seed).holds

    assert np.mean([rejected(s) for s in range(100)]) == pytest.approx(0.05, abs=0.04)


def test_ica_assumption_follows_the_gaussianity_of_the_planted_source():
    for gaussian in (False, True):
        problem = ica_problem(gaussian=gaussian, seed=0)
        r = recover_ica(problem.inputs["acts"], problem.inputs["labels"], 6, 0)
        assert r.assumption["holds"] is (not gaussian), r.assumption["detail"]


def test_sparse_energy_accepts_a_sparse_vector_and_rejects_a_dense_one():
    rng = np.random.default_rng(0)
    sparse = np.zeros(64)
    sparse[[3, 17, 40]] = [2.0, -1.0, 0.5]
    eye = np.eye(64)
    held = sparse_energy(eye, eye, sparse, k=3, seed=0)
    broken = sparse_energy(eye, eye, rng.standard_normal(64), k=3, seed=0)
    assert held.holds and held.statistic == pytest.approx(1.0) and not broken.holds
    assert broken.statistic < held.critical


def test_identifies_only_when_uniqueness_assumption_and_agreement_all_hold():
    ok = {"name": "a", "holds": True, "detail": "d"}
    fails = {"name": "a", "holds": False, "detail": "d"}
    agree = {"agrees": True, "cos": 0.99, "ci_low": 0.95, "ci_high": 1.0, "bound": 0.9}
    disagree = {"agrees": False, "cos": 0.6, "ci_low": 0.5, "ci_high": 0.7, "bound": 0.9}
    assert identifies_audited(True, ok, agree)[0] is True
    assert identifies_audited(False, ok, agree) == (False, "the assumption would not single out one direction even if it held")
    assert "the assumption fails on these data" in identifies_audited(True, fails, agree)[1]
    assert "not the audited vector (cos 0.600" in identifies_audited(True, ok, disagree)[1]
    assert identifies_audited(True, ok, {"agrees": None})[0] is None
    assert identifies_audited(None, ok, agree)[0] is None
