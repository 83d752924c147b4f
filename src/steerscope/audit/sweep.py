"""Extensions of the identifiability audit: a strength (α) sweep and a per-environment comparison.

* :func:`alpha_sweep` is the scale-invariance check (the paper's Figure 2): for each α, ``v`` and
  every ``v + u_i`` (the same orthogonal draws as :func:`build_conditions`) against the unsteered
  baseline, all generated in ONE batched :func:`behavioural_scores` call.
* :func:`environment_runs` repeats the behavioural comparison (no distributional readout, to keep
  it affordable) on the prompts of every built-in environment, with the audit's summary and
  behavioural verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from steerscope.audit.identifiability import (
    Bootstrap,
    Condition,
    IdentifiabilitySettings,
    _interval,
    behavioural_scores,
    build_conditions,
    evaluation_prompts,
    orthogonal_draw,
    score_readout,
    scorer_accuracy,
)
from steerscope.audit.equivalence import readout_verdict
from steerscope.errors import SteerscopeError
from steerscope.jsonable import jsonable
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer
from steerscope.stats import efficacy, hedges_g, prompt_means
from steerscope.traitspec import TraitSpec, as_spec


def _alpha_label(alpha: float) -> str:
    return format(float(alpha), "g")


def sweep_conditions(v: torch.Tensor, alphas: Sequence[float], n_draws: int, seed: int) -> list[Condition]:
    """``none`` once, then per α: ``v@α`` and ``v+perp#i@α`` (``u_i`` = ``orthogonal_draw(v, seed + i)``)."""
    if v.ndim != 1 or not torch.isfinite(v).all() or float(v.norm()) == 0:
        raise SteerscopeError(f"v must be a finite non-zero [d] vector, got shape {tuple(v.shape)}")
    if n_draws < 1:
        raise SteerscopeError(f"n_draws must be at least 1, got {n_draws}")
    alphas = [float(a) for a in alphas]
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise SteerscopeError(f"need at least one finite alpha, got {alphas}")
    labels = [_alpha_label(a) for a in alphas]
    if len(set(labels)) != len(labels):
        raise SteerscopeError(f"alphas must be distinct, got {labels}")
    v32 = v.detach().float().cpu()
    v64 = v32.double()
    sums = [(v64 + orthogonal_draw(v32, seed + i).double()).float() for i in range(n_draws)]
    conds = [Condition("none", None, 0.0, None, "none")]
    for a, label in zip(alphas, labels):
        conds.append(Condition(f"v@{label}", v32, a, None, "v"))
        conds += [Condition(f"v+perp#{i}@{label}", s, a, seed + i, "v+perp") for i, s in enumerate(sums)]
    return conds


