"""Which numbers of an audit may change across torch / transformers releases, and by how much.

The small audit of a tiny model (``_resume_worker.py``, one trait) is compared with the results
recorded in ``golden/tiny_audit_results.json`` (torch 2.13.0, transformers 5.24.0). Tolerances:

- strings, booleans, integers and nulls (verdicts, statuses, chosen layer and α, counts, tokens):
  exactly equal;
- floats: relative 1e-4 or absolute 1e-6, whichever is larger — the size of a change of kernels
  between releases in float32 forward passes. Measured: the recorded results are byte-identical
  under transformers 5.18.0 and 5.24.0 (torch 2.13.0).

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
REL, ABS = 1e-4, 1e-6


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


def test_the_comparison_can_fail():
    assert differences({"a": [1.0, "yes"]}, {"a": [1.0 + 1e-7, "yes"]}) == []
    assert differences({"a": [1.0, "yes"]}, {"a": [1.001, "no"]}) == ["$.a[0]: 1.0 -> 1.001", "$.a[1]: 'yes' -> 'no'"]
    assert differences({"n": 3, "x": None}, {"n": 3.0, "y": None}) == ["$: key 'x' missing", "$: key 'y' added", "$.n: 3 -> 3.0"]


def test_audit_numbers_stay_within_the_stated_tolerances_of_the_recorded_release(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    new = json.loads((tmp_path / "run" / "results.json").read_text())
    if os.environ.get("STEERSCOPE_UPDATE_GOLDEN"):
        GOLDEN.write_text((tmp_path / "run" / "results.json").read_text())
    changed = differences(json.loads(GOLDEN.read_text()), new)
    if changed:
        pytest.fail(f"{len(changed)} numbers moved beyond the tolerances (first 20):\n" + "\n".join(changed[:20]))
