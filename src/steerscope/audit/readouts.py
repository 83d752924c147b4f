"""The teacher-forced readouts of the identifiability audit and the size of v's equivalence class.

* :func:`pair_margins_by_condition`: the pair margin ``log p(positive) − log p(negative)`` of each
  held-out contrastive pair under every condition (deterministic; one row per pair side and
  condition, batched);
* :func:`margin_gradient`: ``g = ∂ mean margin / ∂x`` for a displacement ``x`` added at every
  position of layer ℓ, taken at the steered state ``x = α·v`` by autograd;
* :func:`class_fraction`: Monte Carlo over random ``u ⊥ v`` at several norm ratios of whether
  ``v + u`` stays equivalent to ``v`` at δ on the pair margin and on the next-token distribution,
  next to the first-order prediction from ``g`` (:func:`~steerscope.audit.equivalence.predicted_fraction`);
  it is :func:`class_reference` (what the draws are compared with), :func:`class_chunk` per range of
  draws (:func:`class_ranges`, independent of each other) and :func:`class_summary` of their values.

Membership in the class is judged on the prompt set's means (efficacy within ``[1 − δ, 1 + δ]``;
mean JS from v at most that of ``(1 − δ)·v``); the fraction's interval is Clopper–Pearson over draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerscope import hooks
from steerscope.audit.equivalence import Margin, fraction, predicted_fraction
from steerscope.capture import forward
from steerscope.data.pairs import ContrastivePair
from steerscope.divergence import condition_divergences
from steerscope.encoding import encode_item, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.intervene import steer_rows
from steerscope.likelihood import completion_logprobs, span_logprobs
from steerscope.models.loading import LoadedModel


def pair_items(pairs: Sequence[ContrastivePair]) -> list:
    """The positive then the negative side of every pair: ``2 × len(pairs)`` items."""
    return [p.positive for p in pairs] + [p.negative for p in pairs]


def pair_margins_by_condition(
    lm: LoadedModel,
    layer: int,
    directions: Mapping[str, torch.Tensor | None],
    alpha: float,
    pairs: Sequence[ContrastivePair],
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """``{condition: [P]}`` pair margins with ``alpha·direction`` added at every position of ``layer``
    (``None``: unsteered); all conditions and both sides of every pair are rows of one batched pass."""
    if len(pairs) < 2:
        raise SteerscopeError(f"the pair-margin readout needs at least 2 held-out pairs, got {len(pairs)}")
    items = pair_items(pairs)
    names = list(directions)
    steered: list[Mapping[int, torch.Tensor] | None] = [None if (d := directions[n]) is None else {layer: d} for n in names]
    vectors = [x for x in steered for _ in items]
    alphas = [float(alpha) if x is not None else 0.0 for x in steered for _ in items]
    logp = completion_logprobs(lm, items * len(names), steer_rows(lm, vectors, alphas, "all"), batch_size)
    cube = logp.numpy().reshape(len(names), 2, len(pairs))
    return {n: cube[i, 0] - cube[i, 1] for i, n in enumerate(names)}


def margin_gradient(
    lm: LoadedModel, layer: int, v: torch.Tensor, alpha: float, pairs: Sequence[ContrastivePair], chunk: int = 8,
) -> np.ndarray:
    """``∂ mean_p margin_p / ∂x`` (``[d]``, float64) for ``x`` added at every position of ``layer``, at ``x = α·v``."""
    items = pair_items(pairs)
    encoded = [encode_item(lm.tokenizer, item) for item in items]
    x = (float(alpha) * v.detach().to(device=lm.device, dtype=lm.dtype)).clone().requires_grad_(True)
    grad = torch.zeros(lm.d_model, dtype=torch.float64)
    sign = torch.tensor([1.0] * len(pairs) + [-1.0] * len(pairs), dtype=torch.float64)
    for start in range(0, len(items), chunk):
        part = encoded[start:start + chunk]
        batch = pad_batch([e.ids for e in part], lm.tokenizer.pad_token_id, "left")
        keep = max(len(e.ids) - e.span[0] + 1 for e in part)
        with hooks.edit(lm, {layer: lambda h: h + x.to(h.device)}), torch.enable_grad():  # the block may sit on another device
            out = forward(lm, batch, logits_to_keep=keep).logits
            total = (span_logprobs(out, part, batch.input_ids.shape[1]) * sign[start:start + len(part)]).sum() / len(pairs)
            (g,) = torch.autograd.grad(total, x)
        grad += g.double().cpu()
    return grad.numpy()


#: Draws per batched divergence pass (bounds the logits held at once for large vocabularies).
DIVERGENCE_CHUNK = 16


def _mean_js(lm: LoadedModel, layer: int, v: torch.Tensor, us: Sequence[torch.Tensor], alpha: float, prompts, conts) -> np.ndarray:
    """Mean over prompts and tokens of ``JS(v, v + u)`` for each ``u`` (``[len(us)]``)."""
    div = condition_divergences(lm, prompts, conts, [{layer: v}] + [{layer: v + u} for u in us], [alpha] * (len(us) + 1))
    return div.mean("js")[1:].mean(dim=1).numpy()


@dataclass(frozen=True)
class ClassSample:
    """Sizes of the Monte Carlo over ``u ⊥ v``: ``draws`` per norm ratio in ``ratios``, seeds from ``seed``."""

    draws: int = 200
    ratios: tuple[float, ...] = (0.25, 0.5, 1.0)
    seed: int = 50_000

    def __post_init__(self) -> None:
        if self.draws < 1 or not self.ratios or any(not r > 0 for r in self.ratios):
            raise SteerscopeError(f"need at least one draw and positive norm ratios, got {self.draws} and {self.ratios}")


#: Draws per chunk of the class-size Monte Carlo (one run-store cell each). A multiple of
#: :data:`DIVERGENCE_CHUNK` whose pair-margin rows (two per pair and draw) fill whole batches at the
#: default batch size of 32, so that chunks run the batched passes of one unchunked pass.
CLASS_CHUNK = 48


@dataclass(frozen=True)
class DrawRange:
    """The draws ``start ≤ i < stop`` at the norm ratio ``sample.ratios[k]`` of a :class:`ClassSample`."""

    k: int
    start: int
    stop: int


@dataclass(frozen=True)
class ClassReference:
    """What every draw is compared with: the unsteered mean pair margin ``none_mean``, v's effect on it
    ``effect`` and the mean JS of ``(1 − δ)·v`` from v, ``js_margin`` (None without a distribution readout)."""

    none_mean: float
    effect: float
    js_margin: float | None


def class_ranges(sample: ClassSample) -> list[DrawRange]:
    """The chunks of ``sample``: every ratio's draws in ranges of :data:`CLASS_CHUNK`, ratio by ratio."""
    return [DrawRange(k, start, min(start + CLASS_CHUNK, sample.draws))
            for k in range(len(sample.ratios)) for start in range(0, sample.draws, CLASS_CHUNK)]


