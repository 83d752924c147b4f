import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from steerscope.jacobian import (
    HeadGram,
    covariance_spectrum,
    effective_rank,
    head_jacobian,
    inert_fraction,
    layer_map,
    logit_jacobian,
    null_space,
    largest_angle_cos,
    null_space_angles,
    prompt_gram,
    singular_values,
    spectrum_summary,
    vector_gain,
)
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.hooks import block_hidden
from steerscope.testing import tiny_model

PROMPT = "hello there how are you today my friend"


@pytest.fixture(scope="module")
def gpt2_64():
    """A tiny GPT-2 in float64 throughout (its LayerNorm does not upcast, unlike Llama's RMSNorm)."""
    lm = tiny_model("gpt2")
    lm.model.double()
    return lm


def _logits_with(lm, ids, layer, position, delta):
    def hook(_m, _a, output):
        h = block_hidden(output).clone()
        h[0, position] = h[0, position] + delta
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = lm.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        handle.remove()


@pytest.mark.parametrize("position", [-1, -3])
def test_autograd_jacobian_matches_float64_finite_differences(gpt2_64, position):
    lm = gpt2_64
    ids = lm.tokenizer(PROMPT)["input_ids"]
    jac = logit_jacobian(lm, ids, 1, position)
    eye = torch.eye(lm.d_model, dtype=torch.float64)
    eps = 1e-6
    fd = torch.stack([(_logits_with(lm, ids, 1, position, eps * e) - _logits_with(lm, ids, 1, position, -eps * e)) / (2 * eps) for e in eye], dim=1)
    assert jac.shape == (len(lm.tokenizer), lm.d_model)
    assert float((fd - jac).norm() / jac.norm()) < 1e-6


