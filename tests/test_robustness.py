"""Robustness of a steering effect on tiny models: instructions the model cannot follow, the retained
share both ways, equal relative doses across layers, and the stability of the vector."""

import numpy as np
import pytest
import torch

from steerscope.capture import mean_norms
from steerscope.data.evalsets import neutral_set
from steerscope.data.pairs import ContrastivePair
from steerscope.errors import SteerscopeError
from steerscope.extract import extract
from steerscope.robustness import (
    RobustnessSettings, environment_robustness, instructed_pairs, instruction_robustness, layer_profile, retained, vector_stability,
)
from steerscope.testing import tiny_model
from test_side_effects import planted_pairs


def test_retained_share_holds_weakens_or_stays_undetermined():
    rng = np.random.default_rng(0)
    plain = 1.0 + 0.1 * rng.standard_normal(30)
    assert retained(0.95 * plain, plain, 500, 0)["status"] == "holds"
    weak = retained(0.1 * plain, plain, 500, 0)
    assert weak["status"] == "weakened" and weak["high"] < 0.5 and weak["ratio"] == pytest.approx(0.1)
    noisy = retained(0.5 * plain + rng.standard_normal(30), plain, 500, 0)
    assert noisy["status"] == "undetermined" and noisy["low"] < 0.5 < noisy["high"]
    assert retained(plain, np.zeros(30), 100, 0)["status"] == "undetermined"


def test_instructions_become_the_system_message_of_both_sides():
    pair = ContrastivePair([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                           [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}])
    (out,) = instructed_pairs([pair], "be brief")
    assert out.positive[0] == out.negative[0] == {"role": "system", "content": "be brief"} and out.positive[1:] == pair.positive
    assert instructed_pairs([pair], None) == [pair]


@pytest.fixture(scope="module")
def steered():
    """A tiny model and a vector that moves the margin of planted pairs (their train mean difference)."""
    lm = tiny_model("llama", d_model=64)
    pairs = planted_pairs("happy", "sad", 0, 0, n=24)
    return lm, pairs[:16], pairs[16:], extract(lm, pairs[:16], [1]).directions[1]


def test_an_opposing_instruction_the_model_cannot_follow_leaves_the_effect_intact(steered):
    lm, train, test, v = steered
    s = RobustnessSettings(alpha=1.0, n_boot=500)
    out = instruction_robustness(lm, 1, v, ("please be happy", "please be sad"), train, [], None, s)
    margin = out["pair_margin"]
    assert margin["steering"]["none"]["flagged"] and margin["steering"]["none"]["g"] > 0
    assert margin["retained_under_opposing"]["status"] == "holds"
    assert out["instructions"]["opposing"] == "please be sad" and "trait_score" not in out
    flipped = instruction_robustness(lm, 1, v, ("please be happy", "please be sad"), train, [], None, RobustnessSettings(alpha=-1.0, n_boot=50))
    assert flipped["instructions"]["supporting"] == "please be sad"  # a negative strength pushes toward the negative pole


class LengthScorer:
    name = "length"

    def __call__(self, texts):
        return [float(len(t.split())) for t in texts]


def test_environments_and_paraphrases_are_compared_with_a_scorer_and_skipped_without(steered):
    lm, train, test, v = steered
    s = RobustnessSettings(alpha=4.0, n_prompts=3, samples=1, max_new_tokens=5, n_boot=50)
    envs = {"a": train[:8], "b": train[8:]}
    prompts = {"a": ["tell me a story", "what is good", "how do i help"], "b": ["the weather is nice", "my friend is kind", "why can you"]}
    with_scorer = environment_robustness(lm, 1, v, envs, prompts, [("tell me a story", "a story please")] * 3, LengthScorer(), s)
    assert set(with_scorer["pair_margin"]) == set(with_scorer["trait_score"]) == {"a", "b"}
    assert with_scorer["paraphrase"]["original"]["n"] == 3 and "retained" in with_scorer["paraphrase"]
    without = environment_robustness(lm, 1, v, envs, prompts, [], None, s)
    assert without["trait_score"] == {} and without["paraphrase"] is None and "no scorer" in without["why_no_scores"]


def test_the_layer_profile_steers_every_layer_at_the_same_relative_dose(steered):
    lm, train, test, _ = steered
    rows = layer_profile(lm, train, test, [0, 1, 2], 0.3, neutral_set(), RobustnessSettings(n_prompts=2, n_boot=50))
    norms = mean_norms(lm, [p.positive for p in train] + [p.negative for p in train], [0, 1, 2])
    for row in rows:
        assert row["alpha"] * row["norm"] / row["h_norm"] == pytest.approx(0.3)
        assert row["h_norm"] == pytest.approx(norms[row["layer"]], rel=1e-5)
        assert row["kl"]["mean"] > 0
    assert [r["layer"] for r in rows] == [0, 1, 2]


def test_stability_is_exact_for_identical_pairs_and_lower_for_varied_ones(steered):
    lm, train, test, _ = steered
    s = RobustnessSettings(alpha=2.0, stability_boot=10, halves=4, curve_sizes=(4, 8), curve_draws=2, n_boot=50)
    same = vector_stability(lm, [train[0]] * 12, test, 1, s)
    assert same["bootstrap_cos"]["low"] == pytest.approx(1.0) and same["split_half_cos"]["low"] == pytest.approx(1.0)
    varied = vector_stability(lm, train, test, 1, s)
    assert varied["split_half_cos"]["mean"] < 0.9999
    assert [c["n_pairs"] for c in varied["learning_curve"]] == [4, 8, 16]
    full = varied["learning_curve"][-1]
    assert full["draws"] == 1 and full["cos_with_full"]["mean"] == pytest.approx(1.0)
    assert varied["displacement_norm"] == pytest.approx(2.0 * float(torch.as_tensor(extract(lm, train, [1]).directions[1]).norm()), rel=1e-4)
    with pytest.raises(SteerscopeError, match="at least 4 train pairs"):
        vector_stability(lm, train[:3], test, 1, s)


def test_an_instruction_that_removes_the_vectors_first_order_effect_weakens_it():
    """A vector built from the plain pairs' margin gradient, made orthogonal to every pair's gradient
    under the opposing instruction: it moves the margin without the instruction and (to first order)
    not with it, so the retained share comes out "weakened" through the real computation."""
    from steerscope.audit.readouts import margin_gradient

    lm = tiny_model("llama", d_model=64)
    pairs = planted_pairs("happy", "sad", 0, 0, n=12)

    def grads(ps):
        return np.stack([margin_gradient(lm, 1, torch.zeros(lm.d_model), 0.0, [p, p]) for p in ps])

    basis, _ = np.linalg.qr(grads(instructed_pairs(pairs, "please be sad")).T)
    g = grads(pairs).mean(0)
    v = g - basis @ (basis.T @ g)
    out = instruction_robustness(lm, 1, torch.tensor(v / np.linalg.norm(v), dtype=torch.float32), ("please be happy", "please be sad"),
                                 pairs, [], None, RobustnessSettings(alpha=0.05, n_boot=500))
    margin = out["pair_margin"]
    assert margin["steering"]["none"]["flagged"] and margin["steering"]["none"]["g"] > 0.2
    kept = margin["retained_under_opposing"]
    assert kept["status"] == "weakened" and kept["high"] < 0.5
