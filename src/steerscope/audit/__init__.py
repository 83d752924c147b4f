"""Audits of what a steering vector means."""

from steerscope.audit.identifiability import (
    audit_vectors,
    Condition,
    IdentifiabilitySettings,
    behavioural_scores,
    build_conditions,
    distributional_readout,
    reference_continuations,
    run_identifiability,
    summarise,
    verdict,
)
from steerscope.audit.nullspace import nullspace_audit
from steerscope.audit.sweep import alpha_sweep, environment_runs, run_extensions

__all__ = [
    "Condition", "IdentifiabilitySettings", "audit_vectors", "behavioural_scores", "build_conditions", "distributional_readout", "reference_continuations",
    "run_identifiability", "summarise", "verdict", "alpha_sweep", "environment_runs", "run_extensions",
    "nullspace_audit",
]
