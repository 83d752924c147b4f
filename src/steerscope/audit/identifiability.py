"""Identifiability audit: does adding an orthogonal direction to a steering vector change behaviour?

The claim under test: for a steering vector ``v`` and a random ``u ⊥ v`` with ``‖u‖ = ‖v‖``,
steering with ``v + u`` has the same behavioural effect as steering with ``v``. The audit fixes the
design flaws of the original protocol:

* an unsteered baseline (``none``) so that the vector is shown to do something at all;
* a norm control (``sqrt2*v``, same norm as ``v + u``), ``perp`` (u alone) and a same-norm
  ``random`` direction;
* a positive control (``targeted``: ``v + w`` with ``w ⊥ v`` taken from another trait's vector)
  that the readout must detect before equivalence can be claimed;
* prompt-clustered statistics (per-prompt means, cluster-bootstrap CIs), paired TOST equivalence
  tests and paired difference tests, Holm-corrected across conditions (and across traits when
  several are audited together, :func:`holm_across_traits`);
* a distributional readout (teacher-forced per-token KL/JS from the ``v`` condition).

A failed search for a difference is not proof of equivalence.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch
from scipy import stats as _scipy_stats

from steerscope.divergence import condition_divergences
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import steer_rows
from steerscope.jsonable import jsonable
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer
from steerscope.stats import (
    cluster_bootstrap,
    compare_conditions,
    hedges_g,
    holm,
    prompt_means,
    tost_paired,
)

KINDS = ("none", "v", "v+perp", "sqrt2*v", "perp", "random", "targeted")
RANDOM_SEED_OFFSET = 10_000
#: Distributional "negligible" threshold as a fraction of JS(v, none): a reporting convention, not a test.
JS_THRESHOLD_FRACTION = 0.1
#: Scorers whose held-out accuracy is below this cannot support a behavioural verdict.
MIN_SCORER_ACCURACY = 0.7
STATEMENT = (
    "a failed search for a difference is not proof of equivalence; equivalence is claimed only with a "
    "detected positive control and a TOST at margin |g| < {margin}"
)


@dataclass(frozen=True)
class Condition:
    """One steering condition at the audit layer: ``alpha·vector`` (``vector`` ``[d]``; None = unsteered)."""

    name: str
    vector: torch.Tensor | None
    alpha: float
    seed: int | None
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SteerscopeError(f"unknown condition kind {self.kind!r}; use one of {', '.join(KINDS)}")


# --- conditions -------------------------------------------------------------------------------

def _gaussian(d: int, seed: int) -> torch.Tensor:
    """``[d]`` float64 standard normal draw from ``torch.Generator().manual_seed(seed)``."""
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal_to(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x`` (``[d]`` float64) with its component along ``v`` removed, rescaled to ``‖v‖`` (float64)."""
    v64 = v.double()
    w = x.double() - (x.double() @ v64) / (v64 @ v64) * v64
    w = w - (w @ v64) / (v64 @ v64) * v64  # second pass: orthogonal to rounding error
    norm = w.norm()
    if not norm > 1e-12 * v64.norm():
        raise SteerscopeError("direction is parallel to v: no component orthogonal to v")
    return w * (v64.norm() / norm)


def orthogonal_draw(v: torch.Tensor, seed: int) -> torch.Tensor:
    """``u ⊥ v`` with ``‖u‖ = ‖v‖`` (``[d]`` float32): Gaussian, v projected out, rescaled."""
    return _orthogonal_to(_gaussian(v.shape[0], seed), v).float()


