"""Forward hooks on decoder blocks (steerscope.hooks) and absolute positions in Steering."""

from contextlib import suppress

import pytest
import torch

from steerscope import hooks
from steerscope.capture import forward
from steerscope.encoding import encode_prompt, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.intervene import Add, Steering
from steerscope.testing import ARCHITECTURES, tiny_model

SEQS = [[2, 10, 11, 12, 13, 14], [2, 10, 11]]


def _batch(lm, side="left"):
    return pad_batch(SEQS, lm.tokenizer.pad_token_id, side)


def _vec(lm, seed=1):
    return torch.randn(lm.d_model, generator=torch.Generator().manual_seed(seed))


def _plain(lm, batch):
    """``{ℓ: [B, T, d]}`` of every layer and the logits of one unhooked-but-recorded pass."""
    with torch.no_grad(), hooks.record(lm, range(lm.n_layers)) as store:
        logits = forward(lm, batch).logits
    return dict(store), logits


def _hook_counts(lm):
    return [len(b._forward_hooks) for b in lm.layers], len(lm.model._forward_pre_hooks)


def test_block_hidden_and_with_hidden_handle_tensors_and_tuples():
    h, other = torch.randn(2, 3, 4), object()
    assert hooks.block_hidden(h) is h
    assert hooks.block_hidden((h, other)) is h
    new = torch.zeros(2, 3, 4)
    assert hooks.with_hidden(h, new) is new
    out = hooks.with_hidden((h, other), new)
    assert isinstance(out, tuple) and out[0] is new and out[1] is other


def test_record_detached_or_not(lm):
    x = torch.tensor([SEQS[0]])
    embeds = lm.model.get_input_embeddings()(x).detach().requires_grad_()
    with torch.enable_grad():
        with hooks.record(lm, [1]) as detached:
            lm.model(inputs_embeds=embeds, use_cache=False)
        with hooks.record(lm, [1], detach=False) as attached:
            lm.model(inputs_embeds=embeds, use_cache=False)
    assert not detached[1].requires_grad and detached[1].grad_fn is None
    assert attached[1].requires_grad
    assert torch.equal(detached[1], attached[1].detach())
    attached[1].sum().backward()
    assert embeds.grad is not None and bool(embeds.grad.abs().sum() > 0)


def test_record_fills_every_layer_with_batch_states(lm):
    batch = _batch(lm)
    store, _ = _plain(lm, batch)
    assert sorted(store) == list(range(lm.n_layers))
    for h in store.values():
        assert h.shape == (len(SEQS), batch.input_ids.shape[1], lm.d_model)


def test_stop_early_skips_later_blocks(lm):
    batch = _batch(lm)
    store, _ = _plain(lm, batch)
    last = lm.n_layers - 1
    with torch.no_grad(), hooks.record(lm, [last]) as later, hooks.record(lm, [0, 1], stop_early=True) as early:
        with pytest.raises(hooks.StopForward):
            forward(lm, batch)
    assert later == {}
    assert torch.equal(early[0], store[0]) and torch.equal(early[1], store[1])


def test_without_stop_early_the_pass_completes(lm):
    batch = _batch(lm)
    _, logits = _plain(lm, batch)
    with torch.no_grad(), hooks.record(lm, [0]) as store:
        out = forward(lm, batch).logits
    assert 0 in store and torch.equal(out, logits)


def test_edit_replaces_the_output_exactly(lm):
    batch = _batch(lm)
    plain, logits = _plain(lm, batch)
    seen = {}

    def shift(h):
        seen["h"] = h
        return h + 2.0

    with torch.no_grad(), hooks.edit(lm, {1: shift}), hooks.record(lm, range(lm.n_layers)) as store:
        forward(lm, batch)
    assert torch.equal(seen["h"], plain[1])
    assert torch.equal(store[0], plain[0])
    assert torch.equal(store[1], plain[1] + 2.0)
    assert not torch.equal(store[2], plain[2])
    with torch.no_grad(), hooks.edit(lm, {1: lambda h: h}), hooks.record(lm, range(lm.n_layers)) as store:
        out = forward(lm, batch).logits
    assert all(torch.equal(store[layer], plain[layer]) for layer in plain)
    assert torch.equal(out, logits)


def test_hook_order_first_edits_are_seen_by_readers(tiny_models):
    lm = tiny_models["llama"]
    batch = _batch(lm)
    plain, _ = _plain(lm, batch)
    with torch.no_grad(), hooks.record(lm, [1]) as store:
        with hooks.edit(lm, {1: lambda h: h * 2.0}, first=True):
            forward(lm, batch)
        assert torch.equal(store[1], plain[1] * 2.0)
        with hooks.edit(lm, {1: lambda h: h * 2.0}):
            forward(lm, batch)
        assert torch.equal(store[1], plain[1])
        with hooks.edit(lm, {1: lambda h: h * 2.0}, first=True), hooks.edit(lm, {1: lambda h: h + 1.0}, first=True):
            forward(lm, batch)
        assert torch.equal(store[1], (plain[1] + 1.0) * 2.0)


