"""``steerscope audit side-effects`` and ``steerscope audit robustness`` on a tiny model (in-process CLI)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from steerscope.data.traits import TRAITS
from steerscope.errors import SteerscopeError

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).parent))
from test_audit_subcommands import _invoke, _npy, cli, llama  # noqa: E402,F401  (fixtures)
from test_traitspec import write_pirate_pairs  # noqa: E402


def test_side_effects_of_a_given_vector_on_a_user_trait(cli, llama, tmp_path):  # noqa: F811
    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    rows = np.zeros((llama.n_layers, llama.d_model))
    rows[2] = np.random.default_rng(0).standard_normal(llama.d_model)
    out = tmp_path / "se"
    result = _invoke(cli, "audit", "side-effects", "--dataset", pairs, "--vector", _npy(tmp_path / "v.npy", rows), "--layer", 2,
                     "--alpha", 2, "--quick", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "side_effects.json").read_text())
    se = report["side_effects"]
    assert report["layer"] == 2 and report["vector"]["source"].startswith("given in") and se["target"] == "pirate"
    margin_rows = [r["trait"] for r in se["matrix"] if r["readout"] == "pair_margin"]
    assert margin_rows == [*TRAITS, "pirate"]  # every built-in trait, then the audited one
    assert not any(r["trait"] == "pirate" and r["readout"] == "trait_score" for r in se["matrix"])  # the user trait has no scorer
    assert se["capability"]["n_items"] == 24 and set(se["fluency"]) == {"1", "2"}
    assert "What else does it change?" in (out / "summary.md").read_text() and (out / "side_effects.png").stat().st_size > 0
    assert "edits" in se


def test_robustness_of_a_builtin_trait(cli, llama, tmp_path):  # noqa: F811
    out = tmp_path / "rob"
    result = _invoke(cli, "audit", "robustness", "--trait", "formality", "--layer", 1, "--alpha", 2, "--quick", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    rb = json.loads((out / "robustness.json").read_text())["robustness"]
    assert set(rb) == {"instructions", "environments", "layers", "stability"}
    assert rb["instructions"]["instructions"]["supporting"].startswith("Answer in a very formal")
    assert "trait_score" in rb["instructions"] and rb["environments"]["paraphrase"] is not None
    assert 1 in [r["layer"] for r in rb["layers"]["rows"]] and rb["layers"]["audited_layer"] == 1
    assert "Layer profile" in (out / "summary.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--trait", "formality", "--alpha", "0"], "--alpha must be non-zero"),
    (["--trait", "formality,politeness", "--alpha", "1"], "takes one trait; 2 were given"),
    (["--trait", "humour", "--alpha", "1"], "unknown trait 'humour'"),
])
def test_bad_input_is_refused_before_the_model_loads(cli, tmp_path, args, message):  # noqa: F811
    for command in ("side-effects", "robustness"):
        result = _invoke(cli, "audit", command, *args, "--out", tmp_path / command)
        assert isinstance(result.exception, SteerscopeError) and message in str(result.exception), (result.output, result.exception)
        assert cli.loads == [] and not (tmp_path / command).exists()


def test_a_user_trait_gets_its_instructions_from_the_command_line(cli, llama, tmp_path):  # noqa: F811
    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    out = tmp_path / "rob"
    result = _invoke(cli, "audit", "robustness", "--dataset", pairs, "--instructions", "Talk like a pirate.", "--instructions", "Talk plainly.",
                     "--layer", 1, "--alpha", 2, "--quick", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    ins = json.loads((out / "robustness.json").read_text())["robustness"]["instructions"]
    assert ins["instructions"] == {"none": None, "supporting": "Talk like a pirate.", "opposing": "Talk plainly."}
    without = _invoke(cli, "audit", "robustness", "--dataset", pairs, "--layer", 1, "--alpha", 2, "--quick", "--out", tmp_path / "plain")
    assert "--instructions" in json.loads((tmp_path / "plain" / "robustness.json").read_text())["robustness"]["instructions"]["not_run"]
    assert without.exit_code == 0
    for args in (["--trait", "formality", "--instructions", "a", "--instructions", "b"], ["--dataset", pairs, "--instructions", "only one"]):
        bad = _invoke(cli, "audit", "robustness", *args, "--alpha", 1, "--out", tmp_path / "bad")
        assert isinstance(bad.exception, SteerscopeError) and "--instructions gives a trait of your own" in str(bad.exception)
