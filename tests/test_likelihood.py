import numpy as np
import pytest
import torch

from steerscope.data import builtin_pairs
from steerscope.encoding import encode_item, encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.intervene import steer
from steerscope.likelihood import completion_logprobs, continuation_logprobs, pair_margins, perplexities
from tests.conftest import CHAT_ITEMS


def _manual(lm, item):
    enc = encode_item(lm.tokenizer, item)
    with torch.no_grad():
        logits = lm.model(torch.tensor([enc.ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    s, e = enc.span
    return sum(float(logp[t - 1, enc.ids[t]]) for t in range(s, e))


def test_logprobs_match_a_manual_computation_and_batching(lm):
    got = completion_logprobs(lm, CHAT_ITEMS, batch_size=5)
    for i, item in enumerate(CHAT_ITEMS):
        assert float(got[i]) == pytest.approx(_manual(lm, item), abs=1e-3)
    assert torch.allclose(got, completion_logprobs(lm, CHAT_ITEMS, batch_size=1), atol=1e-3)


def test_pair_margins_respond_to_steering(tiny_models):
    lm = tiny_models["llama"]
    pairs = builtin_pairs("formality", "test")[:3]
    plain = pair_margins(lm, pairs)
    expected = completion_logprobs(lm, [p.positive for p in pairs]) - completion_logprobs(lm, [p.negative for p in pairs])
    assert torch.allclose(plain, expected)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    with steer(lm, {1: v}, 5.0):
        assert not torch.allclose(pair_margins(lm, pairs), plain)


def test_perplexities_match_unpadded_rows_and_mark_empty_continuations(lm):
    prompts = [encode_prompt(lm.tokenizer, p) for p in ("Tell me a story.", "Hi", "What is two plus two?")]
    conts = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Once upon a time there was", "", "Four.")]
    got = perplexities(lm, prompts, conts, batch_size=3)
    assert np.isnan(got[1])
    for i in (0, 2):
        logp = continuation_logprobs(lm, prompts[i], conts[i])
        expected = float(torch.exp(-logp.gather(1, torch.tensor(conts[i])[:, None]).double().mean()))
        assert got[i] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(SteerscopeError, match="2 prompts but 3"):
        perplexities(lm, prompts[:2], conts)
