import json
import os
import subprocess
import sys

import pytest
import torch

from steerscope.audit import answers
from steerscope.audit.assumptions import check_assumptions
from steerscope.audit.markdown import reachability_markdown
from steerscope.audit.plots import plot_reachability_positions, plot_reachability_sweep
from steerscope.data.traits import BUILTIN_INSTRUCTIONS
from steerscope.audit.reachability import (
    AuditSettings,
    adversarial_collision,
    run_reachability,
    steered_states,
)
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.extract import extract
from steerscope.data import builtin_pairs
from steerscope.intervene import Add, Steering
from steerscope.invert import SearchConfig, calibrate_threshold, hidden_states
from steerscope.sequence_search import SequenceConfig
from steerscope.testing import tiny_model

PROMPTS = ["tell me about your weekend", "write a short poem about the moon"]
CALIBRATION = ["help me write a letter to my friend"]
SETTINGS = AuditSettings(positions="last:4", alphas=(1.0, 3.0), sweep_prompts=1, max_new_tokens=3, search=SearchConfig(budget=32))
N_POSITIONS = 4


class CountScorer:
    name = "count"

    def __call__(self, texts):
        import numpy as np

        return np.array([len(t.split()) for t in texts], dtype=float)


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def report(llama):
    v = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    return run_reachability(llama, v, 1, 2.0, PROMPTS, CALIBRATION, trait="formality", instructions=BUILTIN_INSTRUCTIONS["formality"], scorer=CountScorer(), settings=SETTINGS)


def test_states_steered_at_the_capture_layer_are_natural_plus_alpha_v(llama):
    ids = encode_prompt(llama.tokenizer, PROMPTS[0])
    v = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(steered_states(llama, ids, v, 1.5, 1, 1), hidden_states(llama, ids, 1) + 1.5 * v, atol=1e-5)
    with Steering(llama, {1: Add(v)}, positions=[3]):
        one = hidden_states(llama, ids, 1)
    natural = hidden_states(llama, ids, 1)
    assert torch.equal(one[3], natural[3] + v)
    assert torch.equal(one[:3], natural[:3]) and torch.equal(one[4:], natural[4:])


def test_report_structure_and_positive_control(report):
    s = report["summary"]
    assert s["natural_exact_recovery"] == 1.0
    assert s["n_positions"] == len(PROMPTS) * N_POSITIONS
    # the tiny vocabulary is scanned whole where nothing matches: every steered position is certified
    assert s["verdict"] == "unreachable-within-search" and s["reachable_prompt"] is None
    assert s["steered_exhaustive_rate"] == 1.0 and s["steered_budget_rate"] == 0.0
    assert s["median_steered_distance"] > 1e3 * report["threshold"]["epsilon"]
    assert s["median_steered_over_noise"] > 1e3
    for p in report["prompts"]:
        assert len(p["positions"]) == N_POSITIONS
        for row in p["positions"]:
            assert row["natural_recovered"] and row["natural_distance"] <= report["threshold"]["epsilon"]
            assert row["steered_distance"] <= row["displacement"] == row["original_distance"]  # seeded with the prompt's tokens
            assert row["displacement"] == pytest.approx(2.0 * s["vector_norm"], rel=1e-4)
            assert not row["steered_accepted"] and row["steered_status"] == "exhaustive"
            assert row["certified_radius"] == row["steered_search_distance"] and row["steered_tried"] == len(row_vocab(report))
    assert "not a proof" in report["statement"]
    assert answers.reachable({"reachability": report})["status"] == "no"
    json.dumps(report, allow_nan=False)


def row_vocab(report):
    return range(report["config"]["vocab"])


def _planted(llama, prompt=PROMPTS[0], layer=1):
    """A vector that moves the state of ``prompt``'s last user word exactly onto that of another prompt,
    which has another word there: ``(v, position, the other prompt's ids, the prompt's ids)``."""
    from steerscope.encoding import prompt_user_span

    ids = encode_prompt(llama.tokenizer, prompt)
    t = prompt_user_span(llama.tokenizer, prompt, ids)[1] - 1
    q = list(ids)
    q[t] = encode_prompt(llama.tokenizer, "dog")[-3] if ids[t] != encode_prompt(llama.tokenizer, "dog")[-3] else ids[t] + 1
    v = hidden_states(llama, q, layer)[t] - hidden_states(llama, ids, layer)[t]
    return v, t, q, ids


