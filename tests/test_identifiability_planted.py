"""Every verdict of the identifiability readouts, made to come out on a model where the truth is known.

A tiny GPT-2 in float64 (weights scaled up so that its next-token distributions are far from uniform):

* the all-ones direction of the residual stream is an exact null space of every readout (each
  LayerNorm subtracts the mean over the hidden dimension) → equivalent on the pair margin and on
  the distribution;
* a u orthogonal to every pair's margin gradient at the steered state is invisible to the pair
  margin at first order but moves the distribution → equivalent on the margin, different on the
  distribution;
* u along the margin gradient → different on the margin;
* the Monte Carlo size of the class agrees with the first-order prediction where the linearisation
  is accurate (a small dose).
"""

from dataclasses import replace

import pytest
import torch

from steerscope.audit.equivalence import Margin, readout_verdict
from steerscope.audit.identifiability import (
    build_conditions,
    distributional_readout,
    evaluation_prompts,
    js_readout,
    margin_readout,
    reference_continuations,
)
from steerscope.audit.readouts import ClassSample, class_fraction, margin_gradient, pair_margins_by_condition
from steerscope.data.traits import builtin_pairs
from steerscope.testing import tiny_model

LAYER, ALPHA = 1, 0.05


@pytest.fixture(scope="module")
def planted():
    lm = tiny_model("gpt2")
    lm.model.double()
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.ndim == 2:
                p.mul_(8)
    pairs = builtin_pairs("formality", "test")
    d = lm.d_model
    ones = torch.ones(d, dtype=torch.float64)
    # v raises every pair's margin equally at first order and is ⟂ the all-ones direction.
    grads0 = [torch.from_numpy(margin_gradient(lm, LAYER, torch.zeros(d), 0.0, [p])) for p in pairs]
    v = torch.linalg.pinv(torch.stack([*grads0, ones])) @ torch.tensor([1.0] * len(pairs) + [0.0], dtype=torch.float64)
    grads = [torch.from_numpy(margin_gradient(lm, LAYER, v, ALPHA, [p])) for p in pairs]
    g_mean = torch.from_numpy(margin_gradient(lm, LAYER, v, ALPHA, pairs))
    basis, _ = torch.linalg.qr(torch.stack([v, ones, g_mean, *grads]).T)
    x = torch.randn(d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    invisible = x - basis @ (basis.T @ x)
    margin = Margin(0.1)
    conds = build_conditions(v, ALPHA, 0, 0, margin, g_mean, perp_directions=[ones, invisible, g_mean])
    prompts = evaluation_prompts("formality", "in_distribution", 8)
    margins = pair_margins_by_condition(lm, LAYER, {c.name: c.vector for c in conds}, ALPHA, pairs)
    continuations = reference_continuations(lm, LAYER, conds[1], prompts, 8)
    js = distributional_readout(lm, LAYER, conds, prompts, continuations)
    return {"lm": lm, "v": v, "pairs": pairs, "g": g_mean, "margin": margin,
            "readouts": {"pair_margin": margin_readout(margins, conds), "distribution": js_readout(js, conds)}}


def _verdict(planted, readout: str, draw: str) -> dict:
    data = planted["readouts"][readout]
    return readout_verdict(replace(data, draws=[draw]), planted["margin"], n_boot=200)


@pytest.mark.parametrize("readout", ["pair_margin", "distribution"])
def test_exact_null_space_is_equivalent(planted, readout):
    out = _verdict(planted, readout, "v+perp#0")
    assert out["verdict"] == "equivalent", out["reason"]
    assert out["dose_control_detected"]


def test_first_order_invisible_direction_is_equivalent_on_the_margin_and_different_on_the_distribution(planted):
    margin, dist = _verdict(planted, "pair_margin", "v+perp#1"), _verdict(planted, "distribution", "v+perp#1")
    assert margin["verdict"] == "equivalent", margin["reason"]
    assert abs(margin["conditions"]["v+perp#1"]["efficacy"] - 1) < 0.1 * 0.2
    assert dist["verdict"] == "different", dist["reason"]
    assert dist["conditions"]["v+perp#1"]["js_over_margin"] > 10


def test_gradient_direction_is_different_on_the_margin(planted):
    out = _verdict(planted, "pair_margin", "v+perp#2")
    assert out["verdict"] == "different", out["reason"]
    assert out["conditions"]["v+perp#2"]["efficacy"] > 1.5
    # the v+grad positive control is the same direction, so it is detected too
    assert out["conditions"]["v+grad"]["p_different"] < 0.05


def test_monte_carlo_class_size_agrees_with_the_first_order_prediction(planted):
    mc = class_fraction(planted["lm"], LAYER, planted["v"].float(), ALPHA, planted["pairs"], None, planted["margin"],
                        ClassSample(200, (0.5, 1.0), seed=7), planted["g"].numpy())
    for ratio, row in mc["pair_margin"].items():
        assert row["n"] == 200
        assert row["low"] <= row["predicted"] <= row["high"], (ratio, row)
    # a larger u leaves the class more often: the prediction and the measurement both fall with the ratio
    assert mc["pair_margin"]["1"]["predicted"] < mc["pair_margin"]["0.5"]["predicted"]
    assert mc["pair_margin"]["1"]["fraction"] < mc["pair_margin"]["0.5"]["fraction"]
