"""Markdown table of ``steerscope audit identifiability --protocol paper`` runs: paper says / we measure.

One row per (model, trait): Cohen's d of v against v + v⊥ at each α with the paper's reading, d of
v against the unsteered model (the vacuity check), the last-token logit shift of v + v⊥ relative to
a same-norm random direction, and the mean-difference vs PCA comparison.

Usage: python experiments/paper_tables.py docs/audits/paper/MODEL [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, fmt=".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def row(r: dict) -> str:
    cfg, ld, pca = r["config"], r["logit_distance"], r["mean_diff_vs_pca"]
    ds = "; ".join(f"{t['alpha']:g}: {_f(t['d_v_vs_perp_mean'])} vs {_f(t['d_v_vs_none'])}{' (vacuous)' if t['vacuous'] else ''}"
                   for t in r["orthogonal_test"])
    return (f"| {r['model']['name']} | {cfg['layer']} | {cfg['trait']} | {ds} | {100 * ld['perp_shift_smaller_by']:.0f} % | "
            f"{_f(pca['cos'])} / {_f(pca['d'])} |")


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("| model | layer | trait | α: d(v, v+v⊥) vs d(v, unsteered) | v+v⊥ logit shift smaller than random by "
          "| mean-diff vs PCA: cos / d |")
    print("|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        data = json.loads((Path(arg) / "results.json").read_text())
        print("\n".join(row(r) for r in data["traits"].values()))


if __name__ == "__main__":
    main()