def test_alpha_zero_is_reachable_by_the_prompt_itself(llama):
    v = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    s = run_reachability(llama, v, 1, 0.0, PROMPTS[:1], CALIBRATION, settings=SETTINGS)["summary"]
    assert s["verdict"] == "reachable" and s["steered_accepted_rate"] == 1.0
    assert s["reachable_prompt"] == llama.tokenizer.decode(encode_prompt(llama.tokenizer, PROMPTS[0]))


def test_a_planted_prompt_state_is_found_and_judged_reachable(llama):
    v, t, q, ids = _planted(llama)
    settings = AuditSettings(positions=f"{t}:{t + 1}", steer_at="searched", alphas=(1.0,), sweep_prompts=1, max_new_tokens=2,
                             search=SearchConfig(budget=32))
    report = run_reachability(llama, v, 1, 1.0, PROMPTS[:1], CALIBRATION, settings=settings)
    s = report["summary"]
    assert s["verdict"] == "reachable" and s["reachable_prompt"] == llama.tokenizer.decode(q)
    (row,) = report["prompts"][0]["positions"]
    assert row["steered_token"] == q[t] != ids[t] and row["steered_status"] == "found"
    assert answers.reachable({"reachability": report})["status"] == "yes"


def test_a_search_starved_of_budget_says_not_found_within_budget(llama):
    v, t, q, ids = _planted(llama)
    settings = AuditSettings(positions=f"{t}:{t + 1}", steer_at="searched", alphas=(1.0,), sweep_prompts=1, max_new_tokens=2,
                             search=SearchConfig(budget=1, max_candidates=1, prior=False),
                             sequence=SequenceConfig(iterations=0))  # the gradient's first round recovers the natural states
    report = run_reachability(llama, v, 1, 1.0, PROMPTS[:1], CALIBRATION, settings=settings)
    s = report["summary"]
    assert s["verdict"] == "not-found-within-budget" and s["steered_budget_rate"] == 1.0
    assert report["prompts"][0]["sequence_search"]["scored"] == 0
    (row,) = report["prompts"][0]["positions"]
    assert row["steered_tried"] == 1 and row["steered_status"] == "budget" and row["certified_radius"] is None
    answer = answers.reachable({"reachability": report})
    assert answer["status"] == "unknown" and answer["headline"].startswith("Not found within the search budget")


def test_the_whole_span_search_finds_a_planted_prompt_that_the_starved_sequential_search_misses(llama):
    v, t, q, ids = _planted(llama)
    settings = AuditSettings(positions=f"{t}:{t + 1}", steer_at="searched", alphas=(1.0,), sweep_prompts=1, max_new_tokens=2,
                             search=SearchConfig(budget=1, max_candidates=1))
    report = run_reachability(llama, v, 1, 1.0, PROMPTS[:1], CALIBRATION, settings=settings)
    prompt = report["prompts"][0]
    assert [r["steered_status"] for r in prompt["positions"]] == ["budget"]  # only the prompt's own token was scored
    assert prompt["found_by"] == "whole-span" and prompt["sequence_search"]["accepted"]
    assert report["summary"]["verdict"] == "reachable" and report["summary"]["reachable_prompt"] == llama.tokenizer.decode(q)
    assert all(r["sequence_distance"] <= report["threshold"]["epsilon"] for r in prompt["positions"])


def test_the_relaxation_comes_at_least_as_near_as_the_prompt_itself(report):
    for prompt in report["prompts"]:
        relaxed = prompt["relaxation"]
        assert sum(d * d for d in relaxed["distances"]) <= sum(d * d for d in relaxed["initial_distances"])
        assert relaxed["initial_distances"] == pytest.approx([r["displacement"] for r in prompt["positions"]], rel=1e-4)
        seq = prompt["sequence_search"]
        starts = [relaxed["initial_distances"], [r["steered_search_distance"] for r in prompt["positions"]]]
        assert sum(d * d for d in seq["distances"]) <= min(sum(d * d for d in ds) for ds in starts) * (1 + 1e-4)


