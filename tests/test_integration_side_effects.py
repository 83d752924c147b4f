"""Integration: side effects and edits of the built-in formality vector on SmolLM2."""

import pytest

from steerscope.data.traits import builtin_pairs
from steerscope.edits import margins_under
from steerscope.extract import extract
from steerscope.intervene import Ablate
from steerscope.side_effects import Readout, SideEffectSettings, off_target

pytestmark = pytest.mark.integration
LAYER = 12


@pytest.fixture(scope="module")
def formality(smollm2):
    return extract(smollm2, builtin_pairs("formality", "train"), [LAYER]).directions[LAYER]


def test_the_formality_vector_moves_its_own_pair_margin_and_is_measured_on_every_other(smollm2, formality):
    readouts = [Readout(t, builtin_pairs(t, "test")[:8]) for t in ("formality", "sentiment", "truthfulness")]
    rows = {r["trait"]: r for r in off_target(smollm2, LAYER, formality, readouts, None, SideEffectSettings(alpha=2.0, doses=(1.0,)),
                                              "formality")}
    assert rows["formality"]["flagged"] and rows["formality"]["g"] > 0.5
    assert all(r["n"] == 8 and r["detectable_g"] > 0 and "p_holm" in r for t, r in rows.items() if t != "formality")


def test_ablating_the_attention_sink_dominates_an_ablation_of_the_trait_direction(smollm2, formality):
    pairs = builtin_pairs("formality", "test")[:8]
    base = margins_under(smollm2, LAYER, None, pairs).mean()
    with_sink = margins_under(smollm2, LAYER, Ablate(formality), pairs).mean() - base
    without_sink = margins_under(smollm2, LAYER, Ablate(formality, skip_sinks=True), pairs).mean() - base
    assert with_sink < 0 and without_sink < 0  # removing formality lowers the formal side's margin either way
    assert abs(with_sink) > 1.5 * abs(without_sink)  # but most of the full ablation's shift comes from the sink
