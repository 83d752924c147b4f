import pytest
import torch

from steerscope.capture import capture, forward
from steerscope.encoding import encode_item, encode_prompt, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.hooks import block_hidden, record
from steerscope.intervene import Ablate, Add, Clamp, Steering, parse_positions, relative_dose, steer, steer_rows
from steerscope.testing import ARCHITECTURES, tiny_model
from tests.conftest import CHAT_ITEMS


def _vec(lm, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lm.d_model, generator=g)


def test_add_exact_at_layer_and_nowhere_earlier(lm):
    layer, alpha = 2, 3.5
    v = _vec(lm)
    layers = list(range(lm.n_layers))
    plain = capture(lm, CHAT_ITEMS, layers, position="all")
    with steer(lm, {layer: v}, alpha):
        steered = capture(lm, CHAT_ITEMS, layers, position="all")
    for i in range(len(CHAT_ITEMS)):
        for earlier in range(layer):
            assert torch.equal(steered[earlier][i], plain[earlier][i])
        assert torch.equal(steered[layer][i], plain[layer][i] + alpha * v)
        assert not torch.allclose(steered[layer + 1][i], plain[layer + 1][i])


def _hook_counts(lm):
    return [len(b._forward_hooks) for b in lm.layers], len(lm.model._forward_pre_hooks)


def test_no_residue_after_exit(lm):
    batch = pad_batch([encode_item(lm.tokenizer, CHAT_ITEMS[0]).ids], lm.tokenizer.pad_token_id)
    hooks_before = _hook_counts(lm)
    with torch.no_grad():
        before = forward(lm, batch).logits
        with steer(lm, {1: _vec(lm)}, 10.0):
            during = forward(lm, batch).logits
        after = forward(lm, batch).logits
    assert not torch.equal(before, during)
    assert torch.equal(before, after)
    assert _hook_counts(lm) == hooks_before


def test_hooks_removed_when_the_body_raises(tiny_models):
    lm = tiny_models["llama"]
    hooks_before = _hook_counts(lm)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(lm, {1: _vec(lm)}, 1.0):
            assert _hook_counts(lm) != hooks_before
            raise RuntimeError("boom")
    assert _hook_counts(lm) == hooks_before


def test_zero_alpha_is_bit_identical(lm):
    plain = capture(lm, CHAT_ITEMS, [lm.n_layers - 1], position="all")
    with steer(lm, {0: _vec(lm)}, 0.0):
        zero = capture(lm, CHAT_ITEMS, [lm.n_layers - 1], position="all")
    for a, b in zip(plain[lm.n_layers - 1], zero[lm.n_layers - 1]):
        assert torch.equal(a, b)


def test_per_row_edits_equal_separate_runs(lm):
    """Rows get their own edits, also when capture reorders items by length."""
    vs = [_vec(lm, s) for s in (1, 2)]
    items = [CHAT_ITEMS[0], CHAT_ITEMS[3], CHAT_ITEMS[4]]
    rows = [(vs[0], 2.0), (vs[1], -1.0), (None, 0.0)]
    steering = steer_rows(lm, [{1: v} if v is not None else None for v, _ in rows], [a for _, a in rows])
    together = capture(lm, items, [1, 3], position="all", batch_size=3, steering=steering)
    for row, (v, a) in enumerate(rows):
        if v is None:
            single = capture(lm, [items[row]], [1, 3], position="all")
        else:
            single = capture(lm, [items[row]], [1, 3], position="all", steering=steer(lm, {1: v}, a))
        for layer in (1, 3):
            assert torch.allclose(together[layer][row], single[layer][0], atol=1e-5)


def test_per_row_batch_mismatch_is_refused(tiny_models):
    lm = tiny_models["llama"]
    steering = steer_rows(lm, [{1: _vec(lm)}] * 2, [1.0, 2.0])
    with pytest.raises(SteerscopeError, match="built for 2 rows"):
        with steering:
            capture(lm, ["a", "b", "c"], [1], batch_size=3)
    with pytest.raises(SteerscopeError, match="2 rows but there are 3 items"):
        capture(lm, ["a", "b", "c"], [1], steering=steering)


def test_rows_slices_per_row_tensors(tiny_models):
    lm = tiny_models["llama"]
    steering = steer_rows(lm, [{1: _vec(lm, s)} for s in range(4)], [0.0, 1.0, 2.0, 3.0])
    sub = steering.rows(slice(1, 3))
    assert sub.batch_size == 2
    assert torch.equal(sub.edits[1][0].alpha, torch.tensor([1.0, 2.0]))
    assert torch.equal(sub.edits[1][0].vector, steering.edits[1][0].vector[1:3])


