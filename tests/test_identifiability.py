import json
import math

import numpy as np
import pytest
import torch

from steerscope.audit.identifiability import (
    IdentifiabilitySettings,
    behavioural_scores,
    build_conditions,
    distributional_readout,
    reference_continuations,
    run_identifiability,
    summarise,
    verdict,
)
from steerscope.audit.profiles import profile
from steerscope.generate import GenerationConfig

PROMPTS = ["tell me about your weekend", "write a short poem about the moon", "what is the weather like", "help me write a letter"]


class FakeScorer:
    """Fraction of words in a small set; records every text it is given."""

    name = "fake"
    trait = "formality"
    validity = None

    def __init__(self, words=("the", "a", ".", "!", "of", "and")):
        self.words = set(words)
        self.seen: list[str] = []

    def __call__(self, texts):
        texts = list(texts)
        self.seen += texts
        return np.array([sum(w in self.words for w in t.split()) / max(1, len(t.split())) for t in texts], dtype=float)


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


def _v(d=32, seed=123):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _by_name(conds):
    return {c.name: c for c in conds}


# --- conditions -------------------------------------------------------------------------------

def test_build_conditions_properties():
    v = _v()
    control = _v(seed=7)
    conds = build_conditions(v, 2.0, n_draws=3, seed=5, control_direction=control)
    c = _by_name(conds)
    assert list(c) == ["none", "v", "v+perp#0", "v+perp#1", "v+perp#2", "sqrt2*v", "perp", "random", "targeted"]
    assert c["none"].vector is None and c["none"].alpha == 0.0
    assert all(x.alpha == 2.0 for x in conds if x.kind != "none")
    vn = v.norm().item()
    for i in range(3):
        u = c[f"v+perp#{i}"].vector - v
        assert abs(torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=0).item()) < 1e-6
        assert u.norm().item() == pytest.approx(vn, rel=1e-5)
        assert c[f"v+perp#{i}"].vector.norm().item() == pytest.approx(math.sqrt(2) * vn, rel=1e-5)
        assert c[f"v+perp#{i}"].seed == 5 + i
    assert c["sqrt2*v"].vector.norm().item() == pytest.approx(math.sqrt(2) * vn, rel=1e-6)
    assert torch.allclose(c["perp"].vector, c["v+perp#0"].vector - v, atol=1e-6)
    assert c["random"].vector.norm().item() == pytest.approx(vn, rel=1e-5)
    assert c["random"].seed == 5 + 10_000
    w = c["targeted"].vector - v
    assert abs(torch.nn.functional.cosine_similarity(w.double(), v.double(), dim=0).item()) < 1e-6
    assert w.norm().item() == pytest.approx(vn, rel=1e-5)
    assert all(x.vector.dtype == torch.float32 for x in conds if x.vector is not None)


def test_build_conditions_determinism_and_draws_differ():
    v = _v()
    a, b = build_conditions(v, 1.0, 2, seed=0, control_direction=None), build_conditions(v, 1.0, 2, seed=0, control_direction=None)
    for x, y in zip(a, b):
        assert x.name == y.name and (x.vector is None or torch.equal(x.vector, y.vector))
    ca = _by_name(a)
    assert not torch.allclose(ca["v+perp#0"].vector, ca["v+perp#1"].vector)
    other = _by_name(build_conditions(v, 1.0, 2, seed=1, control_direction=None))
    assert not torch.allclose(ca["v+perp#0"].vector, other["v+perp#0"].vector)
    assert "targeted" not in ca  # no positive control without a control direction


# --- readouts ---------------------------------------------------------------------------------

def test_behavioural_scores_shapes_and_scorer_sees_completions_only(llama):
    conds = build_conditions(_v(llama.d_model), 3.0, 2, seed=0, control_direction=_v(llama.d_model, 9))
    scorer = FakeScorer()
    config = GenerationConfig(max_new_tokens=5, do_sample=True, seed=3)
    scores = behavioural_scores(llama, 1, conds, PROMPTS, scorer, 2, config)
    assert set(scores) == {c.name for c in conds}
    assert all(s.shape == (len(PROMPTS), 2) for s in scores.values())
    assert len(scorer.seen) == len(conds) * len(PROMPTS) * 2
    for text in scorer.seen:
        assert not any(p in text.lower() for p in PROMPTS)
        assert "<|user|>" not in text
    again = behavioural_scores(llama, 1, conds, PROMPTS, FakeScorer(), 2, config)
    assert all(np.array_equal(scores[k], again[k]) for k in scores)  # seeded


