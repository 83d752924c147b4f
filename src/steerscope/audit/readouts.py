"""The teacher-forced readouts of the identifiability audit and the size of v's equivalence class.

* :func:`pair_margins_by_condition`: the pair margin ``log p(positive) − log p(negative)`` of each
  held-out contrastive pair under every condition (deterministic; one row per pair side and
  condition, batched);
* :func:`margin_gradient`: ``g = ∂ mean margin / ∂x`` for a displacement ``x`` added at every
  position of layer ℓ, taken at the steered state ``x = α·v`` by autograd;
* :func:`class_fraction`: Monte Carlo over random ``u ⊥ v`` at several norm ratios of whether
  ``v + u`` stays equivalent to ``v`` at δ on the pair margin and on the next-token distribution,
  next to the first-order prediction from ``g`` (:func:`~steerscope.audit.equivalence.predicted_fraction`).

Membership in the class is judged on the prompt set's means (efficacy within ``[1 − δ, 1 + δ]``;
mean JS from v at most that of ``(1 − δ)·v``); the fraction's interval is Clopper–Pearson over draws.
"""

from __future__ import annotations

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


def _draws(v: torch.Tensor, ratio: float, n: int, seed: int) -> list[torch.Tensor]:
    from steerscope.audit.identifiability import orthogonal_draw

    return [ratio * orthogonal_draw(v, seed + i) for i in range(n)]


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
    """
    v32 = v.detach().float().cpu()
    if base is None:
        base = pair_margins_by_condition(lm, layer, {"none": None, "v": v32}, alpha, pairs, batch_size)
    effect = float(np.mean(base["v"] - base["none"]))
    if effect == 0:
        raise SteerscopeError("v does not move the mean pair margin: its equivalence class is undefined")
    js_margin = None
    if distribution is not None:
        prompts, conts = distribution
        ref = condition_divergences(lm, prompts, conts, [{layer: v32}, {layer: (1 - margin.delta) * v32}], [alpha, alpha])
        js_margin = float(ref.mean("js")[1].mean())
    out: dict[str, Any] = {"pair_margin": {}, "distribution": {}, "delta": margin.delta, "draws": sample.draws}
    for k, ratio in enumerate(sample.ratios):
        us = _draws(v32, ratio, sample.draws, sample.seed + 1000 * k)
        margins = pair_margins_by_condition(lm, layer, {f"u{i}": v32 + u for i, u in enumerate(us)}, alpha, pairs, batch_size)
        eff = np.array([(np.mean(margins[f"u{i}"]) - np.mean(base["none"])) / effect for i in range(len(us))])
        row = fraction(list(np.abs(eff - 1) <= margin.delta)) | {"efficacy_quantiles": np.quantile(eff, [0.05, 0.5, 0.95]).tolist()}
        if gradient is not None:
            row["predicted"] = predicted_fraction(gradient, v32.double().numpy(), ratio, margin.delta)
        out["pair_margin"][f"{ratio:g}"] = row
        if distribution is not None and js_margin is not None:
            js = np.concatenate([_mean_js(lm, layer, v32, us[s:s + DIVERGENCE_CHUNK], alpha, prompts, conts)
                                 for s in range(0, len(us), DIVERGENCE_CHUNK)])
            out["distribution"][f"{ratio:g}"] = fraction(list(js <= js_margin)) | {
                "js_margin": js_margin, "js_over_margin_quantiles": np.quantile(js / js_margin, [0.05, 0.5, 0.95]).tolist()}
    return out
