"""The four questions a user asks of a steering vector, answered in plain words from a trait's
audit results (see :func:`steerscope.audit.pipeline.assemble`).

1. *Does it steer?* The identifiability audit's v-vs-unsteered comparison (held-out prompts, paired
   Hedges' g with a cluster-bootstrap CI), with the side effects: the perplexity ratio of steered
   text under the unsteered model (strength calibration) and the next-token JS divergence.
2. *Is it identifiable?* One verdict per readout (trait score, pair margin, next-token
   distribution) of v against v + u (u ⊥ v) at a margin calibrated from dose, the measured share
   of random u that stay in v's equivalence class, the first-order class (directions the logit
   Jacobian cannot see at 10⁻³), and which structural assumptions recover a unique direction.
3. *Is the steered state reachable by a prompt?* The reachability verdict, with the best-found
   distance against the natural noise floor and the steering displacement.
4. *What else does it change?* Off-target effects on every other trait's readouts flagged at the
   audited strength, the capability change, fluency and drift on neutral prompts, and which edit
   (add, clamp, ablate) is the most specific (:mod:`steerscope.side_effects`, :mod:`steerscope.edits`).

Each answer has a ``status`` (a short label used for colour), a ``headline`` sentence and ``facts``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from steerscope.audit.identifiability import MIN_SCORER_ACCURACY
from steerscope.formatting import ci, num

NULL_TOL = "0.001"


def steers(result: Mapping[str, Any]) -> dict[str, Any]:
    ident, strength = result["identifiability"], result["strength"]
    vn = ident["v_vs_none"]
    chosen = next(r for r in strength["rows"] if r["alpha"] == strength["alpha"])
    acc = ident.get("scorer_accuracy")
    on_margin = vn.get("readout") == "pair_margin"
    effect = (f"effect{' on the held-out pair margin' if on_margin else ''} g = {num(vn['g'], '.2f')} "
              f"[95 % CI {num(vn['g_low'], '.2f')}, {num(vn['g_high'], '.2f')}], p = {num(vn['p_diff'], '.3g')}")
    toward, away, where = (("shifts held-out pairs toward their positive side", "shifts held-out pairs toward their negative side",
                            "the held-out pairs") if on_margin else
                           ("moves held-out completions toward the trait", "moves completions away from the trait", "the held-out prompts"))
    side = (f"perplexity of steered text under the unsteered model × "
            f"{ci(chosen['ppl_ratio'], chosen['ppl_ratio_low'], chosen['ppl_ratio_high'], '.2f')}")
    js = vn.get("js")
    facts = [effect, side, f"α = {strength['alpha']:g} ({strength['reason']})"]
    if js is not None:
        facts.append(f"next-token JS divergence from unsteered: {num(js, '.3g')} nats")
    if on_margin:
        facts.append("no scorer: the effect is the teacher-forced pair margin log p(positive) − log p(negative), not sampled text")
    if acc is not None and acc < MIN_SCORER_ACCURACY:
        status, headline = "unknown", (f"Unknown: the trait scorer is not valid (held-out accuracy {acc:.2f} < "
                                       f"{MIN_SCORER_ACCURACY}), so its effect cannot be measured.")
    elif vn["g"] is None or vn["p_diff"] is None:
        status, headline = "unknown", f"Unknown: the effect size on {where} is undefined (no variation between them)."
    elif vn["p_diff"] < 0.05 and vn["g"] > 0:
        status, headline = "yes", f"Yes: at α = {strength['alpha']:g} it {toward} ({effect})."
    elif vn["p_diff"] < 0.05:
        status, headline = "no", f"No: it {away} ({effect})."
    else:
        status, headline = "no", f"No detectable effect at α = {strength['alpha']:g} on {where} ({effect})."
    return {"status": status, "headline": headline, "facts": facts}


LABELS = {"trait_score": "Trait score", "pair_margin": "Pair margin", "distribution": "Next-token distribution"}
MEANING = {"equivalent": "not identifiable (every v + u tested acts like v)", "different": "identifiable at this resolution",
           "inconclusive": "undetermined"}


def _share(row: Mapping[str, Any] | None, delta: float) -> str:
    if not row or not row.get("n") or row.get("fraction") is None:
        return ""
    return (f"{row['fraction']:.0%} [{row['low']:.0%}, {row['high']:.0%}] of {row['n']} random orthogonal additions of "
            f"equal norm keep the effect within ±{delta:g} of v's dose")


def readout_headlines(ident: Mapping[str, Any]) -> list[str]:
    """One sentence per readout: its verdict, the share of v's class at ‖u‖ = ‖v‖, and why."""
    delta, classes, out = ident["config"]["delta"], ident.get("class_size") or {}, []
    for name in [k for k in LABELS if k in ident["readouts"]]:
        res = ident["readouts"][name]
        row = classes.get(name)
        share = _share(row.get("1") if row and "1" in row else (row if row and "fraction" in row else None), delta)
        out.append(f"{LABELS.get(name, name)}: {MEANING[res['verdict']]}{' — ' + share if share else ''} ({res['reason']}).")
    return out


