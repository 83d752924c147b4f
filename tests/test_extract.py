import pytest
import torch

from steerscope.capture import capture
from steerscope.data import builtin_pairs
from steerscope.errors import SteerscopeError
from steerscope.extract import METHODS, extract, mean_diff, pca, probe, register_method


def _planted(n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    base = torch.randn(n, d, generator=g)
    shift = (1.0 + 0.1 * torch.randn(n, 1, generator=g)) * direction * 3.0
    return base + shift + 0.05 * torch.randn(n, d, generator=g), base, direction


def test_mean_diff_is_the_mean_of_paired_differences():
    pos, neg, _ = _planted()
    assert torch.allclose(mean_diff(pos, neg), (pos - neg).mean(0))


@pytest.mark.parametrize("method", [pca, probe])
def test_methods_recover_a_planted_direction_with_mean_diff_sign_and_scale(method):
    pos, neg, direction = _planted(n=400)
    v = method(pos, neg)
    cos = torch.dot(v, direction) / v.norm()
    assert cos > 0.95
    unit = v / v.norm()
    assert torch.allclose(v.norm(), torch.dot((pos - neg).mean(0), unit), rtol=1e-4)


def test_pca_sign_follows_the_mean_difference():
    pos, neg, _ = _planted()
    assert torch.dot(pca(pos, neg), mean_diff(pos, neg)) > 0
    assert torch.dot(pca(neg, pos), mean_diff(pos, neg)) < 0


def test_pca_is_the_top_singular_vector():
    pos, neg, _ = _planted(seed=3)
    _, _, vh = torch.linalg.svd((pos - neg).double())
    v = pca(pos, neg)
    assert abs(torch.dot(v / v.norm(), vh[0].float())) == pytest.approx(1.0, abs=1e-5)


def test_extract_matches_captured_activations(tiny_models):
    lm = tiny_models["llama"]
    pairs = builtin_pairs("formality", "train")[:6]
    vec = extract(lm, pairs, [1, 2], method="mean_diff")
    acts = capture(lm, [p.positive for p in pairs] + [p.negative for p in pairs], [1, 2], position="mean")
    for layer in (1, 2):
        assert torch.allclose(vec.directions[layer], (acts[layer][:6] - acts[layer][6:]).mean(0), atol=1e-6)
    meta = vec.metadata
    assert meta["method"] == "mean_diff" and meta["layers"] == [1, 2] and meta["trait"] == "formality"
    assert meta["model_fingerprint"] == lm.fingerprint and meta["d_model"] == lm.d_model
    assert set(meta["h_norms"]) == {1, 2} and all(n > 0 for n in meta["h_norms"].values())
    assert vec.dose(2.0, 1) == pytest.approx(2.0 * vec.norm(1) / meta["h_norms"][1])


def test_registry_accepts_user_methods(tiny_models):
    @register_method("first_pair")
    def first_pair(pos, neg):
        return pos[0] - neg[0]

    try:
        lm = tiny_models["gpt2"]
        pairs = builtin_pairs("sentiment", "train")[:4]
        vec = extract(lm, pairs, [1], method="first_pair", position="last")
        acts = capture(lm, [pairs[0].positive, pairs[0].negative], [1], position="last")[1]
        assert torch.allclose(vec.directions[1], acts[0] - acts[1], atol=1e-6)
    finally:
        METHODS.pop("first_pair")


def test_extract_errors(tiny_models):
    lm = tiny_models["llama"]
    pairs = builtin_pairs("formality", "train")[:4]
    with pytest.raises(SteerscopeError, match="unknown extraction method 'nope'"):
        extract(lm, pairs, [1], method="nope")
    with pytest.raises(SteerscopeError, match="at least 2"):
        extract(lm, pairs[:1], [1])
    with pytest.raises(SteerscopeError, match="valid layers are 0..3"):
        extract(lm, pairs, [7])
