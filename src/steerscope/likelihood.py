"""Teacher-forced log-probabilities of completions, optionally under steering."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from steerscope.capture import forward
from steerscope.data.pairs import ContrastivePair
from steerscope.encoding import Encoded, Item, encode_item, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.intervene import Steering
from steerscope.models.loading import LoadedModel


def completion_logprobs(lm: LoadedModel, items: Sequence[Item], steering: Steering | None = None, batch_size: int = 8) -> torch.Tensor:
    """Sum of ``log p(token | preceding tokens)`` over each item's completion span; shape ``[N]``.

    ``steering`` may be shared or per-row (one row per item).
    """
    return encoded_logprobs(lm, [encode_item(lm.tokenizer, item) for item in items], steering, batch_size)


def encoded_logprobs(lm: LoadedModel, encoded: Sequence[Encoded], steering: Steering | None = None, batch_size: int = 8) -> torch.Tensor:
    """:func:`completion_logprobs` of already tokenized items (``[N]`` float64, left-padded batches)."""
    if steering is not None and steering.batch_size not in (None, len(encoded)):
        raise SteerscopeError(f"per-row steering has {steering.batch_size} rows but there are {len(encoded)} items")
    if any(e.span[0] < 1 for e in encoded):
        raise SteerscopeError("a completion span starts at the first token; there is nothing to condition on")
    scores = torch.empty(len(encoded), dtype=torch.float64)
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        batch = pad_batch([e.ids for e in chunk], lm.tokenizer.pad_token_id, "left")
        rows = steering.rows(slice(start, start + batch_size)) if steering is not None and steering.batch_size else steering
        # Left padding puts every completion at the right edge: only the last `keep` positions
        # need logits, which matters for large vocabularies.
        keep = max(len(e.ids) - e.span[0] + 1 for e in chunk)
        with rows if rows is not None else nullcontext(), torch.inference_mode():
            logits = logits_tail(lm, batch, keep)
        scores[start:start + len(chunk)] = span_logprobs(logits, chunk, batch.input_ids.shape[1]).cpu()
    return scores


def span_logprobs(logits: torch.Tensor, encoded: Sequence[Encoded], width: int) -> torch.Tensor:
    """Summed completion log-probabilities ``[B]`` (float64 sums of float32 terms, differentiable) from the logits ``[B, K, V]``
    of the last ``K`` positions of a left-padded batch ``width`` tokens wide."""
    sums = []
    for row, enc in enumerate(encoded):
        s, e = enc.span
        first = width - len(enc.ids) + s - 1 - (width - logits.shape[1])
        picked = logits[row, first:first + (e - s)].float()
        targets = torch.tensor(enc.ids[s:e], device=picked.device)
        sums.append((picked.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(picked, dim=-1)).double().sum())
    return torch.stack(sums)


def logits_tail(lm: LoadedModel, batch, keep: int) -> torch.Tensor:
    """Logits ``[B, K, V]`` of the last ``K >= keep`` positions (all positions if the model cannot trim)."""
    try:
        return forward(lm, batch, logits_to_keep=keep).logits
    except TypeError:
        return forward(lm, batch).logits


def pair_margins(lm: LoadedModel, pairs: Sequence[ContrastivePair], steering: Steering | None = None, batch_size: int = 8) -> torch.Tensor:
    """``log p(positive completion) − log p(negative completion)`` per pair; shape ``[N]``.

    With chat pairs sharing the user turn, this is the model's preference for the positive answer.
    """
    if steering is not None and steering.batch_size:
        raise SteerscopeError("pair_margins takes shared steering; use completion_logprobs for per-row steering")
    pos = completion_logprobs(lm, [p.positive for p in pairs], steering, batch_size)
    neg = completion_logprobs(lm, [p.negative for p in pairs], steering, batch_size)
    return pos - neg


def continuation_logprobs(lm: LoadedModel, prompt: Sequence[int], cont: Sequence[int], steering: Steering | None = None) -> torch.Tensor:
    """``[L, V]`` log-probabilities of the next token at each of the ``L = len(cont)`` continuation
    positions after token ids ``prompt`` (teacher-forced, one unpadded row)."""
    lm.check_context([*prompt, *cont])
    x = torch.tensor([list(prompt) + list(cont)], device=lm.device)
    with torch.inference_mode(), steering if steering is not None else nullcontext():
        logits = lm.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0].float()
    return logits[len(prompt) - 1: len(prompt) + len(cont) - 1].log_softmax(-1).cpu()


def perplexities(lm: LoadedModel, prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[int]], batch_size: int = 8) -> np.ndarray:
    """Perplexity ``exp(−mean log p)`` of each token-id continuation ``conts[i]`` after ``prompts[i]``
    under the unsteered model; shape ``[N]`` (NaN for an empty continuation). Batched, left-padded."""
    if len(prompts) != len(conts):
        raise SteerscopeError(f"got {len(prompts)} prompts but {len(conts)} continuations")
    keep = [i for i, c in enumerate(conts) if len(c)]
    out = np.full(len(conts), np.nan)
    if keep:
        encoded = [Encoded(list(prompts[i]) + list(conts[i]), (len(prompts[i]), len(prompts[i]) + len(conts[i]))) for i in keep]
        sums = encoded_logprobs(lm, encoded, None, batch_size).numpy()
        out[keep] = np.exp(-sums / np.array([len(conts[i]) for i in keep], dtype=float))
    return out
