"""Integration test of the identifiability audit's dose controls on the real SmolLM2."""

import pytest

from steerscope.audit.equivalence import Margin, readout_verdict
from steerscope.audit.identifiability import (
    audit_vector,
    build_conditions,
    distributional_readout,
    evaluation_prompts,
    js_readout,
    margin_readout,
    reference_continuations,
)
from steerscope.audit.readouts import pair_margins_by_condition
from steerscope.data.traits import builtin_pairs

pytestmark = pytest.mark.integration


def test_dose_controls_are_detected_on_smollm2(smollm2):
    """Sentiment vector at layer 12, α = 3: v moves the held-out pair margins, and both teacher-forced
    readouts resolve the dose control (1 − 2δ)·v and 0.5·v from v — the precondition of any
    equivalence verdict — at the quick profile's sizes (8 pairs, 8 prompts)."""
    lm, layer, alpha = smollm2, 12, 3.0
    v = audit_vector(lm, "sentiment", layer).directions[layer]
    conds = [c for c in build_conditions(v, alpha, 1, 0) if c.name != "v+grad"]
    pairs = builtin_pairs("sentiment", "test")[:8]
    margins = pair_margins_by_condition(lm, layer, {c.name: c.vector for c in conds}, alpha, pairs)
    prompts = evaluation_prompts("sentiment", "in_distribution", 8)
    js = distributional_readout(lm, layer, conds, prompts, reference_continuations(lm, layer, conds[1], prompts, 16))
    for data in (margin_readout(margins, conds), js_readout(js, conds)):
        out = readout_verdict(data, Margin(0.1), n_boot=200)
        assert out["effect"]["p"] < 0.05, out["effect"]
        assert out["dose_control_detected"], out["conditions"]["dose_control"]
        assert out["conditions"]["dose_half"]["p_different"] < 0.05
    assert (margins["v"] - margins["none"]).mean() > 0
