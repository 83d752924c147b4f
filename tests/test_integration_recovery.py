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
    return x + np.outer(labels * scale, u), labels, u, x


def test_sparse_recovers_the_planted_direction_in_real_activations(planted):
    x, labels, u, _ = planted
    contrasts = x[labels == 1][: (labels == 0).sum()] - x[labels == 0][: (labels == 1).sum()]
    r = recover_sparse(x[labels == 1].mean(axis=0) - x[labels == 0].mean(axis=0), np.eye(x.shape[1]), 3, samples=contrasts, n_boot=10)
    assert r.direction @ u >= 0.95
    assert r.identifiable is True
    assert r.stability["mean_cos"] >= 0.9


def test_ica_recovers_the_planted_direction_in_real_activations(planted):
    x, labels, u, _ = planted
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


# --- assumption tests on planted directions in real activations -------------------------------------

BASE, LATER = 15, 18


@pytest.fixture(scope="module")
def environments(smollm2):
    """Per environment: mean activations at layers 15 and 18 of 48 real texts (the built-in env pairs'
    negative answers), the logit-Jacobian Grams of 2 prompts at layer 15, and the mean layer map 15 → 18."""
    from steerscope.data.traits import ENVIRONMENTS, builtin_env_pairs, builtin_prompts
    from steerscope.recover.trait import layer_maps, prompt_grams

    acts, grams = {}, {}
    for env in ENVIRONMENTS:
        texts = [p.negative for trait in ("formality", "politeness") for p in builtin_env_pairs(trait)[env]]
        captured = capture(smollm2, texts, [BASE, LATER], position="mean")
        acts[env] = {layer: a.double().numpy() for layer, a in captured.items()}
        grams[env] = prompt_grams(smollm2, builtin_prompts("sentiment", env)[:2], BASE)
    maps = layer_maps(smollm2, builtin_prompts("formality", "in_distribution")[:2], BASE, [LATER])[LATER]
    return acts, grams, np.mean(maps, axis=0)


def _pairs(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrasts of 24 real text pairs (two disjoint random halves of the 48 texts): real variation, mean ≈ 0."""
    order = rng.permutation(len(x))
    return x[order[:24]] - x[order[24:48]]


def test_multienv_consistency_on_real_activations(environments):
    """v planted into every environment's pairs: consistent; plus an environment-specific component of ‖v‖: rejected."""
    from steerscope.data.traits import ENVIRONMENTS
    from steerscope.recover.assumptions import SharedFit, multienv_consistency

    acts, grams, _ = environments
    fit = SharedFit([np.sum(grams[e], axis=0) for e in ENVIRONMENTS], 1e-3)
    spread = np.median([np.linalg.norm(_pairs(acts[e][BASE], np.random.default_rng(0)), axis=1).mean() for e in ENVIRONMENTS])

    def test(specific: float, seed: int):
        rng = np.random.default_rng(seed)
        v = 0.5 * spread * unit_vector(rng, acts["in_distribution"][BASE].shape[1])
        contrasts = [_pairs(acts[e][BASE], rng) + v + specific * np.linalg.norm(v) * unit_vector(rng, len(v)) for e in ENVIRONMENTS]
        return multienv_consistency(fit, contrasts, n_null=100, seed=seed)

    held = [test(0.0, seed) for seed in range(10)]
    broken = [test(1.0, seed) for seed in range(5)]
    assert sum(not t.holds for t in held) <= 2, [t.p for t in held]  # level 0.05: about 1 in 20 rejected by chance
    assert all(not t.holds for t in broken), [t.p for t in broken]


def test_crosslayer_carry_on_real_activations(environments):
    """The layer-18 pairs carry Φ̄ v planted at layer 15: accepted; an unrelated direction of the same norm: rejected."""
    from steerscope.recover.assumptions import crosslayer_carry

    acts, _, phi = environments
    x15, x18 = acts["in_distribution"][BASE], acts["in_distribution"][LATER]
    rng = np.random.default_rng(1)
    order = rng.permutation(len(x15))
    base, later = x15[order[:24]] - x15[order[24:48]], x18[order[:24]] - x18[order[24:48]]
    v = 0.5 * np.linalg.norm(base, axis=1).mean() * unit_vector(rng, base.shape[1])
    carried = phi @ v
    other = unit_vector(rng, len(v))
    other -= (other @ carried) / (carried @ carried) * carried
    held = crosslayer_carry(phi, base + v, later + carried, seed=1)
    broken = crosslayer_carry(phi, base + v, later + other / np.linalg.norm(other) * np.linalg.norm(carried), seed=1)
    assert held.holds and not broken.holds, (held.detail, broken.detail)
    assert held.extra["map_distance_from_identity"] > 0


def test_ica_and_sparse_assumptions_on_real_activations(planted):
    """ICA: a binary planted source is separable, one of two planted Gaussian sources is not (Comon);
    sparse: a 3-neuron direction is sparse in the neuron basis, a dense one is not."""
    from steerscope.recover.assumptions import sparse_energy

    x, labels, u, raw = planted
    rng = np.random.default_rng(2)
    g = rng.standard_normal((len(raw), 2))
    scale = np.median(np.linalg.norm(raw - raw.mean(axis=0), axis=1))
    other = unit_vector(rng, len(u))
    other -= (other @ u) * u
    # two Gaussian sources of equal scale, one of them carrying the labels: they can rotate into each other
    two = raw + np.outer(g[:, 0] * scale, u) + np.outer(g[:, 1] * scale, other / np.linalg.norm(other))
    gaussian = recover_ica(two, (g[:, 0] > 0).astype(int), n_components=16, n_null=3)
    binary = recover_ica(x, labels, n_components=16, n_null=3)
    assert binary.assumption["holds"] and not gaussian.assumption["holds"], (binary.assumption["detail"], gaussian.assumption["detail"])
    eye = np.eye(x.shape[1])
    mean_diff = x[labels == 1].mean(axis=0) - x[labels == 0].mean(axis=0)
    dense = unit_vector(rng, x.shape[1])
    dense_diff = mean_diff - (mean_diff @ u) * u + (mean_diff @ u) * dense
    assert sparse_energy(eye, eye, mean_diff, 3, n_null=50).holds
    assert not sparse_energy(eye, eye, dense_diff, 3, n_null=50).holds


def unit_vector(rng: np.random.Generator, d: int) -> np.ndarray:
    x = rng.standard_normal(d)
    return x / np.linalg.norm(x)
