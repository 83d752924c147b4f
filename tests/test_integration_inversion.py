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


def test_a_planted_prompt_state_of_smollm2_is_judged_reachable_with_that_prompt(smollm2):
    """v = h(q)_t − h(p)_t, added at t only: the steered state is q's, and the audit must say so."""
    from steerscope.audit.reachability import AuditSettings, run_reachability
    from steerscope.encoding import prompt_user_span
    from steerscope.invert import SearchConfig

    prompt = ss.builtin_prompts("formality", "in_distribution")[0]
    ids = encode_prompt(smollm2.tokenizer, prompt)
    t = prompt_user_span(smollm2.tokenizer, prompt, ids)[1] - 2  # a word inside the user's message
    q = list(ids)
    q[t] = smollm2.tokenizer(" tomorrow", add_special_tokens=False)["input_ids"][0]
    assert q[t] != ids[t]
    v = hidden_states(smollm2, q, LAYER)[t] - hidden_states(smollm2, ids, LAYER)[t]
    calibration = [ss.builtin_prompts("sentiment", "topic_shift")[0]]
    settings = AuditSettings(positions=f"{t}:{t + 1}", steer_at="searched", alphas=(1.0,), sweep_prompts=1, max_new_tokens=2,
                             search=SearchConfig(budget=256, max_candidates=512))
    report = run_reachability(smollm2, v, LAYER, 1.0, [prompt], calibration, settings=settings)
    assert report["summary"]["verdict"] == "reachable"
    assert report["summary"]["reachable_prompt"] == smollm2.tokenizer.decode(q)
    (row,) = report["prompts"][0]["positions"]
    assert row["steered_token"] == q[t] and row["steered_status"] == "found" and row["natural_recovered"]
