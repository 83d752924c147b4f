"""The identifiability answer of the one-command audit: one verdict per readout, never merged."""

import pytest

from steerscope.audit.answers import identifiable, readout_headlines


def _result(verdicts, below_v=0.0):
    readouts = {k: {"verdict": v, "reason": f"{k} reason"} for k, v in verdicts.items()}
    share = {"1": {"fraction": 0.25, "low": 0.1, "high": 0.45, "n": 20, "predicted": 0.3}}
    ident = {"config": {"delta": 0.1}, "readouts": readouts,
             "class_size": {"trait_score": {"fraction": 1 / 3, "low": 0.01, "high": 0.9, "n": 3}, "pair_margin": share}}
    gain = {"gain_v": 2.0, "random_mean": 1.0, "complement_below_v": {"0.001": below_v}}
    nullspace = {"config": {"n_prompts": 4, "all_positions_prompts": 1},
                 "layers": {"3": {"logits": {"stacked": {"d": 8, "effective_rank": {"0.001": 8}}, "vector_gain": gain},
                                  "all_positions": {"logits": {"vector_gain": gain}}}}}
    return {"identifiability": ident, "layer_selection": {"chosen": 3}, "nullspace": nullspace, "recovery": []}


@pytest.mark.parametrize(("verdicts", "status"), [
    ({"trait_score": "equivalent", "pair_margin": "equivalent", "distribution": "equivalent"}, "no"),
    ({"trait_score": "different", "pair_margin": "different", "distribution": "different"}, "yes"),
    ({"trait_score": "inconclusive", "pair_margin": "inconclusive", "distribution": "inconclusive"}, "unknown"),
    ({"trait_score": "inconclusive", "pair_margin": "equivalent", "distribution": "different"}, "mixed"),
])
def test_status_follows_the_readouts_and_the_headline_names_each(verdicts, status):
    out = identifiable(_result(verdicts))
    assert out["status"] == status
    for label in ("trait score", "pair margin", "next-token distribution"):
        assert label in out["headline"]


def test_headlines_carry_the_class_share_and_the_jacobian_of_the_intervention():
    result = _result({"trait_score": "inconclusive", "pair_margin": "equivalent", "distribution": "different"})
    lines = readout_headlines(result["identifiability"])
    assert lines[0].startswith("Trait score: undetermined — 33% [1%, 90%] of 3 random orthogonal additions")
    assert lines[1].startswith("Pair margin: not identifiable (every v + u tested acts like v) — 25% [10%, 45%] of 20")
    assert lines[2].startswith("Next-token distribution: identifiable at this resolution (distribution reason)")
    facts = identifiable(result)["facts"]
    assert any("no direction can be added to v unseen" in f for f in facts)
    assert not any("unseen" in f for f in identifiable(_result({"trait_score": "different", "pair_margin": "different",
                                                                 "distribution": "different"}, below_v=0.1))["facts"])


def _steering(g, p, readout="trait_score"):
    row = {"alpha": 1.0, "ppl_ratio": 1.2, "ppl_ratio_low": 1.1, "ppl_ratio_high": 1.3}
    v_vs_none = {"readout": readout, "g": g, "g_low": g, "g_high": g, "p_diff": p, "js": 0.01}
    return {"identifiability": {"v_vs_none": v_vs_none, "scorer_accuracy": None}, "strength": {"rows": [row], "alpha": 1.0, "reason": "r"}}


@pytest.mark.parametrize(("g", "p", "readout", "status", "words"), [
    (1.2, 0.001, "trait_score", "yes", "moves held-out completions toward the trait"),
    (1.2, 0.001, "pair_margin", "yes", "shifts held-out pairs toward their positive side"),
    (-1.2, 0.001, "pair_margin", "no", "toward their negative side"),
    (0.1, 0.6, "pair_margin", "no", "No detectable effect at α = 1 on the held-out pairs"),
    (None, None, "pair_margin", "unknown", "effect size on the held-out pairs is undefined"),
])
def test_steers_names_the_readout_and_says_unknown_when_the_effect_is_undefined(g, p, readout, status, words):
    from steerscope.audit.answers import steers

    out = steers(_steering(g, p, readout))
    assert out["status"] == status and words in out["headline"], out["headline"]
    assert any("no scorer" in f for f in out["facts"]) == (readout == "pair_margin")


def test_recovery_fact_names_what_kept_each_method_from_identifying_the_audited_vector():
    from steerscope.audit.answers import recovery_fact

    rows = [{"method": "ica", "identifies": False, "assumption": {"holds": False}, "identifiable": False},
            {"method": "sparse", "identifies": False, "assumption": {"holds": True}, "identifiable": False},
            {"method": "multienv", "identifies": False, "assumption": {"holds": True}, "identifiable": True,
             "agreement": {"agrees": False, "ci_low": 0.5, "ci_high": 0.6}},
            {"method": "crosslayer", "identifies": None, "reason": "no later layer", "identifiable": None}]
    assert recovery_fact(rows) == ("structural assumptions that identify the audited vector: none (ica: its assumption fails on these "
                                   "data; sparse: not unique even if the assumption held; multienv: recovers another direction "
                                   "(cos 0.50–0.60 with the audited vector); crosslayer: not run (no later layer))")
    assert recovery_fact([{"method": "ica", "identifies": True}]) == "structural assumptions that identify the audited vector: ica"
