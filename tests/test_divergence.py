import math

import pytest
import torch

from steerscope.divergence import condition_divergences, kl_js
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.intervene import steer

PROMPTS = ["tell me about your weekend", "write a short poem about the moon", "hello"]
CONTINUATIONS = ["it was very good , thank you .", "the moon is big", "hi there my friend"]


def _vec(lm, seed):
    return {1: torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed))}


def test_kl_js_properties():
    g = torch.Generator().manual_seed(0)
    a = torch.log_softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), -1)
    b = torch.log_softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), -1)
    kl, js = kl_js(a, b)
    assert torch.allclose(kl, (a.exp() * (a - b)).sum(-1))
    assert torch.allclose(js, kl_js(b, a)[1])  # symmetric
    assert (js <= math.log(2) + 1e-12).all() and (js > 0).all()
    zero_kl, zero_js = kl_js(a, a)
    assert torch.equal(zero_kl, torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(zero_js, torch.zeros(5, dtype=torch.float64), atol=1e-15)


def _manual(lm, prompt, continuation, vec, alpha):
    ids = encode_prompt(lm.tokenizer, prompt)
    cont = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with steer(lm, vec, alpha), torch.no_grad():
        logits = lm.model(torch.tensor([ids + cont])).logits[0].double()
    return torch.log_softmax(logits[len(ids) - 1:len(ids) + len(cont) - 1], -1)


def test_matches_separate_unbatched_runs(lm):
    vecs, alphas = [None, _vec(lm, 1), _vec(lm, 2)], [0.0, 3.0, -2.0]
    div = condition_divergences(lm, PROMPTS, CONTINUATIONS, vecs, alphas, reference=0)
    for p, (prompt, cont) in enumerate(zip(PROMPTS, CONTINUATIONS)):
        ref = _manual(lm, prompt, cont, _vec(lm, 1), 0.0)
        for c in (1, 2):
            kl, js = kl_js(ref, _manual(lm, prompt, cont, vecs[c], alphas[c]))
            assert torch.allclose(div.kl[c][p], kl, atol=1e-4)
            assert torch.allclose(div.js[c][p], js, atol=1e-4)
    assert torch.equal(div.mean("kl")[0], torch.zeros(len(PROMPTS)))
    assert (div.mean("kl")[1] > 0).all() and div.mean("js").shape == (3, 3)


def test_zero_strength_and_identical_conditions_are_zero(tiny_models):
    lm = tiny_models["llama"]
    v = _vec(lm, 3)
    div = condition_divergences(lm, PROMPTS, CONTINUATIONS, [v, v, None], [2.0, 2.0, 0.0], reference=0)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in div.kl[1])
    assert (div.mean("kl")[2] > 0).all()


def test_chunking_does_not_change_results(tiny_models, monkeypatch):
    import steerscope.divergence as mod

    lm = tiny_models["gpt2"]
    vecs, alphas = [None, _vec(lm, 4)], [0.0, 5.0]
    whole = condition_divergences(lm, PROMPTS, CONTINUATIONS, vecs, alphas)
    monkeypatch.setattr(mod, "MAX_LOGIT_ELEMENTS", 1)
    one_by_one = condition_divergences(lm, PROMPTS, CONTINUATIONS, vecs, alphas)
    assert torch.allclose(whole.mean("kl"), one_by_one.mean("kl"), atol=1e-5)


def test_bad_input(tiny_models):
    lm = tiny_models["llama"]
    with pytest.raises(SteerscopeError, match="2 prompts but 1 continuations"):
        condition_divergences(lm, PROMPTS[:2], CONTINUATIONS[:1], [None], [0.0])
    with pytest.raises(SteerscopeError, match="reference condition 3"):
        condition_divergences(lm, PROMPTS, CONTINUATIONS, [None], [0.0], reference=3)
    with pytest.raises(SteerscopeError, match="empty continuation"):
        condition_divergences(lm, ["hi"], [""], [None], [0.0])