def random_draw(v: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction (not orthogonalised) rescaled to ``‖v‖`` (``[d]`` float32)."""
    x = _gaussian(v.shape[0], seed)
    return (x * (v.double().norm() / x.norm())).float()


def build_conditions(
    v: torch.Tensor,
    alpha: float,
    n_draws: int,
    seed: int,
    control_direction: torch.Tensor | None = None,
    perp_directions: Sequence[torch.Tensor] | None = None,
) -> list[Condition]:
    """The audit's conditions, all at strength ``alpha`` (``v``: ``[d]``).

    ``none``; ``v``; ``v+perp#i`` (``u_i`` from seed ``seed + i``, or the ``i``-th of
    ``perp_directions`` made ⟂ v and rescaled to ‖v‖, e.g. directions from a readout's null space,
    seed recorded as None); ``sqrt2*v`` (norm control,
    ``‖√2·v‖ = ‖v + u‖``); ``perp`` (``u_0``); ``random`` (same norm, seed ``seed + 10000``);
    ``targeted`` (``v + w``, ``w`` = ``control_direction`` ⊥ v rescaled to ‖v‖), only when a
    control direction is given (otherwise there is no positive control).
    """
    if v.ndim != 1 or not torch.isfinite(v).all() or float(v.norm()) == 0:
        raise SteerscopeError(f"v must be a finite non-zero [d] vector, got shape {tuple(v.shape)}")
    if perp_directions is None and n_draws < 1:
        raise SteerscopeError(f"n_draws must be at least 1, got {n_draws}")
    v32 = v.detach().float().cpu()
    v64 = v32.double()
    if perp_directions is not None:
        draws = [_orthogonal_to(u.detach().cpu().double(), v64).float() for u in perp_directions]
        seeds: list[int | None] = [None] * len(draws)
    else:
        draws = [orthogonal_draw(v32, seed + i) for i in range(n_draws)]
        seeds = [seed + i for i in range(n_draws)]
    if not draws:
        raise SteerscopeError("perp_directions is empty")
    conds = [Condition("none", None, 0.0, None, "none"), Condition("v", v32, alpha, None, "v")]
    conds += [Condition(f"v+perp#{i}", (v64 + u.double()).float(), alpha, s, "v+perp") for i, (u, s) in enumerate(zip(draws, seeds))]
    conds.append(Condition("sqrt2*v", (math.sqrt(2.0) * v64).float(), alpha, None, "sqrt2*v"))
    conds.append(Condition("perp", draws[0], alpha, seeds[0], "perp"))
    conds.append(Condition("random", random_draw(v32, seed + RANDOM_SEED_OFFSET), alpha, seed + RANDOM_SEED_OFFSET, "random"))
    if control_direction is not None:
        w = _orthogonal_to(control_direction.detach().cpu().double(), v64)
        conds.append(Condition("targeted", (v64 + w).float(), alpha, None, "targeted"))
    return conds


def _steering_args(layer: int, conditions: Sequence[Condition], repeat: int) -> tuple[list, list[float]]:
    """Per-row ``({layer: vector} or None, alpha)`` lists, each condition repeated ``repeat`` times."""
    vectors = [{layer: c.vector} if c.vector is not None else None for c in conditions for _ in range(repeat)]
    alphas = [float(c.alpha) if c.vector is not None else 0.0 for c in conditions for _ in range(repeat)]
    return vectors, alphas


# --- readouts ---------------------------------------------------------------------------------

def behavioural_scores(
    lm: LoadedModel,
    layer: int,
    conditions: Sequence[Condition],
    prompts: Sequence[str],
    scorer: Scorer,
    samples_per_prompt: int,
    config: GenerationConfig,
    positions: str = "all",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Trait scores ``{name: [n_prompts, n_samples]}`` of completions under each condition.

    One :func:`generate` call over all rows (condition-major, then prompt, then sample) with
    per-row steering, sampled with ``config.seed`` (use ``do_sample=True`` for distinct samples).
    The scorer sees the completions only, never the prompt text.
    """
    if samples_per_prompt < 1 or not prompts or not conditions:
        raise SteerscopeError("need at least one condition, one prompt and one sample per prompt")
    per_cond = len(prompts) * samples_per_prompt
    rows = [p for _ in conditions for p in prompts for _ in range(samples_per_prompt)]
    vectors, alphas = _steering_args(layer, conditions, per_cond)
    steering = steer_rows(lm, vectors, alphas, positions)
    completions = generate(lm, rows, config, steering=steering, batch_size=batch_size)
    scores = np.asarray(scorer(completions), dtype=float)
    if scores.shape != (len(rows),):
        raise SteerscopeError(f"scorer returned shape {scores.shape} for {len(rows)} texts")
    cube = scores.reshape(len(conditions), len(prompts), samples_per_prompt)
    return {c.name: cube[i] for i, c in enumerate(conditions)}


