"""Choosing where and how hard to steer: layer selection by held-out separation, and a
coherence-aware strength calibration.

Layer selection: a mean-difference vector ``v_ℓ`` is fitted on the train pairs at each candidate
layer; on the held-out (test) pairs the projection ``s = (h⁺ − h⁻)·v̂_ℓ`` of each pair's contrast
is computed. The layer with the highest pairwise accuracy (share of ``s > 0``) wins, ties broken
by the standardised separation ``mean(s) / sd(s)``.

Strength calibration: for each α of a grid, sampled completions of the calibration prompts are
scored for the trait and their perplexity under the *unsteered* model is measured. The chosen α is
the smallest whose effect (paired Hedges' g of per-prompt mean scores against α = 0) reaches the
target while the perplexity ratio (geometric mean over completions, steered / unsteered) stays
within the allowed factor. A trait without a scorer is calibrated on the teacher-forced pair margin
of its held-out pairs instead (paired g over pairs); the perplexity still comes from the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from steerscope.capture import capture
from steerscope.data.pairs import ContrastivePair
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import steer
from steerscope.likelihood import perplexities
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer
from steerscope.stats import cluster_bootstrap, hedges_g, prompt_means

LAYER_RANGE = (0.2, 0.6)


def candidate_layers(n_layers: int, count: int | None) -> list[int]:
    """``count`` evenly spaced layers in :data:`LAYER_RANGE` of the depth (all of them when None)."""
    low, high = (max(0, min(n_layers - 1, round(f * n_layers))) for f in LAYER_RANGE)
    every = list(range(low, high + 1))
    if count is None or count >= len(every):
        return every
    if count < 1:
        raise SteerscopeError(f"need at least one candidate layer, got {count}")
    return sorted({every[round(i * (len(every) - 1) / max(count - 1, 1))] for i in range(count)})


def layer_separation(lm: LoadedModel, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair],
                     layers: Sequence[int]) -> dict[str, Any]:
    """Held-out separation of the train mean-difference direction at each of ``layers``.

    Returns ``{"rows": [{layer, accuracy, separation, norm}], "chosen": layer, "rule": str}``.
    """
    if len(train) < 2 or len(test) < 2:
        raise SteerscopeError(f"layer selection needs at least 2 train and 2 test pairs, got {len(train)} and {len(test)}")
    items = [p.positive for p in train] + [p.negative for p in train] + [p.positive for p in test] + [p.negative for p in test]
    acts = capture(lm, items, layers, position="mean")
    n, m = len(train), len(test)
    rows = []
    for layer in layers:
        a = acts[layer].double()
        v = a[:n].mean(0) - a[n:2 * n].mean(0)
        s = (a[2 * n:2 * n + m] - a[2 * n + m:]) @ (v / v.norm())
        sd = float(s.std())
        rows.append({"layer": int(layer), "accuracy": float((s > 0).double().mean()),
                     "separation": float(s.mean()) / sd if sd > 0 else math.inf, "norm": float(v.norm())})
    best = max(rows, key=lambda r: (r["accuracy"], r["separation"]))
    return {"rows": rows, "chosen": best["layer"], "n_train": n, "n_test": m,
            "rule": "highest held-out pairwise accuracy of (h+ - h-)·v̂, ties by mean/sd of the projection"}


def strength_point(lm: LoadedModel, layer: int, vector: torch.Tensor, alpha: float, prompts: Sequence[str],
                   scorer: Scorer | None, samples: int, max_new_tokens: int, seed: int,
                   pairs: Sequence[ContrastivePair] = ()) -> dict[str, Any]:
    """The effect readout and the unsteered-model perplexities ``[n_prompts][samples]`` of sampled
    completions at ``alpha``.

    The effect readout is the trait score of the completions (``scores [n_prompts][samples]``), or,
    when ``scorer`` is None, the teacher-forced pair margin of each of ``pairs`` (``[n_pairs][1]``).
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, seed=seed)
    rows = [p for p in prompts for _ in range(samples)]
    steering = steer(lm, {layer: vector.float()}, alpha) if alpha else None
    texts = generate(lm, rows, config, steering=steering)
    ppl = perplexities(lm, [encode_prompt(lm.tokenizer, p) for p in rows],
                       [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
    out = {"alpha": float(alpha), "perplexity": ppl.reshape(len(prompts), samples).tolist(), "texts": texts[:: samples][:3]}
    if scorer is not None:
        scores = np.asarray(scorer(texts), dtype=float).reshape(len(prompts), samples)
        return out | {"readout": "trait_score", "scores": scores.tolist()}
    from steerscope.audit.readouts import pair_margins_by_condition

    margins = pair_margins_by_condition(lm, layer, {"v": vector.float() if alpha else None}, alpha, pairs)["v"]
    return out | {"readout": "pair_margin", "scores": margins[:, None].tolist()}


def _log_ppl(point: Mapping[str, Any]) -> np.ndarray:
    """Per-prompt mean log-perplexity ``[n_prompts]`` (empty completions ignored)."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.log(np.asarray(point["perplexity"], dtype=float)), axis=1)


def choose_strength(points: Sequence[Mapping[str, Any]], target_g: float, max_ppl_ratio: float,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Effect and coherence of each α against the α = 0 point; the chosen α and why.

    ``points``: :func:`strength_point` results, one with ``alpha == 0``. Effects are paired Hedges'
    g of per-prompt mean scores with cluster-bootstrap CIs; the perplexity ratio is
    ``exp(mean over prompts of (log ppl_α − log ppl_0))`` with a CI from the same resampling.
    """
    base = next((p for p in points if p["alpha"] == 0), None)
    if base is None:
        raise SteerscopeError("strength calibration needs the unsteered (alpha = 0) point")
    base_scores, base_lp = prompt_means(base["scores"]), _log_ppl(base)
    rows = []
    for p in sorted((p for p in points if p["alpha"] != 0), key=lambda p: abs(p["alpha"])):
        row: dict[str, Any] = {"alpha": p["alpha"], "mean_score": float(np.mean(p["scores"]))}
        try:
            row["g"], row["g_low"], row["g_high"] = cluster_bootstrap(hedges_g, [prompt_means(p["scores"]), base_scores], n_boot, seed)
        except ValueError as err:
            row["g"], row["g_low"], row["g_high"], row["g_error"] = math.nan, math.nan, math.nan, str(err)
        diff = _log_ppl(p) - base_lp
        diff = diff[np.isfinite(diff)]
        if diff.size:
            est, low, high = cluster_bootstrap(lambda d: float(np.mean(d)), [diff], n_boot, seed)
            row["ppl_ratio"], row["ppl_ratio_low"], row["ppl_ratio_high"] = math.exp(est), math.exp(low), math.exp(high)
        else:
            row["ppl_ratio"] = row["ppl_ratio_low"] = row["ppl_ratio_high"] = math.nan
        row["coherent"] = bool(row["ppl_ratio"] <= max_ppl_ratio)
        row["reaches_target"] = bool(row["g"] >= target_g)
        rows.append(row)
    if not rows:
        raise SteerscopeError("strength calibration needs at least one non-zero alpha")
    ok = [r for r in rows if r["coherent"] and r["reaches_target"]]
    coherent = [r for r in rows if r["coherent"]]
    if ok:
        chosen, reason = ok[0], f"smallest α with g ≥ {target_g} and perplexity ratio ≤ {max_ppl_ratio}"
    elif coherent:
        chosen = max(coherent, key=lambda r: r["g"] if math.isfinite(r["g"]) else -math.inf)
        reason = f"no α reached g ≥ {target_g} within perplexity ratio ≤ {max_ppl_ratio}; the largest coherent effect was taken"
    else:
        chosen, reason = rows[0], f"every α exceeded perplexity ratio {max_ppl_ratio}; the smallest α was taken"
    return {"rows": rows, "alpha": chosen["alpha"], "reached": bool(ok), "reason": reason, "target_g": target_g,
            "readout": base.get("readout", "trait_score"),
            "max_ppl_ratio": max_ppl_ratio, "baseline": {"mean_score": float(np.mean(base["scores"])),
                                                         "perplexity": float(math.exp(np.nanmean(base_lp)))}}
