import numpy as np
import pytest
from safetensors.numpy import save_file

from steerscope.data.traits import builtin_env_pairs, builtin_pairs
from steerscope.errors import SteerscopeError
from steerscope.recover import METHODS, Recovery, TraitInputs, bootstrap_stability, get_recovery, recover_sparse, register_recovery
from steerscope.recover.result import null_dim, unit
from steerscope.recover.sparse import coherence, load_dictionary, sqrt_operator, welch_bound
from steerscope.recover.trait import layer_maps, pair_activations, prompt_grams, recover_trait

PROMPTS = ["hello there my friend", "what is the weather like today"]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def inputs(llama):
    grams = {env: prompt_grams(llama, PROMPTS, 1) for env in ("a", "b")}
    maps = layer_maps(llama, PROMPTS, 1, [2])
    return builtin_pairs("formality", "train")[:16], grams, maps


@pytest.fixture(scope="module")
def env_pairs():
    by_env = builtin_env_pairs("formality")
    return {"a": by_env["in_distribution"][:8], "b": by_env["topic_shift"][:8]}


def test_registry():
    assert list(METHODS) == ["ica", "sparse", "multienv", "crosslayer"]
    assert all(get_recovery(name) is fn for name, fn in METHODS.items())


def test_registered_method_is_used_by_name(llama, inputs):
    pairs, _, maps = inputs
    seen = {}

    @register_recovery("first_pair")
    def first_pair(data: TraitInputs) -> Recovery:
        seen["data"] = data
        return Recovery("first_pair", unit(data.contrasts[0]), None, None, "the first pair's difference")

    try:
        r = recover_trait(llama, "first_pair", pairs, 1, maps=maps, n_boot=0, k=3)
    finally:
        METHODS.pop("first_pair")
    data = seen["data"]
    assert data.layer == 1 and set(data.acts) == {1, 2} and data.k == 3 and data.n_boot == 0
    assert np.allclose(r.direction, unit(data.pos[0] - data.neg[0]))
    assert r.details["n_pairs"] == 16 and r.details["cos_with_mean_diff"] == pytest.approx(float(r.direction @ unit(data.mean_diff)))
    assert "first_pair" not in METHODS


def test_unknown_method_names_the_known_ones():
    with pytest.raises(SteerscopeError, match="unknown recovery method 'pca'; available: crosslayer, ica, multienv, sparse"):
        get_recovery("pca")


@pytest.mark.parametrize("method", ["ica", "sparse", "multienv", "crosslayer"])
def test_recover_trait_returns_a_unit_direction_and_a_report(llama, inputs, env_pairs, method):
    pairs, grams, maps = inputs
    r = recover_trait(llama, method, pairs, 1, grams=grams, maps=maps, n_boot=3, seed=1, env_pairs=env_pairs)
    assert isinstance(r, Recovery) and r.method == method
    assert r.direction.shape == (llama.d_model,) and np.linalg.norm(r.direction) == pytest.approx(1.0)
    assert r.identifiable in (True, False, None) and r.reason
    assert r.stability["n_boot"] == 3 and -1 <= r.stability["ci_low"] <= r.stability["mean_cos"] <= r.stability["ci_high"] <= 1
    assert r.details["layer"] == 1 and r.details["n_pairs"] == 16
    assert r.to_dict()["direction"] == pytest.approx(list(r.direction))
    assert r.assumption["holds"] in (True, False) and r.assumption["detail"]
    assert r.agreement["audited"] == "the mean difference of the pairs" and r.agreement["agrees"] in (True, False)
    assert r.stability["audited"]["ci_low"] == r.agreement["ci_low"]
    assert r.identifies in (True, False, None) and r.why


def test_multienv_extracts_one_vector_per_environment(llama, inputs, env_pairs):
    from steerscope.recover.trait import pair_activations

    pairs, grams, _ = inputs
    r = recover_trait(llama, "multienv", pairs, 1, grams=grams, n_boot=0, env_pairs=env_pairs)
    vectors = [np.subtract(*pair_activations(llama, env_pairs[e], [1])[1]).mean(axis=0) for e in ("a", "b")]
    assert r.details["environments"] == ["a", "b"] and r.assumption["extra"]["pairs_per_environment"] == [8, 8]
    assert r.details["cos_between_environment_vectors"][0][1] == pytest.approx(float(unit(vectors[0]) @ unit(vectors[1])))
    # no environments, no multi-environment recovery: one vector repeated per environment is not offered
    with pytest.raises(SteerscopeError, match="pairs written in at least 2 environments"):
        recover_trait(llama, "multienv", pairs, 1, grams=grams)
    with pytest.raises(SteerscopeError, match="this trait has pairs in a"):
        recover_trait(llama, "multienv", pairs, 1, grams=grams, env_pairs={"a": env_pairs["a"]})