def _draws(v: torch.Tensor, ratio: float, seed: int, start: int, stop: int) -> list[torch.Tensor]:
    """``ratio·u_i`` for ``start ≤ i < stop``, ``u_i`` = :func:`orthogonal_draw` of ``v`` (``[d]``) with seed ``seed + i``."""
    from steerscope.audit.identifiability import orthogonal_draw

    return [ratio * orthogonal_draw(v, seed + i) for i in range(start, stop)]


def class_reference(
    lm: LoadedModel,
    layer: int,
    v: torch.Tensor,
    alpha: float,
    pairs: Sequence[ContrastivePair],
    distribution: tuple[Sequence[str], Sequence[str]] | None,
    delta: float,
    batch_size: int = 32,
    base: Mapping[str, np.ndarray] | None = None,
) -> ClassReference:
    """The :class:`ClassReference` of ``v`` (``[d]``); ``base``: the pair margins ``{"none", "v": [P]}`` when
    the caller already has them; ``distribution``: ``(prompts, continuations)`` (None: no JS margin)."""
    v32 = v.detach().float().cpu()
    if base is None:
        base = pair_margins_by_condition(lm, layer, {"none": None, "v": v32}, alpha, pairs, batch_size)
    none_mean = float(np.mean(base["none"]))
    effect = float(np.mean(base["v"] - base["none"]))
    if effect == 0 or not math.isfinite(effect):
        raise SteerscopeError(f"v moves the mean pair margin by {effect}: its equivalence class is undefined")
    js_margin = None
    if distribution is not None:
        prompts, conts = distribution
        ref = condition_divergences(lm, prompts, conts, [{layer: v32}, {layer: (1 - delta) * v32}], [alpha, alpha])
        js_margin = float(ref.mean("js")[1].mean())
    return ClassReference(none_mean, effect, js_margin)


