import torch

from steerscope.encoding import encode_item, encode_prompt, pad_batch, render
from steerscope.testing import tiny_tokenizer


def test_chat_span_covers_the_final_message_content():
    tok = tiny_tokenizer()
    item = [{"role": "user", "content": "tell me about the weekend"}, {"role": "assistant", "content": "it was very good ."}]
    enc = encode_item(tok, item)
    start, end = enc.span
    assert tok.convert_ids_to_tokens(enc.ids[start:end]) == ["it", "was", "very", "good", "."]


def test_string_span_skips_bos():
    tok = tiny_tokenizer()
    enc = encode_item(tok, "hello world")
    assert enc.ids[0] == tok.bos_token_id and enc.span == (1, len(enc.ids))


def test_plain_chat_layout_without_template():
    tok = tiny_tokenizer(chat_template=False)
    text, special = render(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "User: hi\nAssistant:" and special
    enc = encode_item(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good day"}])
    assert tok.convert_ids_to_tokens(enc.ids[enc.span[0]:enc.span[1]]) == ["good", "day"]


def test_prompt_uses_chat_template_when_asked():
    tok = tiny_tokenizer()
    chat = encode_prompt(tok, "hello", chat="auto")
    assert tok.convert_ids_to_tokens(chat) == ["<|user|>", "hello", "<|end|>", "<|assistant|>"]
    assert tok.convert_ids_to_tokens(encode_prompt(tok, "hello", chat="never")) == ["<s>", "hello"]


def test_pad_batch_positions_ignore_padding():
    left = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert left.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left.position_ids[1, 2] == 0 and left.offsets == [0, 2]
    right = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert right.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert torch.equal(right.position_ids[0], torch.tensor([0, 1, 2])) and right.offsets == [0, 0]
