"""Markdown summary of an identifiability audit report (the dict from ``run_identifiability``)."""

from __future__ import annotations

from typing import Any

from steerscope.formatting import ci, num


def identifiability_markdown(report: dict[str, Any]) -> str:
    """A one-page summary: verdicts first, then the per-condition table and the caveats."""
    cfg, summary, verdicts = report["config"], report["summary"], report["verdict"]
    base = summary["v_vs_none"]
    validity = (report["scorer"].get("validity") or {}).get("heldout_accuracy")
    lines = [
        f"# Identifiability audit: {cfg['trait']} on {report['model']['name']}, layer {cfg['layer']}",
        "",
        f"- **Behavioural verdict: {verdicts['behavioural']['verdict']}** — {verdicts['behavioural']['reason']}",
        f"- **Distributional verdict: {verdicts['distributional']['verdict']}** — {verdicts['distributional']['reason']}",
        f"- Vector: mean_diff on the train pairs, ‖v‖ = {num(report['vector']['norm'], '.3f')}, α = {cfg['alpha']:g}, "
        f"relative dose {num(report['vector']['relative_dose'], '.3f')}.",
        f"- Does v steer? g(v vs none) = {ci(base.get('g'), base.get('g_low'), base.get('g_high'), '.3f')}, "
        f"p = {num(base.get('p_diff'), '.2g')}; JS(v, none) = {num(base['js']['estimate'], '.4f')} nats.",
        f"- Scorer: {report['scorer']['name']} (held-out accuracy {num(validity, '.3f')}); "
        f"{cfg['n_prompts']} prompts ({cfg['env']}) × {cfg['samples_per_prompt']} samples; "
        f"equivalence margin |g| < {cfg['margin_g']:g}; seed {cfg['seed']}.",
        "",
        "| condition | mean score | g vs v [CI] | efficacy [CI] | TOST p (Holm) | diff p (Holm) | JS vs v [CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["conditions"].items():
        js = row.get("js") or {}
        lines.append(
            f"| {name} | {num(row.get('mean'), '.3f')} | {ci(row.get('g'), row.get('g_low'), row.get('g_high'), '.3f')} | "
            f"{ci(row.get('efficacy'), row.get('efficacy_low'), row.get('efficacy_high'), '.3f')} | "
            f"{num(row.get('p_tost_holm'), '.3g')} | {num(row.get('p_diff_holm'), '.3g')} | "
            f"{ci(js.get('estimate'), js.get('low'), js.get('high'), '.3f')} |"
        )
    lines += _alpha_sweep_lines(report.get("alpha_sweep")) + _environment_lines(report.get("environments"))
    lines += ["", f"Note: {report['statement']}.", ""]
    return "\n".join(lines)


def traits_overview_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """One table over traits: v's effect, mean v+perp efficacy, JS ratio and both verdicts."""
    family = next(iter(reports.values()))["summary"].get("holm_family") or {}
    lines = [
        "# Identifiability audit: overview", "",
        f"Holm correction across all {family.get('n_tests', '?')} condition tests of "
        f"{len(reports)} traits ({', '.join(reports)}).", "",
        "| trait | scorer accuracy | g(v vs none) [CI] | mean efficacy of v+perp | JS(v, v+perp) / JS(v, none) "
        "| behavioural verdict | distributional verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for trait, r in reports.items():
        s, v = r["summary"], r["verdict"]
        base = s["v_vs_none"]
        effs = [row.get("efficacy") for row in s["conditions"].values() if row["kind"] == "v+perp"]
        effs = [e for e in effs if e is not None]
        validity = (r["scorer"].get("validity") or {}).get("heldout_accuracy")
        ratio = (s.get("distributional") or {}).get("ratio_perp_to_none")
        lines.append(
            f"| {trait} | {num(validity, '.3f')} | {ci(base.get('g'), base.get('g_low'), base.get('g_high'), '.3f')} | "
            f"{num(sum(effs) / len(effs) if effs else None, '.2f')} | {num(ratio, '.2f')} | "
            f"{v['behavioural']['verdict']} | {v['distributional']['verdict']} |"
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
    """The per-environment section (empty without environment runs): behavioural verdicts and g."""
    if not envs:
        return []
    lines = [
        "", "## Environments (behavioural readout only)", "",
        "| environment | prompts | g(v vs none) | mean g(v+perp vs v) | positive control diff p (Holm) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for env, res in envs.get("environments", {}).items():
        summary = res["summary"]
        gs = [r.get("g") for r in summary["conditions"].values() if r.get("kind") == "v+perp" and r.get("g") is not None]
        control = summary.get("positive_control")
        p_control = summary["conditions"][control].get("p_diff_holm") if control else None
        lines.append(
            f"| {env} | {res.get('n_prompts')} | {num(summary['v_vs_none'].get('g'), '.3f')} | "
            f"{num(sum(gs) / len(gs) if gs else None, '.3f')} | {num(p_control, '.3g')} | "
            f"{res['verdict']['verdict']}: {res['verdict']['reason']} |"
        )
    return lines


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
    gains = [(layer, e["logits"]["vector_gain"]) for layer, e in results["layers"].items() if "vector_gain" in e["logits"]]
    if gains:
        lines += ["", "## Gain of the steering vector (logits, RMS per prompt)", "",
                  "| layer | gain(v̂) | mean gain of a random direction | complement max | complement min |", "|---|---|---|---|---|"]
        lines += [f"| {layer} | {g['gain_v']:.3g} | {g['random_mean']:.3g} | {g['complement_max']:.3g} | {g['complement_min']:.3g} |" for layer, g in gains]
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
    stab = report.get("stability") or {}
    lines = [
        f"# Recovery ({report['method']}): {report.get('trait', '')} on {report.get('model', '')}, layer {report['details'].get('layer')}", "",
        f"- Identifiable: **{report['identifiable']}** — {report['reason']}",
        f"- Remaining class dimension: {report['class_dim'] if report['class_dim'] is not None else 'not defined'}; symmetry: {report['symmetry']}",
        f"- cos(recovered, mean difference) = {num(report['details'].get('cos_with_mean_diff'), '.3f')}",
    ]
    if stab:
        lines.append(f"- Bootstrap stability ({stab['n_boot']} resamples, seed {stab['seed']}): mean cos "
                     f"{ci(stab['mean_cos'], stab['ci_low'], stab['ci_high'], '.3f')}")
    return "\n".join(lines + [""])


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
        f"added at every position.",
        f"- Threshold ε = {num(th['epsilon'], e)} ({th['rule']}; noise floor {num(th['noise'], e)}, nearest competitor "
        f"{num(th['margin'], e)}, {th['n_positions']} calibration positions).",
        f"- Positive control: natural states of {cfg['n_prompts']} prompts × last {cfg['positions']} positions recovered exactly at "
        f"{num(100 * s['natural_exact_recovery'], '.1f')} % of {s['n_positions']} positions (median distance "
        f"{num(s['median_natural_distance'], e)}, median margin Δ {num(s['median_margin'], e)}).",
        f"- Steered states: median best-found distance {num(s['median_steered_distance'], e)} = "
        f"{num(s['median_steered_over_noise'], '.3g')} × the noise floor and {num(s['median_steered_over_displacement'], '.3f')} × "
        f"the displacement ‖steered − natural‖ (median {num(s['median_displacement'], e)}); accepted at "
        f"{num(100 * s['steered_accepted_rate'], '.1f')} % of positions; best-found token = the original at "
        f"{num(100 * s['steered_tokens_equal_original'], '.1f')} %.",
        "",
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
        for name, row in beh[side].items():
            lines.append(f"| {name} | {side.replace('_', '-')} | {num(row.get('trait_score'), '.3f')} | {num(row.get('kl_from_steered'), '.4f')} |")
    if beh.get("instruction"):
        lines.append(f"\nBlack-box baseline instruction: {beh['instruction']!r}.")
    lines += ["", "## Assumptions of the theorems", "", "| component | breaks the hypotheses | detail |", "|---|---|---|"]
    lines += [f"| {a['component']} | {'yes' if a['breaks'] else 'no'} | {a['detail']} |" for a in report["assumptions"]]
    lines.append("")
    return "\n".join(lines)