def _short_why(row: Mapping[str, Any]) -> str:
    """Which part kept a recovery method from identifying the audited vector, in a few words."""
    agree = row.get("agreement") or {}
    if (row.get("assumption") or {}).get("holds") is False:
        return "its assumption fails on these data"
    if row.get("identifiable") is False:
        return "not unique even if the assumption held"
    if agree.get("agrees") is False:
        return f"recovers another direction (cos {agree['ci_low']:.2f}–{agree['ci_high']:.2f} with the audited vector)"
    return "undetermined" if row.get("assumption") else f"not run ({row.get('reason', '')})"


def recovery_fact(rows: Sequence[Mapping[str, Any]]) -> str:
    """Which structural assumptions identify the audited vector (holding on the data and agreeing with
    it), and for the others which part failed (the report's recovery table has the details)."""
    identify = [r["method"] for r in rows if r.get("identifies") is True]
    others = "; ".join(f"{r['method']}: {_short_why(r)}" for r in rows if r.get("identifies") is not True)
    head = "structural assumptions that identify the audited vector: " + (", ".join(identify) if identify else "none")
    return head + (f" ({others})" if others else "")


def identifiable(result: Mapping[str, Any]) -> dict[str, Any]:
    ident = result["identifiability"]
    verdicts = {k: ident["readouts"][k]["verdict"] for k in LABELS if k in ident["readouts"]}
    layer = str(result["layer_selection"]["chosen"])
    stacked = result["nullspace"]["layers"][layer]["logits"]["stacked"]
    d = stacked["d"]
    null = d - stacked["effective_rank"][NULL_TOL]
    facts = readout_headlines(ident) + [
        f"first-order equivalence class: {null} of {d} directions have logit-Jacobian gain ≤ 10⁻³ × the largest "
        f"over {result['nullspace']['config']['n_prompts']} prompts",
        recovery_fact(result["recovery"]),
    ]
    everywhere = result["nullspace"]["layers"][layer].get("all_positions")
    if everywhere and everywhere["logits"].get("vector_gain"):
        below = everywhere["logits"]["vector_gain"]["complement_below_v"][NULL_TOL]
        n = result["nullspace"]["config"]["all_positions_prompts"]
        facts.append(f"Jacobian of the audited intervention (δ at every position, {n} prompt{'' if n == 1 else 's'}): {below:.1%} of the directions ⟂ v have gain ≤ 10⁻³ × v's own"
                     + (", so at first order no direction can be added to v unseen" if below == 0 else ""))
    gain = result["nullspace"]["layers"][layer]["logits"].get("vector_gain")
    if gain:
        facts.append(f"gain of v through the logit Jacobian: {num(gain['gain_v'], '.3g')} (average direction "
                     f"{num(gain['random_mean'], '.3g')})")
    labels = set(verdicts.values())
    per_readout = "; ".join(f"{LABELS.get(k, k).lower()}: {MEANING[v]}" for k, v in verdicts.items())
    if labels == {"equivalent"}:
        status = "no"
    elif labels == {"different"}:
        status = "yes"
    elif labels == {"inconclusive"}:
        status = "unknown"
    else:
        status = "mixed"
    return {"status": status, "headline": f"Per readout — {per_readout}.", "facts": facts}


def _relaxation_fact(s: Mapping[str, Any]) -> list[str]:
    """The relaxation and whole-span search medians (absent from results made before they existed)."""
    if "median_relaxed_distance" not in s:
        return []
    return [f"continuous relaxation (soft input embeddings): median distance {num(s['median_relaxed_distance'], '.3g')} "
            f"({num(s['median_relaxed_over_displacement'], '.3f')} × the displacement); projected to tokens "
            f"{num(s['median_projected_distance'], '.3g')}; whole-span search {num(s['median_sequence_distance'], '.3g')}"]


def reachable(result: Mapping[str, Any]) -> dict[str, Any]:
    reach = result["reachability"]
    s, cfg = reach["summary"], reach["config"]
    search = cfg.get("search", {})
    cap = search.get("max_candidates")
    facts = [
        f"natural states recovered exactly (positive control, the same search): {s['natural_exact_recovery']:.0%} of {s['n_positions']} positions",
        f"best-found distance to a prompt's state: median {num(s['median_steered_distance'], '.3g')} = "
        f"{num(s['median_steered_over_noise'], '.3g')} × the natural noise floor ({num(s['noise_floor'], '.2g')})",
        f"steering displacement ‖αv‖ = {num(s['steering_norm'], '.3g')}; best-found / displacement = "
        f"{num(s['median_steered_over_displacement'], '.3f')}",
        f"search per position: {search.get('budget')} gradient-guided candidates, then "
        f"{'the whole vocabulary' if cap is None else f'up to {cap} in all'}; searched tokens: {cfg.get('positions')}",
        *_relaxation_fact(s),
        reach["statement"],
    ]
    ratio = num(s["median_steered_over_noise"], ".3g")
    if s["verdict"] == "reachable":
        status, headline = "yes", f"Yes: a prompt reproduces the steered states: {s['reachable_prompt']!r}."
    elif s["natural_exact_recovery"] < 1.0:
        status, headline = "unknown", ("Undetermined: the search does not recover every natural state, so failing to "
                                       "find the steered one says little.")
    elif s["verdict"] == "not-found-within-budget":
        status, headline = "unknown", (f"Not found within the search budget: the best-found state stays {ratio}× the noise floor away, "
                                       f"but {s.get('steered_budget_rate', 1.0):.0%} of the steered positions were not scanned over the "
                                       "whole vocabulary (the full profile or --exhaustive does).")
    else:
        status, headline = "no", (f"No prompt found: the steered state stays {ratio}× the noise floor away from every prompt state "
                                  "the search reached, the whole vocabulary scanned where nothing matched (an upper bound, not a proof).")
    return {"status": status, "headline": headline, "facts": facts}