def _changed_positions(lm, seqs, side, positions):
    batch = pad_batch(seqs, lm.tokenizer.pad_token_id, side)
    with torch.no_grad():
        with record(lm, [1]) as store:
            forward(lm, batch)
            plain = store[1].clone()
            with steer(lm, {1: _vec(lm)}, 1.0, positions=positions):
                forward(lm, batch)
            steered = store[1].clone()
    return (steered != plain).any(-1), batch


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_k_positions_follow_each_rows_real_tokens(tiny_models, side):
    lm = tiny_models["llama"]
    seqs = [[2, 10, 11, 12, 13, 14], [2, 10, 11]]
    changed, batch = _changed_positions(lm, seqs, side, "last-2")
    for row, seq in enumerate(seqs):
        last = batch.offsets[row] + len(seq) - 1
        assert changed[row].nonzero().flatten().tolist() == [last - 1, last]
    changed, batch = _changed_positions(lm, seqs, side, "last")
    assert changed.sum() == 2


def test_prompt_and_generated_positions_in_a_forward_pass(tiny_models):
    lm = tiny_models["llama"]
    seqs = [[2, 10, 11, 12]]
    assert _changed_positions(lm, seqs, "left", "prompt")[0].all()
    assert not _changed_positions(lm, seqs, "left", "generated")[0].any()
    assert _changed_positions(lm, seqs, "left", "all")[0].all()


def _manual_greedy(lm, ids, n_new, layer, v, alpha, steered):
    """Reference: no KV cache, full recompute each step; ``steered(n_prompt, T)`` are the positions that get alpha*v.

    Returns the greedy tokens and the next-token logits of every step (``[n_new, V]``).
    """
    def hook(_m, _a, out):
        h = block_hidden(out).clone()
        h[:, steered(len(ids), h.shape[1])] += alpha * v
        return (h, *out[1:]) if isinstance(out, tuple) else h
    seq, logits = list(ids), []
    handle = lm.layers[layer].register_forward_hook(hook)
    try:
        for _ in range(n_new):
            with torch.no_grad():
                logits.append(lm.model(torch.tensor([seq]), use_cache=False).logits[0, -1])
            seq.append(int(logits[-1].argmax()))
    finally:
        handle.remove()
    return seq[len(ids):], torch.stack(logits)


# Which absolute positions each ``positions`` mode steers, for a prompt of n tokens and a sequence of T.
MODES = {
    "all": lambda n, t: list(range(t)),
    "prompt": lambda n, t: list(range(n)),
    "generated": lambda n, t: list(range(n, t)),
    "last": lambda n, t: [n - 1],
    "last-3": lambda n, t: [n - 3, n - 2, n - 1],
}


def _kv_generate(lm, rows, n_new, steering):
    """Greedy KV-cached ``generate`` on left-padded rows: new tokens per row and logits ``[B, n_new, V]``."""
    batch = pad_batch(rows, lm.tokenizer.pad_token_id, "left")
    with steering, torch.no_grad():
        out = lm.model.generate(batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=n_new, min_new_tokens=n_new,
                                do_sample=False, pad_token_id=lm.tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, batch.input_ids.shape[1]:].tolist(), torch.stack(out.logits, dim=1)


def _same_run(got, ref):
    (tokens, logits), (ref_tokens, ref_logits) = got, ref
    return tokens == ref_tokens and torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_kv_cached_generate_steers_the_positions_of_every_mode(arch):
    """Each ``positions`` mode under KV-cached ``generate`` gives the tokens and logits of a full-recompute
    reference that steers exactly that mode's positions, on every supported architecture. The
    references of different modes differ, so a wrong position mask cannot pass."""
    lm = tiny_model(arch)
    ids = encode_prompt(lm.tokenizer, "tell me about your weekend")
    v, alpha, layer, n_new = _vec(lm, 3), 4.0, 1, 6
    expected = {mode: _manual_greedy(lm, ids, n_new, layer, v, alpha, rule) for mode, rule in MODES.items()}
    expected["none"] = _manual_greedy(lm, ids, n_new, layer, v, 0.0, MODES["all"])
    for mode in MODES:
        tokens, logits = _kv_generate(lm, [ids], n_new, steer(lm, {layer: v}, alpha, positions=mode))
        assert _same_run((tokens[0], logits[0]), expected[mode]), mode
        assert not any(_same_run((tokens[0], logits[0]), expected[other]) for other in expected if other != mode), mode


@pytest.mark.parametrize("mode", list(MODES))
def test_kv_cached_generate_positions_follow_each_left_padded_row(tiny_models, mode):
    lm = tiny_models["llama"]
    rows = [encode_prompt(lm.tokenizer, "tell me about your weekend"), encode_prompt(lm.tokenizer, "hi")]
    v, alpha, layer, n_new = _vec(lm, 3), 4.0, 1, 5
    tokens, logits = _kv_generate(lm, rows, n_new, steer(lm, {layer: v}, alpha, positions=mode))
    for row, ids in enumerate(rows):
        assert _same_run((tokens[row], logits[row]), _manual_greedy(lm, ids, n_new, layer, v, alpha, MODES[mode]))


