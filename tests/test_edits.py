"""Add, clamp and ablate compared at equal on-target effect, and the framing gap under ablation, on tiny models."""

import numpy as np
import pytest
import torch

from steerscope.data.pairs import ContrastivePair
from steerscope.data.traits import builtin_pairs
from steerscope.edits import MATCH_TOLERANCE, edit_specificity, framing_gap, margins_under, solve
from steerscope.errors import SteerscopeError
from steerscope.intervene import Ablate, Clamp
from steerscope.side_effects import Readout
from steerscope.testing import tiny_model
from test_side_effects import planted  # noqa: F401  (fixture)


def test_solve_finds_the_parameter_of_a_monotone_shift_in_either_direction():
    assert solve(lambda x: 3 * x, 1.5, 0.1) == pytest.approx(0.5, rel=MATCH_TOLERANCE)
    assert solve(lambda x: 3 * x, -1.5, 0.1) == pytest.approx(-0.5, rel=MATCH_TOLERANCE)
    assert solve(lambda x: 1.0 + x, 1.0, 1.0) == 0.0
    with pytest.raises(SteerscopeError, match="reaches the on-target shift"):
        solve(lambda x: float(np.tanh(x)), 2.0, 0.1)


def test_a_clamp_at_zero_is_the_ablation():
    lm = tiny_model("llama")
    pairs = builtin_pairs("formality", "test")[:4]
    u = torch.as_tensor(np.random.default_rng(0).standard_normal(lm.d_model), dtype=torch.float32)
    assert np.array_equal(margins_under(lm, 1, Clamp(u / u.norm(), 0.0), pairs), margins_under(lm, 1, Ablate(u), pairs))


def test_every_edit_reaches_the_same_on_target_shift_and_is_ranked_by_its_off_target_effects(planted):  # noqa: F811
    lm, pairs, v = planted
    readouts = [Readout(k, p) for k, p in pairs.items()]
    out = edit_specificity(lm, 1, v, 0.05, readouts[0], readouts, n_boot=200)
    for kind in ("induce", "remove"):
        comp = out[kind]
        for edit in comp["edits"].values():
            assert edit["readouts"]["A"]["shift"] == pytest.approx(comp["on_target_shift"], rel=MATCH_TOLERANCE, abs=1e-9)
        means = {n: e["off_target_mean_abs_g"] for n, e in comp["edits"].items()}
        assert comp["most_specific"] == min(means, key=lambda n: means[n])
    assert set(out["induce"]["edits"]) == {"add", "clamp"} and set(out["remove"]["edits"]) == {"ablate", "subtract"}
    assert out["induce"]["edits"]["add"]["parameter"]["alpha"] == 0.05


def _framed(prefixes: tuple[str, str], n: int = 6) -> list[ContrastivePair]:
    answers = ["it is good", "the sun is big", "a dog is kind", "water is nice", "the city is old", "my cat is happy"]
    return [ContrastivePair([{"role": "user", "content": f"{prefixes[0]} tell me a fact"}, {"role": "assistant", "content": a}],
                            [{"role": "user", "content": f"{prefixes[1]} tell me a fact"}, {"role": "assistant", "content": a}])
            for a in answers[:n]]


def test_the_framing_gap_is_zero_for_identical_framings_positive_for_different_ones_and_needs_shared_answers():
    lm = tiny_model("llama")
    v = torch.as_tensor(np.random.default_rng(0).standard_normal(lm.d_model), dtype=torch.float32)
    same = framing_gap(lm, 1, v, _framed(("please", "please")), n_random=2, n_boot=50)
    assert same["gap"]["unedited"]["mean"] == 0.0 and same["gap"]["ablate_v"]["mean"] == 0.0
    framed = _framed(("test question one", "my friend needs"))
    gap = framing_gap(lm, 1, v, framed, n_random=2, n_boot=50)
    assert gap["gap"]["unedited"]["mean"] > 0 and gap["n_pairs"] == 6
    with pytest.raises(SteerscopeError, match="same assistant answer"):
        framing_gap(lm, 1, v, builtin_pairs("formality", "test")[:2])


def test_ablation_and_clamp_can_leave_attention_sinks_alone():
    from steerscope.intervene import _apply, sink_positions

    h = torch.ones(1, 4, 3)
    h[0, 0] = torch.tensor([400.0, 0.0, 0.0])  # a sink: 230 × the median norm of its row
    assert sink_positions(h).tolist() == [[True, False, False, False]]
    u = torch.tensor([1.0, 0.0, 0.0])
    kept = _apply(Ablate(u, skip_sinks=True), h)
    assert kept[0, 0].tolist() == [400.0, 0.0, 0.0] and kept[0, 1:, 0].abs().max() == 0
    assert _apply(Ablate(u), h)[0, 0, 0] == 0  # without skip_sinks the sink is ablated too
    clamped = _apply(Clamp(u, 5.0, skip_sinks=True), h)
    assert clamped[0, 0, 0] == 400.0 and clamped[0, 1:, 0].tolist() == [5.0, 5.0, 5.0]
    step = torch.full((1, 1, 3), 50.0)  # one new token of a cached call is never a sink
    assert _apply(Ablate(u, skip_sinks=True), step)[0, 0, 0] == 0


def test_the_answer_distributions_are_those_that_score_the_answer():
    from steerscope.edits import _answer_logp
    from steerscope.encoding import encode_item
    from steerscope.likelihood import completion_logprobs

    lm = tiny_model("llama")
    items = [p.positive for p in _framed(("test question one", "my friend needs"))] + [_framed(("a much longer framing of it", "x"))[0].negative]
    logps = _answer_logp(lm, items, None)
    for item, logp in zip(items, logps):
        enc = encode_item(lm.tokenizer, item)
        answer = torch.tensor(enc.ids[enc.span[0]:enc.span[1]])
        assert logp.shape[0] == len(answer)
        assert float(logp.gather(1, answer[:, None]).sum()) == pytest.approx(float(completion_logprobs(lm, [item])[0]), abs=1e-4)
