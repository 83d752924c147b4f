"""Planted ground truth: data and models in which the right answer is known by construction.

* :func:`ica_problem` — ``h = A s + noise`` with a known mixing matrix; the trait shifts source 0;
* :func:`sparse_problem` — a k-sparse direction in the neuron basis, observed through an operator;
* :func:`multienv_problem` — environments with known Jacobians and kernels;
* :func:`crosslayer_problem` — an output Jacobian with a known kernel and known layer maps;
* :func:`planted_kernel_model` — a tiny Llama whose residual stream has ``k`` coordinates that the
  logits provably cannot see (first order).

Each problem comes with a flag that breaks its method's assumption, so tests can check that the
method reports failure instead of a confident wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from steerscope.models.loading import LoadedModel
from steerscope.recover.result import cosine


@dataclass
class Planted:
    """A planted problem: the inputs of a recovery method and the true unit ``direction``."""

    direction: np.ndarray
    inputs: dict = field(default_factory=dict)


def _orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def ica_problem(n: int = 2000, d: int = 12, n_sources: int = 6, gaussian: bool = False, shift: float = 1.0,
                noise: float = 0.01, seed: int = 0) -> Planted:
    """``h = A s + noise`` (``[n, d]``); source 0 is the trait: ``s_0 = shift·y + ε_0``, y ∈ {0, 1}.

    Sources are Laplace (non-Gaussian, ICA's assumption holds) or Gaussian (it fails); ``A`` is a
    random ``d × n_sources`` matrix; the planted direction is its column 0.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    draw = rng.standard_normal if gaussian else (lambda size: rng.laplace(size=size) / np.sqrt(2))
    sources = draw(size=(n, n_sources))
    sources[:, 0] += shift * labels
    mixing = rng.standard_normal((d, n_sources))
    acts = sources @ mixing.T + noise * rng.standard_normal((n, d))
    return Planted(mixing[:, 0] / np.linalg.norm(mixing[:, 0]), {"acts": acts, "labels": labels})


def sparse_problem(d: int = 64, k: int = 1, m: int = 56, coherent: bool = False, n_samples: int = 200,
                   noise: float = 0.05, seed: int = 0) -> Planted:
    """A k-sparse direction in the neuron basis, observed through ``M`` (``[m, d]``).

    ``coherent=False``: ``M`` is Gaussian (incoherent columns). ``coherent=True``: ``M`` also
    annihilates ``e_a − e_b`` for the first support atom ``a`` and an atom ``b`` off the support,
    so columns a and b of ``M`` coincide (coherence 1) and the observation cannot tell them apart.
    ``samples`` are noisy copies of the direction (for bootstrap stability).
    """
    rng = np.random.default_rng(seed)
    support = rng.choice(d, k, replace=False)
    v = np.zeros(d)
    v[support] = rng.uniform(1.0, 2.0, k) * rng.choice([-1, 1], k)
    op = rng.standard_normal((m, d)) / np.sqrt(m)
    if coherent:
        other = int(np.setdiff1d(np.arange(d), support)[0])
        u = np.zeros(d)
        u[support[0]], u[other] = 1.0, -1.0
        u /= np.linalg.norm(u)
        op = op - np.outer(op @ u, u)
    samples = v + noise * rng.standard_normal((n_samples, d))
    return Planted(v / np.linalg.norm(v), {"target": samples.mean(axis=0), "dictionary": np.eye(d), "k": k,
                                           "operator": op, "samples": samples})


def multienv_problem(d: int = 24, rank: int = 12, n_env: int = 3, n_prompts: int = 8, noise: float = 0.01, seed: int = 0) -> Planted:
    """Environments whose Jacobians see only a random ``rank``-dim subspace each (kernel ``d − rank``).

    Each environment's estimate is ``v_e = v + n_e + noise`` with ``n_e`` a large component in that
    environment's kernel (invisible there, so behaviourally equivalent); the planted direction is ``v``.
    """
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    grams, vectors = [], []
    for _ in range(n_env):
        seen = _orthonormal(rng, d, rank)
        jacobians = [rng.standard_normal((rank, rank)) @ seen.T for _ in range(n_prompts)]
        grams.append([j.T @ j for j in jacobians])
        kernel = np.linalg.svd(np.eye(d) - seen @ seen.T)[0][:, : d - rank]
        vectors.append(v + kernel @ rng.standard_normal(d - rank) * np.linalg.norm(v) / np.sqrt(d - rank) + noise * rng.standard_normal(d))
    return Planted(v / np.linalg.norm(v), {"grams": grams, "vectors": vectors})


def crosslayer_problem(d: int = 24, kernel_dim: int = 10, degenerate: bool = False, seed: int = 0) -> Planted:
    """An output Gram ``G`` with a known ``kernel_dim``-dim kernel K and one layer map Φ.

    ``degenerate=False``: Φ = I + 0.3·R (invertible; the map pins the direction). ``degenerate=True``:
    Φ projects K out, so K is invisible to the output *and* to the map. The base-layer estimate is
    ``v + k`` with ``k ∈ K``; the target at the later layer is ``Φ v``.
    """
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    kernel = _orthonormal(rng, d, kernel_dim)
    proj = np.eye(d) - kernel @ kernel.T
    j = rng.standard_normal((d, d)) @ proj
    phi = proj @ (np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)) @ proj if degenerate else np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    base = v + kernel @ rng.standard_normal(kernel_dim) * np.linalg.norm(v) / np.sqrt(kernel_dim)
    return Planted(v / np.linalg.norm(v), {"gram": j.T @ j, "vector": base, "maps": [phi], "targets": [phi @ v]})


