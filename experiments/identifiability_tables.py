"""Markdown tables of identifiability audits: one row per (model, layer, trait).

Reads the ``results.json`` of ``steerscope audit identifiability`` runs (one trait or several) and
prints two tables. Verdicts: relative dose, scorer accuracy, g(v vs none) with CI, and for each
readout its verdict with the mean efficacy of the v + u draws (scalar readouts) or the mean of
JS(v, v + u) / JS(v, (1 − δ)v) (distribution). Class size and planning: the Monte Carlo share of
v + u within δ at ‖u‖ = ‖v‖ with its first-order prediction, whether the dose control was detected,
and the number of units needed for 80 % power at δ, per readout.

Usage: python experiments/identifiability_tables.py docs/audits/RUN [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

READOUTS = ("trait_score", "pair_margin", "distribution")


def _f(x, fmt=".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _reports(path: Path) -> list[dict]:
    data = json.loads((path / "results.json").read_text())
    return list(data["traits"].values()) if "traits" in data else [data]


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _cell(res: dict) -> str:
    rows = [res["conditions"][d] for d in res["draws"]]
    value = _mean([r.get("efficacy") for r in rows]) if res["kind"] == "scalar" else _mean([r.get("js_over_margin") for r in rows])
    return f"{res['verdict']} ({_f(value)})"


def _share(row: dict | None) -> str:
    if not row:
        return "n/a"
    predicted = f"; pred. {_f(row.get('predicted'))}" if row.get("predicted") is not None else ""
    return f"{_f(row['fraction'])} [{_f(row['low'])}, {_f(row['high'])}]{predicted}"


def verdict_row(r: dict) -> str:
    cfg, base = r["config"], r["v_vs_none"]
    validity = (r["scorer"].get("validity") or {}).get("heldout_accuracy")
    cells = " | ".join(_cell(r["readouts"][k]) for k in READOUTS)
    return (f"| {r['model']['name']} | {cfg['layer']} | {cfg['trait']} | {_f(r['vector']['relative_dose'])} | {_f(validity)} | "
            f"{_f(base['g'])} [{_f(base['g_low'])}, {_f(base['g_high'])}] | {cells} |")


def class_row(r: dict) -> str:
    cfg, classes = r["config"], r["class_size"]
    control = " / ".join("yes" if r["readouts"][k]["dose_control_detected"] else "no" for k in READOUTS)
    needed = " / ".join(str(r["readouts"][k]["planning"]["prompts_needed"] or "—") for k in READOUTS)
    return (f"| {r['model']['name']} | {cfg['layer']} | {cfg['trait']} | {_share((classes.get('pair_margin') or {}).get('1'))} | "
            f"{_share((classes.get('distribution') or {}).get('1'))} | {control} | {needed} |")


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    reports = [r for arg in sys.argv[1:] for r in _reports(Path(arg))]
    print("| model | layer | trait | dose | scorer acc. | g(v vs none) [CI] | trait score (efficacy of v+u) "
          "| pair margin (efficacy of v+u) | distribution (JS / JS margin) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(verdict_row(r) for r in reports))
    print()
    print("| model | layer | trait | pair margin: share of v+u within δ [95 % CI]; first-order prediction "
          "| distribution: share within δ [95 % CI] | dose control detected (score / margin / distribution) "
          "| n for 80 % power at δ (prompts / pairs / prompts) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(class_row(r) for r in reports))


if __name__ == "__main__":
    main()
