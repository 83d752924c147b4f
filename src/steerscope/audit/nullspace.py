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
from dataclasses import dataclass, replace
from functools import reduce
from typing import Any

import numpy as np
import torch

from steerscope.audit.pipeline import bytes_to_arrays, tensors_to_bytes
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
from steerscope.jsonable import jsonable
from steerscope.models.loading import LoadedModel
from steerscope.progress import track
from steerscope.runstore import stored_payload

READOUTS: tuple[Readout, ...] = ("logits", "logprobs")
PAPER_INERT = "80–95 % of d_model reported as null space (arXiv 2602.06801; fp16 finite differences, one prompt, 5 % threshold)"
#: Prompts per chunk: the Jacobians of a chunk are one cell of ``steerscope audit``.
PROMPT_CHUNK = 8

#: A chunk as a run store gives it back: its payload and the arrays of its blob (see :func:`chunk_arrays`).
Chunk = tuple[dict[str, Any], dict[str, np.ndarray]]


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


def prompt_chunks(n_prompts: int, size: int = PROMPT_CHUNK, first: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges of ``n_prompts`` prompts, ``size`` each (the last may be
    shorter), the first at least ``first`` long (it holds the prompts of the principal angles)."""
    if size < 1:
        raise SteerscopeError(f"a chunk of the null-space audit needs at least one prompt, got {size}")
    head = min(max(size, first), n_prompts)
    return [(0, head)] * (n_prompts > 0) + [(start, min(start + size, n_prompts)) for start in range(head, n_prompts, size)]


def angle_chunk_prompts(angle_prompts: int, grams_per_prompt: int) -> int:
    """Prompts the first chunk needs so that it holds the first ``angle_prompts`` Gram matrices."""
    return -(-angle_prompts // grams_per_prompt)


def chunk_arrays(grams: Mapping[str, Sequence[torch.Tensor]]) -> dict[str, np.ndarray]:
    """What :func:`readout_summary` needs of consecutive Gram matrices (readout → ``[d, d]`` each): per
    readout ``{r}/sum`` ``[d, d]`` (their sum) and ``{r}/sigma`` ``[n, d]`` (the singular values of each)."""
    arrays: dict[str, np.ndarray] = {}
    for readout in READOUTS:
        stack = torch.stack(list(grams[readout]))
        arrays[f"{readout}/sum"] = stack.sum(dim=0).numpy()
        arrays[f"{readout}/sigma"] = np.stack([singular_values(g) for g in stack])
    return arrays


@dataclass(frozen=True)
class ChunkSettings:
    """How the Jacobians of a chunk are taken: δ at ``positions`` (``spread``: at every position, one Gram
    matrix per prompt, ``positions`` not used), ``chunk`` rows per autograd pass; the principal angles of
    the first ``angle_prompts`` Gram matrices at ``tolerances``."""

    positions: tuple[int, ...] = (-1,)
    angle_prompts: int = 8
    tolerances: tuple[float, ...] = TOLERANCES
    chunk: int = 144
    spread: bool = False

    @property
    def used(self) -> tuple[int, ...]:
        """The positions δ is applied at (``(0,)`` when ``spread``)."""
        return (0,) if self.spread else self.positions


def gram_chunk(lm: LoadedModel, prompts: Sequence[str], layer: int, start: int, stop: int,
               settings: ChunkSettings = ChunkSettings()) -> tuple[dict[str, Any], bytes]:
    """The cell of ``prompts[start:stop]`` at ``layer``: a payload naming it (the first chunk, ``start`` = 0,
    also holds per readout the principal angles of the first ``settings.angle_prompts`` Gram matrices,
    which it must contain) and a blob holding :func:`chunk_arrays` of their Gram matrices (:func:`layer_grams`)."""
    s = settings
    grams = layer_grams(lm, prompts[start:stop], layer, s.used, s.chunk, spread=s.spread)
    payload: dict[str, Any] = {"layer": layer, "prompts": [start, stop], "positions": list(s.used), "spread": s.spread}
    if start == 0:
        payload["angles"] = {r: null_space_angles(grams[r][:s.angle_prompts], s.tolerances) for r in READOUTS}
    return payload, tensors_to_bytes(chunk_arrays(grams))


def cell_chunk(payload: Any, blob: bytes | None) -> Chunk:
    """A chunk as :func:`jacobian_entry` reads it, from the payload of its cell (as a run store gives it back) and the cell's blob."""
    if blob is None:
        raise SteerscopeError(f"the null-space cell of prompts {payload.get('prompts')} has no arrays")
    return payload, bytes_to_arrays(blob)


def readout_report(total: np.ndarray, sigmas: np.ndarray, angles: list[dict], tolerances: Sequence[float],
                   vector: torch.Tensor | None) -> dict:
    """Spectrum of the stacked Jacobian (``total``: the sum of the ``n`` Gram matrices, ``[d, d]``) and
    per-prompt statistics (``sigmas``: their singular values, ``[n, d]``; ``angles``: the principal angles
    between the first few prompts' null spaces, :func:`~steerscope.jacobian.null_space_angles`) for one readout."""
    sigma = singular_values(total)
    report = {
        "stacked": spectrum_summary(sigma, tolerances) | {"singular_values": sigma.tolist()},
        "per_prompt_effective_rank": {
            str(t): {"mean": float(np.mean([effective_rank(s, t) for s in sigmas])),
                     "min": int(min(effective_rank(s, t) for s in sigmas)),
                     "max": int(max(effective_rank(s, t) for s in sigmas))}
            for t in tolerances
        },
        "null_space_angles": angles,
    }
    if vector is not None:
        report["vector_gain"] = vector_gain(total, vector, len(sigmas))
    return report


def readout_summary(chunks: Sequence[Chunk], readout: Readout, tolerances: Sequence[float], vector: torch.Tensor | None) -> dict:
    """:func:`readout_report` of ``readout`` from the chunks of a layer's prompts, in order (their sums added in that order)."""
    arrays = [a for _, a in chunks]
    total = reduce(np.add, [a[f"{readout}/sum"] for a in arrays])
    sigmas = np.concatenate([a[f"{readout}/sigma"] for a in arrays])
    return readout_report(total, sigmas, chunks[0][0]["angles"][readout], tolerances, vector)


def _check_order(chunks: Sequence[Chunk]) -> None:
    """Raise unless the chunks' prompt ranges follow each other from the first prompt."""
    ranges = [tuple(payload["prompts"]) for payload, _ in chunks]
    if not ranges or [r[0] for r in ranges] != [0, *(r[1] for r in ranges[:-1])]:
        raise SteerscopeError(f"the chunks of the null-space audit must cover the prompts in order from the first, got {ranges}")


def jacobian_entry(chunks: Sequence[Chunk], spread_chunks: Sequence[Chunk], tolerances: Sequence[float],
                   vector: torch.Tensor | None) -> dict[str, Any]:
    """A layer's Jacobian results from its chunks (:func:`cell_chunk`): per readout, and under
    ``"all_positions"`` from the chunks of every-position Jacobians when there are any."""
    _check_order(chunks)
    entry: dict[str, Any] = {r: readout_summary(chunks, r, tolerances, vector) for r in READOUTS}
    if spread_chunks:
        _check_order(spread_chunks)
        entry["all_positions"] = {r: readout_summary(spread_chunks, r, tolerances, vector) for r in READOUTS}
    return entry


def covariance_spectra(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int], tolerances: Sequence[float]) -> dict[int, dict]:
    """Per layer, the covariance spectra of the residual over every token (attention sinks left out) and over last tokens."""
    acts = capture(lm, list(prompts), layers, position="all")
    spectra = {}
    for layer in layers:
        tokens = torch.cat([a[~sink_mask(a.norm(dim=-1))] for a in acts[layer]])
        last = torch.stack([a[-1] for a in acts[layer]])
        spectra[layer] = {"all_tokens": covariance_spectrum(tokens, tolerances), "last_token": covariance_spectrum(last, tolerances)}
    return spectra


