"""Audits of what a steering vector means."""

from steerscope.audit.identifiability import (
    Condition,
    behavioural_scores,
    build_conditions,
    distributional_readout,
    reference_continuations,
    run_identifiability,
    summarise,
    verdict,
)

__all__ = [
    "Condition", "behavioural_scores", "build_conditions", "distributional_readout", "reference_continuations",
    "run_identifiability", "summarise", "verdict",
]
