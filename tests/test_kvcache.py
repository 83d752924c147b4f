import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.models.kvcache import CACHE_NAMES, cache_argument, cache_length, output_cache, past_length, with_cache


def test_the_cache_argument_is_the_one_the_models_forward_declares(tiny_models):
    lm = tiny_models["llama"]
    name = cache_argument(lm.model)
    assert name in CACHE_NAMES and name == cache_argument(lm.model.base_model)
    assert with_cache(lm.model, None) == {name: None, "use_cache": False}
    with pytest.raises(SteerscopeError, match="takes no KV cache"):
        cache_argument(torch.nn.Linear(2, 2))


def test_a_returned_cache_feeds_the_next_call_and_matches_a_full_pass(tiny_models):
    lm = tiny_models["llama"]
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    with torch.no_grad():
        full = lm.model(ids, use_cache=False).logits[0, -1]
        cache = output_cache(lm.model(ids[:, :4], use_cache=True))
        assert cache_length(cache) == 4
        step = lm.model(ids[:, 4:], position_ids=torch.tensor([[4]]), **with_cache(lm.model, cache)).logits[0, -1]
    assert torch.allclose(step, full, atol=1e-5)
    with pytest.raises(SteerscopeError, match="returned no KV cache"):
        output_cache({"logits": full})


class _Cache:
    def __init__(self, n):
        self.n = n

    def get_seq_length(self):
        return self.n


@pytest.mark.parametrize("name", CACHE_NAMES)
def test_past_length_from_every_way_a_cache_is_passed(name):
    assert past_length({name: _Cache(7)}, 1) == 7
    assert past_length({"cache_position": torch.tensor([9]), name: _Cache(7)}, 1) == 9  # the explicit position wins
    legacy = ((torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4)),)
    assert past_length({name: legacy}, 1) == 5
    assert past_length({}, 3) == 0 and past_length({"position_ids": torch.tensor([[0, 1, 2]])}, 3) == 0
