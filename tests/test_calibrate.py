"""Layer selection by held-out separation and the coherence-aware strength calibration."""

import math

import numpy as np
import pytest
import torch

from steerscope.audit.calibrate import candidate_layers, choose_strength, layer_separation, strength_point
from steerscope.errors import SteerscopeError


def test_candidate_layers():
    assert candidate_layers(30, None) == list(range(6, 19))
    assert candidate_layers(30, 4) == [6, 10, 14, 18]
    assert candidate_layers(6, 10) == [1, 2, 3, 4]
    assert candidate_layers(1, None) == [0]
    with pytest.raises(SteerscopeError):
        candidate_layers(30, 0)


def _point(alpha, means, ppl, samples=2):
    """A calibration point whose per-prompt mean scores are ``means`` and perplexities ``ppl``."""
    scores = [[m - 0.1, m + 0.1] for m in means]
    return {"alpha": alpha, "scores": scores, "perplexity": [[p] * samples for p in ppl], "texts": []}


BASE = [0.0, 0.2, -0.1, 0.1, 0.05, -0.05]


def test_choose_strength_takes_the_smallest_coherent_alpha_that_reaches_the_target():
    points = [
        _point(0.0, BASE, [10] * 6),
        _point(1.0, [b + 0.01 * i for i, b in enumerate(BASE)], [10] * 6),   # tiny effect
        _point(2.0, [b + 1.0 + 0.1 * (i % 2) for i, b in enumerate(BASE)], [15] * 6),  # large effect, ratio 1.5
        _point(4.0, [b + 2.0 + 0.1 * (i % 2) for i, b in enumerate(BASE)], [40] * 6),  # larger, ratio 4: incoherent
    ]
    out = choose_strength(points, target_g=0.5, max_ppl_ratio=2.0, n_boot=200)
    assert out["alpha"] == 2.0 and out["reached"]
    rows = {r["alpha"]: r for r in out["rows"]}
    assert rows[2.0]["ppl_ratio"] == pytest.approx(1.5) and rows[2.0]["coherent"]
    assert rows[4.0]["ppl_ratio"] == pytest.approx(4.0) and not rows[4.0]["coherent"] and rows[4.0]["reaches_target"]
    assert not rows[1.0]["reaches_target"]
    assert out["baseline"]["perplexity"] == pytest.approx(10.0)


def test_choose_strength_falls_back_and_says_so():
    points = [_point(0.0, BASE, [10] * 6), _point(1.0, [b + 0.01 * i for i, b in enumerate(BASE)], [11] * 6),
              _point(2.0, [b + 3.0 for b in BASE], [50] * 6)]
    out = choose_strength(points, target_g=0.5, max_ppl_ratio=2.0, n_boot=200)
    assert out["alpha"] == 1.0 and not out["reached"] and "largest coherent effect" in out["reason"]
    incoherent = [_point(0.0, BASE, [10] * 6), _point(1.0, BASE, [30] * 6), _point(2.0, BASE, [90] * 6)]
    out = choose_strength(incoherent, target_g=0.5, max_ppl_ratio=2.0, n_boot=200)
    assert out["alpha"] == 1.0 and "every α exceeded" in out["reason"]
    with pytest.raises(SteerscopeError, match="alpha = 0"):
        choose_strength(points[1:], 0.5, 2.0)


def test_constant_scores_give_an_undefined_effect_not_a_crash():
    points = [_point(0.0, [0.0] * 4, [10] * 4), _point(1.0, [0.0] * 4, [10] * 4)]
    out = choose_strength(points, 0.5, 2.0, n_boot=50)
    assert math.isnan(out["rows"][0]["g"]) and "g_error" in out["rows"][0]


def test_layer_separation_picks_the_best_held_out_layer(monkeypatch):
    """Planted activations: the contrast is informative at layer 2 only."""
    import steerscope.audit.calibrate as cal
    from steerscope.data import builtin_pairs

    train, test = builtin_pairs("formality", "train")[:8], builtin_pairs("formality", "test")[:6]
    gen = torch.Generator().manual_seed(0)

    def fake_capture(lm, items, layers, position):
        n = len(items)
        out = {}
        for layer in layers:
            a = torch.randn(n, 16, generator=gen)
            if layer == 2:  # positives are items [0:8] and [16:22]
                a[:8, 0] += 5
                a[16:22, 0] += 5
            out[layer] = a
        return out

    monkeypatch.setattr(cal, "capture", fake_capture)
    out = layer_separation(None, train, test, [1, 2, 3])
    assert out["chosen"] == 2
    rows = {r["layer"]: r for r in out["rows"]}
    assert rows[2]["accuracy"] == 1.0 and rows[2]["separation"] > 2
    with pytest.raises(SteerscopeError, match="at least 2"):
        layer_separation(None, train[:1], test, [1])


def test_strength_point_on_a_tiny_model(tmp_path):
    from steerscope.testing import tiny_model

    lm = tiny_model("llama")
    v = torch.randn(lm.d_model)
    prompts = ["tell me about the weather", "write a short story"]
    out = strength_point(lm, 1, v, 2.0, prompts, lambda texts: np.arange(len(texts), dtype=float), samples=2, max_new_tokens=5, seed=0)
    assert out["alpha"] == 2.0 and np.asarray(out["scores"]).shape == (2, 2)
    ppl = np.asarray(out["perplexity"], dtype=float)
    assert ppl.shape == (2, 2) and np.all((ppl[np.isfinite(ppl)] >= 1.0))
    again = strength_point(lm, 1, v, 2.0, prompts, lambda texts: np.arange(len(texts), dtype=float), samples=2, max_new_tokens=5, seed=0)
    assert again == out
