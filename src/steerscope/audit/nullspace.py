"""Null-space audit: which residual-stream directions at a layer does the output ignore?

For each layer, the exact Jacobians of next-token logits and log-probabilities w.r.t. the
residual at the chosen positions of every prompt (:mod:`steerscope.jacobian`) are stacked
through their Gram matrices. Reported per layer and readout: the singular spectrum of the stack
(the *common* kernel over the prompts), effective ranks and inert fractions at relative
tolerances, the same for single prompts, principal angles between per-prompt null spaces, the
gain of a steering vector and of its orthogonal complement, and — separately, a different object —
the spectrum of the activation covariance at the same layer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from steerscope.jacobian import (
    TOLERANCES,
    HeadGram,
    Readout,
    covariance_spectrum,
    effective_rank,
    head_jacobian,
    null_space_angles,
    prompt_gram,
    singular_values,
    spectrum_summary,
    vector_gain,
)
from steerscope.capture import capture, sink_mask
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.models.loading import LoadedModel
from steerscope.progress import track

READOUTS: tuple[Readout, ...] = ("logits", "logprobs")
PAPER_INERT = "80–95 % of d_model reported as null space (arXiv 2602.06801; fp16 finite differences, one prompt, 5 % threshold)"


def layer_grams(
    lm: LoadedModel, prompts: Sequence[str], layer: int, positions: Sequence[int] = (-1,),
    chunk: int = 144, progress: bool = False, spread: bool = False,
) -> dict[str, list[torch.Tensor]]:
    """Per-(prompt, position) Gram matrices ``JᵀJ`` (``[d, d]`` float64) for each readout
    (``spread``: δ at each position and every later one, see :func:`~steerscope.jacobian.head_jacobian`)."""
    head = HeadGram(lm)
    grams: dict[str, list[torch.Tensor]] = {r: [] for r in READOUTS}
    for prompt in track(prompts, f"Jacobians at layer {layer}", enabled=progress):
        ids = encode_prompt(lm.tokenizer, prompt)
        for position in positions:
            hj = head_jacobian(lm, ids, layer, position, chunk=chunk, spread=spread)
            for readout in READOUTS:
                grams[readout].append(prompt_gram(head, hj, readout))
    return grams


def readout_report(grams: Sequence[torch.Tensor], tolerances: Sequence[float], angle_prompts: int, vector: torch.Tensor | None) -> dict:
    """Spectrum of the stacked Jacobian and per-prompt statistics for one readout."""
    total = torch.stack(list(grams)).sum(dim=0)
    sigma = singular_values(total)
    per_prompt = [singular_values(g) for g in grams]
    report = {
        "stacked": spectrum_summary(sigma, tolerances) | {"singular_values": sigma.tolist()},
        "per_prompt_effective_rank": {
            str(t): {"mean": float(np.mean([effective_rank(s, t) for s in per_prompt])),
                     "min": int(min(effective_rank(s, t) for s in per_prompt)),
                     "max": int(max(effective_rank(s, t) for s in per_prompt))}
            for t in tolerances
        },
        "null_space_angles": null_space_angles(list(grams)[:angle_prompts], tolerances),
    }
    if vector is not None:
        report["vector_gain"] = vector_gain(total, vector, len(grams))
    return report


def nullspace_audit(
    lm: LoadedModel,
    prompts: Sequence[str],
    layers: Sequence[int],
    positions: Sequence[int] = (-1,),
    tolerances: Sequence[float] = TOLERANCES,
    vectors: Mapping[int, torch.Tensor] | None = None,
    angle_prompts: int = 8,
    chunk: int = 144,
    progress: bool = False,
    all_positions: int = 0,
) -> dict:
    """Run the null-space audit at ``layers`` over ``prompts`` (rendered as generation prompts).

    ``positions`` are token positions (negative from the end) at which δ is applied; the readout
    is always the next-token prediction at the last position. ``vectors`` maps layer → ``[d]``
    steering vector whose gain is reported. ``angle_prompts`` consecutive prompts enter the
    principal-angle comparison. ``all_positions`` > 0: also the Jacobian of steering *every*
    position (``Σ_t J_t``, the intervention the audits apply) on the first that many prompts,
    under ``"all_positions"``. Returns a JSON-serialisable dict.
    """
    if len(prompts) < 1:
        raise SteerscopeError("the null-space audit needs at least one prompt")
    if all_positions < 0:
        raise SteerscopeError(f"--all-positions must be 0 or more prompts, got {all_positions}")
    layer_ids = [lm.check_layer(layer) for layer in layers]
    results: dict = {
        "model": lm.info(),
        "config": {"n_prompts": len(prompts), "layers": layer_ids, "positions": list(positions),
                   "tolerances": list(tolerances), "dtype": str(lm.dtype).removeprefix("torch."),
                   "angle_prompts": angle_prompts, "all_positions_prompts": min(all_positions, len(prompts)), "method": "autograd reverse mode, Gram JᵀJ accumulated in float64"},
        "paper_reference": PAPER_INERT,
        "layers": {},
    }
    acts = capture(lm, list(prompts), layer_ids, position="all")
    for layer in layer_ids:
        start = time.perf_counter()
        grams = layer_grams(lm, prompts, layer, positions, chunk, progress)
        vector = None if vectors is None or layer not in vectors else vectors[layer].double().cpu()
        entry: dict[str, Any] = {r: readout_report(grams[r], tolerances, angle_prompts, vector) for r in READOUTS}
        if all_positions:
            spread = layer_grams(lm, prompts[:all_positions], layer, (0,), chunk, progress, spread=True)
            entry["all_positions"] = {r: readout_report(spread[r], tolerances, angle_prompts, vector) for r in READOUTS}
        entry["seconds"] = time.perf_counter() - start
        tokens = torch.cat([a[~sink_mask(a.norm(dim=-1))] for a in acts[layer]])  # attention sinks left out
        last = torch.stack([a[-1] for a in acts[layer]])
        entry["covariance"] = {"all_tokens": covariance_spectrum(tokens, tolerances), "last_token": covariance_spectrum(last, tolerances)}
        results["layers"][str(layer)] = entry
    return results