def test_a_continuation_without_a_readable_cache_is_refused(tiny_models):
    """Position ids beyond the call's width with no cache steerscope can read: refuse, never guess."""
    lm = tiny_models["llama"]
    with steer(lm, {1: _vec(lm)}, 1.0, positions="generated"), torch.no_grad():
        with pytest.raises(SteerscopeError, match="at position ids up to 7 without a KV cache"):
            lm.model(torch.tensor([[5]]), position_ids=torch.tensor([[7]]), use_cache=False)
        with pytest.raises(SteerscopeError, match="with an attention mask over 8 positions without a KV cache"):
            lm.model(torch.tensor([[5]]), attention_mask=torch.ones(1, 8, dtype=torch.long), use_cache=False)
        lm.model(torch.tensor([[5, 6]]), attention_mask=torch.ones(1, 2, dtype=torch.long), use_cache=False)  # a whole sequence


def test_ablate_and_clamp_set_the_projection(lm):
    v = _vec(lm, 5)
    unit = v / v.norm()
    with Steering(lm, {2: Ablate(v)}):
        ablated = capture(lm, CHAT_ITEMS, [2], position="all")[2]
    for h in ablated:
        assert torch.allclose(h @ unit, torch.zeros(h.shape[0]), atol=1e-4)
    with Steering(lm, {2: Clamp(v, 3.0)}):
        clamped = capture(lm, CHAT_ITEMS, [2], position="all")[2]
    for h in clamped:
        assert torch.allclose(h @ unit, torch.full((h.shape[0],), 3.0), atol=1e-4)
    plain = capture(lm, CHAT_ITEMS, [2], position="all")[2]
    for h, a in zip(plain, ablated):  # only the component along v changes
        assert torch.allclose(h - (h @ unit)[:, None] * unit, a, atol=1e-4)


def test_edits_compose_in_order(tiny_models):
    lm = tiny_models["llama"]
    v = _vec(lm, 6)
    unit = v / v.norm()
    with Steering(lm, {1: [Ablate(v), Add(unit, 2.0)]}):
        h = capture(lm, ["hello there"], [1], position="all")[1][0]
    assert torch.allclose(h @ unit, torch.full((h.shape[0],), 2.0), atol=1e-4)


def test_invalid_edits_are_refused(tiny_models):
    lm = tiny_models["llama"]
    with pytest.raises(SteerscopeError, match=r"shape \[32\]"):
        steer(lm, {1: torch.zeros(7)})
    bad = _vec(lm)
    bad[0] = float("nan")
    with pytest.raises(SteerscopeError, match="NaN"):
        steer(lm, {1: bad})
    with pytest.raises(SteerscopeError, match="zero norm"):
        Steering(lm, {1: Ablate(torch.zeros(lm.d_model))})
    with pytest.raises(SteerscopeError, match="valid layers"):
        steer(lm, {9: _vec(lm)})
    with pytest.raises(SteerscopeError, match="no direction for layer"):
        steer(lm, {1: _vec(lm)}, layers=[2])
    with pytest.raises(SteerscopeError, match="unknown positions"):
        parse_positions("middle")
    with pytest.raises(SteerscopeError, match="got 1 vectors but 2 strengths"):
        steer_rows(lm, [{1: _vec(lm)}], [1.0, 2.0])
    with pytest.raises(SteerscopeError, match="disagree"):
        Steering(lm, {1: Add(torch.stack([_vec(lm)] * 2), torch.ones(3))})


def test_parse_positions():
    assert parse_positions("last") == ("last", 1)
    assert parse_positions("last-4") == ("last", 4)
    assert parse_positions("generated") == ("generated", 0)
    with pytest.raises(SteerscopeError):
        parse_positions("last-0")


def test_relative_dose():
    assert relative_dose(-4.0, 2.0, 16.0) == 0.5


def test_a_strength_that_overflows_the_models_dtype_is_refused(tiny_models):
    from steerscope.errors import SteerscopeError
    from steerscope.intervene import Add, Steering

    lm = tiny_models["llama"]
    v = torch.ones(lm.d_model)
    with pytest.raises(SteerscopeError, match="not finite in float32"):
        Steering(lm, {1: Add(v, 1e300)})
    with pytest.raises(SteerscopeError, match="not finite"):
        Steering(lm, {1: Add(v, torch.tensor([1.0, float("nan")]))})
    Steering(lm, {1: Add(v, 1e30)})  # large but finite in float32