def test_distributional_readout_v_vs_v_is_zero(llama):
    conds = build_conditions(_v(llama.d_model), 3.0, 1, seed=0, control_direction=None)
    v = _by_name(conds)["v"]
    conts = reference_continuations(llama, 1, v, PROMPTS, 4)
    out = distributional_readout(llama, 1, conds, PROMPTS, conts)
    assert np.all(out["v"]["kl"][np.isfinite(out["v"]["kl"])] == 0)
    assert all(out[c.name]["js"].shape == (len(PROMPTS),) for c in conds)
    finite = np.isfinite(out["none"]["kl"])
    assert finite.any() and np.all(out["none"]["kl"][finite] > 0)


def test_summarise_holm_and_fields():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 3))
    conds = build_conditions(_v(), 1.0, 2, seed=0, control_direction=_v(seed=4))
    shift = {"none": 0, "v": 2, "v+perp#0": 2, "v+perp#1": 2, "sqrt2*v": 2.5, "perp": 0, "random": 0.1, "targeted": 4}
    scores = {c.name: base + shift[c.name] + 0.1 * rng.normal(size=base.shape) for c in conds}
    divs = {c.name: {"kl": np.full(10, 0.0 if c.name == "v" else 0.1), "js": np.full(10, 0.0 if c.name == "v" else 0.05) + 0.001 * rng.random(10)} for c in conds}
    s = summarise(scores, divs, conds, n_boot=200)
    assert s["positive_control"] == "targeted" and s["v_vs_none"]["p_diff"] < 1e-6
    for row in s["conditions"].values():
        assert row["p_diff_holm"] >= row["p_diff"] and row["p_tost_holm"] >= row["p_tost"]
        assert row["js"]["low"] <= row["js"]["estimate"] <= row["js"]["high"]
    assert s["conditions"]["v+perp#0"]["efficacy"] == pytest.approx(1.0, abs=0.1)
    v = verdict(s)
    assert v["behavioural"]["verdict"] == "equivalent"
    assert v["distributional"]["verdict"] == "different"


# --- verdict logic ----------------------------------------------------------------------------

def _summary(p_v=0.001, control_p=0.001, tost=(0.01, 0.01), diff=(0.5, 0.5), control=True):
    conds = {f"v+perp#{i}": {"kind": "v+perp", "p_tost_holm": t, "p_diff_holm": d} for i, (t, d) in enumerate(zip(tost, diff))}
    if control:
        conds["targeted"] = {"kind": "targeted", "p_tost_holm": 0.9, "p_diff_holm": control_p}
    return {"margin_g": 0.2, "v_vs_none": {"p_diff": p_v}, "positive_control": "targeted" if control else None, "conditions": conds}


def test_verdict_inconclusive_when_positive_control_not_detected_even_if_tost_passes():
    out = verdict(_summary(control_p=0.3, tost=(0.001, 0.001)))["behavioural"]
    assert out["verdict"] == "inconclusive" and "positive control not detected" in out["reason"]
    out = verdict(_summary(control=False, tost=(0.001, 0.001)))["behavioural"]
    assert out["verdict"] == "inconclusive" and "positive control not detected" in out["reason"]


def test_verdict_branches():
    assert verdict(_summary())["behavioural"]["verdict"] == "equivalent"
    out = verdict(_summary(tost=(0.01, 0.4), diff=(0.9, 0.01)))["behavioural"]
    assert out["verdict"] == "different"
    out = verdict(_summary(p_v=0.2))["behavioural"]
    assert out["verdict"] == "inconclusive" and "no detectable effect" in out["reason"]
    out = verdict(_summary(tost=(0.01, 0.4), diff=(0.9, 0.3)))["behavioural"]
    assert out["verdict"] == "inconclusive" and "neither" in out["reason"]


def _dist(pooled, control, base=0.1):
    return {"distributional": {"js_v_none": base, "threshold": 0.1 * base, "js_perp_pooled": pooled, "js_control": control,
                               "ratio_perp_to_none": pooled["estimate"] / base, "control_exceeds_all_draws": True}}


def test_distributional_verdict_branches():
    def ci(e, lo, hi):
        return {"estimate": e, "low": lo, "high": hi}

    assert verdict(_summary() | _dist(ci(0.05, 0.04, 0.06), ci(0.2, 0.1, 0.3)))["distributional"]["verdict"] == "different"
    out = verdict(_summary() | _dist(ci(0.001, 0.0005, 0.002), ci(0.2, 0.1, 0.3)))["distributional"]
    assert out["verdict"] == "equivalent" and "threshold" in out["reason"]
    assert verdict(_summary() | _dist(ci(0.001, 0.0005, 0.002), None))["distributional"]["verdict"] == "inconclusive"
    assert verdict(_summary() | _dist(ci(0.01, 0.005, 0.02), ci(0.2, 0.1, 0.3)))["distributional"]["verdict"] == "inconclusive"


