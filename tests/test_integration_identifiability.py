"""Integration test of the identifiability audit's positive control on the real SmolLM2."""

import pytest

import steerscope as ss
from steerscope.audit.identifiability import (
    audit_vectors,
    behavioural_scores,
    build_conditions,
    difference_p,
    distributional_readout,
    evaluation_prompts,
    reference_continuations,
)
from steerscope.stats import prompt_means

pytestmark = pytest.mark.integration


def test_positive_control_is_detected_on_smollm2(smollm2):
    """Sentiment vector at layer 12, α = 3; the control adds the formality vector made ⟂ v.

    Both readouts must see the control: VADER scores of the completions (paired t-test over 12
    prompts) and the teacher-forced JS from v, whose lower CI bound must clear the audit's
    "negligible" threshold.
    """
    pytest.importorskip("vaderSentiment")
    from steerscope.score.base import get_scorer

    lm = smollm2
    layer = 12
    vec, control, control_trait = audit_vectors(lm, "sentiment", layer)
    assert control_trait == "formality"
    conds = [c for c in build_conditions(vec.directions[layer], 3.0, 1, 0, control.directions[layer])
             if c.kind in ("none", "v", "targeted")]
    prompts = evaluation_prompts("sentiment", "in_distribution", 12)
    config = ss.GenerationConfig(max_new_tokens=16, do_sample=True, temperature=0.8, seed=0)
    scores = {k: prompt_means(s) for k, s in behavioural_scores(lm, layer, conds, prompts, get_scorer("sentiment"), 3, config).items()}
    assert scores["v"].mean() > scores["none"].mean() and difference_p(scores["v"], scores["none"]) < 0.05
    assert difference_p(scores["targeted"], scores["v"]) < 0.05, scores
    continuations = reference_continuations(lm, layer, conds[1], prompts, 16)
    js = distributional_readout(lm, layer, conds, prompts, continuations)
    assert js["targeted"]["js"].min() > 0.1 * js["none"]["js"].mean()
