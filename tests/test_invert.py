import math

import pytest
import torch

from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.invert import (
    SearchConfig,
    calibrate_threshold,
    embedding_space,
    hidden_states,
    invert,
    score_candidates,
)

PROMPT = "hello there, how are you today my friend? tell me about your weekend"
LAYER = 2


def _ids(lm, prompt=PROMPT):
    return encode_prompt(lm.tokenizer, prompt)


def test_batched_kv_scoring_equals_one_by_one_and_full_recompute(lm):
    ids = _ids(lm)
    t = 9
    target = hidden_states(lm, ids, LAYER)[t]
    candidates = list(range(0, 60, 3))
    batched = score_candidates(lm, LAYER, ids[:t], candidates, target, batch_size=8)
    single = torch.cat([score_candidates(lm, LAYER, ids[:t], [c], target) for c in candidates])
    full = torch.stack([(hidden_states(lm, ids[:t] + [c], LAYER)[t].double() - target.double()).norm().float() for c in candidates])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched, full, atol=1e-5)
    assert float(score_candidates(lm, LAYER, ids[:t], [ids[t]], target)[0]) < 1e-4


def test_embedding_space_matches_the_module(tiny_models):
    for arch, scale in (("llama", 1.0), ("gemma3", math.sqrt(32))):
        space = embedding_space(tiny_models[arch])
        assert space.scale == pytest.approx(scale, rel=1e-5)
        assert space.weight.shape == (len(tiny_models[arch].tokenizer), 32)
        assert torch.allclose(space.sq_norms, space.weight.float().norm(dim=-1) ** 2, rtol=1e-5)


def test_nearest_rows_are_those_of_a_brute_force_distance(tiny_models):
    space = embedding_space(tiny_models["gemma3"])
    e = space.weight[7].float() + 0.01 * torch.randn(space.weight.shape[1], generator=torch.Generator().manual_seed(0))
    brute = (space.weight.float() - e).norm(dim=-1)
    assert space.nearest(e, 5).tolist() == brute.topk(5, largest=False).indices.tolist()
    exclude = torch.zeros(space.weight.shape[0], dtype=torch.bool)
    exclude[brute.topk(3, largest=False).indices] = True
    assert space.nearest(e, 4, exclude).tolist() == brute.masked_fill(exclude, math.inf).topk(4, largest=False).indices.tolist()
    assert len(space.nearest(e, 10**9, exclude)) == space.weight.shape[0] - 3  # k beyond the rows left: all of them


def test_threshold_lies_between_noise_floor_and_half_margin(lm):
    th = calibrate_threshold(lm, LAYER, [_ids(lm), _ids(lm, "write a short poem about the moon")])
    assert th.noise == max(max(th.noise_floor), th.noise)
    assert th.noise <= th.epsilon < th.margin / 2
    assert th.epsilon == pytest.approx(math.sqrt(th.noise * th.margin / 2))
    assert len(th.noise_floor) == len(th.margins) == len(_ids(lm)) + len(_ids(lm, "write a short poem about the moon"))
    info = th.to_json()
    assert info["n_positions"] == len(th.noise_floor) and info["epsilon"] == th.epsilon
    last = calibrate_threshold(lm, LAYER, [_ids(lm)], last=4)
    assert len(last.noise_floor) == 4


@pytest.mark.parametrize("policy, fixed_order, prior", [("gradient", False, False), ("gradient", True, False), ("gradient", False, True),
                                                       ("exhaustive", False, False)])
def test_natural_states_are_recovered_exactly(lm, policy, fixed_order, prior):
    ids = _ids(lm)
    th = calibrate_threshold(lm, LAYER, [_ids(lm, "what is the weather like in the city")])
    cfg = SearchConfig(policy=policy, chunk=64, fixed_order=fixed_order, prior=prior)
    res = invert(lm, hidden_states(lm, ids, LAYER), LAYER, th.epsilon, config=cfg)
    assert res.tokens == ids
    assert all(res.accepted) and max(res.distances) <= th.epsilon
    assert res.positions == list(range(len(ids)))
    assert all(tk[0] == tok and tk == sorted(tk, key=tk.index) for tk, tok in zip(res.topk_tokens, ids))
    assert all(d == sorted(d) for d in res.topk_distances)
    assert all(1 <= n <= len(lm.tokenizer) for n in res.tried)