# --- end to end -------------------------------------------------------------------------------

def test_run_identifiability_end_to_end(llama):
    scorer = FakeScorer()
    settings = IdentifiabilitySettings(n_draws=2, n_prompts=4, samples_per_prompt=2, max_new_tokens=6, n_boot=100)
    report = run_identifiability(llama, "formality", layer=2, alpha=8.0, settings=settings, scorer=scorer)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    names = {"none", "v", "v+perp#0", "v+perp#1", "sqrt2*v", "perp", "random", "targeted"}
    assert set(report["mean_scores"]) == names
    assert set(report["summary"]["conditions"]) == names - {"none", "v"}
    assert report["config"]["control_trait"] == "politeness" and report["config"]["draw_seeds"] == [0, 1]
    assert report["verdict"]["behavioural"]["verdict"] in ("equivalent", "different", "inconclusive")
    assert "not proof of equivalence" in report["statement"] and "0.2" in report["statement"]
    assert report["vector"]["relative_dose"] > 0
    assert not any(p in t for p in report["prompts"] for t in scorer.seen)


def test_cli_writes_results_and_summary(tmp_path):
    """`steerscope audit identifiability --quick` on a tiny model folder, with the default scorer."""
    import json as _json
    import os
    import subprocess
    import sys

    pytest.importorskip("sentence_transformers")
    from steerscope.testing import tiny_model

    lm = tiny_model("llama")
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "audit"
    cmd = [sys.executable, "-m", "steerscope", "audit", "identifiability", "--model", str(model_dir), "--trait", "formality",
           "--layer", "1", "--quick", "--out", str(out)]
    env = dict(os.environ, STEERSCOPE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = _json.loads((out / "results.json").read_text())
    assert report["config"]["n_draws"] == profile("quick").id_draws and report["config"]["layer"] == 1
    assert set(report["verdict"]) == {"behavioural", "distributional"}
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Identifiability audit: formality") and "targeted" in summary
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_perp_in_the_readout_null_space_is_equivalent_and_targeted_is_different():
    """Both directions of the claim, on a model whose readout has a known null direction.

    Every LayerNorm subtracts the mean over the hidden dimension, so in a GPT-2-style model the
    all-ones direction of the residual stream is invisible to every later block and to the logits:
    ``v + c·1`` must be judged equivalent to ``v``. The positive control pushes the unembedding
    direction of "yes", which the scorer counts, and must be judged different.
    """
    from steerscope.testing import tiny_model

    lm = tiny_model("gpt2")
    tok = lm.tokenizer
    unembed = lm.model.get_output_embeddings().weight.detach()

    def centred(row):
        return row - row.mean()  # ⟂ the all-ones direction

    v, w = centred(unembed[tok.convert_tokens_to_ids("no")]), centred(unembed[tok.convert_tokens_to_ids("yes")])

    def scorer(texts):
        return np.array([t.split().count("no") + 3 * t.split().count("yes") for t in texts], float)

    prompts = ["tell me about your weekend", "write a short poem about the moon", "what is the weather like",
               "help me write a letter", "who is your friend", "what do you think about music", "give me a story",
               "how is the city"]
    conds = build_conditions(v, 1.5, 1, 0, control_direction=w, perp_directions=[torch.ones(lm.d_model)])
    scores = behavioural_scores(lm, 1, conds, prompts, scorer, 1, GenerationConfig(max_new_tokens=8, do_sample=False))
    continuations = reference_continuations(lm, 1, conds[1], prompts, 8)
    summary = summarise(scores, distributional_readout(lm, 1, conds, prompts, continuations), conds, n_boot=200)
    out = verdict(summary)
    assert out["behavioural"]["verdict"] == "equivalent", out
    assert out["distributional"]["verdict"] == "equivalent", out
    assert np.array_equal(scores["v+perp#0"], scores["v"])
    assert summary["conditions"]["targeted"]["p_diff_holm"] < 0.05
    assert summary["conditions"]["v+perp#0"]["js"]["estimate"] < 1e-9 < summary["distributional"]["threshold"]
    # the same audit with a Gaussian u ⊥ v (not in the null space) is not judged equivalent
    gauss = build_conditions(v, 1.5, 1, 0, control_direction=w)
    div = distributional_readout(lm, 1, gauss, prompts, continuations)
    assert verdict(summarise(scores | {"v+perp#0": scores["v"]}, div, gauss, n_boot=200))["distributional"]["verdict"] != "equivalent"
