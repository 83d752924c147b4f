"""Comparing the edits of the engine (add, ablate, clamp) on specificity, and what ablating a
direction does to a framing difference.

* :func:`edit_specificity`: edits tuned to the same on-target effect (the mean shift of the trait's
  held-out pair margin), then every readout's pair margin compared with the unedited model. Two
  comparisons: *induce* — the audited addition ``α·v`` against a clamp of the projection on ``v̂``
  (its value found by bisection); *remove* — directional ablation of ``v̂`` against a subtraction
  tuned to the ablation's shift. The edit with the smallest off-target effects is the most specific.
* :func:`framing_gap`: for pairs whose two sides share the assistant's answer and differ in how the
  request is framed (e.g. a test vs real use), the mean per-token JS divergence between the
  answer's next-token distributions under the two framings — unedited, with ``v̂`` ablated at
  layer ℓ, and with random directions ablated (control). A direction that carries the framing
  closes the gap more than a random one does.

Edits act at every position of layer ℓ (:mod:`steerscope.intervene`); ablation and clamping leave
attention sinks alone (``skip_sinks``: on SmolLM2 at layer 14 the first token's projection on the
formality direction is 7,700 against about 35 for the other tokens, and ablating it moves the pair margin by
more than any steering does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import cache
from typing import Any

import numpy as np
import torch

from steerscope.data.pairs import ContrastivePair
from steerscope.divergence import kl_js
from steerscope.encoding import encode_item, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.intervene import Ablate, Add, Clamp, Edit, Steering
from steerscope.likelihood import logits_tail, pair_margins
from steerscope.models.loading import LoadedModel
from steerscope.side_effects import Readout, mean_interval, paired_effect
from steerscope.stats import cluster_bootstrap

#: Relative tolerance on the on-target shift when tuning an edit to the target.
MATCH_TOLERANCE = 0.02


def margins_under(lm: LoadedModel, layer: int, edit: Edit | None, pairs: Sequence[ContrastivePair]) -> np.ndarray:
    """Pair margins ``[P]`` with ``edit`` at every position of ``layer`` (None: unedited)."""
    steering = Steering(lm, {layer: edit}) if edit is not None else None
    return pair_margins(lm, pairs, steering, batch_size=16).double().numpy()


def _bisect(f: Callable[[float], float], a: float, b: float, goal: float, steps: int = 40) -> float:
    """A root of ``f`` in ``[a, b]`` (``f(a)``, ``f(b)`` of opposite signs) to :data:`MATCH_TOLERANCE` × ``|goal|``."""
    fa = f(a)
    for _ in range(steps):
        mid = (a + b) / 2
        fm = f(mid)
        if abs(fm) <= MATCH_TOLERANCE * abs(goal):
            return mid
        if fa * fm <= 0:
            b = mid
        else:
            a, fa = mid, fm
    return (a + b) / 2


def solve(shift: Callable[[float], float], goal: float, scale: float, doublings: int = 8) -> float:
    """The parameter ``x`` (0 first, then ``±scale, ±2·scale, …`` up to ``2^doublings·scale`` in the
    direction in which ``shift`` moves toward ``goal``, then bisection) with ``shift(x)`` within
    :data:`MATCH_TOLERANCE` of ``goal``; each ``shift`` is evaluated once per parameter."""
    @cache
    def f(x: float) -> float:
        return shift(x) - goal

    f0 = f(0.0)
    if abs(f0) <= MATCH_TOLERANCE * abs(goal):
        return 0.0
    low, x = 0.0, scale if (f(scale) - f0) * f0 < 0 else -scale
    for _ in range(doublings):
        if f(x) * f0 <= 0:
            return _bisect(f, low, x, goal)
        low, x = x, 2 * x
    raise SteerscopeError(f"no parameter up to {abs(low):.4g} reaches the on-target shift {goal:.4g}")


def _comparison(edits: dict[str, Edit], goal: float, on_target: str, bases: dict[str, np.ndarray], lm: LoadedModel, layer: int,
                readouts: Sequence[Readout], n_boot: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"on_target_shift": goal, "edits": {}}
    for name, edit in edits.items():
        rows = {r.trait: paired_effect(margins_under(lm, layer, edit, r.pairs), bases[r.trait], n_boot, seed) for r in readouts}
        others = [abs(row["g"]) for t, row in rows.items() if t != on_target and row["g"] is not None]
        out["edits"][name] = {"parameter": _parameter(edit), "readouts": rows,
                              "off_target_mean_abs_g": float(np.mean(others)) if others else None,
                              "off_target_max_abs_g": float(np.max(others)) if others else None}
    scored = {n: e["off_target_mean_abs_g"] for n, e in out["edits"].items() if e["off_target_mean_abs_g"] is not None}
    out["most_specific"] = min(scored, key=lambda n: scored[n]) if scored else None
    return out


def edit_specificity(lm: LoadedModel, layer: int, vector: torch.Tensor, alpha: float, target: Readout, readouts: Sequence[Readout],
                     n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Two comparisons at equal on-target effect (mean pair-margin shift of ``target``):

    * ``induce``: the audited addition ``α·v`` against a clamp of the projection on ``v̂`` tuned to its shift;
    * ``remove``: directional ablation of ``v̂`` against a subtraction ``−a·v̂`` tuned to its shift
      (a clamp tuned to it is the ablation itself: ``Clamp(v̂, 0)`` is ``Ablate(v̂)``).

    Each edit's effect on every readout's pair margin (paired g, CI) and the mean and largest |g| off target.
    """
    if target.trait not in {r.trait for r in readouts}:
        raise SteerscopeError(f"the audited trait {target.trait!r} must be among the readouts")
    v = vector.detach().float().cpu()
    unit = v / v.norm()
    bases = {r.trait: margins_under(lm, layer, None, r.pairs) for r in readouts}
    base = float(bases[target.trait].mean())

    def shift(edit: Edit) -> float:
        return float(margins_under(lm, layer, edit, target.pairs).mean()) - base

    out: dict[str, Any] = {"target": target.trait, "layer": layer, "alpha": alpha, "tolerance": MATCH_TOLERANCE}
    induce = shift(Add(v, alpha))
    scale = abs(alpha) * float(v.norm())
    clamp = solve(lambda c: shift(Clamp(unit, c, skip_sinks=True)), induce, scale)
    out["induce"] = _comparison({"add": Add(v, alpha), "clamp": Clamp(unit, clamp, skip_sinks=True)}, induce, target.trait, bases, lm, layer, readouts,
                                n_boot, seed)
    remove = shift(Ablate(unit, skip_sinks=True))
    if remove == 0:
        out["remove"] = None
        return out
    sub = solve(lambda a: shift(Add(unit, a)), remove, scale)
    out["remove"] = _comparison({"ablate": Ablate(unit, skip_sinks=True), "subtract": Add(unit, sub)}, remove, target.trait, bases, lm, layer, readouts,
                                n_boot, seed)
    return out


