"""Every supported architecture family: layer discovery, exact steering, batching, KV-cached generation."""

import pytest
import torch

from steerscope.capture import capture
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import steer
from steerscope.testing import ARCHITECTURES, tiny_model
from tests.conftest import CHAT_ITEMS


@pytest.fixture(scope="module", params=ARCHITECTURES)
def family(request):
    return tiny_model(request.param)


def test_layers_found(family):
    assert family.n_layers == 4 and family.d_model == 32


def test_steering_is_exact_and_batching_is_consistent(family):
    v = torch.randn(family.d_model, generator=torch.Generator().manual_seed(0))
    plain = capture(family, CHAT_ITEMS, [0, 1, 2], position="all", batch_size=len(CHAT_ITEMS))
    with steer(family, {1: v}, 2.0):
        steered = capture(family, CHAT_ITEMS, [0, 1, 2], position="all", batch_size=len(CHAT_ITEMS))
    for i, item in enumerate(CHAT_ITEMS):
        assert torch.equal(steered[0][i], plain[0][i])
        assert torch.equal(steered[1][i], plain[1][i] + 2.0 * v)
        single = capture(family, [item], [2], position="all")[2][0]
        assert torch.allclose(plain[2][i], single, atol=1e-5)


def test_cached_generation_runs_steered(family):
    v = torch.randn(family.d_model, generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(max_new_tokens=4)
    plain = generate(family, ["hello there", "tell me a story"], config)
    assert generate(family, ["hello there", "tell me a story"], config, steering=steer(family, {1: v}, 0.0)) == plain
    assert generate(family, ["hello there", "tell me a story"], config, steering=steer(family, {1: v}, 50.0)) != plain
