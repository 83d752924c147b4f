"""What else a steering vector changes: off-target readouts, fluency and drift, capability, against dose.

All effects compare the steered model with the unsteered one on the same inputs (paired), as
Hedges' g with a 95 % cluster-bootstrap interval (:func:`paired_effect`):

* **off-target matrix**: for every readout trait B (its held-out pairs and, where it has one, its
  scorer) the effect of ``+α·v`` on B's teacher-forced pair margin (unit: pair) and on B's trait
  score of completions to neutral prompts (unit: prompt). An off-target effect is *flagged* when
  its paired t-test rejects at 5 % after Holm's correction across the off-target readouts and
  ``|g| ≥`` :data:`MIN_EFFECT`; each row gives the smallest |g| its sample could detect with 80 %
  power;
* **fluency and drift** on neutral prompts unrelated to any trait, at each dose: perplexity of the
  steered completions under the unsteered model (ratio to the unsteered completions' own), the
  share of repeated token 3-grams, and the teacher-forced next-token ``KL(unsteered ‖ steered)`` on
  the prompts' reference responses;
* **capability**: accuracy on the built-in multiple-choice set (knowledge, arithmetic, instruction
  following), the choice with the highest total log-probability as the assistant's answer, steered
  against unsteered, with a paired bootstrap interval over items, next to the accuracy of always
  taking the shortest choice;
* **dose–benefit–cost**: each of the above, and the on-target pair-margin effect, at multiples of α.

Steering adds ``m·α·v`` at every position of layer ℓ. Teacher-forced passes are batched over
conditions; sampled completions of every condition come from the same seed (common random
numbers), so a condition that changes nothing gives the unsteered text itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerscope.audit.readouts import pair_margins_by_condition
from steerscope.data.evalsets import CAPABILITY_CATEGORIES, CapabilityItem, NeutralItem
from steerscope.data.pairs import ContrastivePair
from steerscope.divergence import condition_divergences
from steerscope.encoding import encode_item, encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate_paired
from steerscope.intervene import steer, steer_rows
from steerscope.likelihood import encoded_logprobs, perplexities
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer
from steerscope.stats import cluster_bootstrap, hedges_g
from steerscope.traitspec import TraitSpec

#: Smallest |g| flagged as an off-target effect (Cohen's "small").
MIN_EFFECT = 0.2


@dataclass(frozen=True)
class SideEffectSettings:
    """``alpha``: the audited strength; ``doses``: multiples of it for the dose curves (1 is always
    included); ``n_prompts`` neutral prompts × ``samples`` completions of ``max_new_tokens`` tokens per
    dose; ``n_capability`` capability items (None: all); ``n_pairs``: held-out pairs per readout (None:
    all); ``n_boot`` bootstrap resamples."""

    alpha: float = 2.0
    doses: tuple[float, ...] = (0.5, 1.0, 2.0)
    n_prompts: int = 12
    samples: int = 2
    max_new_tokens: int = 24
    n_capability: int | None = None
    n_pairs: int | None = None
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_pairs is not None and self.n_pairs < 2:
            raise SteerscopeError(f"the off-target readouts need at least 2 held-out pairs each, got {self.n_pairs}")
        if not math.isfinite(self.alpha) or self.alpha == 0:
            raise SteerscopeError(f"side effects need a finite, non-zero strength, got alpha = {self.alpha}")
        if not self.doses or any(not math.isfinite(m) or m <= 0 for m in self.doses):
            raise SteerscopeError(f"dose multiples must be positive, got {self.doses}")
        if self.n_prompts < 2 or self.samples < 1 or self.max_new_tokens < 3 or self.n_boot < 1:
            raise SteerscopeError("side effects need at least 2 prompts, 1 sample, 3 new tokens and 1 bootstrap resample")

    @property
    def multiples(self) -> tuple[float, ...]:
        """The dose multiples, sorted, with 1 (the audited strength) among them."""
        return tuple(sorted({*self.doses, 1.0}))


@dataclass(frozen=True)
class Readout:
    """An off-target readout: trait ``trait``'s held-out ``pairs`` and its ``scorer`` (None: pairs only)."""

    trait: str
    pairs: Sequence[ContrastivePair]
    scorer: Scorer | None = None


def readout_specs(audited: Mapping[str, TraitSpec]) -> dict[str, TraitSpec]:
    """The off-target readouts' traits: every built-in trait, then the audited ones (an audited trait
    replaces a built-in one of the same name)."""
    from steerscope.data.traits import TRAITS
    from steerscope.traitspec import builtin_spec

    return {t: builtin_spec(t) for t in TRAITS} | dict(audited)