def _parameter(edit: Edit) -> dict[str, float]:
    if isinstance(edit, Add):
        return {"alpha": float(edit.alpha), "displacement_norm": float(abs(edit.alpha) * edit.vector.norm())}
    if isinstance(edit, Clamp):
        return {"clamp_value": float(edit.value)}
    return {}


def _answer_logp(lm: LoadedModel, items: Sequence[Any], steering: Steering | None) -> list[torch.Tensor]:
    """Per item, the next-token log-probabilities ``[n, V]`` at the positions predicting its answer
    tokens (logits kept only for the answer span: a 262k vocabulary makes full-width logits large)."""
    encoded = [encode_item(lm.tokenizer, item) for item in items]
    batch = pad_batch([e.ids for e in encoded], lm.tokenizer.pad_token_id, "left")
    width = batch.input_ids.shape[1]
    with steering if steering is not None else nullcontext(), torch.inference_mode():
        logits = logits_tail(lm, batch, max(len(e.ids) - e.span[0] + 1 for e in encoded))
    offset = width - logits.shape[1]  # full-width position of the tail's first logit
    out = []
    for row, e in enumerate(encoded):
        start, end = (width - len(e.ids) + p - offset for p in e.span)
        out.append(torch.log_softmax(logits[row, start - 1:end - 1].double(), dim=-1).cpu())
    return out


