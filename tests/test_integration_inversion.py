"""Exact recovery of natural states on the real SmolLM2-135M (a few prompts; about a minute on 2 CPU cores)."""

import pytest

import steerscope as ss
from steerscope.encoding import encode_prompt
from steerscope.invert import calibrate_threshold, hidden_states, invert

pytestmark = pytest.mark.integration

LAYER = 12


def test_natural_states_of_smollm2_are_recovered_exactly(smollm2):
    prompts = ss.builtin_prompts("formality", "in_distribution")[:2]
    seqs = [encode_prompt(smollm2.tokenizer, p) for p in prompts]
    calibration = encode_prompt(smollm2.tokenizer, ss.builtin_prompts("sentiment", "topic_shift")[0])
    th = calibrate_threshold(smollm2, LAYER, [calibration], last=4)
    assert th.noise < 1e-2 < th.margin / 2
    vocab = smollm2.model.get_input_embeddings().weight.shape[0]
    for ids in seqs:
        res = invert(smollm2, hidden_states(smollm2, ids, LAYER), LAYER, th.epsilon, prefix=ids[:-4])
        assert res.tokens == ids
        assert all(res.accepted)
        assert max(res.tried) < vocab // 10
