import json

import numpy as np
import pytest
import torch
from dataclasses import replace
from typer.testing import CliRunner

from steerscope.audit.markdown import nullspace_markdown
from steerscope.audit.nullspace import layer_grams, nullspace_audit
from steerscope.audit.plots import plot_spectra, plot_stability
from steerscope.cli import app
from steerscope.errors import SteerscopeError
from steerscope.recover.planted import planted_benchmark
from steerscope.testing import tiny_model

PROMPTS = ["hello there my friend", "what is the weather like today", "tell me a short story about a dog"]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def audit(llama):
    v = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(0))
    return nullspace_audit(llama, PROMPTS, [1, 2], positions=(-1, -2), vectors={1: v}, angle_prompts=3, all_positions=2)


def test_audit_structure_and_consistency(audit, llama):
    assert audit["config"]["n_prompts"] == 3 and audit["config"]["positions"] == [-1, -2]
    json.dumps(audit, allow_nan=False)
    for layer in ("1", "2"):
        entry = audit["layers"][layer]
        for readout in ("logits", "logprobs"):
            st = entry[readout]["stacked"]
            assert len(st["singular_values"]) == llama.d_model
            assert st["singular_values"] == sorted(st["singular_values"], reverse=True)
            assert all(0 <= f <= 1 for f in st["inert_fraction"].values())
            per = entry[readout]["per_prompt_effective_rank"]["0.01"]
            assert per["min"] <= per["mean"] <= per["max"] <= st["effective_rank"]["0.01"]  # stacking can only add rank
            assert entry[readout]["null_space_angles"][0]["null_dims"].__len__() == 3
        cov = entry["covariance"]
        assert cov["last_token"]["n_samples"] == 3
        assert cov["all_tokens"]["n_samples"] > 3
    assert "vector_gain" in audit["layers"]["1"]["logits"] and "vector_gain" not in audit["layers"]["2"]["logits"]
    # the Jacobian of steering every position, on the first two prompts: the sum of the per-position Grams' Jacobians
    assert audit["config"]["all_positions_prompts"] == 2
    spread = audit["layers"]["1"]["all_positions"]["logits"]
    assert "complement_below_v" in spread["vector_gain"]
    assert spread["stacked"]["singular_values"] != audit["layers"]["1"]["logits"]["stacked"]["singular_values"]


def test_all_positions_gram_equals_the_gram_of_the_summed_jacobian(llama):
    from steerscope.encoding import encode_prompt
    from steerscope.jacobian import HeadGram, head_jacobian, prompt_gram

    ids = encode_prompt(llama.tokenizer, PROMPTS[0])
    gram = layer_grams(llama, PROMPTS[:1], 1, positions=(0,), spread=True)["logits"][0]
    per_position = [head_jacobian(llama, ids, 1, t) for t in range(len(ids))]
    summed = replace(per_position[-1], jz=sum(hj.jz for hj in per_position))
    assert torch.allclose(gram, prompt_gram(HeadGram(llama), summed, "logits"), rtol=1e-4, atol=1e-6)
    with pytest.raises(SteerscopeError, match="all-positions"):
        nullspace_audit(llama, PROMPTS, [1], all_positions=-1)


def test_stacked_gram_is_the_sum_over_prompts_and_positions(llama):
    grams = layer_grams(llama, PROMPTS, 1, positions=(-1, -2))
    assert len(grams["logits"]) == 6
    total = torch.stack(grams["logits"]).sum(0)
    sigma = np.sqrt(np.clip(np.linalg.eigvalsh(total.numpy()), 0, None))[::-1]
    # the largest stacked singular value is at least the largest of any single Jacobian
    assert sigma[0] >= max(np.sqrt(np.linalg.eigvalsh(g.numpy()).max()) for g in grams["logits"]) - 1e-9


def test_markdown_and_plots(audit, tmp_path):
    md = nullspace_markdown(audit)
    assert "| 1 | logits |" in md and "| 2 | logprobs |" in md
    assert "Activation covariance" in md and "Gain of the steering vector" in md
    path = plot_spectra(audit, tmp_path / "spectra.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    rows = [{"trait": "t", "method": "m", "identifiable": True, "stability": {"mean_cos": 0.9, "ci_low": 0.8, "ci_high": 0.95}},
            {"trait": "t", "method": "n", "identifiable": False, "stability": {"mean_cos": 0.5, "ci_low": 0.1, "ci_high": 0.7}}]
    assert plot_stability(rows, tmp_path / "stab.png").read_bytes()[:4] == b"\x89PNG"