def reference_continuations(
    lm: LoadedModel,
    layer: int,
    v_condition: Condition,
    prompts: Sequence[str],
    max_new_tokens: int,
    positions: str = "all",
) -> list[str]:
    """Greedy completions ``[n_prompts]`` under the reference condition (teacher-forcing targets)."""
    vectors, alphas = _steering_args(layer, [v_condition], len(prompts))
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False)
    return generate(lm, list(prompts), config, steering=steer_rows(lm, vectors, alphas, positions))


def distributional_readout(
    lm: LoadedModel,
    layer: int,
    conditions: Sequence[Condition],
    prompts: Sequence[str],
    continuations: Sequence[str],
    reference: str = "v",
    positions: str = "all",
) -> dict[str, dict[str, np.ndarray]]:
    """Mean per-token ``KL(p_ref ‖ p_c)`` and ``JS`` per prompt: ``{name: {"kl": [P], "js": [P]}}``.

    Prompts whose continuation has no tokens are not evaluated and get NaN.
    """
    names = [c.name for c in conditions]
    if reference not in names:
        raise SteerscopeError(f"reference condition {reference!r} not among {names}")
    if len(prompts) != len(continuations):
        raise SteerscopeError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
    keep = [i for i, c in enumerate(continuations) if lm.tokenizer(c, add_special_tokens=False)["input_ids"]]
    out = {n: {"kl": np.full(len(prompts), np.nan), "js": np.full(len(prompts), np.nan)} for n in names}
    if not keep:
        return out
    vectors, alphas = _steering_args(layer, conditions, 1)
    div = condition_divergences(
        lm, [prompts[i] for i in keep], [continuations[i] for i in keep], vectors, alphas,
        reference=names.index(reference), positions=positions,
    )
    for which in ("kl", "js"):
        means = div.mean(which).numpy()  # [C, len(keep)]
        for c, name in enumerate(names):
            out[name][which][keep] = means[c]
    return out


# --- statistics -------------------------------------------------------------------------------

class Bootstrap(TypedDict):
    """The cluster-bootstrap settings of :func:`_interval`, passed on as keywords."""

    n_boot: int
    seed: int
    level: float


def _interval(statistic: Callable[..., float], arrays: Sequence[np.ndarray], n_boot: int, seed: int, level: float) -> dict:
    """``{"estimate", "low", "high"}`` of a cluster bootstrap, NaNs plus ``error`` when undefined."""
    try:
        est, low, high = cluster_bootstrap(statistic, arrays, n_boot=n_boot, seed=seed, level=level)
        return {"estimate": est, "low": low, "high": high}
    except ValueError as err:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan, "error": str(err)}


def difference_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided paired t-test p of per-prompt means ``x`` vs ``y`` (``[n]``); 1.0 when undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(_scipy_stats.ttest_rel(x, y).pvalue)
    return p if math.isfinite(p) else 1.0


def _comparison(cond: np.ndarray, v: np.ndarray, none: np.ndarray, margin_g: float, n_boot: int, seed: int, level: float) -> dict:
    """g (cond vs v) and efficacy with CIs and TOST p, via compare_conditions, piecewise if degenerate."""
    try:
        comp = compare_conditions(cond, v, v, none, margin_g=margin_g, n_boot=n_boot, seed=seed, level=level).to_json()
        return {k: comp[k] for k in ("g", "g_low", "g_high", "efficacy", "efficacy_low", "efficacy_high")} | {
            "p_tost": comp["tost"]["p_value"], "tost": comp["tost"], "error": None}
    except ValueError as err:
        from steerscope.stats import efficacy

        g = _interval(hedges_g, [prompt_means(cond), prompt_means(v)], n_boot, seed, level)
        eff = _interval(efficacy, [cond, none, v], n_boot, seed, level)
        try:
            tost = tost_paired(prompt_means(cond), prompt_means(v), margin_g)
            tost_json: dict | None = dict(tost.__dict__)
        except ValueError:
            tost_json = None
        return {
            "g": g["estimate"], "g_low": g["low"], "g_high": g["high"],
            "efficacy": eff["estimate"], "efficacy_low": eff["low"], "efficacy_high": eff["high"],
            "p_tost": tost_json["p_value"] if tost_json else math.nan, "tost": tost_json, "error": str(err),
        }