def planted_kernel_model(k: int = 3, n_layers: int = 4, d_model: int = 32, seed: int = 0) -> tuple[LoadedModel, np.ndarray]:
    """A tiny random Llama whose residual coordinates ``C`` (``k`` of them) are invisible to the logits.

    Construction: nothing writes to C (embedding columns, attention output rows and MLP down-projection
    rows of every block are zero there), so ``h_C = 0`` at every layer for every input; every
    RMSNorm (block input norms and the final norm) has weight 0 on C. For ``RMSNorm(h) = g ⊙ h / r(h)``
    the derivative along ``e_c`` is ``g_c e_c / r − (g ⊙ h) h_c / (d r³)``: the first term vanishes
    because ``g_c = 0`` and the second because ``h_c = 0``. Every path from the residual stream to
    the logits passes through one of these norms, so ``∂logits/∂h_ℓ`` has columns C exactly zero at
    every layer ℓ and prompt: a common kernel of dimension exactly ``k`` (the other directions are
    generically seen). This is a first-order statement: finite steps along C do change ``r(h)``.
    Returns the model and the kernel basis ``[d, k]`` (coordinate vectors).
    """
    from steerscope.testing import tiny_model

    lm = tiny_model("llama", n_layers=n_layers, d_model=d_model, seed=seed)
    coords = np.sort(np.random.default_rng(seed).choice(d_model, k, replace=False))
    idx = torch.as_tensor(coords)
    inner = lm.model.model
    with torch.no_grad():
        inner.embed_tokens.weight[:, idx] = 0
        inner.norm.weight[idx] = 0
        for block in inner.layers:
            block.self_attn.o_proj.weight[idx, :] = 0
            block.mlp.down_proj.weight[idx, :] = 0
            block.input_layernorm.weight[idx] = 0
            block.post_attention_layernorm.weight[idx] = 0
    basis = np.zeros((d_model, k))
    basis[coords, np.arange(k)] = 1.0
    return lm, basis


def planted_benchmark(seed: int = 0, n_boot: int = 5) -> list[dict]:
    """Run every method on its planted problem, with the assumption holding and broken.

    One row per case: method, case, whether the assumption holds, cosine with the planted
    direction, the reported identifiability and class dimension, and whether the report is
    correct (recovered with cos ≥ 0.95 and not declared unidentifiable when the assumption holds;
    declared not identifiable — or not certified — when it is broken).
    """
    from steerscope.recover import recover_crosslayer, recover_ica, recover_multienv, recover_sparse

    def sparse(p: Planted):
        i = p.inputs
        return recover_sparse(i["target"], i["dictionary"], i["k"], i["operator"], samples=i["samples"], n_boot=n_boot, seed=seed)

    cases = [
        ("ica", "Laplace sources", True, ica_problem(n=800, seed=seed),
         lambda p: recover_ica(p.inputs["acts"], p.inputs["labels"], 6, seed, n_boot=n_boot)),
        ("ica", "Gaussian sources", False, ica_problem(n=800, gaussian=True, seed=seed),
         lambda p: recover_ica(p.inputs["acts"], p.inputs["labels"], 6, seed, n_boot=n_boot)),
        ("sparse", "incoherent operator, k=1", True, sparse_problem(seed=seed), sparse),
        ("sparse", "coherent operator (two atoms merged)", False, sparse_problem(coherent=True, seed=seed), sparse),
        ("multienv", "3 environments", True, multienv_problem(n_env=3, seed=seed),
         lambda p: recover_multienv(p.inputs["grams"], p.inputs["vectors"], n_boot=n_boot, seed=seed)),
        ("multienv", "1 environment", False, multienv_problem(n_env=1, seed=seed),
         lambda p: recover_multienv(p.inputs["grams"], p.inputs["vectors"], n_boot=n_boot, seed=seed)),
        ("crosslayer", "invertible layer map", True, crosslayer_problem(seed=seed), lambda p: recover_crosslayer(**p.inputs)),
        ("crosslayer", "map shares the output kernel", False, crosslayer_problem(degenerate=True, seed=seed), lambda p: recover_crosslayer(**p.inputs)),
    ]
    rows = []
    for method, case, holds, problem, run in cases:
        r = run(problem)
        cos = cosine(r.direction, problem.direction)
        correct = (cos >= 0.95 and r.identifiable is not False) if holds else r.identifiable is not True
        rows.append({"method": method, "case": case, "assumption_holds": holds, "cos": cos, "identifiable": r.identifiable,
                     "class_dim": r.class_dim, "stability": r.stability, "reason": r.reason, "correct": bool(correct), "seed": seed})
    return rows