def test_planted_benchmark_every_case_correct():
    rows = planted_benchmark(seed=0, n_boot=2)
    assert len(rows) == 8 and {r["method"] for r in rows} == {"ica", "sparse", "multienv", "crosslayer"}
    assert all(r["correct"] for r in rows), [(r["method"], r["case"], r["cos"], r["identifiable"]) for r in rows if not r["correct"]]
    assert [r["assumption_holds"] for r in rows] == [True, False] * 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nullspace-cli")
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "m")
    lm.tokenizer.save_pretrained(root / "m")
    return root / "m"


def test_cli_audit_nullspace_and_recover(model_dir, tmp_path):
    runner = CliRunner()
    base = ["--model", str(model_dir), "--device", "cpu"]
    res = runner.invoke(app, ["audit", "nullspace", "--layers", "1", "--prompts", "2", "--trait", "formality", "--out", str(tmp_path / "ns"), *base])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "ns" / "results.json").read_text())
    assert set(results["layers"]) == {"1"} and "vector_gain" in results["layers"]["1"]["logits"]
    assert (tmp_path / "ns" / "spectra.png").is_file() and (tmp_path / "ns" / "summary.md").is_file()
    again = runner.invoke(app, ["audit", "nullspace", "--layers", "1", "--prompts", "3", "--out", str(tmp_path / "ns"), *base])
    assert isinstance(again.exception, SteerscopeError) and "already exists" in str(again.exception)
    for method in ("sparse", "crosslayer"):  # ica and multienv run through the same code path in test_recover
        out = tmp_path / method
        res = runner.invoke(app, ["recover", "--method", method, "--trait", "formality", "--layer", "1", "--boot", "2",
                                  "--env-prompts", "2", "--later-layers", "2", "--out", str(out), *base])
        assert res.exit_code == 0, (method, res.output, res.exception)
        report = json.loads((out / "recovery.json").read_text())
        assert report["method"] == method and report["stability"]["n_boot"] == 2
        assert len(report["direction"]) == 32 and abs(np.linalg.norm(report["direction"]) - 1) < 1e-9
    bad = runner.invoke(app, ["recover", "--method", "pca", "--trait", "formality", "--layer", "1", "--out", str(tmp_path / "x"), *base])
    assert isinstance(bad.exception, SteerscopeError) and "unknown recovery method" in str(bad.exception)
    assert "Identifies the audited vector (the mean difference of the pairs)" in (tmp_path / "sparse" / "summary.md").read_text()


def test_cli_multienv_needs_pairs_written_in_environments(model_dir, tmp_path):
    """One vector repeated per environment is not multi-environment recovery: a pair file without an
    'environment' field is refused; the built-in trait's per-environment pairs are used."""
    import steerscope.data.traits as traits

    runner = CliRunner()
    base = ["--model", str(model_dir), "--device", "cpu", "--method", "multienv", "--layer", "1", "--boot", "2", "--env-prompts", "1"]
    pairs = traits.builtin_pairs("formality")[:12]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(p.to_json()) + "\n" for p in pairs))
    res = runner.invoke(app, ["recover", "--dataset", str(plain), "--out", str(tmp_path / "a"), *base])
    assert isinstance(res.exception, SteerscopeError) and "pairs written in at least 2 environments" in str(res.exception)
    envs = tmp_path / "envs.jsonl"
    envs.write_text("".join(json.dumps(p.to_json() | {"environment": ("in_distribution", "topic_shift")[i % 2]}) + "\n"
                            for i, p in enumerate(pairs)))
    res = runner.invoke(app, ["recover", "--dataset", str(envs), "--out", str(tmp_path / "b"), *base])
    assert res.exit_code == 0, (res.output, res.exception)
    report = json.loads((tmp_path / "b" / "recovery.json").read_text())
    assert report["details"]["environments"] == ["in_distribution", "topic_shift"]
    assert report["assumption"]["extra"]["pairs_per_environment"] == [6, 6]
    res = runner.invoke(app, ["recover", "--trait", "formality", "--out", str(tmp_path / "c"), *base])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((tmp_path / "c" / "recovery.json").read_text())["assumption"]["extra"]["pairs_per_environment"] == [24, 24, 24]
