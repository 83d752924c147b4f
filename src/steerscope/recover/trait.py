"""Run a recovery method for a trait's contrastive pairs on a loaded model.

Activations are read like :func:`steerscope.extract.extract` reads them (mean over each
completion span, at the output of block ℓ). Jacobian Gram matrices (logits, last position of each
prompt) come from :mod:`steerscope.audit.jacobian`; they do not depend on the trait, so callers
that recover several traits pass them in once (``grams``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from steerscope.audit.jacobian import HeadGram, head_jacobian, layer_map, prompt_gram
from steerscope.capture import capture
from steerscope.data.pairs import ContrastivePair
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.models.loading import LoadedModel
from steerscope.recover.crosslayer import recover_crosslayer
from steerscope.recover.ica import ica_direction, recover_ica
from steerscope.recover.multienv import recover_multienv
from steerscope.recover.result import Recovery, cosine
from steerscope.recover.sparse import recover_sparse
from steerscope.recover.stability import bootstrap_stability


def pair_activations(lm: LoadedModel, pairs: Sequence[ContrastivePair], layers: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per layer ``(pos [N, d], neg [N, d])`` float64 activations of the pairs' completions."""
    items = [p.positive for p in pairs] + [p.negative for p in pairs]
    acts = capture(lm, items, layers, position="mean")
    n = len(pairs)
    return {layer: (a[:n].double().numpy(), a[n:].double().numpy()) for layer, a in acts.items()}


def prompt_grams(lm: LoadedModel, prompts: Sequence[str], layer: int, chunk: int = 144) -> list[np.ndarray]:
    """Logit-Jacobian Gram matrices ``JᵀJ`` (``[d, d]``) of each prompt at its last position."""
    head = HeadGram(lm)
    return [prompt_gram(head, head_jacobian(lm, encode_prompt(lm.tokenizer, p), layer, chunk=chunk)).numpy() for p in prompts]


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


def _sqrt_operator(gram: np.ndarray) -> np.ndarray:
    """``M`` with ``MᵀM = gram`` (``[d, d]``): the observation operator of a stacked Jacobian."""
    lam, vecs = np.linalg.eigh(gram)
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * vecs.T


def recover_trait(
    lm: LoadedModel,
    method: str,
    pairs: Sequence[ContrastivePair],
    layer: int,
    *,
    grams: Mapping[str, Sequence[np.ndarray]] | None = None,
    maps: Mapping[int, Sequence[np.ndarray]] | None = None,
    n_boot: int = 30,
    seed: int = 0,
    tol: float = 1e-3,
    n_components: int | None = None,
    dictionary: str = "neurons",
    k: int = 8,
    observe: str = "activations",
) -> Recovery:
    """Recover the trait direction at ``layer`` with ``method`` (ica, sparse, multienv, crosslayer).

    ``grams``: environment → per-prompt Gram matrices at ``layer`` (multienv; sparse with
    ``observe="jacobian"``; crosslayer uses all of them as the output Gram). ``maps``: later layer
    → per-prompt maps ``Φ`` from ``layer`` (crosslayer). The reference vector is the mean
    difference of the pairs' activations; stability resamples pairs.
    """
    layer = lm.check_layer(layer)
    layers = [layer] + sorted(maps or {})
    acts = pair_activations(lm, pairs, layers)
    pos, neg = acts[layer]
    contrasts = pos - neg
    v = contrasts.mean(axis=0)
    if method == "ica":
        x = np.concatenate([pos, neg])
        labels = np.r_[np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)]
        result = recover_ica(x, labels, n_components, seed, n_boot=0)
        if n_boot:
            def refit(idx: np.ndarray) -> np.ndarray:
                rows = np.r_[idx, idx + len(pos)]  # resample pairs, keep both members
                return ica_direction(x[rows], labels[rows], result.details["n_components"], seed)
            result.stability = bootstrap_stability(refit, len(pos), result.direction, n_boot, seed)
    elif method == "sparse":
        if observe not in ("activations", "jacobian"):
            raise SteerscopeError(f"observe must be activations or jacobian, got {observe!r}")
        if observe == "jacobian" and not grams:
            raise SteerscopeError("sparse recovery observed through the Jacobian needs Gram matrices")
        operator = _sqrt_operator(np.sum([g for gs in grams.values() for g in gs], axis=0)) if observe == "jacobian" else None
        dic = load_dictionary(dictionary, lm.d_model, np.concatenate([pos, neg]), seed=seed)
        result = recover_sparse(v, dic, k, operator, samples=contrasts, n_boot=n_boot, seed=seed)
        result.details["dictionary"] = dictionary
        result.details["observe"] = observe
    elif method == "multienv":
        if not grams:
            raise SteerscopeError("multi-environment recovery needs per-environment Gram matrices")
        result = recover_multienv(list(grams.values()), [v] * len(grams), tol, n_boot, seed)
        result.details["environments"] = list(grams)
    elif method == "crosslayer":
        if not grams or not maps:
            raise SteerscopeError("cross-layer recovery needs Gram matrices at the base layer and layer maps")
        gram = np.sum([g for gs in grams.values() for g in gs], axis=0)
        targets = {t: acts[t][0].mean(axis=0) - acts[t][1].mean(axis=0) for t in maps}

        def solve(idx: np.ndarray) -> np.ndarray:
            vi = contrasts[idx].mean(axis=0)
            ti = [(acts[t][0][idx] - acts[t][1][idx]).mean(axis=0) for t in maps]
            return recover_crosslayer(gram, vi, [np.asarray(maps[t]) for t in maps], ti, tol).direction

        result = recover_crosslayer(gram, v, [np.asarray(maps[t]) for t in maps], list(targets.values()), tol)
        result.details["layers"] = layers
        if n_boot:
            result.stability = bootstrap_stability(solve, len(contrasts), result.direction, n_boot, seed)
    else:
        raise SteerscopeError(f"unknown recovery method {method!r}; use ica, sparse, multienv or crosslayer")
    result.details |= {"layer": layer, "n_pairs": len(pairs), "cos_with_mean_diff": cosine(result.direction, v)}
    return result


def layer_maps(lm: LoadedModel, prompts: Sequence[str], layer: int, targets: Sequence[int], chunk: int = 144) -> dict[int, list[np.ndarray]]:
    """Per later layer, the per-prompt maps ``Φ = ∂h_target/∂h_layer`` (last position)."""
    return {t: [layer_map(lm, encode_prompt(lm.tokenizer, p), layer, t, chunk).double().numpy() for p in prompts] for t in targets}

