"""Markdown summary of an identifiability audit report (the dict from ``run_identifiability``)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from steerscope.formatting import ci, num

#: The reachability audit's behaviour columns in the order they are reported (a stored payload's keys are sorted).
BEHAVIOUR_COLUMNS = ("steered", "unsteered", "nearest_prompt", "instruction")


def probe_columns(probes: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(probe, readouts)`` of a black-box probes result in the probes' order (a stored payload's keys are sorted)."""
    return [(name, probes["columns"][name]) for name in probes.get("order", probes["columns"])]


LABELS = {"trait_score": "Trait score", "pair_margin": "Pair margin", "distribution": "Next-token distribution"}


def _condition_cell(result: dict[str, Any], row: dict[str, Any]) -> str:
    if result["kind"] == "scalar":
        return ci(row.get("efficacy"), row.get("efficacy_low"), row.get("efficacy_high"), ".3f")
    return num(row.get("js_over_margin"), ".3g")


def readout_lines(result: dict[str, Any]) -> list[str]:
    """One readout's table: every draw and control against v, with the planning numbers."""
    plan = result["planning"]
    scale = "efficacy [90 % CI]" if result["kind"] == "scalar" else "JS(v, w) / JS(v, (1 − δ)v)"
    lines = ["", f"### {LABELS.get(result['readout'], result['readout'])}: {result['verdict']}", "", result["reason"] + ".", "",
             f"| condition | {scale} | TOST p | difference p | difference p (Holm) |", "|---|---|---|---|---|"]
    for name, row in result["conditions"].items():
        lines.append(f"| {name} | {_condition_cell(result, row)} | {num(row.get('p_equivalent'), '.3g')} | "
                     f"{num(row.get('p_different'), '.3g')} | {num(row.get('p_different_holm'), '.3g')} |")
    lines += ["", f"Resolution at n = {plan['n']}: ±{num(plan['resolution'], '.3g')} {plan['units']} "
              f"(80 % power; differences of {num(plan['detectable'], '.3g')} detectable); about "
              f"n = {plan['prompts_needed'] or 'too many'} needed to resolve δ = {result['delta']:g}."]
    return lines


def class_lines(classes: dict[str, Any]) -> list[str]:
    """The size of v's equivalence class per readout and norm ratio, measured and predicted."""
    lines = ["", "### Size of the equivalence class", "", "| readout | ‖u‖/‖v‖ | share of v + u within δ [95 % CI] | draws | first-order prediction |",
             "|---|---|---|---|---|"]
    score = classes.get("trait_score")
    if score:
        lines.append(f"| trait score (audited draws) | 1 | {ci(score['fraction'], score['low'], score['high'], '.2f')} | {score['n']} | n/a |")
    for readout in ("pair_margin", "distribution"):
        for ratio, row in (classes.get(readout) or {}).items():
            lines.append(f"| {readout.replace('_', ' ')} | {ratio} | {ci(row['fraction'], row['low'], row['high'], '.2f')} | "
                         f"{row['n']} | {num(row.get('predicted'), '.2f')} |")
    return lines


#: How a v-vs-unsteered effect's readout is named in sentences.
READOUT_NAMES = {"trait_score": "trait score", "pair_margin": "held-out pair margin"}


def scorer_phrase(scorer: dict[str, Any] | None) -> str:
    """``Scorer: NAME (held-out accuracy A)``, or what an audit without a scorer reads instead."""
    if scorer is None:
        return "No scorer: no trait-score readout; the pair margin and the next-token distribution carry the audit"
    return f"Scorer: {scorer['name']} (held-out accuracy {num((scorer.get('validity') or {}).get('heldout_accuracy'), '.3f')})"


