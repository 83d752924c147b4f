"""Monitoring with a steering direction: does the projection of the residual stream onto v tell the
trait apart, and does it track behaviour?

The score of a text is the mean projection ``h·v̂`` of its completion tokens at layer ℓ (attention
sinks left out, as everywhere); per-token projections are kept for display. On a trait:

* **detection on held-out pairs**: the threshold that best separates the *train* pairs' two sides
  (accuracy; ties by the midpoint), then AUC and accuracy of that threshold on the *test* pairs,
  with 95 % bootstrap intervals over pairs (both sides of a pair resampled together);
* **detection on completions**: completions generated with ``+α·v`` and ``−α·v`` (labels known by
  construction) scored the same way, AUC with a bootstrap interval over prompts;
* **tracking**: Spearman correlation between the projection and the trait score of each completion
  (steered both ways and unsteered), with a bootstrap interval over prompts, when a scorer is given;
* **drift**: the projection of the unsteered model's own generations against the generated-token
  index, the slope (projection units per token) with a bootstrap interval over prompts.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerscope.capture import capture, sink_mask
from steerscope.data.pairs import ContrastivePair
from steerscope.encoding import Item, encode_item
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import steer_rows
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer


@dataclass(frozen=True)
class MonitorSettings:
    """``alpha``: strength of the ``±α·v`` completions; ``n_prompts`` prompts × ``samples`` completions
    of ``max_new_tokens`` tokens per condition; ``n_boot`` bootstrap resamples; ``examples``: completions
    kept with their per-token projections for display."""

    alpha: float = 2.0
    n_prompts: int = 12
    samples: int = 2
    max_new_tokens: int = 24
    n_boot: int = 1000
    seed: int = 0
    examples: int = 6

    def __post_init__(self) -> None:
        if self.n_prompts < 2 or self.samples < 1 or self.max_new_tokens < 2 or self.n_boot < 1 or self.examples < 0:
            raise SteerscopeError("monitoring needs at least 2 prompts, 1 sample, 2 new tokens and 1 bootstrap resample")


@dataclass(frozen=True)
class TokenProjections:
    """One text's completion tokens, their projections onto v̂ and which are attention sinks (left out of the mean)."""

    tokens: list[str]
    values: list[float]
    sinks: list[bool]

    @property
    def mean(self) -> float:
        kept = [v for v, s in zip(self.values, self.sinks) if not s]
        return float(np.mean(kept)) if kept else float("nan")


def unit_direction(vector: torch.Tensor) -> torch.Tensor:
    """``v / ‖v‖`` as float32 on CPU (SteerscopeError for a zero or non-finite vector)."""
    v = vector.detach().float().cpu()
    norm = float(v.norm())
    if not np.isfinite(norm) or norm == 0:
        raise SteerscopeError("the monitoring direction must be a finite, non-zero vector")
    return v / norm


def projections(lm: LoadedModel, items: Sequence[Item], layer: int, vector: torch.Tensor) -> np.ndarray:
    """Mean projection onto ``v̂`` over each item's completion tokens, sinks left out: ``[N]``."""
    acts = capture(lm, items, [layer], position="mean")[layer]
    return (acts @ unit_direction(vector)).double().numpy()


def token_projections(lm: LoadedModel, items: Sequence[Item], layer: int, vector: torch.Tensor) -> list[TokenProjections]:
    """Per item, the projection onto ``v̂`` of every completion token (with the token text)."""
    v = unit_direction(vector)
    states = capture(lm, items, [layer], position="all")[layer]
    out = []
    for item, h in zip(items, states):
        enc = encode_item(lm.tokenizer, item)
        start, end = enc.span
        sinks = sink_mask(h.norm(dim=-1))[start:end]
        out.append(TokenProjections([str(lm.tokenizer.decode([i])) for i in enc.ids[start:end]], (h[start:end] @ v).tolist(), sinks.tolist()))
    return out


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The threshold ``t`` (``pos > t``) with the highest accuracy on ``pos``/``neg``; among equals,
    the middle of the widest gap between sorted scores."""
    scores = np.sort(np.concatenate([pos, neg]))
    cuts = np.concatenate([[scores[0] - 1.0], (scores[1:] + scores[:-1]) / 2, [scores[-1] + 1.0]])
    acc = np.array([(np.sum(pos > c) + np.sum(neg <= c)) / (len(pos) + len(neg)) for c in cuts])
    best = np.flatnonzero(acc == acc.max())
    return float(cuts[best[len(best) // 2]])


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count one half): the ROC AUC."""
    p, n = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def _interval(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if np.isfinite(v)])
    return (float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))) if arr.size else (float("nan"), float("nan"))


