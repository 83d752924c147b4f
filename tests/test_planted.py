"""Planted ground truth: each method recovers the planted direction when its assumption holds
and reports failure when it does not; a tiny transformer with a kernel planted by construction."""

import json

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from steerscope.jacobian import HeadGram, head_jacobian, null_space, prompt_gram, singular_values
from steerscope.audit.nullspace import nullspace_audit
from steerscope.encoding import encode_prompt
from steerscope.recover import recover_crosslayer, recover_ica, recover_multienv, recover_sparse
from steerscope.recover.planted import crosslayer_problem, ica_problem, multienv_problem, planted_kernel_model, sparse_problem

PROMPTS = ["hello there my friend", "what is the weather like today", "tell me a short story about a dog"]


def test_ica_recovers_a_non_gaussian_source():
    p = ica_problem(n=800, seed=1)
    r = recover_ica(p.inputs["acts"], p.inputs["labels"], n_components=6, n_boot=3, n_null=5)
    assert r.direction @ p.direction >= 0.95
    assert r.identifiable is True and r.class_dim == 0
    assert r.stability["mean_cos"] >= 0.95


def test_ica_reports_failure_with_gaussian_sources():
    p = ica_problem(n=800, gaussian=True, seed=1)
    r = recover_ica(p.inputs["acts"], p.inputs["labels"], n_components=6, n_null=5)
    assert r.identifiable is False
    assert r.class_dim >= 1
    assert "Gaussian" in r.reason


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_recovers_and_certifies_a_one_sparse_direction(seed):
    p = sparse_problem(seed=seed)
    i = p.inputs
    r = recover_sparse(i["target"], i["dictionary"], i["k"], i["operator"], samples=i["samples"], n_boot=5)
    assert r.direction @ p.direction >= 0.95
    assert r.identifiable is True and r.class_dim == 0
    assert r.details["coherence"] < 1 and r.details["max_certified_k"] >= 1
    assert r.stability["mean_cos"] >= 0.95


def test_sparse_recovers_a_three_sparse_direction_but_does_not_claim_a_certificate():
    p = sparse_problem(k=3, m=40)
    i = p.inputs
    r = recover_sparse(i["target"], i["dictionary"], i["k"], i["operator"])
    assert r.direction @ p.direction >= 0.95
    assert r.identifiable is None and "cannot certify" in r.reason


def test_sparse_reports_failure_for_a_coherent_observation():
    p = sparse_problem(coherent=True)
    i = p.inputs
    r = recover_sparse(i["target"], i["dictionary"], i["k"], i["operator"])
    assert r.details["coherence"] == pytest.approx(1.0)
    assert r.identifiable is False
    assert r.details["witness"] is not None and abs(r.details["witness"]["cos_with_recovered"]) < 0.99


def test_sparse_welch_bound_limits_any_overcomplete_dictionary():
    rng = np.random.default_rng(0)
    dic = rng.standard_normal((128, 16))
    r = recover_sparse(dic[3] + dic[7], dic, 2)
    assert r.details["welch_bound"] == pytest.approx(np.sqrt((128 - 16) / (16 * 127)))
    assert r.details["coherence"] >= r.details["welch_bound"]
    welch = r.details["welch_bound"]
    assert r.details["max_certifiable_k_any_dictionary"] == 2  # 2k < 1 + 1/welch = 5.26
    assert 2 * 2 < 1 + 1 / welch < 2 * 3
    assert r.details["max_certified_k"] < 2 and r.identifiable is not True


def test_multienv_recovers_with_three_environments():
    p = multienv_problem(n_env=3)
    r = recover_multienv(p.inputs["grams"], p.inputs["vectors"], n_boot=5)
    assert r.direction @ p.direction >= 0.95
    assert r.identifiable is True and r.class_dim == 0
    assert all(k == 12 for k in r.details["class_dim_per_environment"])
    assert r.stability["mean_cos"] >= 0.95


def test_multienv_reports_failure_with_one_environment():
    p = multienv_problem(n_env=1)
    r = recover_multienv(p.inputs["grams"], p.inputs["vectors"])
    assert r.identifiable is False and r.class_dim == 12
    assert r.direction @ p.direction < 0.95


def test_crosslayer_recovers_through_an_invertible_map_and_fails_through_a_degenerate_one():
    good = crosslayer_problem()
    r = recover_crosslayer(**good.inputs)
    assert r.direction @ good.direction >= 0.95
    assert r.identifiable is True and r.class_dim == 0 and r.details["class_dim_output_only"] == 10
    bad = crosslayer_problem(degenerate=True)
    r = recover_crosslayer(**bad.inputs)
    assert r.identifiable is False and r.class_dim == 10


def test_crosslayer_without_maps_is_the_output_kernel():
    p = crosslayer_problem()
    r = recover_crosslayer(p.inputs["gram"], p.inputs["vector"], [], [])
    assert r.identifiable is False and r.class_dim == 10


@pytest.mark.parametrize("k", [1, 3])
def test_planted_kernel_model_null_dimension_is_exact(k):
    lm, basis = planted_kernel_model(k=k)
    head = HeadGram(lm)
    for layer in (0, 2, lm.n_layers - 2):
        grams = [prompt_gram(head, head_jacobian(lm, encode_prompt(lm.tokenizer, p), layer)) for p in PROMPTS]
        sigma = singular_values(sum(grams))
        rel = sigma / sigma[0]
        assert (rel <= 1e-6).sum() == k  # exactly k directions at tolerance 1e-6 ...
        assert rel[-k - 1] > 1e-3  # ... separated from the rest by a gap of more than three decades
        angles = subspace_angles(null_space(sum(grams), 1e-6), basis)
        assert np.degrees(angles).max() < 1e-6  # and they are the planted coordinates


def test_nullspace_audit_finds_the_planted_kernel():
    lm, _basis = planted_kernel_model(k=2)
    res = nullspace_audit(lm, PROMPTS, [1], tolerances=(1e-6,))
    entry = res["layers"]["1"]
    assert entry["logits"]["stacked"]["effective_rank"]["1e-06"] == lm.d_model - 2
    assert entry["logprobs"]["stacked"]["effective_rank"]["1e-06"] == lm.d_model - 2
    assert entry["logits"]["null_space_angles"][0]["min_cos_largest_angle"] == pytest.approx(1.0)
    json.dumps(res, allow_nan=False)