def identifiability_markdown(report: dict[str, Any]) -> str:
    """A one-page summary: the verdict of each readout, then its table, the class size and the caveats."""
    from steerscope.audit.answers import readout_headlines

    cfg, base = report["config"], report["v_vs_none"]
    lines = [f"# Identifiability audit: {cfg['trait']} on {report['model']['name']}, layer {cfg['layer']}", ""]
    lines += [f"- **{h}**" for h in readout_headlines(report)]
    lines += [
        f"- Vector: mean_diff on the train pairs, ‖v‖ = {num(report['vector']['norm'], '.3f')}, α = {cfg['alpha']:g}, "
        f"relative dose {num(report['vector']['relative_dose'], '.3f')}, steered at every position.",
        f"- Does v steer? g(v vs none) on the {READOUT_NAMES[base.get('readout', 'trait_score')]} = "
        f"{ci(base.get('g'), base.get('g_low'), base.get('g_high'), '.3f')}, "
        f"p = {num(base.get('p_diff'), '.2g')}; JS(v, none) = {num(base.get('js'), '.4f')} nats.",
        f"- {scorer_phrase(report['scorer'])}; {cfg['n_prompts']} prompts ({cfg['env']}) × {cfg['samples_per_prompt']} samples; {cfg['n_pairs']} held-out pairs; "
        f"δ = {cfg['delta']:g}, level {cfg['level']:g}; seed {cfg['seed']}.",
    ]
    for result in report["readouts"].values():
        lines += readout_lines(result)
    lines += class_lines(report["class_size"])
    lines += _alpha_sweep_lines(report.get("alpha_sweep")) + _environment_lines(report.get("environments"))
    lines += ["", f"Note: {report['statement']}.", ""]
    return "\n".join(lines)


