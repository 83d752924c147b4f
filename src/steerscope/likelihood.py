"""Teacher-forced log-probabilities of completions, optionally under steering."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from steerscope.capture import forward
from steerscope.data.pairs import ContrastivePair
from steerscope.encoding import Item, encode_item, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.intervene import Steering
from steerscope.models.loading import LoadedModel


def completion_logprobs(lm: LoadedModel, items: Sequence[Item], steering: Steering | None = None, batch_size: int = 8) -> torch.Tensor:
    """Sum of ``log p(token | preceding tokens)`` over each item's completion span; shape ``[N]``.

    ``steering`` may be shared or per-row (one row per item).
    """
    if steering is not None and steering.batch_size not in (None, len(items)):
        raise SteerscopeError(f"per-row steering has {steering.batch_size} rows but there are {len(items)} items")
    encoded = [encode_item(lm.tokenizer, item) for item in items]
    if any(e.span[0] < 1 for e in encoded):
        raise SteerscopeError("a completion span starts at the first token; there is nothing to condition on")
    scores = torch.empty(len(items), dtype=torch.float64)
    for start in range(0, len(items), batch_size):
        chunk = encoded[start:start + batch_size]
        batch = pad_batch([e.ids for e in chunk], lm.tokenizer.pad_token_id, "left")
        rows = steering.rows(slice(start, start + batch_size)) if steering is not None and steering.batch_size else steering
        with rows if rows is not None else nullcontext(), torch.inference_mode():
            logits = forward(lm, batch).logits
        for row, enc in enumerate(chunk):
            off = batch.offsets[row]
            s, e = enc.span
            logp = torch.log_softmax(logits[row, off + s - 1:off + e - 1].double(), dim=-1)
            targets = torch.tensor(enc.ids[s:e], device=logp.device)
            scores[start + row] = logp.gather(1, targets[:, None]).sum().cpu()
    return scores


def pair_margins(lm: LoadedModel, pairs: Sequence[ContrastivePair], steering: Steering | None = None, batch_size: int = 8) -> torch.Tensor:
    """``log p(positive completion) − log p(negative completion)`` per pair; shape ``[N]``.

    With chat pairs sharing the user turn, this is the model's preference for the positive answer.
    """
    if steering is not None and steering.batch_size:
        raise SteerscopeError("pair_margins takes shared steering; use completion_logprobs for per-row steering")
    pos = completion_logprobs(lm, [p.positive for p in pairs], steering, batch_size)
    neg = completion_logprobs(lm, [p.negative for p in pairs], steering, batch_size)
    return pos - neg
