"""Equivalence, difference and resolution of one readout, with margins calibrated from dose.

A readout gives one number per prompt (the statistical unit) and condition: the trait score of
sampled completions (prompt mean), the teacher-forced pair margin of a held-out contrastive pair,
or the mean per-token JS divergence of the next-token distribution from the ``v`` condition.
"w is equivalent to v at δ" means that w moves the readout no further from v than a change of
dose by δ does:

* scalar readouts (score, pair margin): the efficacy ``E[w − none] / E[v − none]`` lies in
  ``[1 − δ, 1 + δ]``. TOST as two one-sided one-sample t-tests on the per-prompt linear
  contrasts ``(w − none) − (1 ∓ δ)(v − none)`` (Fieller's construction: exact, no ratio of noisy
  means); difference: paired t-test of w against v;
* the distribution: ``E[JS(v, w)] ≤ E[JS(v, (1 − δ)v)]`` (one-sided paired t-test of the
  per-prompt JS against that of the dose condition); difference: the opposite one-sided test.

Equivalence of every draw is an intersection–union test: each draw at level α, no multiplicity
correction. Difference of any draw is a union: Holm over the draws. Equivalence is claimed only
when the dose control ``(1 − 2δ)·v`` is detected as different (the readout resolves 2δ);
difference needs no control. Power figures are normal-theory approximations with t quantiles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from steerscope.errors import SteerscopeError
from steerscope.stats import cluster_bootstrap, efficacy, holm

#: Statistical power at which resolutions and prompt counts are planned.
POWER = 0.8


@dataclass(frozen=True)
class Margin:
    """The equivalence margin ``delta`` (fraction of the dose) and the test level ``level`` (α)."""

    delta: float = 0.1
    level: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.delta < 0.5:
            raise SteerscopeError(f"delta must lie in (0, 0.5), got {self.delta}")
        if not 0 < self.level < 0.5:
            raise SteerscopeError(f"the test level must lie in (0, 0.5), got {self.level}")

    def dose_scales(self) -> dict[str, float]:
        """Dose conditions and their scale of v: the margin ``1 − δ`` and the controls ``1 − 2δ`` and 0.5."""
        return {"dose_margin": 1 - self.delta, "dose_control": 1 - 2 * self.delta, "dose_half": 0.5}


def one_sided_p(z: np.ndarray, alternative: str) -> float:
    """p of a one-sample t-test of ``mean(z) > 0`` (``"greater"``) or ``< 0`` (``"less"``), ``z``: ``[n]``.

    Without spread (a deterministic readout in an exact null space) the test degenerates: p is 0
    when every value lies strictly on the alternative's side and 1 otherwise.
    """
    z = np.asarray(z, dtype=float)
    if z.size < 2:
        raise SteerscopeError(f"a t-test needs at least 2 prompts, got {z.size}")
    if np.ptp(z) <= 1e-12 * max(1.0, float(np.abs(z).max())):
        side = z > 0 if alternative == "greater" else z < 0
        return 0.0 if bool(side.all()) else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_st.ttest_1samp(z, 0.0, alternative=alternative).pvalue)


def two_sided_p(z: np.ndarray) -> float:
    """Two-sided one-sample t-test p of ``mean(z) = 0`` (paired difference), same degenerate rule."""
    return min(1.0, 2 * min(one_sided_p(z, "greater"), one_sided_p(z, "less")))


def _t(q: float, n: int) -> float:
    return float(_st.t.ppf(q, max(n - 1, 1)))


def resolution(sd: float, n: int, level: float, tost: bool = True) -> float:
    """Smallest margin (in the readout's units) that the equivalence test resolves with 80 % power
    when the true difference is 0, at ``n`` prompts of per-prompt difference SD ``sd``: two one-sided
    tests (``tost``, the scalar readouts) or one (the distribution, whose divergence cannot go below 0)."""
    beta = (1 - POWER) / 2 if tost else 1 - POWER
    return (_t(1 - level, n) + _t(1 - beta, n)) * sd / math.sqrt(n)


def detectable(sd: float, n: int, level: float, two_sided: bool = True) -> float:
    """Smallest difference (readout units) the paired t-test of difference detects with 80 % power."""
    return (_t(1 - (level / 2 if two_sided else level), n) + _t(POWER, n)) * sd / math.sqrt(n)


def prompts_needed(sd: float, margin: float, level: float, tost: bool = True, limit: int = 10**7) -> int | None:
    """Prompts for 80 % power of the equivalence test at ``margin`` (readout units, see
    :func:`resolution`); None when ``margin`` is not positive or more than ``limit`` would be
    needed. Zero spread needs the minimum of 2."""
    if not margin > 0 or not math.isfinite(margin):
        return None
    if sd == 0:
        return 2
    z = _st.norm.ppf(1 - level) + _st.norm.ppf(1 - ((1 - POWER) / 2 if tost else 1 - POWER))
    n = max(2, math.ceil((z * sd / margin) ** 2))
    while n <= limit and resolution(sd, n, level, tost) > margin:
        n = max(n + 1, math.ceil(n * (resolution(sd, n, level, tost) / margin) ** 2))
    return n if n <= limit else None


def _oriented(effect: float) -> float:
    return 1.0 if effect >= 0 else -1.0


def scalar_comparison(w: np.ndarray, v: np.ndarray, none: np.ndarray, margin: Margin, n_boot: int, seed: int) -> dict[str, Any]:
    """w against v on a scalar readout (``[n]`` per-prompt values each): efficacy with its
    ``1 − 2α`` cluster-bootstrap interval (the TOST's), TOST p at ±δ, two-sided difference p."""
    w, v, none = (np.asarray(a, dtype=float) for a in (w, v, none))
    sign = _oriented(float(np.mean(v - none)))
    lower = sign * ((w - none) - (1 - margin.delta) * (v - none))
    upper = sign * ((w - none) - (1 + margin.delta) * (v - none))
    p_tost = max(one_sided_p(lower, "greater"), one_sided_p(upper, "less"))
    try:
        est, low, high = cluster_bootstrap(efficacy, [w, none, v], n_boot=n_boot, seed=seed, level=1 - 2 * margin.level)
    except ValueError:
        est = low = high = math.nan
    return {"efficacy": est, "efficacy_low": low, "efficacy_high": high, "mean": float(w.mean()),
            "p_equivalent": p_tost, "p_different": two_sided_p(w - v)}


def distribution_comparison(js_w: np.ndarray, js_margin: np.ndarray) -> dict[str, Any]:
    """w against v on the distribution: per-prompt ``JS(v, w)`` against ``JS(v, (1 − δ)v)`` (``[n]`` each)."""
    js_w, js_margin = np.asarray(js_w, dtype=float), np.asarray(js_margin, dtype=float)
    z = js_w - js_margin
    return {"js": float(js_w.mean()), "js_over_margin": float(js_w.mean() / js_margin.mean()) if js_margin.mean() > 0 else None,
            "p_equivalent": one_sided_p(z, "less"), "p_different": one_sided_p(z, "greater")}


@dataclass(frozen=True)
class ReadoutData:
    """Per-prompt values ``{condition: [n]}`` of one readout and what kind of readout it is.

    ``kind``: ``"scalar"`` (values are the readout) or ``"distribution"`` (values are the mean
    per-token JS from ``v``; ``v`` itself is 0). ``draws`` name the ``v + u`` conditions.
    ``invalid``: why the readout cannot support a verdict (e.g. a scorer near chance), or None.
    """

    name: str
    kind: str
    values: Mapping[str, np.ndarray]
    draws: Sequence[str]
    controls: Sequence[str] = ()
    invalid: str | None = None


def _comparison(data: ReadoutData, name: str, margin: Margin, n_boot: int, seed: int) -> dict[str, Any]:
    x = data.values
    if data.kind == "scalar":
        return scalar_comparison(x[name], x["v"], x["none"], margin, n_boot, seed)
    return distribution_comparison(x[name], x["dose_margin"])


def _effect(data: ReadoutData) -> dict[str, Any]:
    """How far v moves the readout from the unsteered model, and whether that is detectable."""
    x = data.values
    if data.kind == "scalar":
        diff = np.asarray(x["v"], float) - np.asarray(x["none"], float)
        return {"mean_v": float(np.mean(x["v"])), "mean_none": float(np.mean(x["none"])), "effect": float(diff.mean()),
                "p": two_sided_p(diff)}
    js = np.asarray(x["none"], float)
    return {"js_v_none": float(js.mean()), "js_margin": float(np.mean(x["dose_margin"])), "p": one_sided_p(js, "greater")}


def _spread(data: ReadoutData) -> float:
    """Pooled SD over the draws of the per-prompt differences the tests use."""
    x = data.values
    ref = x["v"] if data.kind == "scalar" else x["dose_margin"]
    diffs = [np.asarray(x[d], float) - np.asarray(ref, float) for d in data.draws]
    return float(np.sqrt(np.mean([np.var(d, ddof=1) for d in diffs])))


def _planning(data: ReadoutData, effect: Mapping[str, Any], margin: Margin) -> dict[str, Any]:
    """Resolution at this size and prompts needed for 80 % power at δ, in δ units where possible."""
    n = len(np.asarray(data.values["v"]))
    sd, scalar = _spread(data), data.kind == "scalar"
    if scalar:
        scale = abs(effect["effect"])
        margin_units = margin.delta * scale
        res = resolution(sd, n, margin.level) / scale if scale > 0 else math.inf
        mdd = detectable(sd, n, margin.level) / scale if scale > 0 else math.inf
    else:
        margin_units = effect["js_margin"]
        res = resolution(sd, n, margin.level, tost=False)
        mdd = detectable(sd, n, margin.level, two_sided=False)
    return {"n": n, "sd": sd, "units": "fraction of v's effect" if scalar else "nats", "resolution": res, "detectable": mdd,
            "margin": margin_units, "prompts_needed": prompts_needed(sd, margin_units, margin.level, tost=scalar)}


def readout_verdict(data: ReadoutData, margin: Margin, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every draw and control against v, the verdict, and the planning numbers of one readout.

    ``verdict``: ``equivalent`` (every draw's TOST p < α and the dose control detected),
    ``different`` (some draw's Holm difference p < α), else ``inconclusive`` with the reason.
    """
    if not data.draws:
        raise SteerscopeError(f"readout {data.name}: no v + u draws to test")
    rows = {name: _comparison(data, name, margin, n_boot, seed) for name in (*data.draws, *data.controls)}
    for name, p in zip(data.draws, holm([rows[d]["p_different"] for d in data.draws])):
        rows[name]["p_different_holm"] = float(p)
    effect = _effect(data)
    control = rows.get("dose_control")
    out = {"readout": data.name, "kind": data.kind, "delta": margin.delta, "level": margin.level, "effect": effect,
           "draws": list(data.draws), "invalid": data.invalid, "conditions": rows, "planning": _planning(data, effect, margin),
           "dose_control_detected": control is not None and control["p_different"] < margin.level}
    return out | redecide(out)


def _listed(draws: Sequence[str]) -> str:
    """``"v+perp#0 differs"`` / ``"v+perp#0, v+perp#2 differ"``."""
    return f"{', '.join(draws)} {'differs' if len(draws) == 1 else 'differ'}"


def redecide(result: Mapping[str, Any]) -> dict[str, str]:
    """``{"verdict", "reason"}`` of a :func:`readout_verdict` result from its stored p-values (used
    again after the difference p-values are Holm-corrected over a larger family)."""
    a, d, rows, plan = result["level"], result["delta"], result["conditions"], result["planning"]
    draws = result["draws"]
    if result["invalid"]:
        return {"verdict": "inconclusive", "reason": result["invalid"]}
    p_effect = result["effect"]["p"]
    if not p_effect < a:
        return {"verdict": "inconclusive", "reason": f"v has no detectable effect on this readout (p = {p_effect:.3g} ≥ {a:g})"}
    equivalent = [n for n in draws if rows[n]["p_equivalent"] < a]
    different = [n for n in draws if rows[n]["p_different_holm"] < a]
    if len(equivalent) == len(draws) and result["dose_control_detected"]:
        note = f"; {_listed(different)} from v by less than δ" if different else ""
        return {"verdict": "equivalent", "reason": f"every v+u draw stays within ±{d:g} of v's dose (TOST p < {a:g} each, "
                f"intersection–union) and the dose control (1 − 2δ)·v is detected{note}"}
    if different:
        return {"verdict": "different", "reason": f"{_listed(different)} from v (Holm p < {a:g} over {len(draws)} draws)"}
    if len(equivalent) == len(draws):
        return {"verdict": "inconclusive", "reason": f"readout cannot resolve δ = {d:g}: the dose control (1 − 2δ)·v is "
                f"not detected (resolution {plan['resolution']:.3g} {plan['units']} at n = {plan['n']})"}
    needed = plan["prompts_needed"]
    return {"verdict": "inconclusive", "reason": f"neither equivalence nor difference shown at n = {plan['n']} "
            f"(resolution {plan['resolution']:.3g} {plan['units']}; about n = {needed if needed else 'too many'} needed "
            f"for 80 % power at δ = {d:g})"}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of ``k`` successes in ``n``."""
    if n < 1:
        return math.nan, math.nan
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def fraction(members: Sequence[bool]) -> dict[str, Any]:
    """Fraction of ``members`` that are true, with its exact 95 % interval."""
    k, n = int(sum(bool(m) for m in members)), len(members)
    low, high = clopper_pearson(k, n)
    return {"k": k, "n": n, "fraction": k / n if n else math.nan, "low": low, "high": high}


def predicted_fraction(gradient: np.ndarray, v: np.ndarray, ratio: float, delta: float) -> float:
    """First-order share of ``u ⊥ v`` with ``‖u‖ = ratio·‖v‖`` (uniform direction) for which
    ``|g·u| ≤ δ·|g·v|`` (``g``, ``v``: ``[d]``): ``P(cos²θ ≤ c²)`` with ``cos²θ ~ Beta(1/2, (d − 2)/2)``."""
    g, v = np.asarray(gradient, float), np.asarray(v, float)
    d = g.size
    g_perp = g - (g @ v) / (v @ v) * v
    reach = ratio * np.linalg.norm(v) * np.linalg.norm(g_perp)
    if reach == 0:
        return 1.0
    c2 = min(1.0, (delta * abs(g @ v) / reach) ** 2)
    return float(_st.beta.cdf(c2, 0.5, (d - 2) / 2))