def alpha_sweep(
    lm: LoadedModel,
    layer: int,
    v: torch.Tensor,
    alphas: Sequence[float],
    prompts: Sequence[str],
    scorer: Scorer,
    settings: IdentifiabilitySettings,
    h_norm: float | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Scale-invariance check: mean scores, efficacy and g vs v of each ``v + u_i`` at every α.

    All steered conditions with α ≠ 0 and ``none`` are generated in one batched call. A condition
    at α = 0 is the unsteered model by construction (``0·x = 0``), so it is given exactly the
    ``none`` scores rather than separately sampled ones; its efficacy is then undefined (None).
    ``relative_dose`` is ``|α|·‖v‖ / h_norm`` (None without ``h_norm``). Efficacy CIs resample
    prompts jointly over ``[cond, none, v]``; undefined statistics are reported as None.
    """
    n_draws, seed, samples_per_prompt, n_boot = settings.n_draws, settings.seed, settings.samples_per_prompt, settings.n_boot
    conds = sweep_conditions(v, alphas, n_draws, seed)
    generated = [c for c in conds if c.kind == "none" or c.alpha != 0.0]
    scores = behavioural_scores(lm, layer, generated, prompts, scorer, samples_per_prompt, settings.generation())
    none = np.asarray(scores["none"], float)
    for c in conds:
        if c.name not in scores:
            scores[c.name] = none.copy()
    v_norm = float(v.detach().float().norm())
    boot: Bootstrap = {"n_boot": n_boot, "seed": seed, "level": level}
    points = []
    for a in alphas:
        label = _alpha_label(a)
        sv = np.asarray(scores[f"v@{label}"], float)
        g_vn = _interval(hedges_g, [prompt_means(sv), prompt_means(none)], **boot)
        draws = {}
        for i in range(n_draws):
            sc = np.asarray(scores[f"v+perp#{i}@{label}"], float)
            eff = _interval(efficacy, [sc, none, sv], **boot)
            g = _interval(hedges_g, [prompt_means(sc), prompt_means(sv)], **boot)
            draws[f"v+perp#{i}"] = {
                "seed": seed + i, "mean": float(sc.mean()),
                "efficacy": eff["estimate"], "efficacy_low": eff["low"], "efficacy_high": eff["high"],
                "g": g["estimate"], "g_low": g["low"], "g_high": g["high"],
                "error": eff.get("error") or g.get("error"),
            }
        points.append({
            "alpha": float(a),
            "relative_dose": abs(float(a)) * v_norm / float(h_norm) if h_norm else None,
            "mean_v": float(sv.mean()),
            "g_v_vs_none": {"estimate": g_vn["estimate"], "low": g_vn["low"], "high": g_vn["high"]},
            "draws": draws,
        })
    return jsonable({
        "alphas": [float(a) for a in alphas], "n_draws": n_draws, "draw_seeds": [seed + i for i in range(n_draws)],
        "n_prompts": len(prompts), "samples_per_prompt": samples_per_prompt, "v_norm": v_norm, "h_norm": h_norm,
        "level": level, "n_boot": n_boot, "mean_none": float(none.mean()),
        "mean_scores": {name: float(np.mean(s)) for name, s in scores.items()},
        "points": points,
    })


def environment_runs(
    lm: LoadedModel,
    trait: str | TraitSpec,
    layer: int,
    v: torch.Tensor,
    alpha: float,
    scorer: Scorer,
    settings: IdentifiabilitySettings,
    prompts_by_env: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The trait-score comparison (none, v, v+perp draws, the dose controls) in every built-in environment.

    Prompts are ``evaluation_prompts(trait, env, settings.n_prompts)`` unless ``prompts_by_env`` gives them.
    Each environment gets the trait-score :func:`~steerscope.audit.equivalence.readout_verdict`.
    Returns ``{"trait", "alpha", "layer", "environments": {env: {...}}}``, JSON-serialisable.
    """
    from steerscope.data import ENVIRONMENTS

    s = settings
    conds = [c for c in build_conditions(v, alpha, s.n_draws, s.seed, s.margin()) if c.name != "dose_margin"]
    results: dict[str, Any] = {}
    for env in ENVIRONMENTS:
        prompts = list(prompts_by_env[env]) if prompts_by_env is not None else evaluation_prompts(trait, env, s.n_prompts)
        if len(prompts) < 2:
            raise SteerscopeError(f"environment {env}: need at least 2 prompts, got {len(prompts)}")
        scores = behavioural_scores(lm, layer, conds, prompts, scorer, s.samples_per_prompt, s.generation())
        result = readout_verdict(score_readout(scores, conds, scorer_accuracy(scorer)), s.margin(), s.n_boot, s.seed)
        results[env] = {"n_prompts": len(prompts), "mean_scores": {name: float(np.mean(x)) for name, x in scores.items()},
                        "trait_score": result}
    return jsonable({"trait": as_spec(trait).name, "layer": layer, "alpha": float(alpha), "n_draws": s.n_draws, "seed": s.seed,
                     "delta": s.delta, "samples_per_prompt": s.samples_per_prompt, "environments": results})


def parse_alphas(text: str) -> list[float]:
    """``"0,1,2.5"`` → ``[0.0, 1.0, 2.5]``; SteerscopeError on an empty, non-numeric or duplicate list."""
    try:
        alphas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise SteerscopeError(f"--alphas must be comma-separated numbers, got {text!r}") from exc
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise SteerscopeError(f"--alphas must list at least one finite number, got {text!r}")
    if len({_alpha_label(a) for a in alphas}) != len(alphas):
        raise SteerscopeError(f"--alphas must be distinct, got {text!r}")
    return alphas


def run_extensions(
    lm: LoadedModel,
    trait: str | TraitSpec,
    layer: int,
    alpha: float,
    settings: IdentifiabilitySettings | None = None,
    alphas: Sequence[float] | None = None,
    all_envs: bool = False,
    scorer: Scorer | None = None,
    vector=None,
) -> dict[str, Any]:
    """The α sweep (when ``alphas``) and environment runs (when ``all_envs``) with the settings of
    :func:`run_identifiability` (same mean-diff vectors, prompts, draws and generation config).

    Returns ``{"alpha_sweep": ...}`` and/or ``{"environments": ...}`` (empty dict when neither).
    ``vector`` is the SteeringVector when the caller already has it (default
    :func:`~steerscope.audit.identifiability.audit_vector`).
    """
    from steerscope.audit.identifiability import audit_vector

    if not alphas and not all_envs:
        return {}
    s = settings or IdentifiabilitySettings()
    layer = lm.check_layer(layer)
    if scorer is None:
        from steerscope.score.base import spec_scorer

        scorer = spec_scorer(as_spec(trait), lm)
        if scorer is None:
            raise SteerscopeError(f"the α sweep and the environment runs read the trait score; trait {as_spec(trait).name!r} has no scorer")
    vec = vector if vector is not None else audit_vector(lm, trait, layer)
    v = vec.directions[layer]
    out: dict[str, Any] = {}
    if alphas:
        dose = vec.dose(1.0, layer)
        h_norm = vec.norm(layer) / dose if dose else None
        prompts = evaluation_prompts(trait, s.env, s.n_prompts)
        out["alpha_sweep"] = alpha_sweep(lm, layer, v, alphas, prompts, scorer, s, h_norm=h_norm) | {"env": s.env}
    if all_envs:
        out["environments"] = environment_runs(lm, trait, layer, v, alpha, scorer, s)
    return out
