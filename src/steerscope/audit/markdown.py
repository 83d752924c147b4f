"""Markdown summary of an identifiability audit report (the dict from ``run_identifiability``)."""

from __future__ import annotations

from typing import Any


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ci(est: Any, low: Any, high: Any) -> str:
    return f"{_num(est)} [{_num(low)}, {_num(high)}]"


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
        f"- Vector: mean_diff on the train pairs, ‖v‖ = {_num(report['vector']['norm'])}, α = {cfg['alpha']:g}, "
        f"relative dose {_num(report['vector']['relative_dose'])}.",
        f"- Does v steer? g(v vs none) = {_ci(base.get('g'), base.get('g_low'), base.get('g_high'))}, "
        f"p = {_num(base.get('p_diff'), '.2g')}; JS(v, none) = {_num(base['js']['estimate'], '.4f')} nats.",
        f"- Scorer: {report['scorer']['name']} (held-out accuracy {_num(validity)}); "
        f"{cfg['n_prompts']} prompts ({cfg['env']}) × {cfg['samples_per_prompt']} samples; "
        f"equivalence margin |g| < {cfg['margin_g']:g}; seed {cfg['seed']}.",
        "",
        "| condition | mean score | g vs v [CI] | efficacy [CI] | TOST p (Holm) | diff p (Holm) | JS vs v [CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["conditions"].items():
        js = row.get("js") or {}
        lines.append(
            f"| {name} | {_num(row.get('mean'))} | {_ci(row.get('g'), row.get('g_low'), row.get('g_high'))} | "
            f"{_ci(row.get('efficacy'), row.get('efficacy_low'), row.get('efficacy_high'))} | "
            f"{_num(row.get('p_tost_holm'), '.3g')} | {_num(row.get('p_diff_holm'), '.3g')} | "
            f"{_ci(js.get('estimate'), js.get('low'), js.get('high'))} |"
        )
    lines += ["", f"Note: {report['statement']}.", ""]
    return "\n".join(lines)
