"""Integration test of the identifiability audit's dose controls on the real SmolLM2."""

import pytest

from steerscope.audit import equivalence, identifiability, readouts
from steerscope.data.traits import builtin_pairs

pytestmark = pytest.mark.integration


def _readouts(lm, alpha):
    layer = 12
    v = identifiability.audit_vector(lm, "sentiment", layer).directions[layer]
    conds = [c for c in identifiability.build_conditions(v, alpha, 1, 0) if c.name != "v+grad"]
    margins = readouts.pair_margins_by_condition(lm, layer, {c.name: c.vector for c in conds}, alpha,
                                                 builtin_pairs("sentiment", "test")[:8])
    prompts = identifiability.evaluation_prompts("sentiment", "in_distribution", 8)
    continuations = identifiability.reference_continuations(lm, layer, conds[1], prompts, 16)
    js = identifiability.distributional_readout(lm, layer, conds, prompts, continuations)
    return [equivalence.readout_verdict(data, equivalence.Margin(0.1), n_boot=200)
            for data in (identifiability.margin_readout(margins, conds), identifiability.js_readout(js, conds))]


def test_dose_controls_on_smollm2_both_ways(smollm2):
    """Sentiment vector at layer 12 of SmolLM2, 8 held-out pairs and 8 prompts.

    At α = 1 the pair margin still grows with dose: both teacher-forced readouts resolve the dose
    controls (1 − 2δ)·v and 0.5·v from v. At α = 3 the margin has passed its peak (measured: 0.8·v
    and 0.5·v give larger margins than v), so the margin cannot resolve δ there and must not call
    any draw equivalent.
    """
    for out in _readouts(smollm2, 1.0):
        assert out["effect"]["p"] < 0.05, out["effect"]
        assert out["dose_control_detected"], (out["readout"], out["conditions"]["dose_control"])
        assert out["conditions"]["dose_half"]["p_different"] < 0.05
    margin, _ = _readouts(smollm2, 3.0)
    assert not margin["dose_control_detected"] and margin["conditions"]["dose_control"]["efficacy"] > 1
    assert margin["verdict"] != "equivalent", margin["reason"]
