"""Merge per-layer null-space results into one report per model; draw spectra and stability figures.

Usage: python experiments/nullspace_figures.py [--dir docs/nullspace]
Reads DIR/MODEL-L*.json (experiments/nullspace_spectra.py) and DIR/recovery-*.json
(experiments/recovery_report.py); writes DIR/MODEL-spectra.png, DIR/MODEL-summary.md and
DIR/recovery-stability.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from steerscope.audit.markdown import nullspace_markdown
from steerscope.audit.plots import plot_spectra, plot_stability

parser = argparse.ArgumentParser()
parser.add_argument("--dir", default="docs/nullspace")
args = parser.parse_args()
folder = Path(args.dir)
models: dict[str, dict] = {}
for path in sorted(folder.glob("*-L*.json")):
    if path.name.startswith("recovery-"):
        continue
    part = json.loads(path.read_text())
    merged = models.setdefault(part["model"]["name"], part | {"layers": {}})
    merged["layers"] |= part["layers"]
for name, merged in models.items():
    merged["layers"] = dict(sorted(merged["layers"].items(), key=lambda kv: int(kv[0])))
    merged["config"]["layers"] = [int(x) for x in merged["layers"]]
    plot_spectra(merged, folder / f"{name}-spectra.png", overwrite=True)
    (folder / f"{name}-summary.md").write_text(nullspace_markdown(merged))
rows = [row for path in sorted(folder.glob("recovery-*.json")) for row in json.loads(path.read_text())["rows"]]
if rows:
    plot_stability(rows, folder / "recovery-stability.png", overwrite=True)
