"""Turn texts and chat conversations into padded token batches, tracking completion spans.

Conventions: an *item* is a plain string or a chat conversation (a list of ``{"role", "content"}``
messages). A conversation is rendered with the tokenizer's chat template, or with a plain
``User: …`` / ``Assistant: …`` layout when the tokenizer has none (base models). The *span* of an
item is the half-open token range of its completion: the final message of a conversation, or the
whole text of a string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
Item = Union[str, list[Message]]
ChatMode = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one item and the ``[start, end)`` span of its completion."""

    ids: list[int]
    span: tuple[int, int]


@dataclass
class Batch:
    """A padded batch. Shapes: ``input_ids``, ``attention_mask``, ``position_ids``: ``[B, T]``;
    ``offsets[b]`` is the number of pad tokens before row ``b``'s first real token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: list[int]

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device), self.offsets)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _plain_chat(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return text + ("\nAssistant:" if add_generation_prompt else "")


def render(
    tokenizer: PreTrainedTokenizerBase, item: Item, add_generation_prompt: bool = False, chat: ChatMode = "auto",
) -> tuple[str, bool]:
    """Return ``(text, add_special_tokens)`` for an item.

    Strings are returned as they are unless ``chat="always"`` (or ``"auto"`` with a chat template
    and ``add_generation_prompt``), in which case they become a single user message.
    """
    if isinstance(item, str):
        as_chat = chat == "always" or (chat == "auto" and add_generation_prompt and has_chat_template(tokenizer))
        if not as_chat:
            return item, True
        item = [{"role": "user", "content": item}]
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(list(item), tokenize=False, add_generation_prompt=add_generation_prompt)
        assert isinstance(text, str)  # tokenize=False renders one conversation to one string
        return text, False
    return _plain_chat(item, add_generation_prompt), True


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _content_span(
    tokenizer: PreTrainedTokenizerBase, text: str, ids: list[int], special: bool, content: str,
) -> tuple[int, int] | None:
    """Token span covering the last occurrence of ``content`` in ``text`` (needs a fast tokenizer)."""
    needle = content.strip()
    start_char = text.rfind(needle) if needle else -1
    if start_char < 0:
        return None
    try:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(enc["input_ids"]) != ids:
        return None
    end_char = start_char + len(needle)
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > start_char and s < end_char and e > s]
    return (inside[0], inside[-1] + 1) if inside else None


def encode_item(tokenizer: PreTrainedTokenizerBase, item: Item) -> Encoded:
    """Tokenize an item (no generation prompt) and locate its completion span.

    For a conversation the span covers the tokens of the final message's content (not the chat
    template's end-of-turn markers); for a string, every token but the first, whether that is a
    BOS token or (tokenizers that add none) the first word: it has no context to be predicted from
    and is the model's attention sink.
    """
    text, special = render(tokenizer, item)
    ids = _tokenize(tokenizer, text, special)
    if isinstance(item, str) or len(item) < 2:
        return Encoded(ids, (1 if len(ids) > 1 else 0, len(ids)))
    span = _content_span(tokenizer, text, ids, special, item[-1]["content"])
    if span is not None:
        return Encoded(ids, span)
    prefix_text, prefix_special = render(tokenizer, list(item[:-1]), add_generation_prompt=True)
    prefix = _tokenize(tokenizer, prefix_text, prefix_special)
    start = 0
    while start < min(len(prefix), len(ids) - 1) and prefix[start] == ids[start]:
        start += 1
    return Encoded(ids, (start, len(ids)))


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Item, chat: ChatMode = "auto") -> list[int]:
    """Tokenize a generation prompt (with the chat template's generation prompt when chatting)."""
    text, special = render(tokenizer, prompt, add_generation_prompt=True, chat=chat)
    return _tokenize(tokenizer, text, special)


def prompt_user_span(tokenizer: PreTrainedTokenizerBase, prompt: str, ids: Sequence[int]) -> tuple[int, int]:
    """``[start, end)`` token span of the user's words ``prompt`` inside its generation prompt ``ids``
    (:func:`encode_prompt`): the chat template's tokens before and after it are outside. Falls back
    to every token after the first when the words cannot be located (a slow tokenizer)."""
    text, special = render(tokenizer, prompt, add_generation_prompt=True)
    span = _content_span(tokenizer, text, list(ids), special, prompt)
    return span if span is not None else (min(1, len(ids) - 1), len(ids))


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "left") -> Batch:
    """Pad token sequences to one length. Position ids count real tokens only (0 at each row's first
    real token), so left padding gives the same positions as no padding."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("cannot pad an empty batch or an empty sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(seqs):
        start = width - len(seq) if side == "left" else 0
        ids[row, start:start + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, start:start + len(seq)] = 1
        offsets.append(start)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, offsets)
