"""Side effects of a steering vector on tiny models: the off-target matrix on planted readouts, exact
nulls, the capability check against a direct computation, and the answer both ways."""

import math

import numpy as np
import pytest
import torch

from steerscope.audit.answers import side_effects as side_effects_answer
from steerscope.audit.readouts import margin_gradient
from steerscope.data.evalsets import CAPABILITY_CATEGORIES, capability_set, interleaved, neutral_set
from steerscope.data.pairs import ContrastivePair
from steerscope.errors import SteerscopeError
from steerscope.likelihood import completion_logprobs
from steerscope.intervene import steer
from steerscope.side_effects import (
    Readout, SideEffectSettings, capability, fluency, neutral_completions, neutral_kl, off_target, paired_effect, repetition, side_effects,
)
from steerscope.testing import tiny_model

WORDS = "good bad great terrible happy sad nice kind rude formal casual true false fact wrong right".split()


def planted_pairs(pos: str, neg: str, offset: int, seed: int, n: int = 12) -> list[ContrastivePair]:
    """Chat pairs whose answers differ in one word (``pos`` / ``neg``), with varied questions and endings."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(["tell me", "what is", "how do", "why can", "the weather", "my friend"], 2))
        end = WORDS[(i + offset) % len(WORDS)]
        out.append(ContrastivePair([{"role": "user", "content": q}, {"role": "assistant", "content": f"it is {pos} {end}"}],
                                   [{"role": "user", "content": q}, {"role": "assistant", "content": f"it is {neg} {end}"}]))
    return out


@pytest.fixture(scope="module")
def planted():
    """A tiny model, three readouts A, B, C, and a vector built to move the margins of A and B at first
    order and to be orthogonal to the margin gradient of every pair of C."""
    lm = tiny_model("llama", d_model=64)
    a, b, c = planted_pairs("happy", "sad", 0, 0), planted_pairs("formal", "casual", 3, 1), planted_pairs("true", "false", 5, 2)

    def grads(pairs):
        return np.stack([margin_gradient(lm, 1, torch.zeros(lm.d_model), 0.0, [p, p]) for p in pairs])

    g_a, g_b, g_c = grads(a).mean(0), grads(b).mean(0), grads(c)
    basis, _ = np.linalg.qr(g_c.T)
    v = sum(x / np.linalg.norm(x) - basis @ (basis.T @ (x / np.linalg.norm(x))) for x in (g_a, g_b))
    return lm, {"A": a, "B": b, "C": c}, torch.tensor(v / np.linalg.norm(v), dtype=torch.float32)


def test_a_vector_built_to_move_two_readouts_shows_both_and_not_the_third(planted):
    lm, pairs, v = planted
    s = SideEffectSettings(alpha=0.05, doses=(1.0,), n_boot=500)
    rows = {r["trait"]: r for r in off_target(lm, 1, v, [Readout(k, p) for k, p in pairs.items()], None, s)}
    assert rows["A"]["flagged"] and rows["B"]["flagged"] and rows["A"]["g"] > 0.2 and rows["B"]["g"] > 0.2
    assert rows["C"]["flagged"] is False and abs(rows["C"]["g"]) < 0.2
    assert all(r["readout"] == "pair_margin" and r["n"] == 12 for r in rows.values())
    opposite = {r["trait"]: r for r in off_target(lm, 1, -v, [Readout(k, p) for k, p in pairs.items()], None, s)}
    assert opposite["A"]["g"] < -0.2 and opposite["A"]["flagged"]


def test_paired_effect_flags_only_a_clear_shift():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(40)
    clear = paired_effect(base + 1.0 + 0.1 * rng.standard_normal(40), base, 500, 0)
    tiny = paired_effect(base + 1e-3, base, 500, 0)  # consistent but far below |g| = 0.2
    assert clear["flagged"] is True and clear["g"] > 0.8
    assert tiny["flagged"] is False and tiny["g_low"] > 0
    same = paired_effect(np.ones(5), np.ones(5), 100, 0)
    assert same["g"] is None and same["flagged"] is None and "zero standardiser" in same["error"]


def test_repetition_counts_repeated_trigrams():
    assert repetition([1, 2, 3, 1, 2, 3]) == pytest.approx(0.25)  # (1,2,3) twice among four trigrams
    assert repetition([1, 2, 3, 4, 5]) == 0.0
    assert math.isnan(repetition([1, 2, 3]))


def test_a_zero_vector_changes_nothing():
    lm = tiny_model("llama")
    zero = torch.zeros(lm.d_model)
    s = SideEffectSettings(alpha=1.0, doses=(2.0,), n_prompts=3, n_boot=50)
    kl = neutral_kl(lm, 1, zero, neutral_set(), s)
    assert all(row["mean"] == 0.0 for row in kl.values())
    cap = capability(lm, 1, zero, interleaved(capability_set(), 9), s)
    assert all(d["change"]["mean"] == 0.0 and d["accuracy"] == cap["accuracy_unsteered"] for d in cap["doses"].values())
    completions = neutral_completions(lm, 1, zero, neutral_set(), s)  # the same seed for every dose: the same texts
    assert completions.texts["0"] == completions.texts["1"] == completions.texts["2"]
    assert all(row["ppl_ratio"]["mean"] == 1.0 for row in fluency(lm, completions, s).values())


def test_capability_accuracy_equals_a_direct_computation():
    lm = tiny_model("llama", seed=3)
    items = interleaved(capability_set(), 9)
    assert [i.category for i in items[:3]] == list(CAPABILITY_CATEGORIES)
    v = torch.as_tensor(np.random.default_rng(1).standard_normal(lm.d_model), dtype=torch.float32)
    s = SideEffectSettings(alpha=3.0, doses=(1.0,), n_boot=50)
    got = capability(lm, 1, v, items, s)

    def accuracy(steering):
        right = 0
        for it in items:
            chats = [[{"role": "user", "content": it.question}, {"role": "assistant", "content": c}] for c in it.choices]
            logp = completion_logprobs(lm, chats, steering).numpy()
            right += int(np.argmax(logp) == it.answer)
        return right / len(items)

    assert got["accuracy_unsteered"] == pytest.approx(accuracy(None))
    shortest = [min(range(len(it.choices)), key=lambda k: len(lm.tokenizer(it.choices[k], add_special_tokens=False)["input_ids"]))
                for it in items]  # the tiny word-level tokenizer: one token per word or punctuation mark
    assert got["shortest_choice_accuracy"]["knowledge"] == pytest.approx(
        np.mean([s == it.answer for s, it in zip(shortest, items) if it.category == "knowledge"]))
    assert got["doses"]["1"]["accuracy"] == pytest.approx(accuracy(steer(lm, {1: v}, 3.0)))


def test_neutral_kl_grows_with_dose():
    lm = tiny_model("llama")
    v = torch.as_tensor(np.random.default_rng(2).standard_normal(lm.d_model), dtype=torch.float32)
    kl = neutral_kl(lm, 1, v, neutral_set(), SideEffectSettings(alpha=1.0, doses=(0.5, 2.0), n_prompts=4, n_boot=50))
    assert 0 < kl["0.5"]["mean"] < kl["1"]["mean"] < kl["2"]["mean"]


def test_side_effects_on_a_tiny_model_has_every_part_and_names_the_largest_off_target(planted):
    lm, pairs, v = planted
    s = SideEffectSettings(alpha=0.05, doses=(2.0,), n_prompts=3, samples=1, max_new_tokens=6, n_boot=100)
    res = side_effects(lm, 1, v, "C", [Readout(k, p) for k, p in pairs.items()], neutral_set(), interleaved(capability_set(), 6), s,
                       h_norm=2.0)
    assert res["multiples"] == [1.0, 2.0] and set(res["fluency"]) == set(res["kl"]) == {"1", "2"}
    assert res["relative_doses"] == pytest.approx([0.05 * float(v.norm()) / 2.0, 0.1 * float(v.norm()) / 2.0])
    assert res["largest_off_target"]["trait"] in ("A", "B")
    assert set(res["examples"]) == {"0", "1", "2"}
    with pytest.raises(SteerscopeError, match="among the readouts"):
        side_effects(lm, 1, v, "D", [Readout("A", pairs["A"])], neutral_set(), [], s)
    with pytest.raises(SteerscopeError, match="non-zero strength"):
        SideEffectSettings(alpha=0.0)


def _result(flagged: bool, cap_change: tuple[float, float, float]) -> dict:
    row = {"trait": "politeness", "readout": "pair_margin", "g": 0.9 if flagged else 0.05, "g_low": 0.5 if flagged else -0.1,
           "g_high": 1.2 if flagged else 0.2, "flagged": flagged}
    target = {"trait": "formality", "readout": "pair_margin", "g": 1.5, "g_low": 1.0, "g_high": 2.0, "flagged": True}
    mean, low, high = cap_change
    return {"side_effects": {"target": "formality", "alpha": 4.0, "min_effect": 0.2, "matrix": [target, row], "largest_off_target": row,
                             "capability": {"n_items": 72, "accuracy_unsteered": 0.5, "doses": {"1": {"accuracy": 0.5 + mean,
                                                                                                       "change": {"mean": mean, "low": low,
                                                                                                                  "high": high}}}},
                             "fluency": {"1": {"ppl_ratio": {"mean": 1.1, "low": 1.0, "high": 1.2}}},
                             "kl": {"1": {"mean": 0.01, "low": 0.005, "high": 0.02}}}}


def test_the_answer_names_flagged_effects_and_capability_changes_and_says_none_otherwise():
    some = side_effects_answer(_result(True, (0.0, -0.05, 0.05)))
    assert some["status"] == "some" and "politeness pair margin g = 0.90" in some["headline"]
    cap = side_effects_answer(_result(False, (-0.2, -0.3, -0.1)))
    assert cap["status"] == "some" and "no other trait moves" in cap["headline"] and "capability accuracy 50% → 30%" in cap["headline"]
    none = side_effects_answer(_result(False, (0.0, -0.05, 0.05)))
    assert none["status"] == "none" and none["headline"].startswith("No off-target effect detected")


def test_off_target_flags_are_holm_adjusted_across_the_other_traits_only():
    from steerscope.side_effects import holm_flags

    def row(trait, p, g):
        cell = {"p": p, "g": g, "flagged": p < 0.05 and abs(g) >= 0.2}
        return {"trait": trait, "doses": {"1": dict(cell)}}

    rows = [row("target", 0.03, 1.0), row("a", 0.001, 0.5), row("b", 0.03, 0.5), row("c", 0.04, 0.1)]
    assert rows[2]["doses"]["1"]["flagged"]  # significant on its own
    holm_flags(rows, "target", ["1"])
    assert [r["flagged"] for r in rows] == [True, True, False, False]  # b: 0.03 × 2 = 0.06 after Holm; c: |g| < 0.2
    assert rows[1]["p_holm"] == pytest.approx(0.003) and "p_holm" not in rows[0]