def _finite_rows(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean ``[P]`` mask of prompts where every array is finite."""
    return np.all(np.stack([np.isfinite(a) for a in arrays.values()]), axis=0)


def summarise(
    scores: Mapping[str, np.ndarray],
    divergences: Mapping[str, Mapping[str, np.ndarray]] | None,
    conditions: Sequence[Condition],
    margin_g: float = 0.2,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Statistics of every steered condition against ``v`` (scores ``[P, S]``, divergences ``[P]``).

    Per condition: g vs v and efficacy vs the unsteered baseline (cluster-bootstrap CIs), paired TOST
    p vs v at ``margin_g``, paired t-test p vs v, both Holm-corrected across the conditions, and mean
    KL/JS from v with cluster-bootstrap CIs. Also v vs none, and the distributional quantities
    used by :func:`verdict`.
    """
    kinds = {c.name: c.kind for c in conditions}
    if "v" not in scores or "none" not in scores:
        raise SteerscopeError("the summary needs the 'v' and 'none' conditions")
    v, none = np.asarray(scores["v"], float), np.asarray(scores["none"], float)
    names = [c.name for c in conditions if c.kind not in ("none", "v")]
    boot: Bootstrap = {"n_boot": n_boot, "seed": seed, "level": level}
    g_vn = _interval(hedges_g, [prompt_means(v), prompt_means(none)], **boot)
    out: dict[str, Any] = {
        "reference": "v", "margin_g": margin_g, "level": level, "n_boot": n_boot, "seed": seed,
        "positive_control": next((c.name for c in conditions if c.kind == "targeted"), None),
        "v_vs_none": {
            "g": g_vn["estimate"], "g_low": g_vn["low"], "g_high": g_vn["high"],
            "p_diff": difference_p(prompt_means(v), prompt_means(none)),
            "mean_v": float(v.mean()), "mean_none": float(none.mean()),
        },
        "conditions": {},
    }
    for name in names:
        cond = np.asarray(scores[name], float)
        row = {"kind": kinds[name], "mean": float(cond.mean())}
        row |= _comparison(cond, v, none, margin_g, n_boot, seed, level)
        row["p_diff"] = difference_p(prompt_means(cond), prompt_means(v))
        out["conditions"][name] = row
    if names:
        p_tost = [out["conditions"][n]["p_tost"] for n in names]
        p_tost = [p if math.isfinite(p) else 1.0 for p in p_tost]
        for n, pt, pd in zip(names, holm(p_tost), holm([out["conditions"][n]["p_diff"] for n in names])):
            out["conditions"][n]["p_tost_holm"] = float(pt)
            out["conditions"][n]["p_diff_holm"] = float(pd)
    if divergences is not None:
        out["distributional"] = _distributional(divergences, conditions, names, out, **boot)
    return out


def _mean_ci(x: np.ndarray, n_boot: int, seed: int, level: float) -> dict:
    return _interval(lambda a: float(np.mean(a)), [x], n_boot, seed, level)


def _distributional(divergences, conditions, names, out, n_boot: int, seed: int, level: float) -> dict:
    """Per-condition KL/JS from v (mean and CI), pooled v+perp JS, threshold and ratios."""
    js = {n: np.asarray(d["js"], float) for n, d in divergences.items()}
    mask = _finite_rows(js)
    boot: Bootstrap = {"n_boot": n_boot, "seed": seed, "level": level}
    if mask.sum() < 1:
        return {"error": "no prompt with a non-empty reference continuation", "n_prompts": 0}
    for name in names:
        for which in ("kl", "js"):
            out["conditions"][name][which] = _mean_ci(np.asarray(divergences[name][which], float)[mask], **boot)
    js_none = _mean_ci(js["none"][mask], **boot)
    out["v_vs_none"]["js"] = js_none
    out["v_vs_none"]["kl"] = _mean_ci(np.asarray(divergences["none"]["kl"], float)[mask], **boot)
    draws = [c.name for c in conditions if c.kind == "v+perp"]
    pooled = _mean_ci(np.mean([js[n][mask] for n in draws], axis=0), **boot) if draws else None
    control = out["positive_control"]
    control_js = out["conditions"][control]["js"] if control else None
    base = js_none["estimate"]
    threshold = JS_THRESHOLD_FRACTION * base
    return {
        "n_prompts": int(mask.sum()),
        "js_v_none": base,
        "threshold": threshold,
        "threshold_fraction": JS_THRESHOLD_FRACTION,
        "js_perp_pooled": pooled,
        "js_perp_draws": {n: out["conditions"][n]["js"]["estimate"] for n in draws},
        "js_control": control_js,
        "ratio_perp_to_none": (pooled["estimate"] / base) if pooled and base > 0 else None,
        "control_exceeds_all_draws": (
            bool(all(control_js["estimate"] > out["conditions"][n]["js"]["estimate"] for n in draws)) if control_js else None
        ),
    }


# --- verdicts ---------------------------------------------------------------------------------

def _behavioural_verdict(summary: Mapping[str, Any], alpha: float, scorer_accuracy: float | None) -> dict[str, str]:
    conds = summary["conditions"]
    if scorer_accuracy is not None and scorer_accuracy < MIN_SCORER_ACCURACY:
        return {"verdict": "inconclusive", "reason": f"scorer invalid: held-out accuracy {scorer_accuracy:.2f} < "
                f"{MIN_SCORER_ACCURACY} (near chance)"}
    if not summary["v_vs_none"]["p_diff"] < alpha:
        return {"verdict": "inconclusive", "reason": "vector has no detectable effect (v vs none: p = "
                f"{summary['v_vs_none']['p_diff']:.3g} >= {alpha})"}
    control = summary.get("positive_control")
    if control is None:
        return {"verdict": "inconclusive", "reason": "readout insensitive: positive control not detected (no positive control exists)"}
    if not conds[control]["p_diff_holm"] < alpha:
        return {"verdict": "inconclusive", "reason": "readout insensitive: positive control not detected "
                f"(Holm p = {conds[control]['p_diff_holm']:.3g} >= {alpha})"}
    draws = [n for n, c in conds.items() if c["kind"] == "v+perp"]
    if not draws:
        return {"verdict": "inconclusive", "reason": "no v+perp draws"}
    if all(conds[n]["p_tost_holm"] < alpha for n in draws):
        return {"verdict": "equivalent", "reason": f"every v+perp draw is equivalent to v (Holm TOST p < {alpha}, "
                f"margin |g| < {summary['margin_g']}) and the positive control was detected"}
    different = [n for n in draws if conds[n]["p_diff_holm"] < alpha]
    if different:
        return {"verdict": "different", "reason": f"{', '.join(different)} differ from v (Holm difference p < {alpha})"}
    return {"verdict": "inconclusive", "reason": "neither equivalence nor difference shown at this sample size"}


def _distributional_verdict(summary: Mapping[str, Any]) -> dict[str, Any]:
    dist = summary.get("distributional")
    if not dist or dist.get("js_perp_pooled") is None or "threshold" not in dist:
        return {"verdict": "inconclusive", "reason": "no distributional readout"}
    base, threshold, pooled, control = dist["js_v_none"], dist["threshold"], dist["js_perp_pooled"], dist["js_control"]
    extra = {"ratio_perp_to_none": dist["ratio_perp_to_none"], "control_exceeds_all_draws": dist["control_exceeds_all_draws"],
             "threshold": threshold}
    rule = (f"threshold = {JS_THRESHOLD_FRACTION} x JS(v, none) = {threshold:.3g} nats (a reporting convention, not a test)")
    if not base > 0:
        return {"verdict": "inconclusive", "reason": f"v does not move the next-token distribution (JS(v, none) = 0); {rule}"} | extra
    if pooled["low"] > threshold:
        return {"verdict": "different", "reason": f"v+perp JS CI lower bound {pooled['low']:.3g} > {rule}"} | extra
    control_ok = control is not None and control["low"] > threshold
    if pooled["high"] < threshold and control_ok:
        return {"verdict": "equivalent", "reason": f"v+perp JS CI upper bound {pooled['high']:.3g} < {rule}, "
                f"and the positive control's JS CI lower bound {control['low']:.3g} exceeds it"} | extra
    why = "no positive control" if control is None else ("positive control JS not above the threshold" if not control_ok
                                                        else "v+perp JS CI straddles the threshold")
    return {"verdict": "inconclusive", "reason": f"{why}; {rule}"} | extra


def verdict(summary: Mapping[str, Any], alpha: float = 0.05, scorer_accuracy: float | None = None) -> dict[str, dict]:
    """Behavioural and distributional verdicts (``equivalent`` / ``different`` / ``inconclusive``).

    Behavioural: requires a scorer whose held-out accuracy (when known) is at least
    :data:`MIN_SCORER_ACCURACY`, v to have an effect and the positive control to be detected before
    equivalence (all v+perp draws Holm-TOST p < alpha) or difference (any draw Holm p < alpha).
    Distributional: the pooled v+perp JS from v against ``0.1 × JS(v, none)`` (a reporting
    convention, not a hypothesis test); equivalence also needs the control's JS above it.
    """
    return {"behavioural": _behavioural_verdict(summary, alpha, scorer_accuracy),
            "distributional": _distributional_verdict(summary)}


def scorer_accuracy(scorer: Scorer) -> float | None:
    """A scorer's held-out accuracy from its ``validity`` dict (None when not measured)."""
    return (getattr(scorer, "validity", None) or {}).get("heldout_accuracy")


def holm_across_traits(reports: Mapping[str, dict], alpha: float = 0.05) -> dict[str, dict]:
    """Holm-correct the TOST and difference p-values over every condition of every trait.

    ``reports``: trait → :func:`run_identifiability` report; each summary's ``p_tost_holm`` and
    ``p_diff_holm`` are replaced by the family-wide values (``summary["holm_family"]`` records the
    family) and the verdicts recomputed. Returns the new reports (inputs are not modified).
    """
    out = {t: copy.deepcopy(r) for t, r in reports.items()}
    keys = [(t, n) for t, r in out.items() for n in r["summary"]["conditions"]]
    if not keys:
        return out
    rows = [out[t]["summary"]["conditions"][n] for t, n in keys]
    p_tost = holm([p if p is not None and math.isfinite(p) else 1.0 for p in (r["p_tost"] for r in rows)])
    p_diff = holm([r["p_diff"] for r in rows])
    for row, pt, pd in zip(rows, p_tost, p_diff):
        row["p_tost_holm"], row["p_diff_holm"] = float(pt), float(pd)
    for report in out.values():
        report["summary"]["holm_family"] = {"traits": list(out), "n_tests": len(keys)}
        report["verdict"] = verdict(report["summary"], alpha, (report["scorer"].get("validity") or {}).get("heldout_accuracy"))
    return out


# --- end to end -------------------------------------------------------------------------------

def default_control_trait(trait: str) -> str:
    """The built-in trait whose vector supplies the positive control for ``trait``."""
    return "politeness" if trait == "formality" else "formality"


def audit_vectors(lm: LoadedModel, trait: str, layer: int, control_trait: str | None = None):
    """``(vector, control_vector, control_trait)``: mean-diff vectors on the train pairs of
    ``trait`` and of its control trait at ``layer`` (shared by the main audit and its extensions)."""
    from steerscope.data.traits import builtin_pairs
    from steerscope.extract import extract

    control_trait = control_trait or default_control_trait(trait)
    if control_trait == trait:
        raise SteerscopeError("the control trait must differ from the audited trait")
    vec = extract(lm, builtin_pairs(trait, "train"), [layer], method="mean_diff", trait=trait)
    control = extract(lm, builtin_pairs(control_trait, "train"), [layer], method="mean_diff", trait=control_trait)
    return vec, control, control_trait


def _default_scorer(trait: str) -> Scorer:
    from steerscope.score.base import get_scorer

    return get_scorer(trait)


def evaluation_prompts(trait: str, env: str, n_prompts: int) -> list[str]:
    """The first ``n_prompts`` built-in evaluation prompts of ``trait`` in ``env``; SteerscopeError
    when fewer exist or fewer than 2 are asked for (the prompt is the statistical unit)."""
    from steerscope.data.traits import builtin_prompts

    prompts = builtin_prompts(trait, env)
    if n_prompts < 2:
        raise SteerscopeError(f"need at least 2 prompts, got {n_prompts}")
    if n_prompts > len(prompts):
        raise SteerscopeError(f"asked for {n_prompts} prompts but the {trait!r} {env} set has only {len(prompts)}")
    return prompts[:n_prompts]


@dataclass(frozen=True)
class IdentifiabilitySettings:
    """Sizes, generation and statistics of the identifiability audit and its extensions.

    ``n_draws`` orthogonal draws u ⊥ v (seeds ``seed + i``); ``n_prompts`` evaluation prompts of
    environment ``env`` (the prompt is the statistical unit) × ``samples_per_prompt`` completions
    of ``max_new_tokens`` tokens sampled at ``temperature``; equivalence margin ``margin_g`` in
    |Hedges' g|; ``n_boot`` bootstrap resamples; the positive control from ``control_trait``'s
    vector (default: :func:`default_control_trait`).
    """

    n_draws: int = 4
    env: str = "in_distribution"
    n_prompts: int = 12
    samples_per_prompt: int = 3
    max_new_tokens: int = 24
    seed: int = 0
    margin_g: float = 0.2
    control_trait: str | None = None
    n_boot: int = 2000
    temperature: float = 0.8

    def __post_init__(self) -> None:
        from steerscope.data.traits import ENVIRONMENTS

        if self.env not in ENVIRONMENTS:
            raise SteerscopeError(f"unknown environment {self.env!r}; use one of {', '.join(ENVIRONMENTS)}")
        if self.n_draws < 1:
            raise SteerscopeError(f"n_draws (--seeds) must be at least 1, got {self.n_draws}")
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1:
            raise SteerscopeError("--samples and --max-new-tokens must be at least 1")
        if not self.margin_g > 0 or self.n_boot < 1:
            raise SteerscopeError(f"need a margin > 0 and at least one bootstrap resample, got {self.margin_g} and {self.n_boot}")

    def generation(self) -> GenerationConfig:
        """The sampling configuration of the behavioural readout."""
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature, seed=self.seed)