@pytest.mark.parametrize("make", [
    lambda lm: hooks.record(lm, [0, 2], stop_early=True),
    lambda lm: hooks.edit(lm, {1: lambda h: h, 3: lambda h: h}, first=True),
    lambda lm: hooks.before_call(lm, lambda args, kwargs: None),
    lambda lm: Steering(lm, {1: Add(_vec(lm))}, positions=[1, 2]),
])
def test_hooks_are_removed_after_exit_and_when_the_body_raises(tiny_models, make):
    lm = tiny_models["llama"]
    before = _hook_counts(lm)
    with make(lm):
        assert _hook_counts(lm) != before
    assert _hook_counts(lm) == before
    with pytest.raises(RuntimeError, match="boom"):
        with make(lm):
            raise RuntimeError("boom")
    assert _hook_counts(lm) == before
    with torch.no_grad(), suppress(hooks.StopForward), make(lm):
        forward(lm, _batch(lm))
    assert _hook_counts(lm) == before


def test_before_call_sees_the_model_arguments(tiny_models):
    lm = tiny_models["llama"]
    batch = _batch(lm)
    calls = []
    with torch.no_grad(), hooks.before_call(lm, lambda args, kwargs: calls.append(kwargs["input_ids"].shape)):
        forward(lm, batch)
    assert calls == [batch.input_ids.shape]


# --- absolute positions in Steering ------------------------------------------------------------

def _add_at(positions, v):
    """Reference edit: ``h + v`` at the absolute ``positions`` (those present) of every row, in place on a copy."""
    def fn(h):
        h = h.clone()
        h[:, [p for p in positions if p < h.shape[1]]] += v.to(h.dtype)
        return h
    return fn


@pytest.mark.parametrize("side", ["left", "right"])
def test_absolute_positions_add_exactly_at_those_positions(lm, side):
    batch, v, positions = _batch(lm, side), _vec(lm), [1, 4]
    plain, _ = _plain(lm, batch)
    with torch.no_grad(), hooks.record(lm, range(lm.n_layers)) as store:
        with Steering(lm, {1: Add(v)}, positions=positions):
            forward(lm, batch)
        steered = dict(store)
        with hooks.edit(lm, {1: _add_at(positions, v)}, first=True):
            forward(lm, batch)
    assert torch.equal(steered[0], plain[0])
    expected = plain[1].clone()
    expected[:, positions] = plain[1][:, positions] + v
    assert torch.equal(steered[1], expected)
    assert all(torch.equal(steered[layer], store[layer]) for layer in store)
    changed = (steered[1] != plain[1]).any(-1)
    assert changed.nonzero()[:, 1].unique().tolist() == positions


def test_absolute_positions_are_validated_and_kept_by_rows(tiny_models):
    lm = tiny_models["llama"]
    v = _vec(lm)
    for bad in ([], [-1], [1.5], ["a"]):
        with pytest.raises(SteerscopeError, match="absolute positions"):
            Steering(lm, {1: Add(v)}, positions=bad)
    steering = Steering(lm, {1: Add(torch.stack([v, v]))}, positions=range(2, 4))
    assert steering.positions == (2, 3)
    assert steering.rows([1]).positions == (2, 3)


def _greedy_reference(lm, ids, n_new, layer, v, positions):
    """Greedy tokens and next-token logits ``[n_new, V]``, recomputing the whole sequence each step (no KV cache)."""
    seq, logits = list(ids), []
    with torch.no_grad(), hooks.edit(lm, {layer: _add_at(positions, v)}):
        for _ in range(n_new):
            logits.append(lm.model(torch.tensor([seq]), use_cache=False).logits[0, -1])
            seq.append(int(logits[-1].argmax()))
    return seq[len(ids):], torch.stack(logits)


def _kv_generate(lm, ids, n_new, steering):
    x = torch.tensor([ids])
    with steering, torch.no_grad():
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(ids):].tolist(), torch.stack(out.logits, dim=1)[0]


def _same(got, ref):
    return got[0] == ref[0] and torch.allclose(got[1], ref[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_absolute_positions_under_kv_cached_generate(arch):
    """A position inside the prompt and one among the generated tokens, under KV-cached ``generate``, match a
    full-recompute reference; the references that steer only one of them (or neither) differ."""
    lm = tiny_model(arch)
    ids = encode_prompt(lm.tokenizer, "tell me about your weekend")
    v, layer, n_new = 4.0 * _vec(lm, 3), 1, 6
    inside, generated = 2, len(ids) + 1
    got = _kv_generate(lm, ids, n_new, Steering(lm, {layer: Add(v)}, positions=[inside, generated]))
    assert _same(got, _greedy_reference(lm, ids, n_new, layer, v, [inside, generated]))
    for other in ([inside], [generated], []):
        assert not _same(got, _greedy_reference(lm, ids, n_new, layer, v, other)), other
