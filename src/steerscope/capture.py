"""Record the residual stream at chosen layers in one batched forward pass.

Layer ℓ is the output of decoder block ℓ (see :class:`steerscope.models.LoadedModel`). States are
read by forward hooks on the blocks (:func:`steerscope.hooks.record`), registered for the duration
of a call only; when steering is active (:mod:`steerscope.intervene`) the recorded states are the
steered ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext, suppress
from typing import Any, Literal, overload

import torch

from steerscope.encoding import Batch, Encoded, Item, encode_item, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.hooks import RowEdits, StopForward, record
from steerscope.models.loading import LoadedModel
from steerscope.progress import track

Position = Literal["last", "mean", "all"]


def forward(lm: LoadedModel, batch: Batch, **kwargs) -> Any:
    """Run the model on a padded batch with explicit position ids (so padding does not shift them)."""
    longest = int(batch.attention_mask.sum(dim=1).argmax())
    lm.check_context(batch.input_ids[longest][batch.attention_mask[longest].bool()].tolist())
    batch = batch.to(lm.device)
    return lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False, **kwargs)


#: A token whose state norm exceeds this multiple of the median over its sequence is an attention sink.
SINK_RATIO = 10.0


def sink_mask(norms: torch.Tensor) -> torch.Tensor:
    """Attention-sink positions ``[T]`` (bool) of one sequence from its state norms ``[T]``.

    The first position is always a sink, whether it holds a BOS token or the first word (causal
    models park attention there); any later position whose norm exceeds :data:`SINK_RATIO` × the
    median norm of the positions after the first is one too (a secondary sink).
    """
    mask = torch.zeros(norms.shape[0], dtype=torch.bool)
    mask[0] = True
    if norms.shape[0] > 1:
        mask[1:] = norms[1:] > SINK_RATIO * norms[1:].median()
    return mask


def _reduce(hidden: torch.Tensor, enc: Encoded, offset: int, position: Position, span: tuple[int, int]) -> torch.Tensor:
    start, end = span
    if position == "last":
        return hidden[offset + end - 1]
    if position == "mean":
        states = hidden[offset:offset + len(enc.ids)]
        keep = ~sink_mask(states.norm(dim=-1))[start:end]
        if not keep.any():
            raise SteerscopeError(f"every token of the span {span} of {len(enc.ids)} tokens is an attention sink; "
                                  "the item needs more text")
        return states[start:end][keep].mean(dim=0)
    return hidden[offset:offset + len(enc.ids)]


@overload
def capture(
    lm: LoadedModel, items: Sequence[Item], layers: Sequence[int], position: Literal["last", "mean"] = ...,
    spans: Sequence[tuple[int, int]] | None = ..., batch_size: int = ..., padding_side: Literal["left", "right"] = ...,
    progress: bool = ..., norms_out: dict[int, float] | None = ..., steering: RowEdits | None = ...,
) -> dict[int, torch.Tensor]: ...


@overload
def capture(
    lm: LoadedModel, items: Sequence[Item], layers: Sequence[int], position: Literal["all"],
    spans: Sequence[tuple[int, int]] | None = ..., batch_size: int = ..., padding_side: Literal["left", "right"] = ...,
    progress: bool = ..., norms_out: dict[int, float] | None = ..., steering: RowEdits | None = ...,
) -> dict[int, list[torch.Tensor]]: ...


def capture(
    lm: LoadedModel,
    items: Sequence[Item],
    layers: Sequence[int],
    position: Position = "last",
    spans: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 16,
    padding_side: Literal["left", "right"] = "left",
    progress: bool = False,
    norms_out: dict[int, float] | None = None,
    steering: RowEdits | None = None,
) -> dict[int, torch.Tensor] | dict[int, list[torch.Tensor]]:
    """Residual-stream states of ``items`` at ``layers`` (float32, on CPU).

    ``position``: ``"last"`` — last token of each item's span, ``[N, d]``; ``"mean"`` — mean over
    the span without its attention sinks (:func:`sink_mask`), ``[N, d]``; ``"all"`` — every real
    token, a list of ``[T_i, d]``. Spans default to
    each item's completion span (:func:`steerscope.encoding.encode_item`); pass ``spans`` to choose
    token ranges yourself. Items are batched by length; results come back in input order.
    If ``norms_out`` is a dict, it receives the mean L2 norm of the states per layer over all real
    tokens except the attention sinks, whose norms are often a hundred times larger.
    ``steering`` (a :class:`steerscope.intervene.Steering`, shared or per-row with one row per item)
    is applied during the pass; pass per-row steering here rather than entering it around the
    call, since items are reordered by length.
    """
    if not items:
        raise ValueError("capture needs at least one item")
    if steering is not None and steering.batch_size not in (None, len(items)):
        raise SteerscopeError(f"per-row steering has {steering.batch_size} rows but there are {len(items)} items")
    layer_ids = sorted({lm.check_layer(layer) for layer in layers})
    encoded = [encode_item(lm.tokenizer, item) for item in items]
    if spans is not None:
        if len(spans) != len(items):
            raise ValueError(f"got {len(spans)} spans for {len(items)} items")
        encoded = [Encoded(e.ids, tuple(s)) for e, s in zip(encoded, spans)]  # type: ignore[arg-type]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    results: dict[int, list] = {layer: [None] * len(items) for layer in layer_ids}
    norm_sum = dict.fromkeys(layer_ids, 0.0)
    norm_count = dict.fromkeys(layer_ids, 0)
    with torch.inference_mode(), record(lm, layer_ids, stop_early=True) as store:
        for chunk in track(chunks, "capture", enabled=progress):
            batch = pad_batch([encoded[i].ids for i in chunk], lm.tokenizer.pad_token_id, padding_side)
            rows = steering.rows(chunk) if steering is not None and steering.batch_size else steering
            with rows if rows is not None else nullcontext(), suppress(StopForward):
                forward(lm, batch)
            for layer in layer_ids:
                hidden = store[layer].float().cpu()
                for row, idx in enumerate(chunk):
                    norms = hidden[row, batch.offsets[row]:batch.offsets[row] + len(encoded[idx].ids)].norm(dim=-1)
                    kept = norms[~sink_mask(norms)]
                    norm_sum[layer] += float(kept.sum())
                    norm_count[layer] += kept.numel()
                    results[layer][idx] = _reduce(hidden[row], encoded[idx], batch.offsets[row], position, encoded[idx].span)
    if norms_out is not None:
        norms_out.update({layer: norm_sum[layer] / norm_count[layer] if norm_count[layer] else float("nan") for layer in layer_ids})
    if position == "all":
        return {layer: list(vals) for layer, vals in results.items()}
    return {layer: torch.stack(vals) for layer, vals in results.items()}


def mean_norms(lm: LoadedModel, items: Sequence[Item], layers: Sequence[int], batch_size: int = 16) -> dict[int, float]:
    """Mean L2 norm of the residual stream per layer (see ``norms_out`` in :func:`capture`)."""
    norms: dict[int, float] = {}
    capture(lm, items, layers, position="last", batch_size=batch_size, norms_out=norms)
    return norms
