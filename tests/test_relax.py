"""The continuous relaxation and the whole-span search, on planted targets of a tiny model."""

import pytest
import torch

from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.invert import PrefixCache, calibrate_threshold, embedding_space, hidden_states
from steerscope.relax import RelaxConfig, relax
from steerscope.sequence_search import SequenceConfig, sequence_search

LAYER = 2


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def planted(llama):
    """A prompt ``p``, and ``q``: ``p`` with three tokens of its span ``start..end-1`` replaced."""
    p = encode_prompt(llama.tokenizer, "tell me about your weekend")
    vocab = embedding_space(llama).weight.shape[0]
    end = len(p) - 2
    start = end - 3
    q = list(p[:end])
    for t in range(start, end):
        q[t] = (p[t] * 7 + 3) % vocab
    assert all(q[t] != p[t] for t in range(start, end))
    eps = calibrate_threshold(llama, LAYER, [encode_prompt(llama.tokenizer, "help me write a letter to my friend")]).epsilon
    return p[:end], q, start, eps


def test_relaxation_reaches_a_planted_continuous_state(llama, planted):
    p, _, start, _ = planted
    space = embedding_space(llama)
    weight, scale = space.weight, space.scale
    soft = torch.randn(len(p) - start, llama.d_model, generator=torch.Generator().manual_seed(3))
    soft = soft / soft.norm(dim=-1, keepdim=True) * weight.norm(dim=-1).mean() * scale  # token-sized, no token's embedding
    with torch.no_grad():
        span = PrefixCache(llama, LAYER, p[:start]).span_embed_states(soft[None])[0].cpu()
    target = torch.cat([hidden_states(llama, p[:start], LAYER), span])
    for w in llama.model.parameters():  # the shared tiny model may hold gradients from other tests
        w.grad = None
    r = relax(llama, target, LAYER, p[:start], p[start:], RelaxConfig(steps=300))
    assert min(r.initial_distances) > 0.1
    assert max(r.distances) < 1e-4 * min(r.initial_distances)  # measured: 2.3e-7 from 0.15
    assert r.best_step > 0 and r.steps == 300 and len(r.projected_tokens) == len(p) - start
    assert all(w.grad is None for w in llama.model.parameters())  # only the soft embeddings get gradients


def test_relaxation_of_a_planted_prompt_projects_to_that_prompt(llama, planted):
    p, q, start, eps = planted
    r = relax(llama, hidden_states(llama, q, LAYER), LAYER, p[:start], p[start:], RelaxConfig(steps=200))
    assert r.projected_tokens == q[start:]
    assert max(r.projected_distances) <= eps
    assert sum(d * d for d in r.distances) <= sum(d * d for d in r.initial_distances)


def test_the_best_iterate_is_kept_so_a_relaxation_never_ends_farther_than_its_start(llama, planted):
    p, q, start, _ = planted
    r = relax(llama, hidden_states(llama, q, LAYER), LAYER, p[:start], p[start:], RelaxConfig(steps=3, lr=50.0))
    assert r.best_step == 0 and r.distances == r.initial_distances  # every step of a far too large lr went farther


def test_the_whole_span_search_finds_a_planted_prompt(llama, planted):
    p, q, start, eps = planted
    target = hidden_states(llama, q, LAYER)
    res = sequence_search(llama, target, LAYER, eps, p[:start], [p[start:]], SequenceConfig(iterations=30, batch=32, top_k=8))
    assert res.accepted and res.tokens == q[start:] and max(res.distances) <= eps
    assert res.start_index == 0 and 0 < res.iterations <= 30 and res.scored <= 30 * 32
    again = sequence_search(llama, target, LAYER, eps, p[:start], [p[start:]], SequenceConfig(iterations=30, batch=32, top_k=8))
    assert again == res  # deterministic for a seed


def test_the_whole_span_search_starts_from_its_best_start_and_never_ends_farther(llama, planted):
    p, q, start, eps = planted
    target = hidden_states(llama, q, LAYER)
    near = list(q[start:])
    near[-1] = p[-1]
    res = sequence_search(llama, target, LAYER, eps, p[:start], [p[start:], near], SequenceConfig(iterations=0))
    assert res.start_index == 1 and res.iterations == 0 and res.scored == 0 and not res.accepted
    assert res.distances[:2] == pytest.approx([0.0, 0.0], abs=eps) and res.distances[2] > eps
    one = sequence_search(llama, target, LAYER, eps, p[:start], [p[start:]], SequenceConfig(iterations=1, batch=4, top_k=2))
    assert sum(d * d for d in one.distances) <= sum(d * d for d in one.initial_distances)


def test_bad_settings_and_spans_are_refused(llama, planted):
    p, q, start, eps = planted
    target = hidden_states(llama, q, LAYER)
    with pytest.raises(SteerscopeError, match="steps"):
        RelaxConfig(steps=0)
    with pytest.raises(SteerscopeError, match="lr"):
        RelaxConfig(lr=float("nan"))
    with pytest.raises(SteerscopeError, match="iterations"):
        SequenceConfig(batch=0)
    with pytest.raises(SteerscopeError, match="must cover"):
        relax(llama, target, LAYER, p[:start], p[start:-1])
    with pytest.raises(SteerscopeError, match="shape"):
        relax(llama, target[:, :-1], LAYER, p[:start], p[start:])
    with pytest.raises(SteerscopeError, match="at least one starting span"):
        sequence_search(llama, target, LAYER, eps, p[:start], [])
