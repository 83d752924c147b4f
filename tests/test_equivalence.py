import math

import numpy as np
import pytest
from scipy import stats

from steerscope.audit.equivalence import (
    Margin,
    ReadoutData,
    clopper_pearson,
    one_sided_p,
    predicted_fraction,
    prompts_needed,
    readout_verdict,
    redecide,
    resolution,
    scalar_comparison,
)
from steerscope.errors import SteerscopeError


def _scalar(n=12, effect=1.0, noise=0.05, draws=(1.0, 1.0), control=0.8, seed=0):
    """Per-prompt readout values with planted efficacies: ``draws`` and the dose control ``control``."""
    rng = np.random.default_rng(seed)
    none = rng.normal(0, 1, n)
    v = none + effect + rng.normal(0, noise, n)
    values = {"none": none, "v": v}
    for i, e in enumerate(draws):
        values[f"v+perp#{i}"] = none + e * (v - none) + rng.normal(0, noise, n)
    values["dose_control"] = none + control * (v - none) + rng.normal(0, noise, n)
    return ReadoutData("pair_margin", "scalar", values, [f"v+perp#{i}" for i in range(len(draws))], ["dose_control"])


def test_tost_is_fieller_one_sided_t_tests():
    data = _scalar(draws=(1.02,))
    x = data.values
    out = scalar_comparison(x["v+perp#0"], x["v"], x["none"], Margin(0.1), 200, 0)
    low = (x["v+perp#0"] - x["none"]) - 0.9 * (x["v"] - x["none"])
    high = (x["v+perp#0"] - x["none"]) - 1.1 * (x["v"] - x["none"])
    expected = max(stats.ttest_1samp(low, 0, alternative="greater").pvalue, stats.ttest_1samp(high, 0, alternative="less").pvalue)
    assert out["p_equivalent"] == pytest.approx(expected, rel=1e-12)
    assert out["p_different"] == pytest.approx(stats.ttest_rel(x["v+perp#0"], x["v"]).pvalue, rel=1e-12)


def test_each_scalar_verdict_on_planted_data():
    assert readout_verdict(_scalar(), Margin(0.1), 200)["verdict"] == "equivalent"
    different = readout_verdict(_scalar(draws=(1.0, 1.6)), Margin(0.1), 200)
    assert different["verdict"] == "different" and "v+perp#1" in different["reason"]
    # the control sits at the dose of v: the readout is not shown to resolve 2δ, so no equivalence
    blind = readout_verdict(_scalar(control=1.0), Margin(0.1), 200)
    assert blind["verdict"] == "inconclusive" and "cannot resolve" in blind["reason"]
    flat = readout_verdict(_scalar(effect=0.0, noise=1.0), Margin(0.1), 200)
    assert flat["verdict"] == "inconclusive" and "no detectable effect" in flat["reason"]


def test_a_readout_too_noisy_for_delta_is_inconclusive_with_its_resolution():
    out = readout_verdict(_scalar(n=10, noise=0.6, draws=(1.0, 1.0), control=0.0), Margin(0.1), 200)
    assert out["verdict"] == "inconclusive"
    plan = out["planning"]
    assert plan["resolution"] > 0.1 and f"{plan['resolution']:.3g}" in out["reason"]
    assert plan["prompts_needed"] > 10 and str(plan["prompts_needed"]) in out["reason"]


def test_equivalence_is_intersection_union_and_difference_is_holm():
    # each draw's TOST p is used as it is (no correction), each difference p is Holm-adjusted
    out = readout_verdict(_scalar(draws=(1.0, 1.0, 1.0)), Margin(0.1), 200)
    rows = out["conditions"]
    ps = sorted(rows[d]["p_different"] for d in out["draws"])
    assert sorted(rows[d]["p_different_holm"] for d in out["draws"])[0] == pytest.approx(min(1.0, 3 * ps[0]))
    assert out["verdict"] == "equivalent"
    assert all(rows[d]["p_equivalent"] < 0.05 for d in out["draws"])


def test_redecide_after_a_larger_holm_family():
    out = readout_verdict(_scalar(draws=(1.0, 1.6), control=1.0), Margin(0.1), 200)
    assert out["verdict"] == "different"
    out["conditions"]["v+perp#1"]["p_different_holm"] = 0.5
    assert redecide(out)["verdict"] == "inconclusive"


def test_invalid_readout_is_inconclusive_whatever_the_data():
    data = _scalar()
    out = readout_verdict(ReadoutData(data.name, "scalar", data.values, data.draws, data.controls, invalid="scorer invalid"),
                          Margin(0.1), 200)
    assert out["verdict"] == "inconclusive" and out["reason"] == "scorer invalid"


def test_distribution_verdicts():
    rng = np.random.default_rng(0)
    n = 10
    margin_js = rng.uniform(1e-3, 2e-3, n)
    values = {"none": rng.uniform(0.05, 0.1, n), "v": np.zeros(n), "dose_margin": margin_js,
              "v+perp#0": margin_js * 0.1, "v+perp#1": margin_js * 5, "dose_control": margin_js * 4}
    near = ReadoutData("distribution", "distribution", values, ["v+perp#0"], ["dose_control"])
    far = ReadoutData("distribution", "distribution", values, ["v+perp#1"], ["dose_control"])
    assert readout_verdict(near, Margin(0.1), 200)["verdict"] == "equivalent"
    assert readout_verdict(far, Margin(0.1), 200)["verdict"] == "different"


def test_degenerate_one_sided_p_and_sizes():
    assert one_sided_p(np.array([0.1, 0.1, 0.1]), "greater") == 0.0
    assert one_sided_p(np.array([0.0, 0.0]), "greater") == 1.0
    with pytest.raises(SteerscopeError):
        one_sided_p(np.array([1.0]), "less")
    with pytest.raises(SteerscopeError):
        Margin(0.0)
    n = prompts_needed(1.0, 0.5, 0.05)
    assert resolution(1.0, n, 0.05) <= 0.5 < resolution(1.0, n - 1, 0.05)
    assert prompts_needed(1.0, 0.0, 0.05) is None and prompts_needed(0.0, 0.1, 0.05) == 2
    # one one-sided test (the distribution) needs less than two (TOST) for the same margin
    one = prompts_needed(1.0, 0.5, 0.05, tost=False)
    assert resolution(1.0, one, 0.05, tost=False) <= 0.5 < resolution(1.0, one - 1, 0.05, tost=False) and one < n


def test_clopper_pearson_matches_scipy_and_bounds():
    low, high = clopper_pearson(3, 20)
    assert low == pytest.approx(stats.beta.ppf(0.025, 3, 18)) and high == pytest.approx(stats.beta.ppf(0.975, 4, 17))
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def test_predicted_fraction_matches_direct_simulation():
    rng = np.random.default_rng(0)
    d = 40
    g, v = rng.normal(size=d), rng.normal(size=d)
    v += 2 * g  # v has a sizeable gain along g
    u = rng.normal(size=(20000, d))
    u -= np.outer(u @ v / (v @ v), v)
    u *= (0.5 * np.linalg.norm(v) / np.linalg.norm(u, axis=1))[:, None]
    simulated = np.mean(np.abs(u @ g) <= 0.1 * abs(g @ v))
    assert predicted_fraction(g, v, 0.5, 0.1) == pytest.approx(simulated, abs=0.015)
    assert math.isclose(predicted_fraction(np.zeros(d), v, 1.0, 0.1), 1.0)