def class_chunk(
    lm: LoadedModel,
    layer: int,
    v: torch.Tensor,
    alpha: float,
    pairs: Sequence[ContrastivePair],
    distribution: tuple[Sequence[str], Sequence[str]] | None,
    reference: ClassReference,
    sample: ClassSample,
    part: DrawRange,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Per-draw readouts of the draws ``part`` of ``sample`` (seeds ``sample.seed + 1000·k + i``) around ``v`` (``[d]``):
    ``{"efficacy": [n], "js": [n]}`` with ``n = stop − start`` (``"js"``, the mean JS from v, only with a ``distribution``)."""
    if not (0 <= part.k < len(sample.ratios) and 0 <= part.start < part.stop <= sample.draws):
        raise SteerscopeError(f"{part} is not a range of draws of {sample}")
    v32 = v.detach().float().cpu()
    us = _draws(v32, sample.ratios[part.k], sample.seed + 1000 * part.k, part.start, part.stop)
    margins = pair_margins_by_condition(lm, layer, {f"u{i}": v32 + u for i, u in enumerate(us)}, alpha, pairs, batch_size)
    out = {"efficacy": np.array([(np.mean(margins[f"u{i}"]) - reference.none_mean) / reference.effect for i in range(len(us))])}
    if distribution is not None:
        prompts, conts = distribution
        out["js"] = np.concatenate([_mean_js(lm, layer, v32, us[s:s + DIVERGENCE_CHUNK], alpha, prompts, conts)
                                    for s in range(0, len(us), DIVERGENCE_CHUNK)])
    return out


def join_chunks(sample: ClassSample, chunks: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    """Per ratio of ``sample``, the per-draw values ``{"efficacy": [draws], "js": [draws]}`` of ``chunks`` (the
    :func:`class_chunk` outputs of :func:`class_ranges`, in order; lists and None for NaN accepted)."""
    parts = class_ranges(sample)
    if len(chunks) != len(parts):
        raise SteerscopeError(f"the class-size Monte Carlo has {len(parts)} chunks, got {len(chunks)}")
    out: list[dict[str, np.ndarray]] = []
    for k in range(len(sample.ratios)):
        mine = [c for p, c in zip(parts, chunks) if p.k == k]
        out.append({name: np.asarray([x for c in mine for x in c[name]], dtype=float) for name in mine[0]})
    return out


def predicted_fractions(gradient: np.ndarray, v: torch.Tensor, sample: ClassSample, delta: float) -> list[float]:
    """The first-order share of the class (:func:`~steerscope.audit.equivalence.predicted_fraction`) per ratio of ``sample``
    (``gradient``, ``v``: ``[d]``)."""
    v64 = v.detach().float().cpu().double().numpy()
    return [predicted_fraction(gradient, v64, ratio, delta) for ratio in sample.ratios]


def class_summary(
    reference: ClassReference,
    sample: ClassSample,
    delta: float,
    values: Sequence[Mapping[str, np.ndarray]],
    predicted: Sequence[float] | None = None,
) -> dict[str, Any]:
    """:func:`class_fraction`'s result from the per-ratio per-draw ``values`` (:func:`join_chunks`) and the
    first-order ``predicted`` share per ratio (None: left out)."""
    out: dict[str, Any] = {"pair_margin": {}, "distribution": {}, "delta": delta, "draws": sample.draws}
    for k, (ratio, per_draw) in enumerate(zip(sample.ratios, values)):
        eff = per_draw["efficacy"]
        row = fraction(list(np.abs(eff - 1) <= delta)) | {"efficacy_quantiles": np.quantile(eff, [0.05, 0.5, 0.95]).tolist()}
        if predicted is not None:
            row["predicted"] = predicted[k]
        out["pair_margin"][f"{ratio:g}"] = row
        if "js" in per_draw:
            js, js_margin = per_draw["js"], math.nan if reference.js_margin is None else reference.js_margin
            out["distribution"][f"{ratio:g}"] = fraction(list(js <= js_margin)) | {
                "js_margin": js_margin, "js_over_margin_quantiles": np.quantile(js / js_margin, [0.05, 0.5, 0.95]).tolist()}
    return out


def class_fraction(
    lm: LoadedModel,
    layer: int,
    v: torch.Tensor,
    alpha: float,
    pairs: Sequence[ContrastivePair],
    distribution: tuple[Sequence[str], Sequence[str]] | None,
    margin: Margin,
    sample: ClassSample,
    gradient: np.ndarray | None = None,
    batch_size: int = 32,
    base: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Share of ``v + u`` (``u ⊥ v``, ``‖u‖ = r‖v‖``) equivalent to ``v`` at δ, per readout and ratio ``r``.

    ``distribution``: ``(prompts, continuations)`` for the next-token readout (None: skip it).
    Returns ``{"pair_margin": {r: {...}}, "distribution": {r: {...}}}`` (deterministic); each
    pair-margin entry carries the first-order ``predicted`` share when ``gradient`` is given.
    ``base``: the pair margins ``{"none", "v": [P]}`` when the caller already has them.
    The draws run in chunks of :data:`CLASS_CHUNK` (:func:`class_chunk`).
    """
    reference = class_reference(lm, layer, v, alpha, pairs, distribution, margin.delta, batch_size, base)
    chunks = [class_chunk(lm, layer, v, alpha, pairs, distribution, reference, sample, part, batch_size) for part in class_ranges(sample)]
    predicted = None if gradient is None else predicted_fractions(gradient, v, sample, margin.delta)
    return class_summary(reference, sample, margin.delta, join_chunks(sample, chunks), predicted)