def run_identifiability(
    lm: LoadedModel,
    trait: str,
    layer: int,
    alpha: float,
    settings: IdentifiabilitySettings | None = None,
    scorer: Scorer | None = None,
    vectors: tuple | None = None,
) -> dict[str, Any]:
    """Full audit of ``trait``'s mean-diff vector at ``layer``; returns a JSON-serialisable report.

    ``vectors`` is the result of :func:`audit_vectors` when the caller already has it; ``scorer``
    defaults to the trait's built-in scorer.
    """
    s = settings or IdentifiabilitySettings()
    layer = lm.check_layer(layer)
    scorer = scorer if scorer is not None else _default_scorer(trait)
    vec, control, control_trait = vectors or audit_vectors(lm, trait, layer, s.control_trait)
    v = vec.directions[layer]
    prompts = evaluation_prompts(trait, s.env, s.n_prompts)
    conditions = build_conditions(v, alpha, s.n_draws, s.seed, control.directions[layer])
    config = s.generation()
    scores = behavioural_scores(lm, layer, conditions, prompts, scorer, s.samples_per_prompt, config)
    v_cond = next(c for c in conditions if c.kind == "v")
    continuations = reference_continuations(lm, layer, v_cond, prompts, s.max_new_tokens)
    divergences = distributional_readout(lm, layer, conditions, prompts, continuations)
    summary = summarise(scores, divergences, conditions, margin_g=s.margin_g, n_boot=s.n_boot, seed=s.seed)
    report = {
        "config": {
            "trait": trait, "layer": layer, "alpha": alpha, "n_draws": s.n_draws, "env": s.env, "n_prompts": len(prompts),
            "samples_per_prompt": s.samples_per_prompt, "max_new_tokens": s.max_new_tokens, "seed": s.seed,
            "margin_g": s.margin_g, "control_trait": control_trait, "n_boot": s.n_boot, "temperature": s.temperature,
            "draw_seeds": [s.seed + i for i in range(s.n_draws)], "random_seed": s.seed + RANDOM_SEED_OFFSET,
            "generation": config.__dict__, "extraction": {"method": "mean_diff", "split": "train"},
        },
        "model": lm.info(),
        "vector": {"norm": vec.norm(layer), "relative_dose": vec.dose(alpha, layer), "control_norm": control.norm(layer)},
        "scorer": {"name": getattr(scorer, "name", type(scorer).__name__), "validity": getattr(scorer, "validity", None)},
        "conditions": [{"name": c.name, "kind": c.kind, "seed": c.seed, "alpha": c.alpha,
                        "norm": float(c.vector.norm()) if c.vector is not None else 0.0} for c in conditions],
        "mean_scores": {name: float(s.mean()) for name, s in scores.items()},
        "prompts": prompts,
        "reference_continuations": continuations,
        "summary": summary,
        "verdict": verdict(summary, scorer_accuracy=scorer_accuracy(scorer)),
        "statement": STATEMENT.format(margin=s.margin_g),
    }
    return jsonable(report)