def _effect(row: Mapping[str, Any]) -> str:
    return f"{row['trait']} {row['readout'].replace('_', ' ')} g = {ci(row['g'], row['g_low'], row['g_high'], '.2f')}"


def _edits_fact(edits: Mapping[str, Any] | None) -> str | None:
    if not edits or "not_run" in edits:
        return None
    if "error" in edits:
        return f"add / clamp / ablate comparison not run: {edits['error']}"
    parts = [f"{k}: {edits[k]['most_specific']} moves the other readouts least (mean |g| "
             + ", ".join(f"{n} {num(e['off_target_mean_abs_g'], '.2f')}" for n, e in edits[k]["edits"].items()) + ")"
             for k in ("induce", "remove") if edits.get(k)]
    return "at equal on-target effect — " + "; ".join(parts) if parts else None


def _power(rows: Sequence[Mapping[str, Any]]) -> str:
    """The range of the smallest |g| the off-target readouts could detect (80 % power), when known."""
    values = [r["detectable_g"] for r in rows if r.get("detectable_g") is not None]
    return f"; each could detect |g| of {min(values):.2f}–{max(values):.2f} with 80 % power" if values else ""


def side_effects(result: Mapping[str, Any]) -> dict[str, Any]:
    """What else the vector changes at the audited strength: flagged off-target effects (paired test
    significant after Holm across the off-target readouts, and |g| ≥ 0.2) and the capability change."""
    se = result["side_effects"]
    others = [r for r in se["matrix"] if r["trait"] != se["target"]]
    flagged = [r for r in others if r.get("flagged")]
    cap = se["capability"]
    change = cap["doses"]["1"]["change"]
    cap_moved = change["low"] > 0 or change["high"] < 0
    flu, kl = se["fluency"]["1"], se["kl"]["1"]
    largest = se.get("largest_off_target")
    capability = (f"capability accuracy {cap['accuracy_unsteered']:.0%} → {cap['doses']['1']['accuracy']:.0%} "
                  f"(change {ci(change['mean'], change['low'], change['high'], '+.2f')}, {cap['n_items']} items)")
    facts = [f"largest off-target effect: {_effect(largest)}" if largest else "no off-target readout had a defined effect",
             f"{len(flagged)} of {len(others)} off-target readouts flagged (paired test, Holm-adjusted p < 0.05 across them, and "
             f"|g| ≥ {se['min_effect']:g}){_power(others)}", capability,
             f"on neutral prompts: perplexity ratio {ci(flu['ppl_ratio']['mean'], flu['ppl_ratio']['low'], flu['ppl_ratio']['high'], '.2f')}, "
             f"next-token KL {ci(kl['mean'], kl['low'], kl['high'], '.3g')} nats"]
    edits = _edits_fact(se.get("edits"))
    if edits:
        facts.append(edits)
    framing = (se.get("edits") or {}).get("framing")
    if framing and framing.get("closed_by_v"):
        by_v, by_r = framing["closed_by_v"], framing["closed_by_random"]
        facts.append(f"ablating v̂ closes {ci(by_v['mean'], by_v['low'], by_v['high'], '.0%')} of the framing gap between the pairs' two "
                     f"sides (random directions: {ci(by_r['mean'], by_r['low'], by_r['high'], '.0%')})")
    if flagged or cap_moved:
        named = "; ".join(_effect(r) for r in sorted(flagged, key=lambda r: -abs(r["g"]))[:3])
        status = "some"
        headline = (f"At α = {se['alpha']:g} it also moves {named}" if flagged else f"At α = {se['alpha']:g} no other trait moves") + \
                   (f"; {capability}." if cap_moved else ".")
    elif any(r.get("g") is None for r in others) or not math.isfinite(change["mean"]):
        status, headline = "unknown", "Undetermined: some off-target effects or the capability change are undefined."
    else:
        status, headline = "none", (f"No off-target effect detected at α = {se['alpha']:g} and no capability change detected "
                                    "(not flagged is not proof of none: see the intervals).")
    return {"status": status, "headline": headline, "facts": facts}
