"""Monitoring with a steering direction: detection statistics on planted data, and the command on a tiny model."""

import json

import numpy as np
import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.monitor import MonitorSettings, auc, best_threshold, detection, pair_detection, token_projections, unit_direction
from steerscope.testing import tiny_model


def test_auc_and_threshold_on_known_scores():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert best_threshold(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 2.5
    with pytest.raises(SteerscopeError):
        unit_direction(torch.zeros(4))


def test_detection_is_perfect_for_a_planted_direction_and_chance_for_a_random_one():
    rng = np.random.default_rng(0)
    d, n = 64, 200
    planted = np.zeros(d)
    planted[5] = 1.0
    noise_pos, noise_neg = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    pos, neg = noise_pos + 8.0 * planted, noise_neg
    random = rng.standard_normal(d)
    random[5] = 0.0  # a random direction orthogonal to the planted one
    random /= np.linalg.norm(random)
    on_planted = detection(pos @ planted, neg @ planted, 4.0, 500, 0)
    on_random = detection(pos @ random, neg @ random, 0.0, 500, 0)
    assert on_planted["auc"] == 1.0 and on_planted["auc_low"] == 1.0 and on_planted["accuracy"] >= 0.99
    assert on_random["auc_low"] < 0.5 < on_random["auc_high"] and abs(on_random["auc"] - 0.5) < 0.1


def test_pair_detection_on_a_tiny_model_separates_two_kinds_of_text():
    from steerscope.data.pairs import ContrastivePair

    lm = tiny_model("llama")
    pairs = [ContrastivePair("the cat sat on the mat " * 2 + str(i), "zz qq xx vv ww " * 2 + str(i)) for i in range(16)]
    v = torch.as_tensor(np.random.default_rng(0).standard_normal(lm.d_model), dtype=torch.float32)
    from steerscope.extract import extract

    mean_diff = extract(lm, pairs[:12], [1]).directions[1]
    planted = pair_detection(lm, pairs[:12], pairs[12:], 1, mean_diff, n_boot=200)
    assert planted["auc"] == 1.0 and planted["accuracy"] == 1.0 and planted["train_accuracy"] == 1.0
    other = pair_detection(lm, pairs[:12], pairs[12:], 1, v, n_boot=200)
    assert 0.0 <= other["auc"] <= 1.0 and other["n_pairs"] == 4


def test_token_projections_cover_the_completion_and_flag_sinks():
    lm = tiny_model("llama")
    v = torch.ones(lm.d_model)
    chat = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "a short answer here"}]
    (proj,) = token_projections(lm, [chat], 1, v)
    assert len(proj.tokens) == 4 and proj.tokens[:3] == ["a", "short", "answer"]  # the tiny tokenizer is word-level
    assert len(proj.values) == len(proj.sinks) == len(proj.tokens) and not any(proj.sinks)
    (plain,) = token_projections(lm, ["one two three four"], 1, v)
    assert not plain.sinks[0] and len(plain.tokens) >= 3  # the string's first token (the sink) is outside the span


def test_monitor_command_writes_the_report_and_a_token_view(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    import steerscope.cli as cli
    import steerscope.score.base as score_base

    lm = tiny_model("llama")
    monkeypatch.setattr(cli, "_load", lambda *a, **k: lm)
    monkeypatch.setattr(score_base, "get_scorer", lambda trait, *a, **k: (lambda texts: np.array([len(t) for t in texts], float)))
    texts = tmp_path / "texts.txt"
    texts.write_text("Good evening, I trust you are well.\nhey whats up lol\n")
    out = tmp_path / "mon"
    args = ["monitor", "--trait", "formality", "--layer", "1", "--n-prompts", "2", "--samples", "1", "--max-new-tokens", "3",
            "--texts", str(texts), "--out", str(out)]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "monitor.json").read_text())
    assert report["layer"] == 1 and report["pairs"]["n_pairs"] == 16 and report["pairs"]["n_train"] == 48
    assert set(report["completions"]["mean_projection"]) == {"plus", "minus", "none"}
    assert "spearman" in report["completions"]["tracking"] and len(report["texts"]) == 2
    page = (out / "monitor.html").read_text()
    assert page.count("<span class='t'") > 10 and "<script" not in page and "your text" in page
    assert "# Monitoring: formality" in (out / "summary.md").read_text()
    again = CliRunner().invoke(cli.app, args)
    assert isinstance(again.exception, SteerscopeError) and "already exists" in str(again.exception)
    two = CliRunner().invoke(cli.app, ["monitor", "--trait", "formality,sentiment", "--out", str(tmp_path / "x")])
    assert isinstance(two.exception, SteerscopeError) and "one trait" in str(two.exception)


def test_settings_are_checked():
    with pytest.raises(SteerscopeError, match="at least 2 prompts"):
        MonitorSettings(n_prompts=1)