def traits_overview_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """One table over traits: v's effect and the verdict of each readout."""
    lines = [
        "# Identifiability audit: overview", "",
        f"Difference tests Holm-corrected across the draws of all {len(reports)} traits ({', '.join(reports)}), per readout.", "",
        "| trait | scorer accuracy | g(v vs none) [CI] | trait score | pair margin | next-token distribution |",
        "|---|---|---|---|---|---|",
    ]
    for trait, r in reports.items():
        base, v = r["v_vs_none"], r["verdict"]
        validity = ((r["scorer"] or {}).get("validity") or {}).get("heldout_accuracy") if r["scorer"] else None
        lines.append(
            f"| {trait} | {num(validity, '.3f') if r['scorer'] else 'no scorer'} | "
            f"{ci(base.get('g'), base.get('g_low'), base.get('g_high'), '.3f')} {READOUT_NAMES[base.get('readout', 'trait_score')]} | "
            f"{v.get('trait_score', {}).get('verdict', 'not read')} | {v['pair_margin']['verdict']} | {v['distribution']['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _alpha_sweep_lines(sweep: dict[str, Any] | None) -> list[str]:
    """The α-sweep section (empty without a sweep): mean scores and efficacy of each v+perp draw."""
    if not sweep:
        return []
    lines = [
        "", "## α sweep (scale invariance)", "",
        f"Unsteered mean score {num(sweep.get('mean_none'), '.3f')}; {sweep.get('n_prompts')} prompts × "
        f"{sweep.get('samples_per_prompt')} samples; draws seeds {sweep.get('draw_seeds')}. "
        "At α = 0 every condition is the unsteered model, so efficacy is undefined (n/a).",
        "", "| α | relative dose | mean v | draw | mean | efficacy [CI] | g vs v [CI] |", "|---|---|---|---|---|---|---|",
    ]
    for p in sweep["points"]:
        for name, d in p["draws"].items():
            lines.append(
                f"| {p['alpha']:g} | {num(p.get('relative_dose'), '.3f')} | {num(p.get('mean_v'), '.3f')} | {name} | {num(d.get('mean'), '.3f')} | "
                f"{ci(d.get('efficacy'), d.get('efficacy_low'), d.get('efficacy_high'), '.3f')} | "
                f"{ci(d.get('g'), d.get('g_low'), d.get('g_high'), '.3f')} |"
            )
    return lines


def _environment_lines(envs: dict[str, Any] | None) -> list[str]:
    """The per-environment section (empty without environment runs): trait-score verdicts."""
    if not envs:
        return []
    lines = [
        "", "## Environments (trait score only)", "",
        "| environment | prompts | mean efficacy of v+u | dose control detected | verdict |",
        "|---|---|---|---|---|",
    ]
    for env, res in envs.get("environments", {}).items():
        result = res["trait_score"]
        effs = [result["conditions"][d].get("efficacy") for d in result["draws"]]
        effs = [e for e in effs if e is not None]
        lines.append(
            f"| {env} | {res.get('n_prompts')} | {num(sum(effs) / len(effs) if effs else None, '.3f')} | "
            f"{'yes' if result['dose_control_detected'] else 'no'} | {result['verdict']}: {result['reason']} |"
        )
    return lines


def _gain_rows(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(layer, where δ was added, vector_gain)`` for every layer and Jacobian that has a vector gain."""
    rows = []
    for layer, entry in results["layers"].items():
        for where, part in ((f"positions {results['config']['positions']}", entry), ("every position", entry.get("all_positions"))):
            if part and "vector_gain" in part["logits"]:
                rows.append((layer, where, part["logits"]["vector_gain"]))
    return rows


def nullspace_markdown(results: dict[str, Any]) -> str:
    """Summary of a null-space audit: stacked spectra per layer, then the covariance spectrum."""
    cfg = results["config"]
    tols = [str(t) for t in cfg["tolerances"]]
    lines = [
        f"# Null-space audit: {results['model']['name']} ({results['model']['d_model']} dims)", "",
        f"{cfg['n_prompts']} prompts, positions {cfg['positions']}, {cfg['dtype']}; {cfg['method']}.",
        "Inert fraction = share of directions whose gain through the stacked Jacobian is ≤ tol × the largest gain.",
        f"Paper reference: {results['paper_reference']}.", "",
        "| layer | readout | σ_max | stable rank | " + " | ".join(f"inert @ {t} (stacked)" for t in tols)
        + " | " + " | ".join(f"rank @ {t} per prompt (mean)" for t in tols) + " |",
        "|---|---|---|---|" + "---|" * (2 * len(tols)),
    ]
    for layer, entry in results["layers"].items():
        for readout in ("logits", "logprobs"):
            st = entry[readout]["stacked"]
            per = entry[readout]["per_prompt_effective_rank"]
            lines.append(f"| {layer} | {readout} | {st['sigma_max']:.3g} | {st['stable_rank']:.2f} | "
                         + " | ".join(f"{st['inert_fraction'][t]:.3f}" for t in tols) + " | "
                         + " | ".join(f"{per[t]['mean']:.1f}" for t in tols) + " |")
    gains = _gain_rows(results)
    if gains:
        lines += ["", "## Gain of the steering vector (logits, RMS per prompt)", "",
                  "| layer | δ at | gain(v̂) | mean gain of a random direction | complement max | complement min "
                  "| complement ≤ 10⁻³ × gain(v̂) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {layer} | {mode} | {g['gain_v']:.3g} | {g['random_mean']:.3g} | {g['complement_max']:.3g} | "
                  f"{g['complement_min']:.3g} | {num(g.get('complement_below_v', {}).get('0.001'), '.3f')} |" for layer, mode, g in gains]
    lines += ["", "## Activation covariance (a different object: where activations vary)", "",
              "| layer | samples | " + " | ".join(f"low-variance fraction @ {t}" for t in tols) + " | top-10 variance share |",
              "|---|---|" + "---|" * (len(tols) + 1)]
    for layer, entry in results["layers"].items():
        for name, cov in entry["covariance"].items():
            lines.append(f"| {layer} ({name}) | {cov['n_samples']} | " + " | ".join(f"{cov['low_variance_fraction'][t]:.3f}" for t in tols)
                         + f" | {num(cov['variance_top10'], '.3f')} |")
    return "\n".join(lines + [""])


def recovery_markdown(report: dict[str, Any]) -> str:
    """Summary of one recovery run (``Recovery.to_dict()`` plus ``model``/``trait`` keys)."""
    stab, test, agree = report.get("stability") or {}, report.get("assumption"), report.get("agreement") or {}
    lines = [
        f"# Recovery ({report['method']}): {report.get('trait', '')} on {report.get('model', '')}, layer {report['details'].get('layer')}", "",
        f"- Identifies the audited vector ({agree.get('audited', 'the mean difference')}): **{report.get('identifies')}** — {report.get('why', '')}",
        f"- Assumption on the data: {test['name']}: **{test['holds']}** — {test['detail']}" if test else "- Assumption on the data: not tested",
        f"- cos(recovered, audited) = {ci(agree.get('cos'), agree.get('ci_low'), agree.get('ci_high'), '.3f')} (bound {agree.get('bound')})",
        f"- Unique if the assumption held: **{report['identifiable']}** — {report['reason']}",
        f"- Remaining class dimension: {report['class_dim'] if report['class_dim'] is not None else 'not defined'}; symmetry: {report['symmetry']}",
        f"- cos(recovered, mean difference) = {num(report['details'].get('cos_with_mean_diff'), '.3f')}",
    ]
    if stab:
        lines.append(f"- Bootstrap stability ({stab['n_boot']} resamples, seed {stab['seed']}): mean cos "
                     f"{ci(stab['mean_cos'], stab['ci_low'], stab['ci_high'], '.3f')}")
    return "\n".join(lines + [""])


def search_text(cfg: dict[str, Any]) -> str:
    """The reachability search of a report's config in words."""
    search = cfg["search"]
    cap = search["max_candidates"]
    return (f"{search['policy']} policy, {search['budget']} candidates per position, then "
            + ("the rest of the vocabulary" if search["fallback"] and cap is None else
               f"up to {cap} in all" if search["fallback"] else "no fallback")
            + f" (vocabulary {cfg['vocab']}); the steered search scores the prompt's own token first")


def _relaxation_lines(report: dict[str, Any]) -> list[str]:
    """The continuous relaxation and the whole-span search of the steered states, one row per prompt."""
    cfg, e = report["config"], ".3g"
    lines = [
        "## Continuous relaxation and whole-span search (white-box)", "",
        f"Relaxation: soft input embeddings over the searched span, {cfg['relax']['steps']} Adam steps from the prompt's own "
        "tokens, then each projected to the nearest token. Whole-span search: up to "
        f"{cfg['sequence']['iterations']} rounds × {cfg['sequence']['batch']} one-token swaps among the top "
        f"{cfg['sequence']['top_k']} tokens per position, from the better of the prompt and the sequential result. "
        "Median distances to the steered states over the span:", "",
        "| prompt | ‖steered − natural‖ | relaxed | projected to tokens | whole-span search | found |", "|---|---|---|---|---|---|",
    ]
    for p in report["prompts"]:
        med = {k: statistics.median(r[k] for r in p["positions"])
               for k in ("displacement", "relaxed_distance", "projected_distance", "sequence_distance")}
        lines.append(f"| {p['searched_text'][:40]!r} | {num(med['displacement'], e)} | {num(med['relaxed_distance'], e)} | "
                     f"{num(med['projected_distance'], e)} | {num(med['sequence_distance'], e)} | {p.get('found_by') or 'no'} |")
    return lines + [""]


def black_box_lines(probes: dict[str, Any] | None) -> list[str]:
    """The black-box probes' table (none when they were not run)."""
    if not probes:
        return []
    st = probes["settings"]
    lines = [
        "", "## Black-box probes (prompts to the unsteered model; not white-box results)", "",
        f"Target: the steered model's greedy completions of {probes['n_prompts']} prompts ({st['max_new_tokens']} tokens; trait score "
        f"{num(probes['target_trait_score'], '.3f')}). Teacher-forced on them: KL(steered ‖ probe) per token, top-1 agreement, and "
        f"the distance and cosine of the probe's states at layer {probes['capture_layer']} to the steered states (median over prompts; "
        f"× unsteered: relative to the prompt alone). Demonstrations: the steered completions of {max(st['shots'])} other prompts; "
        f"prefill: the first {st['prefill_tokens']} tokens given, compared on the rest; tuned: {st['tune_tokens']} embeddings, "
        f"{st['tune_steps']} Adam steps, projected to tokens {probes['tuned_prompt']['text']!r} (the soft version is not a prompt).", "",
        "| probe | trait score | KL | top-1 agreement | state distance | × unsteered | cosine |", "|---|---|---|---|---|---|---|",
    ]
    for name, c in probe_columns(probes):
        lines.append(f"| {name} | {num(c.get('trait_score'), '.3f')} | {num(c.get('kl_from_steered'), '.4f')} | "
                     f"{num(c.get('top1_agreement'), '.2f')} | {num(c.get('state_distance'), '.3g')} | "
                     f"{num(c.get('state_distance_over_unsteered'), '.3f')} | {num(c.get('state_cosine'), '.3f')} |")
    return lines


def reachability_markdown(report: dict[str, Any]) -> str:
    """A one-page summary of a reachability audit (the dict from ``run_reachability``)."""
    cfg, s, th, adv, beh = report["config"], report["summary"], report["threshold"], report["adversarial"], report["behaviour"]
    e = ".3g"
    lines = [
        f"# Reachability audit: {report['model']['name']}, α = {cfg['alpha']:g} at layer {cfg['layer']} "
        f"(states compared at layer {cfg['capture_layer']})",
        "",
        f"- **Verdict: {s['verdict']}**" + (f" — prompt: {s['reachable_prompt']!r}" if s["reachable_prompt"] else "") + ".",
        f"- Note: {report['statement']}.",
        f"- Vector: {report['vector'].get('source', 'given')}, ‖v‖ = {num(s['vector_norm'], '.3f')}, ‖α·v‖ = {num(s['steering_norm'], '.3f')}; "
        f"added at {'every position' if cfg['steered_positions'] == 'all' else 'the searched positions only'}.",
        f"- Search (the same for natural and steered states): {search_text(cfg)}.",
        f"- Threshold ε = {num(th['epsilon'], e)} ({th['rule']}; noise floor {num(th['noise'], e)}, nearest competitor "
        f"{num(th['margin'], e)}, {th['n_positions']} calibration positions).",
        f"- Positive control: natural states of {cfg['n_prompts']} prompts (searched tokens: {cfg['positions']}, at most "
        f"{cfg['max_positions']} per prompt) recovered exactly at "
        f"{num(100 * s['natural_exact_recovery'], '.1f')} % of {s['n_positions']} positions (median distance "
        f"{num(s['median_natural_distance'], e)}, median margin Δ {num(s['median_margin'], e)}).",
        f"- Steered states: median best-found distance {num(s['median_steered_distance'], e)} = "
        f"{num(s['median_steered_over_noise'], '.3g')} × the noise floor and {num(s['median_steered_over_displacement'], '.3f')} × "
        f"the displacement ‖steered − natural‖ (median {num(s['median_displacement'], e)}); accepted at "
        f"{num(100 * s['steered_accepted_rate'], '.1f')} % of positions; best-found token = the original at "
        f"{num(100 * s['steered_tokens_equal_original'], '.1f')} %; unmatched positions scanned over the whole vocabulary "
        f"{num(100 * s['steered_exhaustive_rate'], '.1f')} %, stopped by the budget {num(100 * s['steered_budget_rate'], '.1f')} %.",
        "- Searched text per prompt: " + "; ".join(repr(p["searched_text"]) for p in report["prompts"]) + ".",
        "",
        *_relaxation_lines(report),
        "## α sweep and random control", "",
        "| vector | α | median best-found distance | median ‖steered − natural‖ | accepted | tokens = original |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("v", p) for p in report["alpha_sweep"]] + [("random (same norm)", report["random_control"])]
    for name, p in rows:
        lines.append(f"| {name} | {p['alpha']:g} | {num(p['median_steered_distance'], e)} | {num(p['median_displacement'], e)} | "
                     f"{num(p['accepted_rate'], '.2f')} | {num(p['tokens_equal_original'], '.2f')} |")
    nxt = adv["next"]
    lines += [
        "", "## Adversarial vector (Theorem 4.5)", "",
        f"v* = h(q)_i − h(p)_i with q = p with {adv['original_text']!r} → {adv['replacement_text']!r} at position {adv['i']} "
        f"(‖v*‖ = {num(adv['vector_norm'], e)}), added at positions i and i+1.",
        f"- Collision at i: best distance {num(adv['collision']['distance'], e)} (ε = {num(adv['epsilon'], e)}), "
        f"accepted: {adv['collision']['accepted']}, recovers the replacement token: {adv['collision']['recovered_replacement']}.",
        f"- Divergence at i+1: best distance {num(nxt['distance'], e)} over {nxt['tried']} candidates "
        f"({'exhaustive' if nxt['exhaustive'] else 'budgeted search'}), accepted: {nxt['accepted']}.",
        "", "## Behaviour (greedy, first prompts)", "",
        "| column | side | trait score | KL(steered ‖ column) per token |", "|---|---|---|---|",
    ]
    for side in ("white_box", "black_box"):
        for name, row in ((n, beh[side][n]) for n in BEHAVIOUR_COLUMNS if n in beh[side]):
            lines.append(f"| {name} | {side.replace('_', '-')} | {num(row.get('trait_score'), '.3f')} | {num(row.get('kl_from_steered'), '.4f')} |")
    if beh.get("instruction"):
        lines.append(f"\nBlack-box baseline instruction: {beh['instruction']!r}.")
    lines += black_box_lines(report.get("black_box_probes"))
    lines += ["", "## Assumptions of the theorems", "", "| component | breaks the hypotheses | detail |", "|---|---|---|"]
    lines += [f"| {a['component']} | {'yes' if a['breaks'] else 'no'} | {a['detail']} |" for a in report["assumptions"]]
    lines.append("")
    return "\n".join(lines)


def monitor_markdown(report: dict[str, Any]) -> str:
    """Summary of a monitoring run (:class:`steerscope.audit.commands.MonitorCommand`)."""
    pairs, comp = report["pairs"], report["completions"]
    det, drift = comp["steered_detection"], comp["drift"]
    lines = [
        f"# Monitoring: {report['trait']} on {report['model']['name']}, layer {report['layer']}", "",
        f"- Direction: {report['vector']['source']} (‖v‖ = {num(report['vector']['norm'], '.3f')}); score = mean projection onto v̂ "
        "over the completion tokens, attention sinks left out.",
        f"- Held-out pairs ({pairs['n_pairs']}; threshold {num(pairs['threshold'], '.4g')} chosen on {pairs['n_train']} train pairs, "
        f"train accuracy {num(pairs['train_accuracy'], '.2f')}): AUC {ci(pairs['auc'], pairs['auc_low'], pairs['auc_high'], '.3f')}, "
        f"accuracy {ci(pairs['accuracy'], pairs['accuracy_low'], pairs['accuracy_high'], '.3f')} (95 % bootstrap over pairs).",
        f"- Completions steered with ±{comp['alpha']:g}·v ({comp['n_prompts']} prompts × {comp['samples']} samples × "
        f"{comp['max_new_tokens']} tokens): AUC of +α against −α {ci(det['auc'], det['ci'][0], det['ci'][1], '.3f')} "
        "(95 % bootstrap over prompts); mean projection " + ", ".join(f"{k} {num(v, '.4g')}" for k, v in comp["mean_projection"].items()) + ".",
    ]
    track = comp.get("tracking")
    if track:
        lines.append(f"- Tracking: Spearman correlation of projection and trait score ({track['scorer']}) over all completions "
                     f"{ci(track['spearman'], track['ci'][0], track['ci'][1], '.3f')}.")
    else:
        lines.append("- Tracking: no scorer, so the projection is not compared with a trait score.")
    lines.append(f"- Drift of unsteered generations: slope {ci(drift['slope_per_token'], drift['ci'][0], drift['ci'][1], '.3g')} "
                 "projection units per generated token.")
    for t in report.get("texts", []):
        lines.append(f"- Text {t['text'][:60]!r}: mean projection {num(t['mean'], '.4g')} "
                     f"({'above' if t['above_threshold'] else 'below'} the threshold).")
    return "\n".join(lines + [""])


def _g_cell(row: dict[str, Any] | None) -> str:
    if not row:
        return "—"
    if row.get("g") is None:
        return "undefined"
    return ci(row["g"], row["g_low"], row["g_high"], ".2f") + (" ⚑" if row.get("flagged") else "")


def _interval_cell(x: dict[str, Any], fmt: str = ".3g") -> str:
    return ci(x["mean"], x["low"], x["high"], fmt)


def side_effects_markdown(report: dict[str, Any]) -> str:
    """Summary of a side-effect audit (:class:`steerscope.audit.effect_commands.SideEffectsCommand`)."""
    from steerscope.audit.answers import side_effects

    se = report["side_effects"]
    answer = side_effects({"side_effects": se})
    doses = [f"{m:g}" for m in se["multiples"]]
    lines = [f"# What else does it change? {report['trait']} on {report['model']['name']}, layer {report['layer']}, α = {report['alpha']:g}",
             "", f"**{answer['headline']}**", ""] + [f"- {f}" for f in answer["facts"]]
    lines += ["", "## Off-target matrix (Hedges' g [95 % CI]; ⚑ flagged: Holm-adjusted p < 0.05 across the off-target readouts and "
              f"|g| ≥ {se['min_effect']:g})", "", "| trait | readout | n | " + " | ".join(f"{d}·α" for d in doses) + " | detectable |g| |",
              "|---|---|---|" + "---|" * (len(doses) + 1)]
    lines += [f"| {r['trait']} | {r['readout'].replace('_', ' ')} | {r['n']} | " + " | ".join(_g_cell(r["doses"][d]) for d in doses)
              + f" | {num(r.get('detectable_g'), '.2f')} |" for r in se["matrix"]]
    cap = se["capability"]
    lines += ["", f"## Dose, fluency, drift, capability ({cap['n_items']} items, unsteered accuracy {cap['accuracy_unsteered']:.0%})", "",
              "| dose | perplexity ratio | 3-gram repetition | neutral KL (nats) | capability change |", "|---|---|---|---|---|"]
    lines += [f"| {d}·α | {_interval_cell(se['fluency'][d]['ppl_ratio'], '.2f')} | {_interval_cell(se['fluency'][d]['repetition'], '.2f')} | "
              f"{_interval_cell(se['kl'][d])} | {_interval_cell(cap['doses'][d]['change'], '+.2f')} |" for d in doses]
    return "\n".join(lines + [""])


def robustness_markdown(report: dict[str, Any]) -> str:
    """Summary of a robustness audit (:class:`steerscope.audit.effect_commands.RobustnessCommand`)."""
    rb = report["robustness"]
    lines = [f"# Does it hold up? {report['trait']} on {report['model']['name']}, layer {report['layer']}, α = {report['alpha']:g}", "",
             "Hedges' g [95 % CI] of steered against unsteered (⚑: paired t-test p < 0.05 and |g| ≥ 0.2).", ""]
    ins = rb["instructions"]
    if "not_run" in ins:
        lines.append(f"- Instructions: not run ({ins['not_run']}).")
    for readout in ("pair_margin", "trait_score"):
        part = ins.get(readout)
        if part:
            kept = part["retained_under_opposing"]
            lines.append(f"- {readout.replace('_', ' ')}: steering g without an instruction {_g_cell(part['steering']['none'])}, under the "
                         f"opposing one {_g_cell(part['steering']['opposing'])}, under the supporting one "
                         f"{_g_cell(part['steering']['supporting'])}; the opposing instruction alone {_g_cell(part['instruction_alone']['opposing'])}, "
                         f"the supporting one alone {_g_cell(part['instruction_alone']['supporting'])}; retained under opposition "
                         f"{num(kept['ratio'], '.2f')} [{num(kept['low'], '.2f')}, {num(kept['high'], '.2f')}] ({kept['status']}).")
    env = rb["environments"]
    lines.append("- Environments (steering g): " + "; ".join(f"{e} pair margin {_g_cell(r)}" for e, r in env["pair_margin"].items())
                 + "".join(f"; {e} trait score {_g_cell(r)}" for e, r in env["trait_score"].items()) + ".")
    if env.get("paraphrase"):
        para = env["paraphrase"]
        lines.append(f"- Paraphrased prompts: g {_g_cell(para['paraphrased'])} against {_g_cell(para['original'])} on the originals.")
    lay = rb["layers"]
    lines += ["", f"## Layer profile at relative dose {num(lay['relative_dose'], '.3g')} (audited layer {lay['audited_layer']})", "",
              "| layer | α | pair-margin g | neutral KL (nats) |", "|---|---|---|---|"]
    lines += [f"| {r['layer']} | {num(r['alpha'], '.3g')} | {_g_cell(r['effect'])} | {_interval_cell(r['kl'])} |" for r in lay["rows"]]
    st = rb["stability"]
    lines += ["", f"## Stability ({st['of']}, {st['n_pairs']} pairs)", "",
              f"- Cosine with bootstrap resamples {_interval_cell(st['bootstrap_cos'], '.3f')}; between disjoint halves "
              f"{_interval_cell(st['split_half_cos'], '.3f')}.",
              "- Learning curve: " + "; ".join(f"{c['n_pairs']} pairs: cos {num(c['cos_with_full']['mean'], '.3f')}, g "
                                             + "/".join(num(g, '.2f') for g in c["g"]) for c in st["learning_curve"]) + "."]
    return "\n".join(lines + [""])
