import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from steerscope.audit.equivalence import readout_verdict
from steerscope.audit.identifiability import IdentifiabilitySettings, build_conditions, orthogonal_draw, score_readout
from steerscope.audit.sweep import alpha_sweep, environment_runs, parse_alphas, sweep_conditions
from steerscope.errors import SteerscopeError
from steerscope.jsonable import jsonable
from steerscope.testing import tiny_model

PROMPTS = ["tell me about your weekend", "write a short poem about the moon", "what is the weather like", "help me write a letter"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeScorer:
    """Deterministic: fraction of words in a small set."""

    name = "fake"

    def __init__(self, words=("the", "a", ".", "!", "of", "and")):
        self.words = set(words)
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return np.array([sum(w in self.words for w in t.split()) / max(1, len(t.split())) for t in texts], dtype=float)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _v(d=32, seed=123):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


SETTINGS = IdentifiabilitySettings(n_draws=2, seed=0, samples_per_prompt=1, max_new_tokens=4, n_boot=50, temperature=1.0)


@pytest.fixture(scope="module")
def sweep(llama):
    scorer = FakeScorer()
    out = alpha_sweep(llama, 1, _v(llama.d_model), [0.0, 4.0, 16.0], PROMPTS, scorer, replace(SETTINGS, seed=5, samples_per_prompt=2), h_norm=2.0)
    assert scorer.calls == 1  # one batched generation for every α
    return out


@pytest.fixture(scope="module")
def env_results(llama):
    return environment_runs(llama, "formality", 1, _v(llama.d_model), 8.0, FakeScorer(), SETTINGS,
                            prompts_by_env={e: PROMPTS[:3] for e in ("in_distribution", "topic_shift", "genre_shift")})


def test_sweep_conditions_reuse_audit_draws():
    v = _v()
    conds = {c.name: c for c in sweep_conditions(v, [1.0, 2.5], 2, seed=5)}
    assert list(conds) == ["none", "v@1", "v+perp#0@1", "v+perp#1@1", "v@2.5", "v+perp#0@2.5", "v+perp#1@2.5"]
    audit = {c.name: c for c in build_conditions(v, 2.5, 2, seed=5)}
    assert torch.equal(conds["v+perp#1@2.5"].vector, audit["v+perp#1"].vector)
    assert torch.allclose(conds["v+perp#0@1"].vector - v, orthogonal_draw(v, 5), atol=1e-6)
    assert conds["v@2.5"].alpha == 2.5 and conds["v+perp#1@1"].seed == 6
    with pytest.raises(SteerscopeError):
        sweep_conditions(v, [1.0, 1.0], 2, seed=0)
    assert parse_alphas("0, 2,4.5") == [0.0, 2.0, 4.5]
    for bad in ("", "a,b", "1,1", "nan"):
        with pytest.raises(SteerscopeError):
            parse_alphas(bad)


def test_alpha_sweep_structure(sweep, llama):
    assert json.loads(json.dumps(sweep, allow_nan=False)) == sweep
    assert [p["alpha"] for p in sweep["points"]] == [0.0, 4.0, 16.0]
    assert sweep["draw_seeds"] == [5, 6]
    v_norm = float(_v(llama.d_model).norm())
    for p in sweep["points"]:
        assert set(p["draws"]) == {"v+perp#0", "v+perp#1"}
        assert p["relative_dose"] == pytest.approx(abs(p["alpha"]) * v_norm / 2.0)
        for d in p["draws"].values():
            assert {"mean", "efficacy", "efficacy_low", "efficacy_high", "g", "g_low", "g_high", "seed"} <= set(d)
    assert set(sweep["mean_scores"]) == {"none", "v@0", "v+perp#0@0", "v+perp#1@0", "v@4", "v+perp#0@4",
                                         "v+perp#1@4", "v@16", "v+perp#0@16", "v+perp#1@16"}


def test_alpha_zero_equals_none_and_efficacy_undefined(sweep):
    zero = sweep["points"][0]
    assert zero["alpha"] == 0.0 and zero["relative_dose"] == 0.0
    assert zero["mean_v"] == sweep["mean_none"]
    for d in zero["draws"].values():
        assert d["mean"] == sweep["mean_none"]
        assert d["efficacy"] is None and d["efficacy_low"] is None and d["efficacy_high"] is None
        assert "efficacy undefined" in d["error"]


def test_environment_runs_all_envs(env_results):
    assert json.loads(json.dumps(env_results, allow_nan=False)) == env_results
    assert set(env_results["environments"]) == {"in_distribution", "topic_shift", "genre_shift"}
    for res in env_results["environments"].values():
        assert set(res["mean_scores"]) == {"none", "v", "v+perp#0", "v+perp#1", "dose_control", "dose_half"}
        assert set(res["trait_score"]["conditions"]) == {"v+perp#0", "v+perp#1", "dose_control", "dose_half"}
        assert res["trait_score"]["verdict"] in ("equivalent", "different", "inconclusive")


def _check_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0


def _planted_scores(seed: int, n: int, second_draw: float, noise: float):
    """Trait scores ``[n, 2]`` per condition with planted shifts (v: 2, the dose controls 1.6 and 1)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 2))
    conds = [c for c in build_conditions(_v(), 1.0, 2, seed=0) if c.name != "dose_margin"]
    shift = {"none": 0, "v": 2, "v+perp#0": 2, "v+perp#1": second_draw, "dose_control": 1.6, "dose_half": 1.0}
    return {c.name: base + shift[c.name] + noise * rng.normal(size=base.shape) for c in conds}, conds


def _report():
    scores, conds = _planted_scores(0, 8, 1.9, 0.1)
    result = readout_verdict(score_readout(scores, conds, None), SETTINGS.margin(), n_boot=50)
    return jsonable({"config": {"trait": "formality", "layer": 1, "alpha": 1.0, "delta": 0.1}, "readouts": {"trait_score": result}})


def test_plots_write_valid_pngs(tmp_path, sweep, env_results):
    pytest.importorskip("matplotlib")
    from steerscope.audit.plots import plot_alpha_sweep, plot_effect_ratio, plot_environment_heatmap

    paths = [tmp_path / "effect_ratio.png", tmp_path / "alpha_sweep.png", tmp_path / "environments.png"]
    plot_effect_ratio(_report(), paths[0])
    plot_alpha_sweep(sweep, paths[1])
    rep = _report()  # non-degenerate scores, so the heat map has finite efficacies
    other = {"trait": "politeness", "environments": {"in_distribution": {"trait_score": rep["readouts"]["trait_score"]}}}
    plot_environment_heatmap([env_results, other], paths[2])
    for p in paths:
        _check_png(p)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    with pytest.raises(SteerscopeError, match="already exists"):
        plot_effect_ratio(_report(), paths[0])
    plot_environment_heatmap(env_results, paths[2], overwrite=True)
    _check_png(paths[2])


def test_markdown_sections(sweep, env_results):
    from steerscope.audit.markdown import _alpha_sweep_lines, _environment_lines

    text = "\n".join(_alpha_sweep_lines(sweep) + _environment_lines(env_results))
    assert "## α sweep" in text and "| 0 |" in text and "n/a [n/a, n/a]" in text
    assert "## Environments" in text and all(e in text for e in ("in_distribution", "topic_shift", "genre_shift"))
    assert _alpha_sweep_lines(None) == [] and _environment_lines(None) == []


def test_cli_sweep_envs_and_plots(tmp_path, monkeypatch, llama):
    """`audit identifiability --quick --alphas --all-envs` in-process, tiny model and fake scorer."""
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    import steerscope.cli as cli
    import steerscope.score.base as score_base

    loads = []
    monkeypatch.setattr(cli, "_load", lambda *a, **k: loads.append(a) or llama)
    monkeypatch.setattr(score_base, "get_scorer", lambda trait, *a, **k: FakeScorer())
    out = tmp_path / "audit"
    args = ["audit", "identifiability", "--trait", "formality", "--layer", "1", "--out", str(out), "--seeds", "1",
            "--n-prompts", "2", "--samples", "1", "--max-new-tokens", "3", "--class-draws", "4", "--alphas", "0,8", "--all-envs"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "results.json").read_text())
    assert [p["alpha"] for p in report["alpha_sweep"]["points"]] == [0.0, 8.0]
    assert set(report["environments"]["environments"]) == {"in_distribution", "topic_shift", "genre_shift"}
    assert "## α sweep" in (out / "summary.md").read_text()
    for name in ("effect_ratio.png", "alpha_sweep.png", "environments.png"):
        _check_png(out / name)
    # every output path (plots included) is checked, and --alphas parsed, before the model is loaded
    (out / "results.json").unlink()
    (out / "summary.md").unlink()
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code != 0 and "effect_ratio.png already exists" in str(again.exception)
    (out / "effect_ratio.png").unlink()
    (out / "alpha_sweep.png").unlink()
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code != 0 and "environments.png already exists" in str(again.exception)
    bad = CliRunner().invoke(cli.app, args[:-3] + ["--alphas", "1,x", "--overwrite"])
    assert bad.exit_code != 0 and "--alphas" in str(bad.exception)
    assert len(loads) == 1


def _cli_with_tiny(monkeypatch, llama):
    from steerscope import cli
    import steerscope.score.base as score_base

    monkeypatch.setattr(cli, "_load", lambda *a, **k: llama)
    monkeypatch.setattr(score_base, "get_scorer", lambda trait, *a, **k: FakeScorer())
    return cli


def test_cli_several_traits_share_one_holm_family(tmp_path, monkeypatch, llama):
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    cli = _cli_with_tiny(monkeypatch, llama)
    out = tmp_path / "audit"
    args = ["audit", "identifiability", "--trait", "formality,politeness", "--layer", "1", "--out", str(out),
            "--seeds", "1", "--n-prompts", "2", "--samples", "1", "--max-new-tokens", "3", "--class-draws", "4", "--all-envs"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "results.json").read_text())
    assert list(report["traits"]) == ["formality", "politeness"] and set(report["verdict"]) == {"formality", "politeness"}
    for readout in ("trait_score", "pair_margin", "distribution"):
        families = [r["readouts"][readout]["holm_family"] for r in report["traits"].values()]
        assert families[0] == families[1] == {"traits": ["formality", "politeness"], "n_tests": 2}
    for name in ("effect_ratio_formality.png", "effect_ratio_politeness.png", "environments.png"):
        _check_png(out / name)
    assert (out / "summary.md").read_text().startswith("# Identifiability audit: overview")


def test_holm_across_traits_equals_holm_over_the_union():
    from steerscope.audit.identifiability import holm_across_traits
    from steerscope.stats import holm

    def readout(p_diff):
        conds = {f"c{i}": {"p_different": d, "p_different_holm": d, "p_equivalent": 0.5} for i, d in enumerate(p_diff)}
        return {"readout": "pair_margin", "kind": "scalar", "delta": 0.1, "level": 0.05, "draws": list(conds), "invalid": None,
                "effect": {"p": 0.001}, "conditions": conds, "dose_control_detected": True,
                "planning": {"n": 8, "resolution": 0.2, "units": "fraction of v's effect", "prompts_needed": 40}}

    reports = {"a": {"readouts": {"pair_margin": readout([0.02, 0.04])}}, "b": {"readouts": {"pair_margin": readout([0.03])}}}
    joint = holm_across_traits(reports)
    expected = holm([0.02, 0.04, 0.03])
    got = [joint[t]["readouts"]["pair_margin"]["conditions"][c] for t, c in (("a", "c0"), ("a", "c1"), ("b", "c0"))]
    assert [g["p_different_holm"] for g in got] == pytest.approx(list(expected))
    assert reports["a"]["readouts"]["pair_margin"]["conditions"]["c0"]["p_different_holm"] == 0.02  # inputs untouched
    # alone, trait a's first draw differs (Holm over 2 draws: 0.04); in the family of 3 it does not (0.02 · 3 > 0.05)
    assert reports["a"]["readouts"]["pair_margin"]["conditions"]["c0"]["p_different"] * 2 < 0.05
    assert joint["a"]["verdict"]["pair_margin"]["verdict"] == "inconclusive"
    assert joint["a"]["readouts"]["pair_margin"]["holm_family"] == {"traits": ["a", "b"], "n_tests": 3}


def test_invalid_scorer_makes_the_trait_score_verdict_inconclusive():
    scores, conds = _planted_scores(1, 10, 2.0, 0.01)
    assert readout_verdict(score_readout(scores, conds, 0.9), SETTINGS.margin(), 50)["verdict"] == "equivalent"
    out = readout_verdict(score_readout(scores, conds, 0.55), SETTINGS.margin(), 50)
    assert out["verdict"] == "inconclusive" and "0.55" in out["reason"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--trait", "humour"], "unknown trait 'humour'"),
    (["--trait", "formality", "--seeds", "0"], "(--seeds) must be at least 1"),
    (["--trait", "formality", "--n-prompts", "25"], "only 24"),
    (["--trait", "formality", "--n-prompts", "1"], "at least 2 prompts"),
    (["--trait", "formality", "--alphas", " , "], "--alphas must list at least one"),
])
def test_cli_bad_input(tmp_path, monkeypatch, llama, extra, message):
    from typer.testing import CliRunner

    from steerscope.errors import SteerscopeError

    cli = _cli_with_tiny(monkeypatch, llama)
    args = ["audit", "identifiability", "--layer", "1", "--out", str(tmp_path / "a"), "--samples", "1",
            "--max-new-tokens", "2", *extra]
    result = CliRunner().invoke(cli.app, args)
    assert isinstance(result.exception, SteerscopeError) and message in str(result.exception), result.exception


def test_effect_ratio_plot_accepts_an_interval_that_excludes_the_estimate(tmp_path):
    """Percentile bootstrap intervals of a ratio need not contain the point estimate."""
    pytest.importorskip("matplotlib")
    from steerscope.audit.plots import plot_effect_ratio

    report = _report()
    row = next(iter(report["readouts"]["trait_score"]["conditions"].values()))
    row["efficacy"], row["efficacy_low"], row["efficacy_high"] = 2.0, -1.0, 1.5
    _check_png(plot_effect_ratio(report, tmp_path / "effect_ratio.png"))
