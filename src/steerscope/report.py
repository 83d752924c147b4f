"""The derived files of a run folder, rebuilt from its run store: ``results.json``, one vector
file per trait, the plots, and ``report.html`` — one self-contained page (CSS inline, plots
embedded as PNG data URIs, no script, no network) that reads offline.

The page opens with the four answers per trait (does it steer, is it identifiable, is the steered
state reachable, what else does it change), then the details, the controls, the scorer validity, and the configuration,
seeds, versions and stage timings needed to reproduce the run.
"""

from __future__ import annotations

import base64
import errno
import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.fileio import atomic_write
from steerscope.audit.markdown import BEHAVIOUR_COLUMNS, probe_columns, search_text
from steerscope.formatting import ci, num
from steerscope.runstore import RunStore, RunStoreError, one_line

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:4px 0}h2{font-size:20px;margin:34px 0 8px;border-bottom:1px solid #d5d9de;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 6px}.sub{color:#56606b;margin:0 0 14px}
.cards{display:grid;grid-template-columns:repeat(2,1fr);gap:12px;margin:8px 0 4px}
.card{background:#fff;border:1px solid #d5d9de;border-left:6px solid #8a939c;border-radius:6px;padding:10px 14px}
.card h3{margin:0 0 6px;font-size:15px}.card p{margin:0 0 6px}.card ul{margin:0;padding-left:18px;font-size:13px;color:#3b444d}
.yes,.none{border-left-color:#2e7d32}.no,.some{border-left-color:#c62828}.unknown,.mixed{border-left-color:#b7791f}
.badge{display:inline-block;font-weight:600;font-size:12px;padding:1px 8px;border-radius:10px;color:#fff;background:#8a939c}
.badge.yes,.badge.none{background:#2e7d32}.badge.no,.badge.some{background:#c62828}.badge.unknown,.badge.mixed{background:#b7791f}
.trait{font-weight:600;margin:16px 0 4px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d5d9de;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef0f3}
img{max-width:100%;background:#fff;border:1px solid #d5d9de;margin:6px 0}
pre{background:#fff;border:1px solid #d5d9de;padding:8px;overflow-x:auto;font-size:12px}
.note{color:#56606b;font-size:13px}
"""


def esc(x: Any) -> str:
    """``x`` as HTML-escaped text."""
    return escape(str(x))


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table: ``header`` escaped, the cells of ``rows`` inserted as they are (HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_image(path: Path, alt: str) -> str:
    """The PNG at ``path`` embedded as a data URI."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


# --- sections ------------------------------------------------------------------------------------

def summary_section(results: Mapping[str, Any]) -> str:
    from steerscope.audit.registry import stages

    questions = [(a.key, a.question) for stage in stages() for a in stage.answers]
    parts = ['<section id="summary">']
    for trait, res in results["traits"].items():
        parts.append(f'<div class="trait">{esc(trait)} — layer {res["layer_selection"]["chosen"]}, α = {res["strength"]["alpha"]:g}</div>')
        parts.append('<div class="cards">')
        for key, question in questions:
            ans = res["answers"][key]
            facts = "".join(f"<li>{esc(f)}</li>" for f in ans["facts"])
            parts.append(f'<div class="card {esc(ans["status"])}"><h3>{esc(question)} <span class="badge {esc(ans["status"])}">'
                         f'{esc(ans["status"])}</span></h3><p>{esc(ans["headline"])}</p><ul>{facts}</ul></div>')
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def layer_selection_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    sel = res["layer_selection"]
    layers = html_table(["layer", "held-out accuracy", "separation (mean/sd)", "‖v‖"],
                    [[r["layer"], num(r["accuracy"], ".2f"), num(r["separation"], ".2f"), num(r["norm"])] for r in sel["rows"]])
    return f"<h3>Layer selection</h3><p class='note'>{esc(sel['rule'])}; {sel['n_train']} train / {sel['n_test']} held-out pairs.</p>{layers}"


def strength_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    st = res["strength"]
    on_margin = st.get("readout") == "pair_margin"
    grid = html_table(["α", "mean pair margin" if on_margin else "mean score", "g vs α = 0 [95 % CI]", "perplexity ratio [95 % CI]", "coherent", "reaches target"],
                  [[f"{r['alpha']:g}" + (" ◀" if r["alpha"] == st["alpha"] else ""), num(r["mean_score"]), ci(r["g"], r["g_low"], r["g_high"], ".2f"),
                    ci(r["ppl_ratio"], r["ppl_ratio_low"], r["ppl_ratio_high"], ".2f"), r["coherent"], r["reaches_target"]] for r in st["rows"]])
    examples = html_table(["α", "example completions (first sample of the first prompts)"],
                      [[a, "<br>".join(esc(t) for t in texts)] for a, texts in st["examples"].items() if a in ("0", f"{st['alpha']:g}")])
    effect = ("No scorer: the effect is the teacher-forced pair margin of every held-out pair (the identifiability audit reads "
              "the first of them too); the perplexity comes from " if on_margin else "")
    return (f"<h3>Strength calibration</h3><p class='note'>{esc(st['reason'])}. Baseline: mean {'pair margin' if on_margin else 'score'} "
            f"{num(st['baseline']['mean_score'])}, perplexity {num(st['baseline']['perplexity'])}; {effect}{len(st['prompts'])} prompts × "
            f"{st['samples']} samples × {st['max_new_tokens']} tokens, disjoint from the audit prompts.</p>{grid}"
            f"{html_image(plots['calibration'], 'calibration')}{examples}")


def _readout_table(result: Mapping[str, Any]) -> str:
    scalar = result["kind"] == "scalar"
    rows = [[esc(name), ci(r.get("efficacy"), r.get("efficacy_low"), r.get("efficacy_high"), ".2f") if scalar else num(r.get("js_over_margin")),
             num(r.get("p_equivalent")), num(r.get("p_different")), num(r.get("p_different_holm"))] for name, r in result["conditions"].items()]
    plan = result["planning"]
    head = ["condition", "efficacy [90 % CI]" if scalar else "JS(v, w) / JS(v, (1 − δ)v)", "TOST p", "difference p", "difference p (Holm)"]
    return (f"<h4>{esc(result['readout'])}: <span class='badge {_status(result['verdict'])}'>{esc(result['verdict'])}</span></h4>"
            f"<p>{esc(result['reason'])}.</p>{html_table(head, rows)}<p class='note'>resolution at n = {plan['n']}: "
            f"±{num(plan['resolution'])} {esc(plan['units'])}; n ≈ {esc(plan['prompts_needed'] or 'too many')} for 80 % power at "
            f"δ = {result['delta']:g}.</p>")


def _class_table(classes: Mapping[str, Any]) -> str:
    rows = []
    if classes.get("trait_score"):
        c = classes["trait_score"]
        rows.append(["trait score (audited draws)", "1", ci(c["fraction"], c["low"], c["high"], ".2f"), c["n"], "n/a"])
    for readout in ("pair_margin", "distribution"):
        for ratio, c in (classes.get(readout) or {}).items():
            rows.append([readout, ratio, ci(c["fraction"], c["low"], c["high"], ".2f"), c["n"], num(c.get("predicted"), ".2f")])
    return html_table(["readout", "‖u‖/‖v‖", "share of v + u within δ [95 % CI]", "draws", "first-order prediction"], rows)


def _scorer_validity(scorer: Mapping[str, Any] | None, accuracy: float | None) -> str:
    if scorer is None:
        return ("<h3>Scorer</h3><p>None was given: there is no trait-score readout, and the effect against the unsteered model "
                "is read on the held-out pair margin; the pair margin and the next-token distribution carry the audit.</p>")
    return (f"<h3>Scorer validity</h3><p>{esc(scorer['name'])}: held-out accuracy {num(accuracy, '.2f')} "
            f"(trait-score verdicts need ≥ 0.7).</p>")


def identifiability_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    ident = res["identifiability"]
    cfg, scorer = ident["config"], ident["scorer"]
    tables = "".join(_readout_table(r) for r in ident["readouts"].values())
    return (f"<h3>v against v + u (u ⊥ v), per readout</h3><p class='note'>{cfg['n_draws']} orthogonal draws (seeds "
            f"{esc(cfg['draw_seeds'])}), {cfg['n_prompts']} held-out prompts × {cfg['samples_per_prompt']} samples, "
            f"{cfg['n_pairs']} held-out pairs, α = {cfg['alpha']:g} at every position, δ = {cfg['delta']:g}, level {cfg['level']:g}; "
            f"dose controls (1 − 2δ)·v and 0.5·v, gradient control v+grad.</p>{tables}"
            f"<h3>Size of the equivalence class</h3>{_class_table(ident['class_size'])}"
            f"{_scorer_validity(scorer, ident.get('scorer_accuracy'))}{html_image(plots['effect_ratio'], 'effect ratio')}"
            f"<p class='note'>{esc(ident['statement'])}</p>")


def monitoring_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    from steerscope.monitor import token_spans_html

    mon = res["monitoring"]
    pairs, comp = mon["pairs"], mon["completions"]
    det, drift, track = comp["steered_detection"], comp["drift"], comp.get("tracking")
    rows = [["held-out pairs: AUC", ci(pairs["auc"], pairs["auc_low"], pairs["auc_high"], ".3f"), f"{pairs['n_pairs']} pairs"],
            ["held-out pairs: accuracy at the train threshold", ci(pairs["accuracy"], pairs["accuracy_low"], pairs["accuracy_high"], ".3f"),
             f"threshold {num(pairs['threshold'], '.4g')} from {pairs['n_train']} train pairs"],
            [f"completions steered with +α·v against −α·v (α = {comp['alpha']:g}): AUC", ci(det["auc"], det["ci"][0], det["ci"][1], ".3f"),
             f"{comp['n_prompts']} prompts × {comp['samples']} samples × {comp['max_new_tokens']} tokens"],
            ["projection against trait score: Spearman", ci(track["spearman"], track["ci"][0], track["ci"][1], ".3f") if track else "no scorer",
             esc(track["scorer"]) if track else ""],
            ["drift of unsteered generations (per token)", ci(drift["slope_per_token"], drift["ci"][0], drift["ci"][1], ".3g"), ""]]
    return ("<h3>The projection onto v̂ as a detector</h3><p class='note'>Score of a text: the mean projection of its completion "
            "tokens onto v̂ at the audit layer (attention sinks left out); intervals are 95 % bootstrap over pairs or prompts.</p>"
            f"{html_table(['measure', 'value [95 % CI]', 'on'], rows)}<h4>Tokens coloured by projection (red: above the threshold)</h4>"
            f"{token_spans_html(comp['examples'], pairs['threshold'])}")


def _status(verdict: str | bool | None) -> str:
    return {"equivalent": "no", "different": "yes", "reachable": "yes", "unreachable-within-search": "no", True: "yes",
            False: "no"}.get(verdict, "unknown")


def _all_positions_note(ns: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """The Jacobian of the audited intervention (δ at every position), when it was computed."""
    part = entry.get("all_positions")
    if not part:
        return ""
    s, gain = part["logits"]["stacked"], part["logits"].get("vector_gain") or {}
    n = ns["config"].get("all_positions_prompts")
    return (f"With δ at every position (the intervention the audits apply; {n} prompt{'' if n == 1 else 's'}): "
            f"gain of v {num(gain.get('gain_v'))}, inert fraction {' / '.join(f'{100 * v:.1f} %' for v in s['inert_fraction'].values())} "
            f"relative to σ_max, and {' / '.join(f'{100 * v:.1f} %' for v in gain.get('complement_below_v', {}).values())} of the "
            f"directions ⟂ v with gain below 10⁻² / 10⁻³ / 10⁻⁴ × v's own. ")


def nullspace_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    ns = res["nullspace"]
    layer = str(res["layer_selection"]["chosen"])
    entry = ns["layers"][layer]
    rows = []
    for readout in ("logits", "logprobs"):
        s = entry[readout]["stacked"]
        rows.append([readout, " / ".join(f"{100 * v:.1f} %" for v in s["inert_fraction"].values()),
                     " / ".join(str(v) for v in s["effective_rank"].values()), num(s["condition"])])
    cov = entry["covariance"]["last_token"]
    spectrum = html_table(["readout", "inert fraction @ " + " / ".join(entry["logits"]["stacked"]["inert_fraction"]),
                       "effective rank", "condition σmax/σmin"], rows)
    gain = entry["logits"].get("vector_gain") or {}
    return (f"<h3>Null space of the logit Jacobian at layer {layer}</h3><p class='note'>Exact autograd Jacobians over "
            f"{ns['config']['n_prompts']} prompts, δ at the last position, stacked (JᵀJ summed in float64). Gain of v: "
            f"{num(gain.get('gain_v'))} (average direction {num(gain.get('random_mean'))}). {_all_positions_note(ns, entry)}"
            f"Activation covariance (a different object): low-variance "
            f"fraction {' / '.join(f'{100 * v:.1f} %' for v in cov['low_variance_fraction'].values())} over {cov['n_samples']} "
            f"last-token states.</p>{spectrum}{html_image(plots['spectra'], 'spectra')}")


def recovery_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    def row(r: Mapping[str, Any]) -> list[str]:
        agree, test = r.get("agreement") or {}, r.get("assumption") or {}
        return [esc(r["method"]), f'<span class="badge {_status(r.get("identifies"))}">{esc(r.get("identifies"))}</span>', esc(r.get("why", "")),
                esc(r["identifiable"]), esc(r["class_dim"]), esc(test.get("holds")) + (f": {esc(test['detail'])}" if test else ""),
                ci(agree.get("cos"), agree.get("ci_low"), agree.get("ci_high"), ".3f") if agree else "n/a",
                ci(r["stability"]["mean_cos"], r["stability"]["ci_low"], r["stability"]["ci_high"], ".3f") if r.get("stability") else "n/a",
                esc(r["reason"])]

    recov = html_table(["method", "identifies the audited vector", "why", "unique if the assumption held", "class dim",
                    "assumption holds on the data", "cos with the audited vector [95 % CI]", "stability: mean cos [CI]", "uniqueness"],
                   [row(r) for r in res["recovery"]])
    audited = next((r["agreement"]["audited"] for r in res["recovery"] if r.get("agreement")), "the audited vector")
    note = (f"<p class='note'>A method identifies the audited vector ({esc(audited)}) only when its uniqueness condition holds, its "
            f"assumption is not rejected on the data (level 0.05), and the lower end of the cosine's interval exceeds 0.9.</p>")
    return f"<h3>Recovery under structural assumptions</h3>{note}{recov}{html_image(plots['stability'], 'stability')}"


def _relaxation_rows(s: Mapping[str, Any]) -> list[list[str]]:
    if "median_relaxed_distance" not in s:  # results made before the relaxation existed
        return []
    return [["continuous relaxation: relaxed / projected to tokens (median)",
             f"{num(s['median_relaxed_distance'])} ({num(s['median_relaxed_over_displacement'], '.3f')} × displacement) / "
             f"{num(s['median_projected_distance'])}"],
            ["whole-span search (median)", num(s["median_sequence_distance"])]]


def reachability_section(res: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    r = res["reachability"]
    s, th = r["summary"], r["threshold"]
    adv, rand, beh = r["adversarial"], r["random_control"], r["behaviour"]
    facts = html_table(["quantity", "value"], [
        ["verdict", f'<span class="badge {_status(s["verdict"])}">{esc(s["verdict"])}</span>'],
        ["search (natural and steered alike)", esc(search_text(r["config"]))],
        ["searched tokens", esc(f"{r['config']['positions']} (at most {r['config']['max_positions']} per prompt): ")
         + "; ".join(esc(repr(p["searched_text"])) for p in r["prompts"])],
        ["natural states recovered exactly", f"{100 * s['natural_exact_recovery']:.0f} % of {s['n_positions']} positions"],
        ["steered positions: matched / scanned whole / stopped by the budget",
         f"{100 * s['steered_accepted_rate']:.0f} % / {100 * s['steered_exhaustive_rate']:.0f} % / {100 * s['steered_budget_rate']:.0f} %"],
        ["noise floor / ε / median margin Δ", f"{num(th['noise'])} / {num(th['epsilon'])} / {num(th['margin_median'])}"],
        ["median best-found steered distance", f"{num(s['median_steered_distance'])} ({num(s['median_steered_over_noise'])} × noise floor)"],
        ["steering displacement ‖αv‖", f"{num(s['steering_norm'])} (best found / displacement {num(s['median_steered_over_displacement'], '.3f')})"],
        *_relaxation_rows(s),
        ["random vector of the same norm", f"median best-found {num(rand['median_steered_distance'])}"],
        ["Theorem 4.5 construction", f"collision at position {adv['i']}: distance {num(adv['collision']['distance'])}; "
                                     f"position {adv['i'] + 1}: {num(adv['next']['distance'])}"],
    ])
    cols = [(side, name, beh[side][name]) for side in ("white_box", "black_box") for name in BEHAVIOUR_COLUMNS if name in beh[side]]
    behaviour = html_table(["evaluation", "generation from", "trait score", "KL from steered (nats/token)"],
                       [[side.replace("_", "-"), esc(name), num(v["trait_score"]), num(v["kl_from_steered"])] for side, name, v in cols])
    assumptions = html_table(["component", "breaks real-analyticity", "detail"], [[esc(a["component"]), esc(a["breaks"]), esc(a["detail"])] for a in r["assumptions"]])
    return (f"<h3>Prompt inversion of natural and steered states</h3>{facts}{html_image(plots['positions'], 'positions')}"
            f"{html_image(plots['alpha_sweep'], 'alpha sweep')}<h3>Behaviour: white-box steering and black-box prompting, kept apart</h3>{behaviour}"
            f"{_black_box_table(r.get('black_box_probes'))}"
            f"<h3>Assumptions of the theory</h3>{assumptions}<p class='note'>{esc(r['statement'])}</p>")


def _black_box_table(probes: Mapping[str, Any] | None) -> str:
    if not probes:
        return ""
    rows = [[esc(name), num(c.get("trait_score")), num(c.get("kl_from_steered")), num(c.get("top1_agreement")), num(c.get("state_distance")),
             num(c.get("state_distance_over_unsteered"), ".3f")] for name, c in probe_columns(probes)]
    return (f"<h3>Black-box probes: prompts to the unsteered model ({probes['n_prompts']} prompts; the steered completions' trait score "
            f"{num(probes['target_trait_score'])})</h3>"
            + html_table(["probe", "trait score", "KL from steered", "top-1 agreement", "state distance", "× unsteered"], rows))


def reproduction_section(results: Mapping[str, Any], store: RunStore) -> str:
    run = store.run
    timings = store.timings()
    total = sum(timings.values()) or 1.0
    times = html_table(["stage", "wall seconds", "share"], [[esc(k), f"{v:.1f}", f"{100 * v / total:.0f} %"] for k, v in timings.items()])
    events = html_table(["at (UTC)", "event", "detail"], [[esc(e["at"]), esc(e["kind"]), esc(e["detail"] or "")] for e in store.events()])
    model = results["model"]
    return (f"<h2>Reproduction</h2><p>steerscope {esc(run['version'])}; model {esc(model['name'])} ({esc(model['model_type'])}, "
            f"{model['n_layers']} layers, d = {model['d_model']}, {esc(model['dtype'])}), fingerprint <code>{esc(run['model_fingerprint'])}</code>; "
            f"configuration hash <code>{esc(run['config_hash'])}</code>.</p><pre>{esc(run['command'])}</pre>"
            f"<h3>Configuration and seeds</h3><pre>{esc(json.dumps(run['config'], indent=1))}</pre>"
            f"<h3>Time per stage (summed over stored cells; work lost to an interruption is not counted)</h3>{times}<h3>Run events</h3>{events}")


def render_html(results: Mapping[str, Any], plots: Mapping[str, Mapping[str, Path]], store: RunStore) -> str:
    """The report page (a string of HTML); ``plots``: trait → plot name → PNG path."""
    cfg = results["config"]
    body = [f"<h1>steerscope audit: {esc(', '.join(cfg['traits']))} on {esc(results['model']['name'])}</h1>",
            f"<p class='sub'>{esc(cfg['profile'])} profile, seed {cfg['seed']}; the answers first, the evidence below "
            "(green: yes, or no side effect detected; red: no, or side effects; amber: undetermined or mixed).</p>",
            summary_section(results)]
    for trait, res in results["traits"].items():
        body.append(provenance_note(trait, cfg))
        body += trait_sections(trait, res, plots[trait])
    body.append(reproduction_section(results, store))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>steerscope audit: {esc(', '.join(cfg['traits']))}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>")


def provenance_note(trait: str, cfg: Mapping[str, Any]) -> str:
    """What was audited for ``trait``: where its data and (if given) its vector came from."""
    spec = cfg.get("trait_specs", {}).get(trait)
    if spec is None:
        return ""
    if spec.get("builtin"):
        data = f"built-in trait data ({spec['n_train']} train / {spec['n_test']} held-out pairs)"
    else:
        data = (f"pairs from {spec.get('dataset', '?')} ({spec['n_train']} train / {spec['n_test']} held-out; "
                f"{spec.get('split_rule', 'splits as given')}), prompts from {spec.get('prompts_from', '?')}")
    prompts = ", ".join(f"{n} {env}" for env, n in spec["prompts"].items())
    scorer = {"default": "the trait's built-in one", None: "none"}.get(spec.get("scorer"), spec.get("scorer"))
    parts = [f"{esc(trait)}: {esc(data)}; evaluation prompts: {esc(prompts)}; scorer: {esc(scorer)}; "
             f"content SHA-256 {esc(spec['digest'][:16])}…."]
    given = cfg.get("given_vectors", {}).get(trait)
    if given is not None:
        parts.append(f" Vector: given in {esc(given['file'])} ({esc(given['source'])}), layer {given['layer']}, not extracted; "
                     f"{esc(given['note'])}.")
    return f"<p class='note'>{''.join(parts)}</p>"


def trait_sections(trait: str, res: Mapping[str, Any], plots: Mapping[str, Path]) -> list[str]:
    """The HTML of one trait: each registered stage's section, under its heading where it opens a part."""
    from steerscope.audit.registry import stages

    parts = []
    for stage in stages():
        if stage.heading is not None:
            anchor, title = stage.heading
            parts.append(f"<h2 id='{esc(trait)}-{esc(anchor)}'>{esc(trait)}: {esc(title)}</h2>")
        if stage.section is not None:
            parts.append(stage.section(res, plots))
    return parts


def trait_plots(trait: str, res: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """Write the plots of every registered stage for one trait into ``folder`` (overwriting); returns name → path."""
    from steerscope.audit.registry import stages

    paths: dict[str, Path] = {}
    for stage in stages():
        if stage.plots is not None:
            paths |= stage.plots(trait, res, folder)
    return paths


def write_outputs(store: RunStore) -> dict[str, Path]:
    """(Re)write every derived file of the run folder from the store; returns name → path.

    Each file is written atomically and ``results.json`` and ``report.html`` come last, so that a
    kill or a failure leaves each complete or absent. A write that fails (full disk, read-only
    folder) and a store whose cells cannot be read back raise a :class:`SteerscopeError`.
    """
    folder = store.folder
    try:
        _remove_temporaries(folder)
        return _write_outputs(store)
    except OSError as exc:
        fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EFBIG: "free space"}.get(exc.errno or 0, "make the folder writable")
        where = f" ({exc.filename})" if exc.filename and not str(exc.filename).endswith(".tmp") else ""  # not a temporary name
        raise SteerscopeError(f"could not write the outputs of {folder}: {exc.strerror or one_line(exc)}{where}; the run store is "
                              f"intact: {fix} and run the same command again") from exc
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError) as exc:
        raise RunStoreError(f"{store.path} holds cells that cannot be read back ({type(exc).__name__}: {one_line(exc)}); "
                            "it was left untouched") from exc


def _remove_temporaries(folder: Path) -> None:
    """Temporary files of the outputs (``.NAME.*.tmp``) that a process killed while writing them left."""
    for pattern in (".results.json.*.tmp", ".report.html.*.tmp", ".vector_*.safetensors.*.tmp", "plots/.*.png.*.tmp"):
        for tmp in folder.glob(pattern):
            tmp.unlink(missing_ok=True)


def _write_outputs(store: RunStore) -> dict[str, Path]:
    from steerscope.audit.pipeline import assemble, stored_direction
    from steerscope.vectors.file import SteeringVector

    results = assemble(store)
    folder = store.folder
    text = json.dumps(results, indent=1, allow_nan=False)
    files, plots = {}, {}
    for trait, res in results["traits"].items():
        cell = store.get(f"{trait}/vector")
        assert cell is not None  # assemble() has read its payload
        vec = SteeringVector({res["vector"]["layer"]: stored_direction(cell)}, res["vector"]["metadata"])
        files[f"vector_{trait}"] = vec.save(folder / f"vector_{trait}.safetensors", overwrite=True)
        plots[trait] = trait_plots(trait, res, folder / "plots")
        files |= {f"{trait}_{k}": v for k, v in plots[trait].items()}
    html = render_html(results, plots, store)
    written = {"results": atomic_write(folder / "results.json", lambda tmp: tmp.write_text(text), overwrite=True)} | files
    written["report"] = atomic_write(folder / "report.html", lambda tmp: tmp.write_text(html, encoding="utf-8"), overwrite=True)
    return written
