import pytest
import torch

from steerscope import hooks
from steerscope.capture import capture, forward, mean_norms, sink_mask
from steerscope.errors import SteerscopeError
from steerscope.encoding import encode_item, pad_batch
from tests.conftest import CHAT_ITEMS


def _hf_hidden(lm, item):
    enc = encode_item(lm.tokenizer, item)
    with torch.no_grad():
        out = lm.model(torch.tensor([enc.ids]), output_hidden_states=True)
    return enc, out.hidden_states


def test_layer_convention_matches_hf_hidden_states(lm):
    """Layer ℓ is the output of block ℓ = HF hidden_states[ℓ + 1] (for all but the last block)."""
    item = CHAT_ITEMS[0]
    enc, hidden = _hf_hidden(lm, item)
    states = capture(lm, [item], range(lm.n_layers - 1), position="all")
    for layer in range(lm.n_layers - 1):
        assert torch.allclose(states[layer][0], hidden[layer + 1][0], atol=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("position", ["last", "mean", "all"])
def test_batched_equals_unbatched(lm, side, position):
    layers = [0, 2, lm.n_layers - 1]
    batched = capture(lm, CHAT_ITEMS, layers, position=position, batch_size=len(CHAT_ITEMS), padding_side=side)
    for i, item in enumerate(CHAT_ITEMS):
        single = capture(lm, [item], layers, position=position, batch_size=1)
        for layer in layers:
            if position == "all":
                assert batched[layer][i].shape == single[layer][0].shape
                assert torch.allclose(batched[layer][i], single[layer][0], atol=1e-5)
            else:
                assert torch.allclose(batched[layer][i], single[layer][0], atol=1e-5)


def test_positions_select_the_span(tiny_models):
    lm = tiny_models["llama"]
    item = CHAT_ITEMS[0]
    enc = encode_item(lm.tokenizer, item)
    start, end = enc.span
    full = capture(lm, [item], [1], position="all")[1][0]
    assert torch.equal(capture(lm, [item], [1], position="last")[1][0], full[end - 1])
    assert torch.allclose(capture(lm, [item], [1], position="mean")[1][0], full[start:end].mean(0), atol=1e-6)
    custom = capture(lm, [item], [1], position="mean", spans=[(2, 5)])[1][0]
    assert torch.allclose(custom, full[2:5].mean(0), atol=1e-6)


def test_sink_mask_marks_the_first_position_and_norm_outliers():
    assert sink_mask(torch.tensor([100.0, 1.0, 1.2, 20.0, 0.9])).tolist() == [True, False, False, True, False]
    assert sink_mask(torch.tensor([1.0, 1.0, 1.0])).tolist() == [True, False, False]  # no BOS: the first word
    assert sink_mask(torch.tensor([3.0])).tolist() == [True]


def test_mean_and_norms_leave_out_attention_sinks(tiny_models):
    lm = tiny_models["llama"]
    item = "the cat sat on the mat today"
    full = capture(lm, [item], [1], position="all")[1][0]
    span = [(0, len(full))]
    assert torch.allclose(capture(lm, [item], [1], position="mean", spans=span)[1][0], full[1:].mean(0), atol=1e-6)

    def plant(h):  # a secondary sink: position 3's state made 100 times larger
        h = h.clone()
        h[:, 3] *= 100
        return h

    with hooks.edit(lm, {1: plant}, first=True):
        sunk = capture(lm, [item], [1], position="all")[1][0]
        mean = capture(lm, [item], [1], position="mean", spans=span)[1][0]
        norms = mean_norms(lm, [item], [1])[1]
    keep = [i for i in range(1, len(sunk)) if i != 3]
    assert torch.allclose(mean, sunk[keep].mean(0), atol=1e-6)
    assert norms == pytest.approx(float(sunk[keep].norm(dim=-1).mean()), rel=1e-6)
    with pytest.raises(SteerscopeError, match="attention sink"):
        capture(lm, [item], [1], position="mean", spans=[(0, 1)])


def test_order_is_preserved_when_sorting_by_length(tiny_models):
    lm = tiny_models["gpt2"]
    items = ["a short one", "hello there, how are you today my friend?", "hi"]
    together = capture(lm, items, [1], batch_size=2)[1]
    for i, item in enumerate(items):
        assert torch.allclose(together[i], capture(lm, [item], [1])[1][0], atol=1e-5)


def test_early_stop_does_not_change_states(tiny_models):
    lm = tiny_models["llama"]
    batch = pad_batch([encode_item(lm.tokenizer, "hello there friend").ids], lm.tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = forward(lm, batch, output_hidden_states=True).hidden_states
    got = capture(lm, ["hello there friend"], [1], position="all")[1][0]
    assert torch.allclose(got, hidden[2][0], atol=1e-6)


def test_mean_norms_leave_out_the_first_token(tiny_models):
    lm = tiny_models["llama"]
    items = ["hello there friend", "the cat is big"]
    states = capture(lm, items, [2], position="all")[2]
    expected = torch.cat([s[1:] for s in states]).norm(dim=-1).mean()
    assert mean_norms(lm, items, [2])[2] == pytest.approx(float(expected), rel=1e-6)


def test_capture_rejects_bad_layer(tiny_models):
    with pytest.raises(SteerscopeError, match="valid layers are 0..3"):
        capture(tiny_models["llama"], ["hi"], [4])