def test_the_default_search_covers_the_users_words_not_the_template(llama):
    settings = AuditSettings(alphas=(1.0,), sweep_prompts=1, max_new_tokens=2, search=SearchConfig(budget=32, max_candidates=64))
    v = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    report = run_reachability(llama, v, 1, 1.0, PROMPTS, CALIBRATION, settings=settings)
    assert [p["searched_text"] for p in report["prompts"]] == PROMPTS
    assert report["config"]["positions"] == "user"
    assert report["summary"]["verdict"] == "not-found-within-budget"  # 64 of the vocabulary's tokens per position


def test_positions_specs(llama):
    from steerscope.audit.reachability import parse_window, search_window

    ids = encode_prompt(llama.tokenizer, PROMPTS[0])
    n = len(ids)
    assert search_window(llama, PROMPTS[0], ids, "all", 100) == (0, n)
    assert search_window(llama, PROMPTS[0], ids, "last:3", 100) == search_window(llama, PROMPTS[0], ids, "3", 100) == (n - 3, n)
    assert search_window(llama, PROMPTS[0], ids, "1:-2", 100) == (1, n - 2)
    assert search_window(llama, PROMPTS[0], ids, "all", 2) == (n - 2, n)
    for bad in ("middle", "last:0", "1:2:3", ":", "-"):
        with pytest.raises(SteerscopeError, match="--positions must be"):
            parse_window(bad)
    with pytest.raises(SteerscopeError, match="selects no token"):
        search_window(llama, PROMPTS[0], ids, "5:5", 100)


def test_alpha_sweep_and_random_control(report):
    sweep = {p["alpha"]: p for p in report["alpha_sweep"]}
    assert set(sweep) == {1.0, 3.0}
    assert sweep[3.0]["median_displacement"] == pytest.approx(3 * sweep[1.0]["median_displacement"], rel=1e-4)
    rand = report["random_control"]
    assert rand["norm"] == pytest.approx(report["summary"]["vector_norm"], rel=1e-5)
    assert rand["median_displacement"] == pytest.approx(report["summary"]["steering_norm"], rel=1e-4)
    assert rand["accepted_rate"] == 0.0
    assert all(p["median_steered_distance"] <= p["median_displacement"] for p in [*report["alpha_sweep"], rand])


def test_behaviour_columns_are_separate(report):
    beh = report["behaviour"]
    assert set(beh["white_box"]) == {"steered", "unsteered", "nearest_prompt"}
    assert set(beh["black_box"]) == {"instruction"}
    assert beh["white_box"]["steered"]["kl_from_steered"] == 0.0
    assert all(row["trait_score"] is not None for side in ("white_box", "black_box") for row in beh[side].values())
    assert len(beh["texts"]["instruction"]) == SETTINGS.sweep_prompts


def test_adversarial_vector_collides_at_i_and_diverges_at_i_plus_1(llama):
    ids = encode_prompt(llama.tokenizer, PROMPTS[0])
    th = calibrate_threshold(llama, 1, [encode_prompt(llama.tokenizer, CALIBRATION[0])])
    replacement = encode_prompt(llama.tokenizer, "dog")[-1]
    i = len(ids) - 3
    adv = adversarial_collision(llama, ids, 1, i, replacement, th, AuditSettings(adversarial_exhaustive=True))
    assert adv["collision"]["accepted"] and adv["collision"]["recovered_replacement"]
    assert adv["collision"]["distance"] <= th.epsilon
    assert adv["next"]["exhaustive"] and adv["next"]["tried"] == len(llama.tokenizer)
    assert not adv["next"]["accepted"] and adv["next"]["distance"] > 100 * th.epsilon
    with pytest.raises(SteerscopeError, match="next position"):
        adversarial_collision(llama, ids, 1, len(ids) - 1, replacement, th, SETTINGS)


def test_markdown_and_plots(report, tmp_path):
    md = reachability_markdown(report)
    assert "unreachable-within-search" in md and "not a proof" in md and "Theorem 4.5" in md
    assert "white-box" in md and "black-box" in md
    for fn, name in ((plot_reachability_positions, "positions.png"), (plot_reachability_sweep, "sweep.png")):
        path = fn(report, tmp_path / name)
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_assumption_check(tiny_models):
    gpt2 = {c["component"]: c for c in check_assumptions(tiny_models["gpt2"])}
    assert not gpt2["activation"]["breaks"] and not gpt2["top-k routing (MoE)"]["breaks"]
    relu = tiny_model("llama")
    relu.model.config.hidden_act = "relu"
    assert {c["component"]: c for c in check_assumptions(relu)}["activation"]["breaks"]


