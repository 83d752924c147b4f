import json

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
    grad = _v(seed=7)
    conds = build_conditions(v, 2.0, n_draws=3, seed=5, gradient=grad)
    c = _by_name(conds)
    assert list(c) == ["none", "v", "v+perp#0", "v+perp#1", "v+perp#2", "dose_margin", "dose_control", "dose_half", "v+grad"]
    assert c["none"].vector is None and c["none"].alpha == 0.0
    assert all(x.alpha == 2.0 for x in conds if x.kind != "none")
    vn = v.norm().item()
    for i in range(3):
        u = c[f"v+perp#{i}"].vector - v
        assert abs(torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=0).item()) < 1e-6
        assert u.norm().item() == pytest.approx(vn, rel=1e-5)
        assert c[f"v+perp#{i}"].seed == 5 + i
    for name, scale in (("dose_margin", 0.9), ("dose_control", 0.8), ("dose_half", 0.5)):
        assert torch.allclose(c[name].vector, scale * v, atol=1e-6)
    w = c["v+grad"].vector - v
    assert abs(torch.nn.functional.cosine_similarity(w.double(), v.double(), dim=0).item()) < 1e-6
    assert w.norm().item() == pytest.approx(vn, rel=1e-5)
    # the gradient control points along the part of the gradient orthogonal to v
    g_perp = grad.double() - (grad.double() @ v.double()) / (v.double() @ v.double()) * v.double()
    assert torch.nn.functional.cosine_similarity(w.double(), g_perp, dim=0).item() == pytest.approx(1.0, abs=1e-6)
    assert all(x.vector.dtype == torch.float32 for x in conds if x.vector is not None)


def test_build_conditions_determinism_and_draws_differ():
    v = _v()
    a, b = build_conditions(v, 1.0, 2, seed=0), build_conditions(v, 1.0, 2, seed=0)
    for x, y in zip(a, b):
        assert x.name == y.name and (x.vector is None or torch.equal(x.vector, y.vector))
    ca = _by_name(a)
    assert not torch.allclose(ca["v+perp#0"].vector, ca["v+perp#1"].vector)
    other = _by_name(build_conditions(v, 1.0, 2, seed=1))
    assert not torch.allclose(ca["v+perp#0"].vector, other["v+perp#0"].vector)
    assert "v+grad" not in ca  # no gradient control without a gradient


# --- readouts ---------------------------------------------------------------------------------

def test_behavioural_scores_shapes_and_scorer_sees_completions_only(llama):
    conds = build_conditions(_v(llama.d_model), 3.0, 2, seed=0, gradient=_v(llama.d_model, 9))
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
    conds = build_conditions(_v(llama.d_model), 3.0, 1, seed=0)
    v = _by_name(conds)["v"]
    conts = reference_continuations(llama, 1, v, PROMPTS, 4)
    out = distributional_readout(llama, 1, conds, PROMPTS, conts)
    assert np.all(out["v"]["kl"][np.isfinite(out["v"]["kl"])] == 0)
    assert all(out[c.name]["js"].shape == (len(PROMPTS),) for c in conds)
    finite = np.isfinite(out["none"]["kl"])
    assert finite.any() and np.all(out["none"]["kl"][finite] > 0)


def test_run_identifiability_end_to_end(llama):
    scorer = FakeScorer()
    settings = IdentifiabilitySettings(n_draws=2, n_prompts=4, samples_per_prompt=2, max_new_tokens=6, n_boot=100, class_draws=5,
                                       class_ratios=(1.0,))
    report = run_identifiability(llama, "formality", layer=2, alpha=8.0, settings=settings, scorer=scorer)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert set(report["mean_scores"]) == {"none", "v", "v+perp#0", "v+perp#1", "dose_control", "dose_half", "v+grad"}
    assert set(report["readouts"]) == {"trait_score", "pair_margin", "distribution"} == set(report["verdict"])
    for result in report["readouts"].values():
        assert result["draws"] == ["v+perp#0", "v+perp#1"] and result["verdict"] in ("equivalent", "different", "inconclusive")
        assert {"dose_control", "dose_half", "v+grad"} <= set(result["conditions"])
        assert result["planning"]["n"] == (16 if result["readout"] == "pair_margin" else 4)
    assert report["config"]["draw_seeds"] == [0, 1] and report["config"]["delta"] == 0.1
    assert report["class_size"]["pair_margin"]["1"]["n"] == 5 and report["class_size"]["distribution"]["1"]["n"] == 5
    assert 0 <= report["class_size"]["pair_margin"]["1"]["predicted"] <= 1
    assert "not proof of equivalence" in report["statement"] and "δ = 0.1" in report["statement"]
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
    assert set(report["verdict"]) == {"trait_score", "pair_margin", "distribution"}
    assert report["class_size"]["pair_margin"]["1"]["n"] == profile("quick").id_class_draws
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Identifiability audit: formality") and "Size of the equivalence class" in summary
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr


# --- group-sequential looks -------------------------------------------------------------------

def _planted_prompt_data(efficacy: float, noise: float):
    """A stand-in for the model readouts: per-prompt trait scores and divergences with planted effects."""
    from steerscope.audit.identifiability import PromptData

    def data(lm, layer, conditions, prompts, scorer, s):
        rng = np.random.default_rng(len(prompts) * 1000 + sum(map(len, prompts)))
        none = rng.normal(0, 1, (len(prompts), 1))
        shift = {"none": 0.0, "v": 1.0, "dose_control": 0.8, "dose_half": 0.5, "v+grad": 1.5}
        scores = {c.name: none + shift.get(c.name, efficacy) + rng.normal(0, noise, (len(prompts), 1))
                  for c in conditions if c.name != "dose_margin"}
        js_margin = rng.uniform(1e-3, 2e-3, len(prompts))
        scale = {"none": 50.0, "v": 0.0, "dose_margin": 1.0, "dose_control": 4.0, "dose_half": 25.0, "v+grad": 30.0}
        divergences = {c.name: {"kl": js_margin * scale.get(c.name, 9.0), "js": js_margin * scale.get(c.name, 9.0)}
                       for c in conditions}
        return PromptData(list(prompts), scores, ["x"] * len(prompts), divergences)
    return data


@pytest.mark.parametrize(("noise", "looks"), [(0.02, 1), (1.2, 3)])
def test_prompt_looks_stop_when_conclusive_and_spend_alpha_linearly(monkeypatch, noise, looks):
    from steerscope.audit import identifiability as ident

    monkeypatch.setattr(ident, "prompt_data", _planted_prompt_data(efficacy=1.6, noise=noise))
    s = IdentifiabilitySettings(n_draws=2, n_prompts=4, max_prompts=12, n_boot=50)
    conds = build_conditions(_v(), 1.0, 2, seed=0, gradient=_v(seed=3))
    seen, readouts, trace = ident.prompt_looks(None, 1, conds, [f"prompt {i}" for i in range(12)], FakeScorer(), s)
    assert [look["n_prompts"] for look in trace] == [4, 8, 12][:looks] and len(seen.prompts) == 4 * looks
    assert [look["level"] for look in trace] == pytest.approx([0.05 / 3] * looks)
    assert readouts["distribution"]["verdict"] == "different"  # every draw moves the distribution 9x the margin
    if looks == 1:  # clear data: both readouts conclusive at the first look
        assert readouts["trait_score"]["verdict"] == "different"
    else:  # too noisy: the budget is spent and the trait score stays undetermined
        assert readouts["trait_score"]["verdict"] == "inconclusive"
    assert readouts["trait_score"]["level"] == pytest.approx(0.05 / 3)


def test_until_conclusive_flags_go_together():
    from steerscope.audit.profiles import sequential_budget
    from steerscope.errors import SteerscopeError

    assert sequential_budget(False, None) is None and sequential_budget(True, 20) == 20
    for args in ((True, None), (False, 20)):
        with pytest.raises(SteerscopeError, match="go together"):
            sequential_budget(*args)
    with pytest.raises(SteerscopeError, match="at least --n-prompts"):
        IdentifiabilitySettings(n_prompts=12, max_prompts=8)