def detection(pos: np.ndarray, neg: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    """AUC and accuracy at ``threshold`` of paired scores ``pos[i]``/``neg[i]`` with 95 % bootstrap
    intervals over pairs."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) != len(neg) or len(pos) < 2:
        raise SteerscopeError(f"detection needs at least 2 pairs of scores, got {len(pos)} and {len(neg)}")
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(pos), len(pos)) for _ in range(n_boot)]

    def accuracy(p: np.ndarray, n: np.ndarray) -> float:
        return float((np.sum(p > threshold) + np.sum(n <= threshold)) / (len(p) + len(n)))

    auc_ci, acc_ci = _interval([auc(pos[i], neg[i]) for i in idx]), _interval([accuracy(pos[i], neg[i]) for i in idx])
    return {"n_pairs": len(pos), "threshold": threshold, "auc": auc(pos, neg), "auc_low": auc_ci[0], "auc_high": auc_ci[1],
            "accuracy": accuracy(pos, neg), "accuracy_low": acc_ci[0], "accuracy_high": acc_ci[1],
            "mean_positive": float(pos.mean()), "mean_negative": float(neg.mean())}


def pair_detection(lm: LoadedModel, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair], layer: int,
                   vector: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Threshold from the train pairs' projections, AUC and accuracy on the test pairs (see the module docstring)."""
    def sides(pairs: Sequence[ContrastivePair]) -> tuple[np.ndarray, np.ndarray]:
        scores = projections(lm, [p.positive for p in pairs] + [p.negative for p in pairs], layer, vector)
        return scores[: len(pairs)], scores[len(pairs):]

    train_pos, train_neg = sides(train)
    threshold = best_threshold(train_pos, train_neg)
    test_pos, test_neg = sides(test)
    result = detection(test_pos, test_neg, threshold, n_boot, seed)
    return result | {"train_accuracy": float((np.sum(train_pos > threshold) + np.sum(train_neg <= threshold)) / (2 * len(train))),
                     "n_train": len(train)}


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def completion_monitoring(lm: LoadedModel, prompts: Sequence[str], layer: int, vector: torch.Tensor, settings: MonitorSettings,
                          scorer: Scorer | None = None) -> dict[str, Any]:
    """Detection of ``±α·v`` completions, tracking of the trait score and drift of unsteered generations."""
    s = settings
    if len(prompts) < s.n_prompts:
        raise SteerscopeError(f"monitoring asked for {s.n_prompts} prompts, {len(prompts)} are available")
    chosen = list(prompts[: s.n_prompts])
    conditions = (("plus", s.alpha), ("minus", -s.alpha), ("none", 0.0))
    rows = [p for _ in conditions for p in chosen for _ in range(s.samples)]
    v = vector.detach().float()
    steering = steer_rows(lm, [{layer: v} if a else None for _, a in conditions for _ in chosen for _ in range(s.samples)],
                          [a for _, a in conditions for _ in chosen for _ in range(s.samples)], "all")
    config = GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=True, temperature=0.8, seed=s.seed)
    texts = generate(lm, rows, config, steering=steering)
    items: list[Item] = [[{"role": "user", "content": p}, {"role": "assistant", "content": t or " "}] for p, t in zip(rows, texts)]
    per_token = token_projections(lm, items, layer, v)
    proj = np.array([t.mean for t in per_token]).reshape(len(conditions), s.n_prompts, s.samples)
    by_prompt = {name: np.nanmean(proj[k], axis=1) for k, (name, _) in enumerate(conditions)}
    rng = np.random.default_rng(s.seed)
    idx = [rng.integers(0, s.n_prompts, s.n_prompts) for _ in range(s.n_boot)]
    plus, minus = by_prompt["plus"], by_prompt["minus"]
    out: dict[str, Any] = {
        "n_prompts": s.n_prompts, "samples": s.samples, "alpha": s.alpha, "max_new_tokens": s.max_new_tokens,
        "mean_projection": {k: float(np.nanmean(x)) for k, x in by_prompt.items()},
        "steered_detection": {"auc": auc(plus, minus), "ci": _interval([auc(plus[i], minus[i]) for i in idx]),
                              "unit": "prompt (mean over its samples)"},
        "drift": _drift(per_token[2 * s.n_prompts * s.samples:], s.n_prompts, s.samples, idx),
        "examples": [{"condition": conditions[(k // s.samples) // s.n_prompts][0], "prompt": rows[k], "text": texts[k],
                      "tokens": per_token[k].tokens, "values": per_token[k].values, "sinks": per_token[k].sinks}
                     for k in _example_rows(len(rows), s)],
    }
    if scorer is not None:
        scores = np.asarray(scorer(texts), dtype=float).reshape(len(conditions), s.n_prompts, s.samples)
        x, y = proj.transpose(1, 0, 2).reshape(s.n_prompts, -1), scores.transpose(1, 0, 2).reshape(s.n_prompts, -1)
        out["tracking"] = {"spearman": _spearman(x.ravel(), y.ravel()),
                           "ci": _interval([_spearman(x[i].ravel(), y[i].ravel()) for i in idx]),
                           "scorer": getattr(scorer, "name", type(scorer).__name__),
                           "mean_score": {name: float(scores[k].mean()) for k, (name, _) in enumerate(conditions)}}
    return out


def _example_rows(n_rows: int, s: MonitorSettings) -> list[int]:
    """The first sample of the first prompts, spread over the three conditions."""
    per = max(1, s.examples // 3)
    return [k * s.n_prompts * s.samples + p * s.samples for k in range(3) for p in range(min(per, s.n_prompts))][: s.examples]


def _drift(per_token: Sequence[TokenProjections], n_prompts: int, samples: int, idx: Sequence[np.ndarray]) -> dict[str, Any]:
    """Least-squares slope of projection against generated-token index (sinks left out), per prompt
    averaged, with a bootstrap interval over prompts."""
    def slope(rows: Sequence[TokenProjections]) -> float:
        xs = np.concatenate([np.flatnonzero(~np.asarray(r.sinks, bool)) for r in rows]) if rows else np.empty(0)
        ys = np.concatenate([np.asarray(r.values)[~np.asarray(r.sinks, bool)] for r in rows]) if rows else np.empty(0)
        return float(np.polyfit(xs, ys, 1)[0]) if len(xs) > 2 and np.ptp(xs) > 0 else float("nan")

    grouped = [list(per_token[p * samples:(p + 1) * samples]) for p in range(n_prompts)]
    return {"slope_per_token": slope(list(per_token)),
            "ci": _interval([slope([r for j in i for r in grouped[j]]) for i in idx]), "condition": "none (unsteered)"}


def token_spans_html(examples: Sequence[dict[str, Any]], threshold: float) -> str:
    """HTML fragment: each example's completion tokens coloured by projection (red above the
    threshold, towards the trait; blue below; sinks grey), with the value on hover."""
    values = [abs(v - threshold) for e in examples for v, s in zip(e["values"], e["sinks"]) if not s]
    scale = max(values) if values else 1.0
    parts = []
    for e in examples:
        spans = []
        for tok, v, sink in zip(e["tokens"], e["values"], e["sinks"]):
            strength = min(1.0, abs(v - threshold) / scale) if scale > 0 else 0.0
            colour = ("#ccc" if sink else f"rgba(220,40,40,{strength:.2f})" if v > threshold else f"rgba(40,90,220,{strength:.2f})")
            spans.append(f"<span class='t' style='background:{colour};white-space:pre-wrap' title='{v:.4g}'>{html.escape(tok)}</span>")
        parts.append(f"<div class='ex' style='margin:.6em 0;padding:.5em;border:1px solid #ddd'><div style='color:#666;font-size:90%'>"
                     f"{html.escape(str(e.get('condition', '')))} — {html.escape(str(e.get('prompt', '')))}</div>{''.join(spans)}</div>")
    return "".join(parts)


def tokens_html(examples: Sequence[dict[str, Any]], threshold: float, title: str) -> str:
    """A self-contained HTML page of :func:`token_spans_html`."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p style='color:#666'>Projection onto v̂ per token; threshold {threshold:.4g} (chosen on "
            "the train pairs). Red: above the threshold (towards the trait), blue: below, grey: attention sinks (left out of every "
            f"mean).</p>{token_spans_html(examples, threshold)}</body></html>")