@pytest.mark.parametrize("start", [0, -3])
def test_spread_jacobian_is_the_sum_over_the_steered_positions(gpt2_64, start):
    """Steering every position from ``start`` on with one δ: the Jacobian is Σ_t J_t (exact in float64)."""
    lm = gpt2_64
    ids = lm.tokenizer(PROMPT)["input_ids"]
    first = start % len(ids)
    summed = sum(head_jacobian(lm, ids, 1, t).jz for t in range(first, len(ids)))
    spread = head_jacobian(lm, ids, 1, start, spread=True).jz
    assert torch.allclose(spread, summed, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(spread, head_jacobian(lm, ids, 1, -1).jz)


def test_logprob_jacobian_is_logit_jacobian_minus_its_mean_row(gpt2_64):
    ids = gpt2_64.tokenizer(PROMPT)["input_ids"]
    jl = logit_jacobian(gpt2_64, ids, 2)
    jp = logit_jacobian(gpt2_64, ids, 2, readout="logprobs")
    probs = torch.softmax(gpt2_64.model(input_ids=torch.tensor([ids])).logits[0, -1].detach(), -1)
    assert torch.allclose(jp, jl - probs @ jl, atol=1e-12)
    assert torch.allclose(probs @ jp, torch.zeros(gpt2_64.d_model, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_gram_factorisation_equals_explicit_gram(tiny_models, arch):
    lm = tiny_models[arch]
    ids = encode_prompt(lm.tokenizer, "tell me about the weather")
    hg, hj = HeadGram(lm), head_jacobian(lm, ids, 1)
    for readout in ("logits", "logprobs"):
        jac = logit_jacobian(lm, ids, 1, readout=readout).double()
        gram = prompt_gram(hg, hj, readout)
        assert torch.allclose(gram, jac.T @ jac, rtol=1e-5, atol=1e-6 * float(gram.abs().max()))


def test_chunking_does_not_change_the_jacobian(tiny_models):
    lm = tiny_models["llama"]
    ids = encode_prompt(lm.tokenizer, "what is the weather like")
    a = head_jacobian(lm, ids, 2, chunk=7).jz
    b = head_jacobian(lm, ids, 2, chunk=32).jz
    assert torch.allclose(a, b, atol=1e-6)


def test_long_graphs_take_fewer_backward_rows_per_pass(tiny_models, monkeypatch):
    import steerscope.jacobian as jac

    lm = tiny_models["llama"]
    ids = encode_prompt(lm.tokenizer, "what is the weather like today my good friend")
    full = head_jacobian(lm, ids, 2, position=0, spread=True).jz
    passes = []
    grad = torch.autograd.grad

    def counting(*args, **kwargs):
        passes.append(kwargs["grad_outputs"].shape[0])
        return grad(*args, **kwargs)

    monkeypatch.setattr(jac, "ROW_TOKENS", 4 * len(ids))  # 4 rows per pass over the whole prompt
    monkeypatch.setattr(torch.autograd, "grad", counting)
    chunked = head_jacobian(lm, ids, 2, position=0, spread=True).jz
    assert passes == [4] * (lm.d_model // 4)
    assert torch.allclose(full, chunked, atol=1e-6)


def test_layer_map_matches_finite_differences_and_chain_rule(gpt2_64):
    lm = gpt2_64
    ids = lm.tokenizer(PROMPT)["input_ids"]
    phi = layer_map(lm, ids, 1, 2)
    captured = {}

    def grab(_m, _a, output):
        captured["h"] = block_hidden(output)[0, -1]

    handle = lm.layers[2].register_forward_hook(grab)
    try:
        _logits_with(lm, ids, 1, -1, torch.zeros(lm.d_model, dtype=torch.float64))
        base = captured["h"].clone()
        e = torch.zeros(lm.d_model, dtype=torch.float64)
        e[5] = 1e-6
        _logits_with(lm, ids, 1, -1, e)
        column = (captured["h"] - base) / 1e-6
    finally:
        handle.remove()
    assert torch.allclose(column, phi[:, 5], rtol=1e-5, atol=1e-7)
    # chain rule: ∂z/∂h_1 = ∂z/∂h_2 · Φ at the last position
    assert torch.allclose(head_jacobian(lm, ids, 1).jz, head_jacobian(lm, ids, 2).jz @ phi, atol=1e-10)
    with pytest.raises(SteerscopeError, match="must come after"):
        layer_map(lm, ids, 2, 1)


def test_low_precision_models_are_refused(tiny_models):
    lm = tiny_model("llama")
    lm.model.to(torch.bfloat16)
    with pytest.raises(SteerscopeError, match="float32 or float64"):
        head_jacobian(lm, [2, 10, 11], 1)


def test_spectrum_statistics_on_a_known_spectrum():
    sigma = np.array([10.0, 1.0, 0.05, 0.005, 0.0])
    assert effective_rank(sigma, 1e-2) == 2
    assert effective_rank(sigma, 1e-3) == 3
    assert inert_fraction(sigma, 1e-2) == pytest.approx(0.6)
    summary = spectrum_summary(sigma)
    assert summary["effective_rank"] == {"0.01": 2, "0.001": 3, "0.0001": 4}
    assert summary["condition"] is None
    assert summary["stable_rank"] == pytest.approx((100 + 1 + 0.0025 + 0.000025) / 100)
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    gram = q @ np.diag(sigma ** 2) @ q.T
    assert np.allclose(singular_values(gram), sigma, atol=1e-7)
    basis = null_space(gram, 1e-2)
    assert basis.shape == (5, 3)
    assert np.allclose(basis @ basis.T, q[:, 2:] @ q[:, 2:].T, atol=1e-8)


def test_null_space_angles_identical_and_orthogonal_kernels():
    same = np.diag([1.0, 1.0, 0.0, 0.0])
    other = np.diag([0.0, 0.0, 1.0, 1.0])
    (res,) = null_space_angles([same, same], [1e-3])
    assert res["null_dims"] == [2, 2] and res["min_cos_largest_angle"] == pytest.approx(1.0)
    (res,) = null_space_angles([same, other], [1e-3])
    assert res["min_cos_largest_angle"] == pytest.approx(0.0, abs=1e-12)
    assert null_space_angles([np.eye(3), np.eye(3)], [1e-3])[0]["pairs"] == 0
    graded = np.diag([1.0, 0.25, 0.0025, 0.0])  # gains 1, 0.5, 0.05, 0
    assert [r["null_dims"] for r in null_space_angles([graded, graded], [0.6, 0.1, 1e-3])] == [[3, 3], [2, 2], [1, 1]]


def test_largest_angle_cos_matches_scipy_on_subspaces_of_different_dimension():
    rng = np.random.default_rng(0)
    a = np.linalg.qr(rng.standard_normal((40, 7)))[0]
    b = np.linalg.qr(rng.standard_normal((40, 12)))[0]
    assert largest_angle_cos(a, b) == pytest.approx(float(np.cos(subspace_angles(a, b).max())), abs=1e-10)
    assert largest_angle_cos(a[:, :3], a) == pytest.approx(1.0)


def test_covariance_spectrum_rank_is_at_most_n_minus_one():
    acts = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))
    cov = covariance_spectrum(acts)
    assert cov["n_samples"] == 10
    assert cov["effective_rank"]["0.001"] == 9
    assert cov["low_variance_fraction"]["0.001"] == pytest.approx(23 / 32)


def test_vector_gain_of_a_kernel_direction_and_of_a_seen_one():
    gram = np.diag([4.0, 1.0, 0.0]) * 3  # three prompts
    inert = vector_gain(gram, np.array([0.0, 0.0, 2.0]), 3)
    assert inert["gain_v"] == 0.0
    assert inert["complement_max"] == pytest.approx(2.0) and inert["complement_min"] == pytest.approx(1.0)
    seen = vector_gain(gram, np.array([1.0, 0.0, 0.0]), 3)
    assert seen["gain_v"] == pytest.approx(2.0)
    assert seen["complement_inert_fraction"]["0.01"] == pytest.approx(0.5)
    # relative to v's own gain (2): the complement gains 1 and 0 — one of two is ≤ 0.01 × 2
    assert seen["complement_below_v"]["0.01"] == pytest.approx(0.5)
    assert vector_gain(np.diag([1.0, 1.0, 1.0]), np.array([1.0, 0.0, 0.0]), 1)["complement_below_v"]["0.01"] == 0.0
    assert seen["random_mean"] == pytest.approx(np.sqrt(5 / 3))
