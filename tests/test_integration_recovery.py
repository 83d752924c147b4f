"""Integration: on real SmolLM2 activations, a direction planted into a subset of them is recovered,
and the exact Jacobian of the real model agrees with its Gram factorisation."""

import numpy as np
import pytest
import torch

from steerscope.jacobian import HeadGram, head_jacobian, prompt_gram, singular_values
from steerscope.data.prompts import builtin_prompt_mix
from steerscope.capture import capture
from steerscope.encoding import encode_prompt
from steerscope.recover import recover_ica, recover_sparse

pytestmark = pytest.mark.integration
LAYER = 15


@pytest.fixture(scope="module")
def planted(smollm2):
    """Real token activations at layer 15; a random half get + a·u with u a 3-neuron direction."""
    acts = capture(smollm2, builtin_prompt_mix(40), [LAYER], position="all")[LAYER]
    x = torch.cat([a[1:] for a in acts]).double().numpy()  # drop each prompt's first token (attention sink)
    rng = np.random.default_rng(0)
    u = np.zeros(x.shape[1])
    u[rng.choice(x.shape[1], 3, replace=False)] = rng.choice([-1.0, 1.0], 3)
    u /= np.linalg.norm(u)
    labels = rng.integers(0, 2, len(x))
    scale = np.median(np.linalg.norm(x - x.mean(axis=0), axis=1))
    x = x + np.outer(labels * scale, u)
    return x, labels, u


def test_sparse_recovers_the_planted_direction_in_real_activations(planted):
    x, labels, u = planted
    contrasts = x[labels == 1][: (labels == 0).sum()] - x[labels == 0][: (labels == 1).sum()]
    r = recover_sparse(x[labels == 1].mean(axis=0) - x[labels == 0].mean(axis=0), np.eye(x.shape[1]), 3, samples=contrasts, n_boot=10)
    assert r.direction @ u >= 0.95
    assert r.identifiable is True
    assert r.stability["mean_cos"] >= 0.9


def test_ica_recovers_the_planted_direction_in_real_activations(planted):
    x, labels, u = planted
    r = recover_ica(x, labels, n_components=16, n_null=3)
    assert r.direction @ u >= 0.95
    assert r.identifiable is True


def test_real_model_gram_factorisation_and_rank(smollm2):
    ids = encode_prompt(smollm2.tokenizer, builtin_prompt_mix(1)[0])
    hj = head_jacobian(smollm2, ids, 28)
    gram = prompt_gram(HeadGram(smollm2), hj)
    w = smollm2.model.get_output_embeddings().weight.detach().double()
    x = torch.randn(smollm2.d_model, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jx = w @ (hj.jz.double() @ x)  # J x without forming J: x^T G x = ‖J x‖²
    assert torch.allclose(torch.diag(x.T @ gram @ x), (jx ** 2).sum(0), rtol=1e-8)
    sigma = singular_values(gram)
    assert sigma[0] > 0 and np.all(np.diff(sigma) <= 1e-9 * sigma[0])
