"""Audits of what a steering vector means."""

from steerscope.audit.equivalence import Margin, ReadoutData, readout_verdict
from steerscope.audit.identifiability import (
    Condition,
    IdentifiabilitySettings,
    audit_vector,
    behavioural_scores,
    build_conditions,
    distributional_readout,
    reference_continuations,
    run_identifiability,
)
from steerscope.audit.nullspace import nullspace_audit
from steerscope.audit.pipeline import run
from steerscope.audit.readouts import ClassSample, class_fraction, margin_gradient, pair_margins_by_condition
from steerscope.audit.sweep import alpha_sweep, environment_runs, run_extensions

__all__ = [
    "Condition", "IdentifiabilitySettings", "Margin", "ReadoutData", "ClassSample", "audit_vector", "behavioural_scores",
    "build_conditions", "distributional_readout", "reference_continuations", "run_identifiability", "readout_verdict",
    "margin_gradient", "pair_margins_by_condition", "class_fraction", "alpha_sweep", "environment_runs", "run_extensions",
    "nullspace_audit", "run",
]
