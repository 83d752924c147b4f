"""The single-audit subcommands on a user's trait and on vectors made elsewhere (tiny model, in-process CLI)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from steerscope.errors import SteerscopeError
from steerscope.testing import tiny_model

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).parent))
from test_traitspec import write_pirate_pairs  # noqa: E402

SMALL_ID = ["--seeds", "1", "--n-prompts", "2", "--samples", "1", "--max-new-tokens", "3", "--class-draws", "2"]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.fixture
def cli(monkeypatch, llama):
    import steerscope.cli as cli_module

    loads = []
    monkeypatch.setattr(cli_module, "_load", lambda *a, **k: loads.append(a) or llama)
    cli_module.loads = loads
    return cli_module


def _invoke(cli, *args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def _npy(path: Path, rows: np.ndarray) -> Path:
    np.save(path, rows.astype(np.float32))
    return path


def test_identifiability_of_a_given_vector_on_a_user_trait_without_a_scorer(cli, llama, tmp_path):
    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    rows = np.zeros((llama.n_layers, llama.d_model))
    rows[2] = np.random.default_rng(0).standard_normal(llama.d_model)
    out = tmp_path / "id"
    result = _invoke(cli, "audit", "identifiability", "--dataset", pairs, "--vector", _npy(tmp_path / "v.npy", rows), "--layer", 2,
                     "--out", out, *SMALL_ID)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["trait"] == "pirate" and report["config"]["layer"] == 2
    assert report["vector"]["norm"] == pytest.approx(float(np.linalg.norm(rows[2])), rel=1e-6)
    assert report["config"]["extraction"]["method"] == "given (numpy)"
    assert set(report["readouts"]) == {"pair_margin", "distribution"} and report["scorer"] is None
    assert report["v_vs_none"]["readout"] == "pair_margin"
    assert "No scorer: no trait-score readout" in (out / "summary.md").read_text()


def test_identifiability_of_a_user_trait_with_a_scorer_extracts_its_vector(cli, llama, tmp_path, monkeypatch):
    import steerscope.score.base as score_base
    from test_identifiability_sweep import FakeScorer

    monkeypatch.setattr(score_base, "get_scorer", lambda trait, *a, **k: FakeScorer())
    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    out = tmp_path / "id"
    result = _invoke(cli, "audit", "identifiability", "--dataset", pairs, "--name", "buccaneer", "--scorer", "builtin:formality",
                     "--layer", 1, "--out", out, *SMALL_ID)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["trait"] == "buccaneer" and report["config"]["trait_spec"]["scorer"] == "builtin:formality"
    assert set(report["readouts"]) == {"trait_score", "pair_margin", "distribution"}
    assert report["config"]["extraction"]["method"] == "mean_diff"


def test_nullspace_reports_the_gain_of_a_user_traits_vector_and_of_a_gguf_file(cli, llama, tmp_path):
    from steerscope.extract import extract
    from steerscope.traitspec import spec_from_files
    from steerscope.vectors import export_gguf

    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    base = ["audit", "nullspace", "--layers", "1", "--prompts", "2", "--tolerances", "1e-2"]
    mine = _invoke(cli, *base, "--dataset", pairs, "--out", tmp_path / "a")
    assert mine.exit_code == 0, (mine.output, mine.exception)
    gain = json.loads((tmp_path / "a" / "results.json").read_text())["layers"]["1"]["logits"]["vector_gain"]
    gguf = export_gguf(extract(llama, list(spec_from_files(pairs).train), [1]), tmp_path / "v.gguf")
    theirs = _invoke(cli, *base, "--vector", gguf, "--out", tmp_path / "b")
    assert theirs.exit_code == 0, (theirs.output, theirs.exception)
    # the same mean-difference direction, read back from llama.cpp's format: the same gain
    again = json.loads((tmp_path / "b" / "results.json").read_text())["layers"]["1"]["logits"]["vector_gain"]
    assert again["gain_v"] == pytest.approx(gain["gain_v"], rel=1e-5)


def test_reachability_of_a_given_vector_with_a_user_traits_prompts(cli, llama, tmp_path):
    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    rows = np.zeros((llama.n_layers, llama.d_model))
    rows[1] = np.random.default_rng(1).standard_normal(llama.d_model)
    out = tmp_path / "reach"
    result = _invoke(cli, "audit", "reachability", "--dataset", pairs, "--vector", _npy(tmp_path / "v.npy", rows), "--layer", 1,
                     "--alpha", 1, "--quick", "--n-prompts", 1, "--positions", 2, "--alphas", 1, "--max-new-tokens", 3,
                     "--budget", 8, "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "results.json").read_text())
    assert report["vector"]["source"].endswith("v.npy") and report["vector"]["method"] == "given (numpy)"
    assert report["config"]["trait"] == "pirate", report["config"]
    assert report["prompts"][0]["prompt"].startswith("Question number 0"), report["prompts"][0]


@pytest.mark.parametrize(("args", "message"), [
    (["audit", "identifiability", "--trait", "formality", "--prompts", "12"], "--prompts takes a prompt file"),
    (["audit", "identifiability"], "at least one trait is needed"),
    (["audit", "identifiability", "--dataset", "PAIRS", "--alphas", "1"], "trait 'pirate' has no scorer"),
    (["audit", "identifiability", "--dataset", "PAIRS", "--protocol", "paper"], "--protocol paper reads the trait score"),
    (["audit", "identifiability", "--trait", "formality", "--protocol", "paper", "--vector", "NPY", "--layer", "1"], "drop --vector"),
    (["audit", "identifiability", "--trait", "formality", "--vector", "NPY"], "pass --layer"),
    (["audit", "reachability", "--trait", "formality", "--dataset", "PAIRS", "--alpha", "1"], "takes one trait"),
    (["audit", "reachability", "--vector", "NPY", "--layer", "1", "--scorer", "vader", "--alpha", "1"], "give --trait or --dataset"),
    (["audit", "nullspace", "--layers", "1", "--trait", "formality", "--vector", "NPY"], "at most one of --trait, --dataset or --vector"),
])
def test_bad_input_is_refused_before_the_model_loads(cli, llama, tmp_path, args, message):
    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    npy = _npy(tmp_path / "v.npy", np.ones((llama.n_layers, llama.d_model)))
    given = [{"PAIRS": str(pairs), "NPY": str(npy)}.get(a, a) for a in args]
    result = _invoke(cli, *given, "--out", tmp_path / "out")
    assert isinstance(result.exception, SteerscopeError) and message in str(result.exception), (result.output, result.exception)
    assert cli.loads == [] and not (tmp_path / "out").exists()