def test_recover_trait_errors(llama, inputs):
    pairs, grams, _ = inputs
    with pytest.raises(SteerscopeError, match="unknown recovery method"):
        recover_trait(llama, "pca", pairs, 1)
    with pytest.raises(SteerscopeError, match="with Jacobians \\(none\\)"):
        recover_trait(llama, "multienv", pairs, 1)
    with pytest.raises(SteerscopeError, match="layer maps"):
        recover_trait(llama, "crosslayer", pairs, 1, grams=grams)
    with pytest.raises(SteerscopeError, match="observe"):
        recover_trait(llama, "sparse", pairs, 1, observe="logits")


def test_pair_activations_match_extract(llama, inputs):
    from steerscope.extract import extract

    pairs = inputs[0]
    pos, neg = pair_activations(llama, pairs, [1])[1]
    v = extract(llama, pairs, [1]).directions[1].double().numpy()
    assert np.allclose((pos - neg).mean(axis=0), v, atol=1e-5)


def test_load_dictionary(tmp_path):
    rows = np.random.default_rng(0).standard_normal((10, 8))
    np.save(tmp_path / "d.npy", rows)
    save_file({"decoder": rows.T.copy()}, str(tmp_path / "d.safetensors"))
    assert np.allclose(load_dictionary(str(tmp_path / "d.npy"), 8), rows)
    assert np.allclose(load_dictionary(str(tmp_path / "d.safetensors"), 8), rows)  # [d, K] is transposed
    assert np.array_equal(load_dictionary("neurons", 4), np.eye(4))
    assert load_dictionary("learned", 8, rows, n_atoms=5).shape == (5, 8)
    with pytest.raises(SteerscopeError, match="expected"):
        load_dictionary(str(tmp_path / "d.npy"), 7)
    with pytest.raises(SteerscopeError, match="neurons, learned"):
        load_dictionary("dict.txt", 8)


def test_sqrt_operator_reproduces_the_gram():
    a = np.random.default_rng(1).standard_normal((5, 5))
    gram = a.T @ a
    m = sqrt_operator(gram)
    assert np.allclose(m.T @ m, gram)


def test_sparse_helpers():
    assert coherence(np.eye(4)) == 0.0
    assert coherence(np.array([[1.0, 1.0], [0.0, 1.0]])) == pytest.approx(1 / np.sqrt(2))
    assert welch_bound(4, 4) == 0.0 and welch_bound(3, 2) == pytest.approx(0.5)
    with pytest.raises(SteerscopeError, match="sparsity k"):
        recover_sparse(np.ones(3), np.eye(3), 0)
    r = recover_sparse(np.array([0.0, 3.0, 0.1]), np.eye(3), 1)
    assert r.identifiable is True and r.details["support"] == [1] and r.direction == pytest.approx([0, 1, 0])


def test_bootstrap_stability_is_seeded_and_signed():
    ref = np.array([1.0, 0.0])
    data = np.array([[1.0, 0.1], [1.0, -0.1], [0.5, 0.0], [1.0, 0.3]])
    fn = lambda idx: data[idx].mean(axis=0)  # noqa: E731
    a = bootstrap_stability(fn, 4, ref, n_boot=20, seed=3)
    assert a == bootstrap_stability(fn, 4, ref, n_boot=20, seed=3)
    assert a["ci_low"] <= a["mean_cos"] <= a["ci_high"] and a["seed"] == 3
    flipped = bootstrap_stability(lambda idx: -fn(idx), 4, ref, n_boot=20, seed=3, signed=False)
    assert flipped["mean_cos"] == pytest.approx(a["mean_cos"])  # |cos| undoes the sign flip
    signed_flip = bootstrap_stability(lambda idx: -fn(idx), 4, ref, n_boot=20, seed=3)
    assert signed_flip["mean_cos"] == pytest.approx(-a["mean_cos"])


def test_null_dim_and_unit():
    k, lam, _ = null_dim(np.diag([4.0, 1e-8, 0.0]), 1e-3)
    assert k == 2 and lam[-1] == 4.0
    assert np.linalg.norm(unit(np.array([3.0, 4.0]))) == pytest.approx(1.0)
    assert np.array_equal(unit(np.zeros(2)), np.zeros(2))
