"""Markdown tables of docs/results.md from side-effect, robustness and monitoring runs.

Expects ``ROOT/{model}/{trait}/se/side_effects.json`` and ``.../rob/robustness.json`` from
``steerscope audit side-effects|robustness --quick``, and optionally ``.../se-full/side_effects.json``
(the full profile, with the add / clamp / ablate comparison) and ``.../monitor/monitor.json``.
Usage: python experiments/side_effect_tables.py ROOT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from steerscope.data.traits import TRAITS
from steerscope.formatting import ci, num

SHORT = {"formality": "form.", "sentiment": "sent.", "politeness": "polit.", "truthfulness": "truth.", "agreeableness": "agree.",
         "refusal": "refus.", "evaluation_awareness": "eval."}


def load(root: Path, model: str, trait: str, part: str, name: str) -> dict | None:
    path = root / model / trait / part / name
    return json.loads(path.read_text()) if path.exists() else None


def reports(root: Path, model: str, part: str, name: str):
    """``(trait, report)`` for every built-in trait that has the report, in trait order."""
    for trait in TRAITS:
        rep = load(root, model, trait, part, name)
        if rep is not None:
            yield trait, rep


def g(row: dict | None, flag: bool = True) -> str:
    if not row or row.get("g") is None:
        return "—"
    return ci(row["g"], row["g_low"], row["g_high"], ".2f") + (" ⚑" if flag and row.get("flagged") else "")


def interval(x: dict, fmt: str = ".2f") -> str:
    return ci(x["mean"], x["low"], x["high"], fmt)


def matrix(root: Path, model: str, readout: str) -> list[str]:
    cols = [t for t in TRAITS]
    lines = ["| vector ↓ / readout → | " + " | ".join(SHORT[c] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for trait, se in reports(root, model, "se", "side_effects.json"):
        rows = {r["trait"]: r for r in se["side_effects"]["matrix"] if r["readout"] == readout}
        cells = [("**" + g(rows.get(c)) + "**") if c == trait and rows.get(c) else g(rows.get(c)) for c in cols]
        lines.append(f"| {trait} | " + " | ".join(cells) + " |")
    return lines


def costs(root: Path, model: str) -> list[str]:
    lines = ["| trait | relative dose at α = 2 | capability: unsteered → α (change) | → 2α (change) | shortest-choice baseline | "
             "perplexity ratio at α | at 2α | neutral KL at α (nats) | at 2α |", "|---|---|---|---|---|---|---|---|---|"]
    for trait, rep in reports(root, model, "se", "side_effects.json"):
        se = rep["side_effects"]
        cap = se["capability"]
        base = num(sum(cap["shortest_choice_accuracy"].values()) / len(cap["shortest_choice_accuracy"]), ".0%")
        lines.append(f"| {trait} | {rep['vector']['relative_dose']:.3f} | {cap['accuracy_unsteered']:.0%} → {cap['doses']['1']['accuracy']:.0%} "
                     f"({interval(cap['doses']['1']['change'], '+.2f')}) | {cap['doses']['2']['accuracy']:.0%} "
                     f"({interval(cap['doses']['2']['change'], '+.2f')}) | {base} | {interval(se['fluency']['1']['ppl_ratio'])} | "
                     f"{interval(se['fluency']['2']['ppl_ratio'])} | {interval(se['kl']['1'], '.3f')} | {interval(se['kl']['2'], '.3f')} |")
    return lines


def instructions(root: Path, model: str) -> list[str]:
    lines = ["| trait | readout | steering g, no instruction | steering g, opposing instruction | opposing instruction alone | "
             "supporting instruction alone | retained under opposition |", "|---|---|---|---|---|---|---|"]
    for trait, rep in reports(root, model, "rob", "robustness.json"):
        ins = rep["robustness"]["instructions"]
        for readout in ("pair_margin", "trait_score"):
            part = ins.get(readout)
            if not part:
                continue
            kept = part["retained_under_opposing"]
            lines.append(f"| {trait} | {readout.replace('_', ' ')} ({part['steering']['none']['n']} {part['unit']}s) | "
                         f"{g(part['steering']['none'])} | {g(part['steering']['opposing'])} | {g(part['instruction_alone']['opposing'])} | "
                         f"{g(part['instruction_alone']['supporting'])} | {num(kept['ratio'], '.2f')} [{num(kept['low'], '.2f')}, "
                         f"{num(kept['high'], '.2f')}] {kept['status']} |")
    return lines


def environments(root: Path, model: str) -> list[str]:
    lines = ["| trait | pairs: in-distribution | topic shift | genre shift | prompts: in-distribution | topic shift | genre shift | "
             "paraphrased prompts |", "|---|---|---|---|---|---|---|---|"]
    for trait, rep in reports(root, model, "rob", "robustness.json"):
        env = rep["robustness"]["environments"]
        pm, ts = env["pair_margin"], env["trait_score"]
        para = env.get("paraphrase")
        lines.append(f"| {trait} | " + " | ".join(g(pm.get(e), False) for e in ("in_distribution", "topic_shift", "genre_shift")) + " | "
                     + " | ".join(g(ts.get(e), False) for e in ("in_distribution", "topic_shift", "genre_shift")) + " | "
                     + (g(para["paraphrased"], False) if para else "—") + " |")
    return lines


def layers(root: Path, model: str) -> list[str]:
    lines = ["| trait | relative dose | pair-margin g by layer (audited layer in bold) | neutral KL by layer (nats) |", "|---|---|---|---|"]
    for trait, rep in reports(root, model, "rob", "robustness.json"):
        lay = rep["robustness"]["layers"]

        def mark(r: dict, text: str) -> str:
            return f"**{text}**" if r["layer"] == lay["audited_layer"] else text

        gs = ", ".join(mark(r, f"L{r['layer']} {num(r['effect']['g'], '.2f')}") for r in lay["rows"])
        kls = ", ".join(mark(r, f"L{r['layer']} {num(r['kl']['mean'], '.2f')}") for r in lay["rows"])
        lines.append(f"| {trait} | {lay['relative_dose']:.3f} | {gs} | {kls} |")
    return lines


def stability(root: Path, model: str) -> list[str]:
    lines = ["| trait | cos with bootstrap resamples | cos between disjoint halves | learning curve: cos with all pairs, g (per draw) |",
             "|---|---|---|---|"]
    for trait, rep in reports(root, model, "rob", "robustness.json"):
        st = rep["robustness"]["stability"]
        curve = "; ".join(f"{c['n_pairs']}: {num(c['cos_with_full']['mean'], '.3f')}, " + "/".join(num(x, ".2f") for x in c["g"])
                          for c in st["learning_curve"])
        lines.append(f"| {trait} | {interval(st['bootstrap_cos'], '.3f')} | {interval(st['split_half_cos'], '.3f')} | {curve} |")
    return lines


def edits(root: Path, model: str) -> list[str]:
    lines = ["| trait | comparison | on-target shift (nats) | edit: parameter, mean / largest off-target \\|g\\| | most specific |",
             "|---|---|---|---|---|"]
    for trait, rep in reports(root, model, "se-full", "side_effects.json"):
        ed = rep["side_effects"]["edits"]
        if "error" in ed or "not_run" in ed:
            lines.append(f"| {trait} | — | — | {ed.get('error') or ed.get('not_run')} | — |")
            continue
        for kind in ("induce", "remove"):
            comp = ed.get(kind)
            if not comp:
                continue
            cells = "; ".join(f"{n} ({', '.join(f'{k} {v:.3g}' for k, v in e['parameter'].items()) or 'no parameter'}): "
                              f"{num(e['off_target_mean_abs_g'], '.2f')} / {num(e['off_target_max_abs_g'], '.2f')}"
                              for n, e in comp["edits"].items())
            lines.append(f"| {trait} | {kind} | {num(comp['on_target_shift'], '.3g')} | {cells} | {comp['most_specific']} |")
    return lines


def framing(root: Path, model: str) -> list[str]:
    rep = load(root, model, "evaluation_awareness", "se-full", "side_effects.json") or load(root, model, "evaluation_awareness", "se",
                                                                                           "side_effects.json")
    fr = (rep or {}).get("side_effects", {}).get("edits", {}).get("framing")
    if not fr:
        return []
    gap = fr["gap"]
    return [f"- {model}: framing gap (mean per-token JS, nats, {fr['n_pairs']} pairs) unedited {interval(gap['unedited'], '.4f')}, "
            f"v̂ ablated {interval(gap['ablate_v'], '.4f')}, {fr['n_random']} random directions ablated "
            f"{interval(gap['ablate_random_mean'], '.4f')}; closed by v̂ {interval(fr['closed_by_v'], '.0%')}, by random directions "
            f"{interval(fr['closed_by_random'], '.0%')}."]


def monitoring(root: Path, model: str) -> list[str]:
    lines = []
    for trait in ("refusal", "evaluation_awareness"):
        rep = load(root, model, trait, "monitor", "monitor.json")
        if rep is None:
            continue
        p, c = rep["pairs"], rep["completions"]
        det, track = c["steered_detection"], c.get("tracking")
        lines.append(f"| {model} | {trait} | {rep['layer']} | {num(rep['vector']['norm'], '.3g')} | {ci(p['auc'], p['auc_low'], p['auc_high'], '.3f')} | "
                     f"{ci(p['accuracy'], p['accuracy_low'], p['accuracy_high'], '.3f')} | {ci(det['auc'], det['ci'][0], det['ci'][1], '.3f')} | "
                     + (ci(track["spearman"], track["ci"][0], track["ci"][1], ".3f") if track else "no scorer") + " |")
    return lines


def main() -> None:
    root = Path(sys.argv[1])
    models = [m.name for m in sorted(root.iterdir()) if m.is_dir()]
    for model in models:
        for title, fn in (("off-target matrix, pair margin (8 held-out pairs per readout)", lambda m: matrix(root, m, "pair_margin")),
                          ("off-target matrix, trait score (6 neutral prompts)", lambda m: matrix(root, m, "trait_score")),
                          ("costs", lambda m: costs(root, m)), ("instructions", lambda m: instructions(root, m)),
                          ("environments", lambda m: environments(root, m)), ("layers", lambda m: layers(root, m)),
                          ("stability", lambda m: stability(root, m)), ("edits", lambda m: edits(root, m))):
            print(f"\n### {model}: {title}\n")
            print("\n".join(fn(model)))
        print("\n".join(framing(root, model)))
    print("\n| model | trait | layer | ‖v‖ | held-out pairs: AUC | accuracy at the train threshold | +2·v vs −2·v completions: AUC | "
          "projection vs trait score: Spearman |\n|---|---|---|---|---|---|---|---|")
    for model in models:
        print("\n".join(monitoring(root, model)))


if __name__ == "__main__":
    main()
