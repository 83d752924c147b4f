"""Which numbers of an audit may change across torch / transformers releases, and by how much.

The small audit of a tiny model (``_resume_worker.py``, one trait) is compared with the results
recorded in ``golden/tiny_audit_results.json`` (torch 2.13.0, transformers 5.24.0). Tolerances:

- strings, booleans, integers and nulls (verdicts, statuses, chosen layer and α, counts, tokens):
  exactly equal;
- floats: relative 1e-3 or absolute 1e-5, whichever is larger — the size of a change of float32
  kernels, between releases or between CPUs. Measured: the recorded results are byte-identical
  under transformers 5.18.0 and 5.24.0 (torch 2.13.0) on the CPU that recorded them; on a CPU
  without AVX2 the same versions move p-values and efficacies by up to 4.4e-4 relative (an
  efficacy of 0.0162 by 7e-6);
- a recovery row whose own assumption test fails (``assumption.holds`` false: e.g. Gaussian-like
  sources, which ICA can rotate among) is compared by its verdict fields only. The audit itself
  says its direction is not determined by the data, and FastICA does land elsewhere under a change
  of rounding (on the CPU without AVX2: matched component 5 → 3, cosine to the audited vector
  0.66 → 0.76, the same verdict).

A release that moves any number further fails here with the list of what changed. After an
intended change of the audit, record the results again with
``STEERSCOPE_UPDATE_GOLDEN=1 python -m pytest tests/test_version_drift.py``.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "tiny_audit_results.json"
WORKER = Path(__file__).with_name("_resume_worker.py")
REL, ABS = 1e-3, 1e-5
VERDICT_FIELDS = ("method", "trait", "identifiable", "identifies", "class_dim", "symmetry", "reason")


def differences(old, new, path="$"):
    """Every place where ``new`` departs from ``old`` beyond the tolerances, as readable lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{path}: key {k!r} {'missing' if k in old else 'added'}" for k in sorted(set(old) ^ set(new))]
        return out + [d for k in old if k in new for d in differences(old[k], new[k], f"{path}.{k}")]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} items -> {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    if isinstance(old, float) and isinstance(new, float):
        same = (math.isnan(old) and math.isnan(new)) or math.isclose(old, new, rel_tol=REL, abs_tol=ABS)
        return [] if same else [f"{path}: {old!r} -> {new!r}"]
    return [] if type(old) is type(new) and old == new else [f"{path}: {old!r} -> {new!r}"]


def verdicts_only(results: dict) -> dict:
    """``results`` with each recovery row whose assumption fails cut down to its verdict fields."""
    def cut(row):
        if row.get("assumption", {}).get("holds") is not False:
            return row
        kept = {k: row[k] for k in VERDICT_FIELDS if k in row}
        return kept | {"assumption.holds": False, "agreement.agrees": row.get("agreement", {}).get("agrees")}
    traits = {name: t | {"recovery": [cut(r) for r in t.get("recovery", [])]} for name, t in results["traits"].items()}
    return results | {"traits": traits}


def test_the_comparison_can_fail():
    assert differences({"a": [1.0, "yes"]}, {"a": [1.0 + 1e-7, "yes"]}) == []
    assert differences({"a": [1.0, "yes"]}, {"a": [1.01, "no"]}) == ["$.a[0]: 1.0 -> 1.01", "$.a[1]: 'yes' -> 'no'"]
    assert differences({"n": 3, "x": None}, {"n": 3.0, "y": None}) == ["$: key 'x' missing", "$: key 'y' added", "$.n: 3 -> 3.0"]


def test_an_unidentified_recovery_row_is_compared_by_its_verdicts():
    row = {"method": "ica", "identifiable": False, "class_dim": 8, "assumption": {"holds": False, "statistic": 7.1},
           "agreement": {"agrees": False, "cos": 0.66}}
    rotated = row | {"assumption": {"holds": False, "statistic": 17.8}, "agreement": {"agrees": False, "cos": 0.76}}
    assert differences(verdicts_only({"traits": {"t": {"recovery": [row]}}}),
                       verdicts_only({"traits": {"t": {"recovery": [rotated]}}})) == []
    flipped = rotated | {"identifiable": True}
    assert differences(verdicts_only({"traits": {"t": {"recovery": [row]}}}),
                       verdicts_only({"traits": {"t": {"recovery": [flipped]}}})) == ["$.traits.t.recovery[0].identifiable: False -> True"]
    held = row | {"assumption": {"holds": True, "statistic": 7.1}}
    moved = held | {"agreement": {"agrees": False, "cos": 0.76}}
    assert differences(verdicts_only({"traits": {"t": {"recovery": [held]}}}),
                       verdicts_only({"traits": {"t": {"recovery": [moved]}}})) == ["$.traits.t.recovery[0].agreement.cos: 0.66 -> 0.76"]


def test_audit_numbers_stay_within_the_stated_tolerances_of_the_recorded_release(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    new = json.loads((tmp_path / "run" / "results.json").read_text())
    if os.environ.get("STEERSCOPE_UPDATE_GOLDEN"):
        GOLDEN.write_text((tmp_path / "run" / "results.json").read_text())
    changed = differences(verdicts_only(json.loads(GOLDEN.read_text())), verdicts_only(new))
    if changed:
        pytest.fail(f"{len(changed)} numbers moved beyond the tolerances (first 20):\n" + "\n".join(changed[:20]))