def paired_effect(treated: np.ndarray, base: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Hedges' g of ``treated − base`` (paired ``[n]``) with its 95 % cluster-bootstrap interval, the
    mean shift, the paired t-test ``p``, the smallest |g| that test detects with 80 % power
    (``detectable_g``), and ``flagged`` (p < 0.05 and ``|g| ≥ MIN_EFFECT``); g None when undefined."""
    from steerscope.audit.equivalence import detectable, two_sided_p

    x, y = np.asarray(treated, float), np.asarray(base, float)
    row: dict[str, Any] = {"n": int(x.size), "shift": float(np.mean(x - y)), "base_mean": float(np.mean(y))}
    try:
        g, low, high = cluster_bootstrap(hedges_g, [x, y], n_boot, seed)
    except ValueError as err:
        return row | {"g": None, "g_low": None, "g_high": None, "p": None, "detectable_g": None, "flagged": None, "error": str(err)}
    p = two_sided_p(x - y)
    standardiser = math.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2)
    return row | {"g": g, "g_low": low, "g_high": high, "p": p,
                  "detectable_g": detectable(float(np.std(x - y, ddof=1)), x.size, 0.05) / standardiser,
                  "flagged": bool(p < 0.05 and abs(g) >= MIN_EFFECT)}


def holm_flags(rows: Sequence[dict[str, Any]], target: str | None, doses: Sequence[str]) -> None:
    """Re-flag the off-target rows (trait ≠ ``target``) at each dose with Holm-adjusted p across them
    (``p_holm``; flagged when p_holm < 0.05 and ``|g| ≥ MIN_EFFECT``), in place; the row's own fields
    mirror its dose ``"1"``."""
    from steerscope.stats import holm

    for dose in doses:
        cells = [r["doses"][dose] for r in rows if r["trait"] != target and r["doses"][dose].get("p") is not None]
        for cell, p in zip(cells, holm([c["p"] for c in cells]) if cells else []):
            cell["p_holm"] = float(p)
            cell["flagged"] = bool(p < 0.05 and abs(cell["g"]) >= MIN_EFFECT)
    for r in rows:
        r |= r["doses"]["1"]


def mean_interval(values: np.ndarray, n_boot: int, seed: int, transform=lambda x: x) -> dict[str, float]:
    """``transform`` of the mean of ``values`` ``[n]`` with a 95 % bootstrap interval over entries."""
    arr = np.asarray(values, float)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
    est, low, high = cluster_bootstrap(lambda a: float(np.mean(a)), [arr], n_boot, seed)
    return {"mean": transform(est), "low": transform(low), "high": transform(high)}


def _scaled(vector: torch.Tensor, multiples: Sequence[float]) -> dict[str, torch.Tensor | None]:
    v = vector.detach().float().cpu()
    return {"none": None} | {f"x{m:g}": m * v for m in multiples}


def margin_effects(lm: LoadedModel, layer: int, vector: torch.Tensor, alpha: float, multiples: Sequence[float],
                   pairs: Sequence[ContrastivePair], n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """``{f"{m:g}": paired_effect}`` of ``m·α·v`` on the pair margin of ``pairs`` (one batched pass)."""
    margins = pair_margins_by_condition(lm, layer, _scaled(vector, multiples), alpha, pairs)
    return {f"{m:g}": paired_effect(margins[f"x{m:g}"], margins["none"], n_boot, seed) for m in multiples}


def repetition(ids: Sequence[int], n: int = 3) -> float:
    """Share of a text's token n-grams that repeat an earlier n-gram of it (NaN under n + 1 tokens)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if len(grams) > 1 else float("nan")


@dataclass(frozen=True)
class Completions:
    """Completions of ``prompts`` (× samples) at each dose multiple (``"0"``: unsteered): ``texts[dose]``
    ``[n_prompts][samples]``."""

    prompts: list[str]
    texts: dict[str, list[list[str]]]


def neutral_completions(lm: LoadedModel, layer: int, vector: torch.Tensor, items: Sequence[NeutralItem],
                        s: SideEffectSettings) -> Completions:
    """Sampled completions of the first ``s.n_prompts`` neutral prompts, unsteered and at every dose,
    every dose from the same seed (:func:`~steerscope.generate.generate_paired`)."""
    if len(items) < s.n_prompts:
        raise SteerscopeError(f"side effects asked for {s.n_prompts} neutral prompts, {len(items)} are available")
    prompts = [i.prompt for i in items[: s.n_prompts]]
    doses = (0.0, *s.multiples)
    rows = [p for p in prompts for _ in range(s.samples)]
    v = vector.detach().float()
    config = GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=True, temperature=0.8, seed=s.seed)
    texts = generate_paired(lm, rows, config, [steer(lm, {layer: v}, m * s.alpha) if m else None for m in doses])
    return Completions(prompts, {f"{m:g}": [block[p * s.samples:(p + 1) * s.samples] for p in range(len(prompts))]
                                 for m, block in zip(doses, texts)})


