import math

import numpy as np
import pytest

from steerscope.stats import cluster_bootstrap, efficacy, hedges_g, holm, prompt_means

X = [1.0, 2.0, 3.0, 4.0]
Y = [0.0, 1.0, 1.0, 2.0]


# --- hedges_g ---------------------------------------------------------------------------------


def test_hedges_g_paired_by_hand():
    # d = [1, 1, 2, 2], mean 1.5; var_x = 5/3, var_y = 2/3 → standardiser sqrt(7/6); df = 3.
    expected = (1 - 3 / (4 * 3 - 1)) * 1.5 / math.sqrt(7 / 6)
    assert hedges_g(X, Y) == pytest.approx(expected, rel=1e-12)
    assert hedges_g(Y, X) == pytest.approx(-expected, rel=1e-12)


def test_hedges_g_unpaired_by_hand():
    # Equal n: pooled variance (3·5/3 + 3·2/3) / 6 = 7/6; df = 6.
    expected = (1 - 3 / (4 * 6 - 1)) * 1.5 / math.sqrt(7 / 6)
    assert hedges_g(X, Y, paired=False) == pytest.approx(expected, rel=1e-12)


def test_hedges_g_unpaired_unequal_sizes_matches_pooled_sd_formula():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 5.0])
    n1, n2 = x.size, y.size
    sp = math.sqrt(((n1 - 1) * x.var(ddof=1) + (n2 - 1) * y.var(ddof=1)) / (n1 + n2 - 2))
    d = (x.mean() - y.mean()) / sp
    assert hedges_g(x, y, paired=False) == pytest.approx((1 - 3 / (4 * 5 - 1)) * d, rel=1e-12)


def test_hedges_g_errors():
    with pytest.raises(ValueError, match="at least 2"):
        hedges_g([1.0], [0.0])
    with pytest.raises(ValueError, match="at least 2"):
        hedges_g([1.0, 2.0], [0.0], paired=False)
    with pytest.raises(ValueError, match="zero standardiser"):
        hedges_g([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="zero standardiser"):
        hedges_g([1.0, 1.0], [0.0, 0.0, 0.0], paired=False)
    with pytest.raises(ValueError, match="equal lengths"):
        hedges_g([1.0, 2.0, 3.0], [0.0, 1.0])


# --- tost_paired ------------------------------------------------------------------------------


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_holm_monotone_and_capped():
    p = np.array([0.6, 0.2, 0.9, 0.01, 0.3])
    adj = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)
    assert adj[2] == 1.0 and adj[0] == 1.0  # 0.6·2 = 1.2 capped; 0.9 inherits the cap
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


# --- efficacy and prompt means -----------------------------------------------------------


def test_efficacy_exact():
    none = np.array([[0.0, 2.0], [1.0, 1.0]])  # mean 1
    v = np.array([[3.0, 3.0], [2.0, 4.0]])  # mean 3
    cond = np.array([[2.0, 3.0], [2.5, 2.5]])  # mean 2.5
    assert efficacy(cond, none, v) == 0.75
    assert efficacy(v, none, v) == 1.0 and efficacy(none, none, v) == 0.0


def test_efficacy_undefined_when_vector_has_no_effect():
    with pytest.raises(ValueError, match="no effect"):
        efficacy([2.0, 3.0], [1.0, 1.0], [0.0, 2.0])


def test_prompt_means():
    cond = np.array([[1.0, 3.0], [4.0, 6.0], [0.0, 0.0]])
    np.testing.assert_array_equal(prompt_means(cond), [2.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="n_prompts"):
        prompt_means(np.zeros((2, 2, 2)))


# --- cluster_bootstrap ------------------------------------------------------------------------


def test_cluster_bootstrap_deterministic_for_seed():
    x = np.random.default_rng(5).normal(size=25)
    a = cluster_bootstrap(np.mean, [x], n_boot=300, seed=7)
    assert a == cluster_bootstrap(np.mean, [x], n_boot=300, seed=7)
    assert a != cluster_bootstrap(np.mean, [x], n_boot=300, seed=8)
    assert a[0] == np.mean(x) and a[1] < a[0] < a[2]


def test_cluster_bootstrap_shares_indices_across_arrays():
    b = np.random.default_rng(6).integers(-50, 50, size=30).astype(float)
    est, low, high = cluster_bootstrap(lambda a, c: np.mean(a - c), [b + 1, b], n_boot=500)
    assert (est, low, high) == (1.0, 1.0, 1.0)


def test_cluster_bootstrap_resamples_whole_prompts():
    # Huge per-sample noise, but the noise is shared by both conditions within each prompt: the
    # per-prompt difference is exactly 0.5, so the CI is exactly [0.5, 0.5] only if rows stay intact.
    rng = np.random.default_rng(9)
    noise = rng.normal(0, 100, size=(20, 8))
    cond, ref = noise + 0.5, noise
    est, low, high = cluster_bootstrap(lambda c, r: np.mean(prompt_means(c) - prompt_means(r)), [cond, ref], n_boot=300)
    assert est == pytest.approx(0.5) and high - low < 1e-9


def test_cluster_bootstrap_drops_undefined_replicates():
    # The last prompt drawn first in ~5 % of replicates: below the 10 % limit, but enough to make the
    # upper 97.5 % quantile infinite (or the call fail) if such replicates were kept.
    x = np.arange(20.0)
    inf_first = cluster_bootstrap(lambda a: np.inf if a[0] == 19 else np.mean(a), [x], n_boot=2000)
    assert np.isfinite(inf_first).all()

    def raise_first(a):
        if a[0] == a.size - 1:
            raise ValueError("undefined")
        return float(np.mean(a))

    assert np.isfinite(cluster_bootstrap(raise_first, [x], n_boot=2000)).all()
    # With two prompts ~50 % of replicates are undefined: too many.
    with pytest.raises(ValueError, match="replicates undefined"):
        cluster_bootstrap(raise_first, [np.array([0.0, 1.0])], n_boot=200)
    with pytest.raises(ValueError, match="replicates undefined"):
        cluster_bootstrap(lambda a: np.nan if a[0] == 1 else 1.0, [np.array([0.0, 1.0])], n_boot=200)


def test_cluster_bootstrap_input_checks():
    with pytest.raises(ValueError, match="first"):
        cluster_bootstrap(lambda a, b: 0.0, [np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="original data"):
        cluster_bootstrap(lambda a: np.nan, [np.zeros(3)])


def test_cluster_bootstrap_coverage_sanity():
    rng = np.random.default_rng(10)
    covered = 0
    for i in range(200):
        x = rng.normal(2.0, 1.0, 30)
        _, low, high = cluster_bootstrap(np.mean, [x], n_boot=300, seed=i)
        covered += low <= 2.0 <= high
    assert 0.88 <= covered / 200 <= 0.99