def _closed(edited: np.ndarray, base: np.ndarray, n_boot: int, seed: int) -> dict[str, float] | None:
    """Share of the mean gap that an edit closes, ``1 − mean(edited) / mean(base)``, with a bootstrap
    interval over pairs; None when there is no gap."""
    if float(np.mean(base)) == 0:
        return None

    def share(e: np.ndarray, b: np.ndarray) -> float:
        if float(np.mean(b)) == 0:
            raise ValueError("no gap in this resample")
        return 1 - float(np.mean(e) / np.mean(b))

    est, low, high = cluster_bootstrap(share, [edited, base], n_boot, seed)
    return {"mean": est, "low": low, "high": high}


def _shared_answers(pairs: Sequence[ContrastivePair]) -> bool:
    """Whether every pair is a chat pair whose two sides end with the same answer."""
    return bool(pairs) and all(not isinstance(p.positive, str) and not isinstance(p.negative, str) and p.positive[-1:] == p.negative[-1:]
                               for p in pairs)


def differ_in_framing(pairs: Sequence[ContrastivePair]) -> bool:
    """Whether every pair is a chat pair whose two sides end with the same answer after different messages."""
    return _shared_answers(pairs) and all(p.positive != p.negative for p in pairs)


def framing_gap(lm: LoadedModel, layer: int, vector: torch.Tensor, pairs: Sequence[ContrastivePair], n_random: int = 4,
                n_boot: int = 1000, seed: int = 0, chunk: int = 8) -> dict[str, Any]:
    """Mean per-token JS between the answer's distributions under the two framings of each pair:
    unedited, ``v̂`` ablated, and ``n_random`` random directions ablated (see the module docstring)."""
    if not _shared_answers(pairs):
        raise SteerscopeError("the framing gap needs chat pairs whose two sides end with the same assistant answer")
    v = vector.detach().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    conditions: dict[str, Steering | None] = {"unedited": None, "ablate_v": Steering(lm, {layer: Ablate(v, skip_sinks=True)})}
    for j in range(n_random):
        conditions[f"ablate_random_{j}"] = Steering(lm, {layer: Ablate(torch.randn(v.shape[0], generator=gen), skip_sinks=True)})
    gaps: dict[str, np.ndarray] = {}
    for name, steering in conditions.items():
        values = []
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            logp = _answer_logp(lm, [p.positive for p in part] + [p.negative for p in part], steering)
            for i in range(len(part)):
                a, b = logp[i], logp[len(part) + i]
                if a.shape != b.shape:
                    raise SteerscopeError(f"pair {start + i}: the answer tokenizes differently under the two framings")
                values.append(float(kl_js(a, b)[1].mean()))
        gaps[name] = np.array(values)
    random = np.mean([gaps[n] for n in gaps if n.startswith("ablate_random")], axis=0)
    base = gaps["unedited"]
    return {"n_pairs": len(pairs), "n_random": n_random, "layer": layer,
            "gap": {n: mean_interval(g, n_boot, seed) for n, g in gaps.items() if not n.startswith("ablate_random")}
            | {"ablate_random_mean": mean_interval(random, n_boot, seed)},
            "closed_by_v": _closed(gaps["ablate_v"], base, n_boot, seed), "closed_by_random": _closed(random, base, n_boot, seed),
            "v_vs_random": paired_effect(random, gaps["ablate_v"], n_boot, seed)}


def edit_report(lm: LoadedModel, layer: int, vector: torch.Tensor, alpha: float, target: Readout, readouts: Sequence[Readout],
                seed: int = 0, compare: bool = True) -> dict[str, Any]:
    """:func:`edit_specificity` (or why it was not run: ``compare`` False, or an edit that cannot reach
    the target), and :func:`framing_gap` when the target's pairs differ only in framing (as evaluation
    awareness does)."""
    out: dict[str, Any] = {"target": target.trait, "not_run": "left out at this profile's size"}
    if compare:
        try:
            out = edit_specificity(lm, layer, vector, alpha, target, readouts, seed=seed)
        except SteerscopeError as exc:  # an edit cannot be tuned to the target: say why
            out = {"target": target.trait, "error": str(exc)}
    if differ_in_framing(target.pairs):
        out["framing"] = framing_gap(lm, layer, vector, target.pairs, seed=seed)
    return out
