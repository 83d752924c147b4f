"""Markdown tables of identifiability audits: one row per (model, layer, trait).

Reads the ``results.json`` of ``steerscope audit identifiability`` runs (one trait or several)
and prints, per row: relative dose, scorer accuracy, g(v vs none) with CI, the efficacy of each
v + u draw, JS(v, v+u) / JS(v, none), the positive control's Holm p, and both verdicts.

Usage: python experiments/identifiability_tables.py docs/audits/RUN [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, fmt=".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def rows(path: Path) -> list[str]:
    data = json.loads((path / "results.json").read_text())
    reports = data["traits"].values() if "traits" in data else [data]
    out = []
    for r in reports:
        cfg, s, v = r["config"], r["summary"], r["verdict"]
        base = s["v_vs_none"]
        effs = [c.get("efficacy") for c in s["conditions"].values() if c["kind"] == "v+perp"]
        control = s["conditions"].get(s.get("positive_control") or "", {})
        validity = (r["scorer"].get("validity") or {}).get("heldout_accuracy")
        ratio = (s.get("distributional") or {}).get("ratio_perp_to_none")
        out.append(
            f"| {r['model']['name']} | {cfg['layer']} | {cfg['trait']} | {_f(r['vector']['relative_dose'])} | "
            f"{_f(validity)} | {_f(base['g'])} [{_f(base['g_low'])}, {_f(base['g_high'])}] | "
            f"{', '.join(_f(e) for e in effs)} | {_f(ratio)} | {_f(control.get('p_diff_holm'), '.2g')} | "
            f"{v['behavioural']['verdict']} | {v['distributional']['verdict']} |"
        )
    return out


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("| model | layer | trait | dose | scorer acc. | g(v vs none) [CI] | efficacy of v+u draws "
          "| JS(v,v+u)/JS(v,none) | control Holm p | behavioural | distributional |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        print("\n".join(rows(Path(arg))))


if __name__ == "__main__":
    main()
