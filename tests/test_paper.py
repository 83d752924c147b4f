import json

import numpy as np
import pytest
import torch

from steerscope.audit.paper import PaperSettings, _orthogonal_test, cohens_d, last_token_logits, paper_markdown, run_paper_protocol
from steerscope.errors import SteerscopeError


class LengthScorer:
    name = "length"

    def __call__(self, texts):
        return np.array([len(t.split()) for t in texts], float)


def test_cohens_d_is_the_papers_population_sd_definition():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0])
    expected = abs(2.0 - 3.0) / np.sqrt((np.var(x) + np.var(y)) / 2)  # ddof = 0
    assert cohens_d(x, y) == pytest.approx(expected)
    assert cohens_d(np.ones(3), np.ones(3)) == 0.0 and cohens_d(np.ones(3), 2 * np.ones(3)) == float("inf")


def test_orthogonal_test_readings_both_ways():
    rng = np.random.default_rng(0)
    none = rng.normal(0, 1, 200)
    visible = {"none": none, "v@1": none + 2, "v+perp#0@1": none + 2.05}
    invisible = {"none": none, "v@1": none + 0.05, "v+perp#0@1": none + 0.02}
    far = {"none": none, "v@1": none + 2, "v+perp#0@1": none + 1}
    (a,), (b,), (c,) = (_orthogonal_test(s, [1.0], 1) for s in (visible, invisible, far))
    assert a["paper_reading"] == "negligible" and not a["vacuous"]
    assert b["paper_reading"] == "negligible" and b["vacuous"]  # v itself is not visible: the reading says nothing
    assert c["paper_reading"] == "not negligible" and not c["vacuous"]


def test_last_token_logits_steer_only_the_last_prompt_token(tiny_models):
    lm = tiny_models["llama"]
    prompts = ["tell me about your weekend", "a poem"]
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    logits = last_token_logits(lm, 1, prompts, [None, v, 2 * v])
    assert logits.shape[:2] == (3, 2)
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(logits[1], logits[2])
    again = last_token_logits(lm, 1, prompts[:1], [None])
    assert torch.allclose(again[0, 0], logits[0, 0], atol=1e-5)


def test_run_paper_protocol_structure(tiny_models):
    lm = tiny_models["llama"]
    s = PaperSettings(alphas=(0.0, 2.0), n_draws=2, n_prompts=3, samples=2, max_new_tokens=4, n_random=2)
    report = run_paper_protocol(lm, "formality", 1, LengthScorer(), s)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert [r["alpha"] for r in report["orthogonal_test"]] == [0.0, 2.0]
    assert {"v@0", "v@2", "v+perp#1@2", "pca@1", "v@1", "none"} <= set(report["mean_scores"])
    for r in report["orthogonal_test"]:
        assert r["vacuous"] == (r["d_v_vs_none"] < 0.2)
    ld = report["logit_distance"]
    assert ld["v_vs_none"] > 0 and ld["perp_shift_smaller_by"] == pytest.approx(1 - ld["v_vs_v_plus_perp"] / ld["v_vs_random"])
    assert ld["random_norm"] == pytest.approx(np.sqrt(2), rel=1e-5)  # same norm as v + v⊥ with unit v
    assert -1 <= report["mean_diff_vs_pca"]["cos"] <= 1
    assert paper_markdown(report).startswith("# Paper protocol")
    with pytest.raises(SteerscopeError):
        PaperSettings(n_draws=0)


def test_cli_protocol_paper(tmp_path, monkeypatch, tiny_models):
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    import steerscope.audit.commands as commands
    import steerscope.cli as cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: tiny_models["llama"])
    monkeypatch.setattr(commands, "spec_scorer", lambda spec, lm=None: LengthScorer())
    monkeypatch.setattr(PaperSettings, "quick_sizes", classmethod(lambda cls: cls(alphas=(0.0, 1.0), n_draws=1, n_prompts=2,
                                                                                 samples=1, max_new_tokens=3, n_random=1)))
    out = tmp_path / "paper"
    args = ["audit", "identifiability", "--trait", "formality", "--layer", "1", "--out", str(out), "--protocol", "paper", "--quick"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "results.json").read_text())
    assert report["protocol"] == "paper" and report["traits"]["formality"]["config"]["positions"] == "last"
    assert (out / "paper_formality.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(cli.app, args + ["--alpha", "2", "--overwrite"])
    assert isinstance(bad.exception, SteerscopeError) and "fixes its own strengths" in str(bad.exception)
    bad = CliRunner().invoke(cli.app, args[:-3] + ["--protocol", "papers", "--overwrite"])
    assert isinstance(bad.exception, SteerscopeError) and "unknown --protocol" in str(bad.exception)