def test_bad_input(llama, tmp_path):
    v = torch.ones(llama.d_model)
    with pytest.raises(SteerscopeError, match="out of range"):
        run_reachability(llama, v, 9, 1.0, PROMPTS, CALIBRATION, settings=SETTINGS)
    with pytest.raises(SteerscopeError, match="must be a finite"):
        run_reachability(llama, torch.ones(7), 1, 1.0, PROMPTS, CALIBRATION, settings=SETTINGS)
    with pytest.raises(SteerscopeError, match="context of .*2048 tokens"):
        run_reachability(llama, v, 1, 1.0, ["the " * 2100], CALIBRATION, settings=SETTINGS)


def test_cli_errors_for_foreign_vector_and_missing_vector(tmp_path):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    other = extract(tiny_model("llama", seed=1), builtin_pairs("formality", "train")[:4], [1]).save(tmp_path / "other.safetensors")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "steerscope", "audit", "reachability", "--model", str(tmp_path / "m"), "--device", "cpu",
            "--alpha", "1", "--quick"]
    foreign = subprocess.run([*base, "--vector", str(other), "--out", str(tmp_path / "a")], capture_output=True, text=True, env=env)
    assert foreign.returncode == 2 and "fingerprint" in foreign.stderr
    neither = subprocess.run([*base, "--out", str(tmp_path / "c")], capture_output=True, text=True, env=env)
    assert neither.returncode == 2 and "give --vector, --trait or --dataset" in neither.stderr


def test_parts_computed_alone_in_reverse_give_the_report(llama, report):
    """Each part of the audit computed by its own ReachabilityAudit, the independent ones last first, each
    payload read back as a run store gives it: exactly the report of ``run_reachability``."""
    from steerscope.audit.reachability import ReachabilityAudit
    from steerscope.runstore import stored_payload

    v = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))

    def fresh() -> ReachabilityAudit:
        return ReachabilityAudit(llama, v, 1, 2.0, PROMPTS, CALIBRATION, trait="formality", scorer=CountScorer(),
                                 settings=SETTINGS, instructions=BUILTIN_INSTRUCTIONS["formality"])

    threshold = stored_payload(fresh().threshold())
    random_control = stored_payload(fresh().random_control(threshold))
    sweep = [stored_payload(fresh().sweep(a, threshold)) for a in reversed(SETTINGS.alphas)][::-1]
    prompts = [stored_payload(fresh().prompt(i, threshold)) for i in reversed(range(len(PROMPTS)))][::-1]
    assert [p["nearest_ids"][:p["start"]] for p in prompts] == [encode_prompt(llama.tokenizer, p)[:q["start"]] for p, q in zip(PROMPTS, prompts)]
    parts = {"prompts": prompts, "alpha_sweep": sweep, "random_control": random_control, "black_box_probes": stored_payload(fresh().black_box()),
             "behaviour": stored_payload(fresh().behaviour(prompts)), "adversarial": stored_payload(fresh().adversarial(prompts[0], threshold))}
    assert parts["black_box_probes"] is None  # off in these settings
    assert fresh().report(threshold, parts) == report
    assert "nearest_ids" not in report["prompts"][0] and [a["alpha"] for a in report["alpha_sweep"]] == list(SETTINGS.alphas)


def test_the_sweep_at_the_audits_own_alpha_is_read_from_the_prompts_searches(llama):
    """At the audit's own α the sweep's steered searches are those of the prompts: reading them gives
    exactly what searching again gives, and only the other α are searched."""
    from steerscope.audit.reachability import ReachabilityAudit
    from steerscope.runstore import stored_payload

    v = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))
    audit = ReachabilityAudit(llama, v, 1, 1.0, PROMPTS, CALIBRATION, trait="formality", scorer=CountScorer(),
                              settings=SETTINGS, instructions=BUILTIN_INSTRUCTIONS["formality"])
    assert audit.searched_alphas() == [3.0]
    threshold = stored_payload(audit.threshold())
    prompts = [stored_payload(audit.prompt(i, threshold)) for i in range(len(PROMPTS))]
    read = stored_payload(audit.sweep_of_prompts(prompts))
    assert read == stored_payload(audit.sweep(1.0, threshold))
    assert read["n_positions"] == N_POSITIONS * SETTINGS.sweep_prompts and read["alpha"] == 1.0