def test_a_fixed_order_starts_with_the_same_round_and_recovers_without_the_fallback(lm):
    """Both orders propose the same first round (the gain at the mean embedding); from the second round on,
    the fixed order continues down that ranking while the other re-ranks at the moved proxy (compared on
    the real models in experiments/gradient_policy_steps.py)."""
    ids = _ids(lm)
    target = hidden_states(lm, ids, LAYER)
    runs = {(fixed, 1): invert(lm, target, LAYER, 0.0, config=SearchConfig(fixed_order=fixed, fallback=False, budget=32))
            for fixed in (False, True)}
    assert runs[False, 1].topk_tokens == runs[True, 1].topk_tokens and runs[False, 1].tried == runs[True, 1].tried
    th = calibrate_threshold(lm, LAYER, [_ids(lm, "what is the weather like in the city")])
    whole = invert(lm, target, LAYER, th.epsilon, config=SearchConfig(fixed_order=True, fallback=False, budget=len(lm.tokenizer)))
    assert whole.tokens == ids and all(whole.accepted)  # the order runs out without error; the nearest half covers the rest


def test_the_prior_scores_the_models_likeliest_next_tokens_first(lm):
    """With ``prior``, the first batch at a position is the model's own top next tokens after the prefix, and the
    fallback goes down that ranking: a state planted at the prior's rank 0 is found in that batch (32 scored); one at
    rank 39 by the gradient round of 32 that follows (64) or else in the fallback's first chunk of 8 (72)."""
    from steerscope.invert import NextTokenPrior

    ids = _ids(lm)[:9]
    full = lm.model(torch.tensor([ids])).logits[0, -1].detach()
    order = NextTokenPrior(lm, ids).order(len(lm.tokenizer))
    assert int(order[0]) == int(full.argmax()) and torch.equal(order, full[: len(lm.tokenizer)].argsort(descending=True, stable=True))
    th = calibrate_threshold(lm, LAYER, [_ids(lm, "what is the weather like in the city")])
    cfg = SearchConfig(prior=True, budget=1, chunk=8)
    for rank, tried in ((0, (32,)), (39, (64, 72))):
        token = int(order[rank])
        target = hidden_states(lm, ids + [token], LAYER)
        res = invert(lm, target, LAYER, th.epsilon, prefix=ids, config=cfg)
        assert res.tokens[-1] == token and res.accepted == [True] and res.tried[0] in tried, (rank, res.tried)


def test_last_layer_and_given_prefix(tiny_models):
    lm = tiny_models["llama"]
    ids = _ids(lm)
    last = lm.n_layers - 1
    th = calibrate_threshold(lm, last, [ids])
    res = invert(lm, hidden_states(lm, ids, last), last, th.epsilon, prefix=ids[:5])
    assert res.tokens == ids and res.start == 5 and len(res.distances) == len(ids) - 5


def test_without_fallback_the_best_candidate_is_kept_and_not_accepted(tiny_models):
    lm = tiny_models["llama"]
    ids = _ids(lm)
    target = hidden_states(lm, ids, LAYER) + 0.5 * torch.randn(len(ids), lm.d_model, generator=torch.Generator().manual_seed(0))
    res = invert(lm, target, LAYER, 1e-6, config=SearchConfig(budget=32, batch=16, fallback=False))
    assert not any(res.accepted)
    assert res.tried == [32] + [16 + 32] * (len(ids) - 1)  # the prior's batch of 16 from the second position on (none without a prefix)
    plain = invert(lm, target, LAYER, 1e-6, config=SearchConfig(budget=32, batch=16, fallback=False, prior=False))
    assert all(n == 32 for n in plain.tried)
    assert all(d == tk[0] for d, tk in zip(res.distances, res.topk_distances))
    assert res.to_json()["second"] == [d[1] for d in res.topk_distances]


def test_bad_input_is_reported(tiny_models):
    lm = tiny_models["gpt2"]  # context of 256 positions
    ids = _ids(lm)
    target = hidden_states(lm, ids, LAYER)
    with pytest.raises(SteerscopeError, match="out of range"):
        invert(lm, target, 7, 1e-3)
    with pytest.raises(SteerscopeError, match="shape"):
        invert(lm, target[:, :5], LAYER, 1e-3)
    with pytest.raises(SteerscopeError, match="context of .*256 tokens"):
        hidden_states(lm, ids * 20, LAYER)
    with pytest.raises(SteerscopeError, match="unknown search policy"):
        SearchConfig(policy="random")