def audit_header(lm: LoadedModel, n_prompts: int, layers: Sequence[int], positions: Sequence[int], tolerances: Sequence[float],
                 angle_prompts: int, all_positions: int) -> dict:
    """The audit's result without its layers' entries (``"layers"`` is empty)."""
    return {
        "model": lm.info(),
        "config": {"n_prompts": n_prompts, "layers": list(layers), "positions": list(positions),
                   "tolerances": list(tolerances), "dtype": str(lm.dtype).removeprefix("torch."),
                   "angle_prompts": angle_prompts, "all_positions_prompts": min(all_positions, n_prompts), "method": "autograd reverse mode, Gram JᵀJ accumulated in float64"},
        "paper_reference": PAPER_INERT,
        "layers": {},
    }


def _computed_chunks(lm: LoadedModel, prompts: Sequence[str], layer: int, ranges: Sequence[tuple[int, int]], settings: ChunkSettings,
                     progress: bool) -> list[Chunk]:
    """:func:`gram_chunk` of each of ``ranges``, read back as from a run store."""
    what = "every position" if settings.spread else "the chosen positions"
    chunks = []
    for start, stop in track(ranges, f"Jacobians at layer {layer}, δ at {what}, {len(ranges)} chunks", enabled=progress and bool(ranges)):
        payload, blob = gram_chunk(lm, prompts, layer, start, stop, settings)
        chunks.append(cell_chunk(stored_payload(jsonable(payload)), blob))
    return chunks


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
    prompt_chunk: int = PROMPT_CHUNK,
) -> dict:
    """Run the null-space audit at ``layers`` over ``prompts`` (rendered as generation prompts).

    ``positions`` are token positions (negative from the end) at which δ is applied; the readout
    is always the next-token prediction at the last position. ``vectors`` maps layer → ``[d]``
    steering vector whose gain is reported. ``angle_prompts`` consecutive prompts enter the
    principal-angle comparison. ``all_positions`` > 0: also the Jacobian of steering *every*
    position (``Σ_t J_t``, the intervention the audits apply) on the first that many prompts,
    under ``"all_positions"``. The Jacobians are computed ``prompt_chunk`` prompts at a time
    (:func:`gram_chunk`, read back as from a run store) and summarised (:func:`jacobian_entry`);
    ``"seconds"``: their wall time per layer. Returns a JSON-serialisable dict.
    """
    if len(prompts) < 1:
        raise SteerscopeError("the null-space audit needs at least one prompt")
    if all_positions < 0:
        raise SteerscopeError(f"--all-positions must be 0 or more prompts, got {all_positions}")
    layer_ids = [lm.check_layer(layer) for layer in layers]
    results = audit_header(lm, len(prompts), layer_ids, positions, tolerances, angle_prompts, all_positions)
    settings = ChunkSettings(tuple(positions), angle_prompts, tuple(tolerances), chunk)
    ranges = prompt_chunks(len(prompts), prompt_chunk, angle_chunk_prompts(angle_prompts, len(positions)))
    spread_ranges = prompt_chunks(min(all_positions, len(prompts)), prompt_chunk, angle_prompts)
    covariances = covariance_spectra(lm, prompts, layer_ids, tolerances)
    for layer in layer_ids:
        start = time.perf_counter()
        chunks = _computed_chunks(lm, prompts, layer, ranges, settings, progress)
        spread_chunks = _computed_chunks(lm, prompts, layer, spread_ranges, replace(settings, spread=True), progress)
        vector = None if vectors is None or layer not in vectors else vectors[layer].double().cpu()
        entry = jacobian_entry(chunks, spread_chunks, tolerances, vector)
        results["layers"][str(layer)] = entry | {"seconds": time.perf_counter() - start, "covariance": covariances[layer]}
    return results
