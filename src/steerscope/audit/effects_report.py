"""The report sections of the side-effect and robustness stages (HTML fragments, as :mod:`steerscope.report`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steerscope.formatting import ci, num
from steerscope.report import esc, html_image, html_table


def _g(row: Mapping[str, Any] | None) -> str:
    if not row:
        return ""
    if row.get("g") is None:
        return f"undefined ({esc(row.get('error', ''))})"
    mark = " ⚑" if row.get("flagged") else ""
    return f"{ci(row['g'], row['g_low'], row['g_high'], '.2f')}{mark}"


def _interval(x: Mapping[str, Any], fmt: str = ".3g") -> str:
    return ci(x["mean"], x["low"], x["high"], fmt)


def _matrix(se: Mapping[str, Any]) -> str:
    doses = [f"{m:g}" for m in se["multiples"]]
    rows = [[("<b>" + esc(r["trait"]) + "</b>") if r["trait"] == se["target"] else esc(r["trait"]), esc(r["readout"].replace("_", " ")),
             f"{r['n']} {esc(r['unit'])}s"] + [_g(r["doses"][d]) for d in doses] + [num(r.get("detectable_g"), ".2f")] for r in se["matrix"]]
    return html_table(["readout trait", "readout", "n"] + [f"g at {d}·α" for d in doses] + ["detectable |g| at α"], rows)


def _costs(se: Mapping[str, Any]) -> str:
    doses = [f"{m:g}" for m in se["multiples"]]
    cap = se["capability"]
    rel = se.get("relative_doses") or [None] * len(doses)
    rows = [[f"{d}·α = {float(d) * se['alpha']:.3g}", num(r, ".3g"), _interval(se["fluency"][d]["ppl_ratio"], ".2f"),
             _interval(se["fluency"][d]["repetition"], ".2f"), _interval(se["kl"][d]), f"{cap['doses'][d]['accuracy']:.0%}",
             _interval(cap["doses"][d]["change"], "+.2f")] for d, r in zip(doses, rel)]
    return html_table(["dose", "relative dose ‖αv‖/‖h‖", "perplexity ratio", "3-gram repetition", "neutral KL (nats)", "capability accuracy",
                   "change"], rows)


def _edits(edits: Mapping[str, Any] | None) -> str:
    if not edits:
        return ""
    if "not_run" in edits:
        return (f"<p class='note'>Add / clamp / ablate comparison: {esc(edits['not_run'])} (the full profile and "
                "<code>steerscope audit side-effects</code> run it).</p>")
    if "error" in edits:
        return f"<p class='note'>Add / clamp / ablate comparison not run: {esc(edits['error'])}</p>"
    out = []
    for kind, title in (("induce", "Inducing the trait: the audited addition against a clamp"),
                        ("remove", "Removing the trait: ablation against a subtraction")):
        comp = edits.get(kind)
        if not comp:
            continue
        rows = [[esc(name), esc(", ".join(f"{k} {v:.4g}" for k, v in e["parameter"].items()) or "—"),
                 num(e["readouts"][edits["target"]]["shift"], ".3g"), num(e["off_target_mean_abs_g"], ".3f"),
                 num(e["off_target_max_abs_g"], ".3f")] for name, e in comp["edits"].items()]
        out.append(f"<h4>{esc(title)} (on-target shift {num(comp['on_target_shift'], '.3g')} nats; most specific: "
                   f"{esc(comp['most_specific'])})</h4>"
                   + html_table(["edit", "parameter", "on-target pair-margin shift", "mean |g| off target", "largest |g| off target"], rows))
    return "".join(out)


def _framing(fr: Mapping[str, Any] | None) -> str:
    if not fr:
        return ""
    gap, by_v, by_r = fr["gap"], fr["closed_by_v"], fr["closed_by_random"]
    closed = (f"Ablating v̂ closes {ci(by_v['mean'], by_v['low'], by_v['high'], '.0%')} of it; {fr['n_random']} random directions "
              f"close {ci(by_r['mean'], by_r['low'], by_r['high'], '.0%')}.") if by_v and by_r else "There is no gap to close."
    return (f"<h4>Framing gap under ablation ({fr['n_pairs']} pairs, layer {fr['layer']})</h4><p>The pairs differ only in how the "
            "request is framed; mean per-token JS divergence (nats) between the answer's next-token distributions under the two "
            f"framings: unedited {_interval(gap['unedited'])}, v̂ ablated {_interval(gap['ablate_v'])}, random directions ablated "
            f"{_interval(gap['ablate_random_mean'])}. {closed}</p>")


def side_effects_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    se = res["side_effects"]
    cap = se["capability"]
    return ("<h3>Off-target matrix</h3><p class='note'>The effect of +m·α·v on every trait's readouts: the teacher-forced pair "
            "margin of its held-out pairs, and its scorer on completions of neutral prompts (Hedges' g, 95 % cluster-bootstrap CI; "
            f"⚑: paired t-test significant after Holm's correction across the off-target readouts, and |g| ≥ {se['min_effect']:g}; "
            "the last column is the smallest |g| each could detect with 80 % power). The audited trait is in bold.</p>"
            f"{_matrix(se)}"
            f"<h3>Dose, fluency, drift and capability</h3><p class='note'>{se['n_prompts']} neutral prompts × {se['samples']} "
            f"samples × {se['max_new_tokens']} tokens; perplexity of steered completions under the unsteered model relative to the "
            f"unsteered completions; KL(unsteered ‖ steered) per token on the prompts' reference responses; capability: "
            f"{cap['n_items']} multiple-choice items (unsteered {cap['accuracy_unsteered']:.0%}, chance {cap['chance']:.0%}; "
            f"{esc(cap['rule'])}), paired bootstrap CI over items.</p>{_costs(se)}{html_image(plots['dose'], 'dose curve')}"
            f"{_edits(se.get('edits'))}{_framing((se.get('edits') or {}).get('framing'))}")


def _instructions(part: Mapping[str, Any]) -> str:
    if "not_run" in part:
        return f"<p class='note'>Not run: {esc(part['not_run'])}</p>"
    rows = []
    for readout in ("pair_margin", "trait_score"):
        r = part.get(readout)
        if not r:
            continue
        for name in ("none", "supporting", "opposing"):
            rows.append([esc(readout.replace("_", " ")), esc(name), esc(part["instructions"][name] or "—"), _g(r["steering"][name]),
                         _g(r["instruction_alone"].get(name)) if name != "none" else "—"])
        kept = r["retained_under_opposing"]
        rows.append([esc(readout.replace("_", " ")), "retained under opposing", "", f"{num(kept['ratio'], '.2f')} [{num(kept['low'], '.2f')}, "
                     f"{num(kept['high'], '.2f')}] → {esc(kept['status'])}", ""])
    return html_table(["readout", "instruction", "text", "steering effect g (steered vs unsteered, same instruction)",
                   "instruction alone g (vs none)"], rows)


def _environments(part: Mapping[str, Any]) -> str:
    rows = [[esc(env), "pair margin", _g(r)] for env, r in part["pair_margin"].items()]
    rows += [[esc(env), "trait score", _g(r)] for env, r in part["trait_score"].items()]
    para = part.get("paraphrase")
    if para:
        kept = para["retained"]
        rows += [["original prompts", "trait score", _g(para["original"])], ["paraphrased prompts", "trait score", _g(para["paraphrased"])],
                 ["paraphrased / original shift", "", f"{num(kept['ratio'], '.2f')} [{num(kept['low'], '.2f')}, {num(kept['high'], '.2f')}]"]]
    note = f"<p class='note'>{esc(part['why_no_scores'])}</p>" if part.get("why_no_scores") else ""
    return note + html_table(["environment", "readout", "steering effect g"], rows)


def _stability(st: Mapping[str, Any]) -> str:
    curve = "; ".join(f"{c['n_pairs']} pairs: cos {num(c['cos_with_full']['mean'], '.3f')}, g "
                      + "/".join(num(g, '.2f') for g in c["g"]) for c in st["learning_curve"])
    return (f"<p>Stability of {esc(st['of'])} ({st['n_pairs']} pairs): cosine with bootstrap resamples "
            f"{ci(st['bootstrap_cos']['mean'], st['bootstrap_cos']['low'], st['bootstrap_cos']['high'], '.3f')}, between disjoint "
            f"halves {ci(st['split_half_cos']['mean'], st['split_half_cos']['low'], st['split_half_cos']['high'], '.3f')}. "
            f"Learning curve (pair-margin g on the held-out pairs at displacement norm {num(st['displacement_norm'], '.3g')}): "
            f"{esc(curve)}.</p>")


def robustness_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    rb = res["robustness"]
    layers = rb["layers"]
    rows = [[("<b>" + str(r["layer"]) + "</b>") if r["layer"] == layers["audited_layer"] else str(r["layer"]), num(r["alpha"], ".3g"),
             _g(r["effect"]), _interval(r["kl"])] for r in layers["rows"]]
    return ("<h3>Steering against prompting</h3><p class='note'>A system instruction toward the steered pole (supporting) or the "
            "other (opposing), with and without the vector. Retained: the steering shift under the opposing instruction over the "
            "shift without one (≥ 0.5 over the whole CI: holds). Hedges' g [95 % CI] throughout this part; ⚑: paired t-test "
            f"p < 0.05 and |g| ≥ 0.2.</p>{_instructions(rb['instructions'])}"
            f"<h3>Environments and paraphrases</h3>{_environments(rb['environments'])}"
            f"<h3>Layer profile</h3><p class='note'>Each layer's mean-difference vector at relative dose "
            f"{num(layers['relative_dose'], '.3g')} (the audited one in bold): held-out pair-margin effect and next-token KL on "
            f"neutral text.</p>{html_table(['layer', 'α', 'pair-margin g', 'neutral KL (nats)'], rows)}"
            f"{html_image(plots['layer_profile'], 'layer profile')}<h3>Stability of the vector</h3>{_stability(rb['stability'])}")