def _row_means(x: np.ndarray) -> np.ndarray:
    """Mean of each row's finite entries (NaN for a row without any)."""
    ok = np.isfinite(x)
    counts = ok.sum(axis=1)
    return np.where(counts > 0, np.where(ok, x, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)


def fluency(lm: LoadedModel, completions: Completions, s: SideEffectSettings) -> dict[str, dict[str, Any]]:
    """Per dose: perplexity ratio to the unsteered completions and 3-gram repetition, intervals over prompts."""
    prompts = completions.prompts
    enc = [encode_prompt(lm.tokenizer, p) for p in prompts]
    log_ppl, rep = {}, {}
    for dose, texts in completions.texts.items():
        ids = [[list(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in row] for row in texts]
        ppl = perplexities(lm, [enc[p] for p in range(len(prompts)) for _ in ids[p]], [x for row in ids for x in row])
        log_ppl[dose] = _row_means(np.log(ppl.reshape(len(prompts), -1)))
        rep[dose] = _row_means(np.array([[repetition(x) for x in row] for row in ids], dtype=float))
    out = {}
    for dose in completions.texts:
        if dose == "0":
            continue
        base_rep = rep["0"][np.isfinite(rep["0"])]
        out[dose] = {"ppl_ratio": mean_interval(log_ppl[dose] - log_ppl["0"], s.n_boot, s.seed, math.exp),
                     "repetition": mean_interval(rep[dose], s.n_boot, s.seed),
                     "repetition_unsteered": float(base_rep.mean()) if base_rep.size else float("nan")}
    return out


def neutral_kl(lm: LoadedModel, layer: int, vector: torch.Tensor, items: Sequence[NeutralItem], s: SideEffectSettings) -> dict[str, Any]:
    """Per dose: mean per-token ``KL(unsteered ‖ steered)`` (nats) on the neutral reference responses, interval over prompts."""
    chosen = list(items[: s.n_prompts])
    v = vector.detach().float()
    div = condition_divergences(lm, [i.prompt for i in chosen], [i.response for i in chosen], [None] + [{layer: v}] * len(s.multiples),
                                [0.0] + [m * s.alpha for m in s.multiples])
    kl = div.mean("kl").numpy()
    return {f"{m:g}": mean_interval(kl[k + 1], s.n_boot, s.seed) for k, m in enumerate(s.multiples)}


def _choice_rows(lm: LoadedModel, items: Sequence[CapabilityItem]) -> tuple[list, np.ndarray]:
    encoded = [encode_item(lm.tokenizer, [{"role": "user", "content": it.question}, {"role": "assistant", "content": c}])
               for it in items for c in it.choices]
    lengths = np.array([e.span[1] - e.span[0] for e in encoded], dtype=float)
    return encoded, lengths


def _per_item(values: np.ndarray, items: Sequence[CapabilityItem], pick) -> np.ndarray:
    """``[..., n_items]``: 1 where ``pick`` over each item's slice of ``values`` (last axis) is its answer."""
    out, start = [], 0
    for it in items:
        out.append(pick(values[..., start:start + len(it.choices)], axis=-1) == it.answer)
        start += len(it.choices)
    return np.stack(out, axis=-1).astype(float)


def capability(lm: LoadedModel, layer: int, vector: torch.Tensor, items: Sequence[CapabilityItem], s: SideEffectSettings,
               batch_size: int = 16) -> dict[str, Any]:
    """Accuracy unsteered and at every dose (the choice of highest total log-probability), the change
    with a paired bootstrap interval over items, per category, and the accuracy of always taking the
    shortest choice (how much of the score length alone explains)."""
    if len(items) < 2:
        raise SteerscopeError(f"the capability check needs at least 2 items, got {len(items)}")
    encoded, lengths = _choice_rows(lm, items)
    doses = (0.0, *s.multiples)
    v = vector.detach().float()
    steering = steer_rows(lm, [{layer: v} if m else None for m in doses for _ in encoded], [m * s.alpha for m in doses for _ in encoded])
    logp = encoded_logprobs(lm, [e for _ in doses for e in encoded], steering, batch_size).numpy().reshape(len(doses), -1)
    correct = _per_item(logp, items, np.argmax)
    cats = np.array([it.category for it in items])

    def by_category(row: np.ndarray) -> dict[str, float]:
        return {c: float(row[cats == c].mean()) for c in CAPABILITY_CATEGORIES if (cats == c).any()}

    out: dict[str, Any] = {"n_items": len(items), "accuracy_unsteered": float(correct[0].mean()),
                           "chance": float(np.mean([1 / len(it.choices) for it in items])), "rule": "highest total log-probability",
                           "shortest_choice_accuracy": by_category(_per_item(-lengths, items, np.argmax)),
                           "by_category_unsteered": by_category(correct[0]), "doses": {}}
    for k, m in enumerate(s.multiples, start=1):
        out["doses"][f"{m:g}"] = {"accuracy": float(correct[k].mean()), "change": mean_interval(correct[k] - correct[0], s.n_boot, s.seed),
                                  "by_category": by_category(correct[k])}
    return out


def _scored(scorer: Scorer, completions: Completions, dose: str) -> np.ndarray:
    texts = completions.texts[dose]
    flat = [t for row in texts for t in row]
    return np.asarray(scorer(flat), dtype=float).reshape(len(texts), -1).mean(axis=1)


def off_target(lm: LoadedModel, layer: int, vector: torch.Tensor, readouts: Sequence[Readout], completions: Completions | None,
               s: SideEffectSettings, target: str | None = None) -> list[dict[str, Any]]:
    """One row per readout trait and readout kind: the effect of ``+α·v`` at every dose (pair margin
    always; trait score of the neutral completions where the readout has a scorer and completions are
    given); the rows of traits other than ``target`` are flagged with Holm's correction across them."""
    rows = []
    for k, r in enumerate(readouts):
        effects = margin_effects(lm, layer, vector, s.alpha, s.multiples, r.pairs[: s.n_pairs], s.n_boot, s.seed + k)
        rows.append({"trait": r.trait, "readout": "pair_margin", "unit": "held-out pair", "doses": effects} | effects["1"])
        if r.scorer is not None and completions is not None:
            base = _scored(r.scorer, completions, "0")
            scored = {f"{m:g}": paired_effect(_scored(r.scorer, completions, f"{m:g}"), base, s.n_boot, s.seed + k)
                      for m in s.multiples}
            rows.append({"trait": r.trait, "readout": "trait_score", "unit": "neutral prompt", "doses": scored} | scored["1"])
    holm_flags(rows, target, [f"{m:g}" for m in s.multiples])
    return rows


def side_effects(lm: LoadedModel, layer: int, vector: torch.Tensor, target: str, readouts: Sequence[Readout], neutral: Sequence[NeutralItem],
                 items: Sequence[CapabilityItem], s: SideEffectSettings, h_norm: float | None = None) -> dict[str, Any]:
    """The side-effect audit of ``v`` at ``layer`` for trait ``target`` (one of ``readouts``): the off-target
    matrix, fluency, drift, capability and the dose curve (see the module docstring)."""
    if target not in {r.trait for r in readouts}:
        raise SteerscopeError(f"the audited trait {target!r} must be among the readouts")
    completions = neutral_completions(lm, layer, vector, neutral, s)
    matrix = off_target(lm, layer, vector, readouts, completions, s, target)
    flu, kl = fluency(lm, completions, s), neutral_kl(lm, layer, vector, neutral, s)
    cap = capability(lm, layer, vector, items, s)
    norm = float(vector.float().norm())
    return {"alpha": s.alpha, "target": target, "min_effect": MIN_EFFECT, "multiples": list(s.multiples),
            "relative_doses": [m * abs(s.alpha) * norm / h_norm for m in s.multiples] if h_norm else None,
            "n_prompts": s.n_prompts, "samples": s.samples, "max_new_tokens": s.max_new_tokens,
            "matrix": matrix, "fluency": flu, "kl": kl, "capability": cap,
            "examples": {d: completions.texts[d][0][0] for d in ("0", "1", f"{max(s.multiples):g}")},
            "largest_off_target": largest_off_target(matrix, target)}


def largest_off_target(matrix: Sequence[Mapping[str, Any]], target: str) -> Mapping[str, Any] | None:
    """The off-target row (another trait) with the largest |g| at the audited strength, or None."""
    rows = [r for r in matrix if r["trait"] != target and r.get("g") is not None]
    return max(rows, key=lambda r: abs(r["g"]), default=None)
