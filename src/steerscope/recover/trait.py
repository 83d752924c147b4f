"""Run a recovery method for a trait's contrastive pairs on a loaded model.

Activations are read like :func:`steerscope.extract.extract` reads them (mean over each
completion span, at the output of block ℓ). Jacobian Gram matrices (logits, last position of each
prompt) and layer maps come from :mod:`steerscope.jacobian`; they do not depend on the trait, so callers that recover several traits pass them in once
(``grams``, ``maps``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from steerscope.capture import capture
from steerscope.data.pairs import ContrastivePair
from steerscope.encoding import encode_prompt
from steerscope.jacobian import HeadGram, head_jacobian, layer_map, prompt_gram
from steerscope.models.loading import LoadedModel
from steerscope.recover.assumptions import agreement, identifies_audited
from steerscope.recover.registry import TraitInputs, get_recovery
from steerscope.recover.result import Recovery, cosine


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


def layer_maps(lm: LoadedModel, prompts: Sequence[str], layer: int, targets: Sequence[int], chunk: int = 144) -> dict[int, list[np.ndarray]]:
    """Per later layer, the per-prompt maps ``Φ = ∂h_target/∂h_layer`` (last position)."""
    return {t: [layer_map(lm, encode_prompt(lm.tokenizer, p), layer, t, chunk).double().numpy() for p in prompts] for t in targets}


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
    env_pairs: Mapping[str, Sequence[ContrastivePair]] | None = None,
    audited: np.ndarray | None = None,
    audited_name: str = "the mean difference of the pairs",
) -> Recovery:
    """Recover the trait direction at ``layer`` with a registered ``method`` (built in: ica, sparse,
    multienv, crosslayer; see :mod:`steerscope.recover.registry`), test the method's assumption on
    the data and compare the direction with the audited vector.

    ``grams``: environment → per-prompt Gram matrices at ``layer`` (multienv; sparse with
    ``observe="jacobian"``; crosslayer uses all of them as the output Gram). ``maps``: later layer
    → per-prompt maps ``Φ`` from ``layer`` (crosslayer). ``env_pairs``: environment → pairs written
    in it (multienv extracts one vector per environment from them). ``audited`` (``[d]``, named by
    ``audited_name``): the vector the result is compared with; default: the mean difference of the
    pairs' activations. Stability resamples pairs.
    """
    run = get_recovery(method)
    layer = lm.check_layer(layer)
    acts = pair_activations(lm, pairs, [layer] + sorted(maps or {}))
    env_acts = {e: pair_activations(lm, ps, [layer])[layer] for e, ps in (env_pairs or {}).items()} if method == "multienv" else None
    inputs = TraitInputs(layer, acts, grams, maps, n_boot=n_boot, seed=seed, tol=tol, n_components=n_components,
                         dictionary=dictionary, k=k, observe=observe, env_acts=env_acts,
                         audited=None if audited is None else np.asarray(audited, dtype=np.float64), audited_name=audited_name)
    result = run(inputs)
    result.agreement = agreement(result.direction, inputs.reference, inputs.audited_name, result.stability)
    result.identifies, result.why = identifies_audited(result.identifiable, result.assumption, result.agreement)
    result.details |= {"layer": layer, "n_pairs": len(pairs), "cos_with_mean_diff": cosine(result.direction, inputs.mean_diff)}
    return result
