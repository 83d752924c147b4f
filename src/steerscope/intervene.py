"""Edit the residual stream during a forward pass or KV-cached generation.

An edit acts on the output of decoder block ℓ (the layer convention of
:class:`steerscope.models.LoadedModel`) at selected token positions:

* :class:`Add` — ``h' = h + α·v``;
* :class:`Ablate` — ``h' = h − (h·û)û`` (directional ablation, ``û = u/‖u‖``);
* :class:`Clamp` — ``h' = h + (c − h·û)û`` (the projection on ``û`` set to ``c``).

Ablate and Clamp can leave attention sinks alone (``skip_sinks``): a sink's state is one or two
orders of magnitude larger than a token's, and its projection on a trait direction can be too, so
that editing it changes the model through the sink rather than through the trait.

Vectors may be ``[d]`` (shared by all rows) or ``[B, d]`` (one per batch row), and ``α``/``c``
scalars or ``[B]``, so that many conditions run as the rows of one batched call. Positions are
absolute sequence positions (of the whole padded sequence, also across KV-cached calls); the
prompt is what the first (uncached) forward call of a generation sees:

* ``"all"`` — every position; ``"prompt"`` / ``"generated"`` — prompt tokens / new tokens;
* ``"last"`` — each row's last real prompt token; ``"last-K"`` — its last K real prompt tokens;
* a sequence of ints — exactly those positions, in every row.

Hooks (:mod:`steerscope.hooks`) exist only inside ``with Steering(...)``; after exit the model is
exactly as before. Steering hooks run before any other forward hook on a block, so observers
(:func:`steerscope.capture.capture`) always see the steered state; when two Steering contexts are
nested, the inner one edits first.
"""

from __future__ import annotations

import math

import operator
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, Union

import torch

from steerscope import hooks
from steerscope.errors import SteerscopeError
from steerscope.models.kvcache import past_length
from steerscope.models.loading import LoadedModel

Scalar = Union[float, torch.Tensor]
#: A position spec (see :func:`parse_positions`) or absolute sequence positions.
Positions = Union[str, Sequence[int]]


@dataclass(frozen=True)
class Add:
    """``h' = h + alpha·vector``; vector ``[d]`` or ``[B, d]``, alpha scalar or ``[B]``."""

    vector: torch.Tensor
    alpha: Scalar = 1.0


@dataclass(frozen=True)
class Ablate:
    """Project ``direction`` (``[d]`` or ``[B, d]``, any norm) out of the hidden state; with
    ``skip_sinks``, attention-sink positions (:func:`sink_positions`) are left as they are."""

    direction: torch.Tensor
    skip_sinks: bool = False


@dataclass(frozen=True)
class Clamp:
    """Set the projection of the hidden state on unit ``direction`` to ``value`` (scalar or ``[B]``);
    ``skip_sinks`` as for :class:`Ablate`."""

    direction: torch.Tensor
    value: Scalar = 0.0
    skip_sinks: bool = False


Edit = Union[Add, Ablate, Clamp]
_LAST_K = re.compile(r"^last-(\d+)$")


def parse_positions(spec: str) -> tuple[str, int]:
    """Validate a position spec; return ``(kind, k)`` with k the count for ``last``/``last-K``."""
    if spec in ("all", "prompt", "generated"):
        return spec, 0
    if spec == "last":
        return "last", 1
    match = _LAST_K.match(spec)
    if match and int(match.group(1)) > 0:
        return "last", int(match.group(1))
    raise SteerscopeError(f"unknown positions {spec!r}: use all, prompt, generated, last or last-K (e.g. last-3)")


def _absolute_positions(positions: Sequence[int]) -> tuple[int, ...]:
    """Validate absolute sequence positions (non-empty, non-negative ints); return them as a tuple."""
    try:
        out = tuple(operator.index(p) for p in positions)
    except TypeError:
        raise SteerscopeError(f"absolute positions must be ints, got {positions!r}") from None
    if not out or min(out) < 0:
        raise SteerscopeError(f"absolute positions must be a non-empty sequence of non-negative ints, got {list(out)}")
    return out


def _rows(value: Scalar, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``[B]`` value as a ``[B, 1, 1]`` tensor matching ``like``'s device and dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1, 1) if t.ndim == 1 else t.reshape(1, 1, 1).expand(batch, 1, 1)


def _vec(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[d]`` or ``[B, d]`` vector as ``[1 or B, 1, d]``."""
    v = vector.to(device=like.device, dtype=like.dtype)
    return v.reshape(1, 1, -1) if v.ndim == 1 else v.unsqueeze(1)


def sink_positions(h: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: positions whose state norm exceeds :data:`~steerscope.capture.SINK_RATIO` × the
    median norm of their row in this call (attention sinks; never a single new token of a cached call)."""
    from steerscope.capture import SINK_RATIO

    norms = h.norm(dim=-1)
    return norms > SINK_RATIO * norms.median(dim=1, keepdim=True).values


def _apply(edit: Edit, h: torch.Tensor) -> torch.Tensor:
    batch = h.shape[0]
    if isinstance(edit, Add):
        return h + _rows(edit.alpha, batch, h) * _vec(edit.vector, h)
    unit = _vec(edit.direction, h)
    unit = unit / unit.norm(dim=-1, keepdim=True)
    proj = (h * unit).sum(dim=-1, keepdim=True)
    edited = h - proj * unit if isinstance(edit, Ablate) else h + (_rows(edit.value, batch, h) - proj) * unit
    return torch.where(sink_positions(h).unsqueeze(-1), h, edited) if edit.skip_sinks else edited


def _edit_rows(edit: Edit) -> int | None:
    """Batch size an edit is bound to (None when it is shared by all rows)."""
    sizes = set()
    for name in ("vector", "direction", "alpha", "value"):
        t = getattr(edit, name, None)
        if isinstance(t, torch.Tensor) and t.ndim >= 1 and not (name in ("vector", "direction") and t.ndim == 1):
            sizes.add(t.shape[0])
    if len(sizes) > 1:
        raise SteerscopeError(f"per-row tensors of one edit disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _check_edit(edit: Edit, d_model: int, dtype: torch.dtype) -> None:
    vec = edit.vector if isinstance(edit, Add) else edit.direction
    if not isinstance(vec, torch.Tensor) or vec.ndim not in (1, 2) or vec.shape[-1] != d_model:
        raise SteerscopeError(f"steering vector must have shape [{d_model}] or [B, {d_model}], got {tuple(getattr(vec, 'shape', ()))}")
    if not torch.isfinite(vec).all():
        raise SteerscopeError("steering vector contains NaN or Inf")
    if isinstance(edit, Add):
        alpha = torch.as_tensor(edit.alpha, dtype=torch.float64)
        largest = float(alpha.abs().max()) * float(vec.abs().max()) if alpha.numel() else 0.0
        if not math.isfinite(largest) or largest > torch.finfo(dtype).max:
            raise SteerscopeError(f"α·v is not finite in {str(dtype).removeprefix('torch.')} (largest |α|·|v_i| = {largest:.3g}); use a smaller α")
    if not isinstance(edit, Add) and bool((vec.norm(dim=-1) == 0).any()):
        raise SteerscopeError("ablation/clamp direction has zero norm")


def _slice(value: object, rows: slice | Sequence[int]) -> object:
    if isinstance(value, torch.Tensor) and value.ndim >= 1:
        return value[rows] if isinstance(rows, slice) else value[torch.as_tensor(list(rows), dtype=torch.long)]
    return value


def _slice_edit(edit: Edit, rows: slice | Sequence[int]) -> Edit:
    fields: dict[str, Any] = {f: _slice(getattr(edit, f), rows) for f in edit.__dataclass_fields__}
    return replace(edit, **fields)


class Steering:
    """Context manager that applies edits at decoder-block outputs.

    ``edits`` maps layer ℓ to one edit or a list (applied in order); ``positions`` is a spec
    (:func:`parse_positions`) or a sequence of absolute positions. Per-row edits fix the batch
    size of every call made inside the context. Use :meth:`rows` to take a sub-batch; steerscope
    functions that batch internally (``capture``, ``generate``, ``completion_logprobs``,
    ``condition_divergences``) take per-row steering as an argument and slice it themselves.
    """

    def __init__(self, lm: LoadedModel, edits: Mapping[int, Edit | Sequence[Edit]], positions: Positions = "all"):
        self.lm = lm
        if isinstance(positions, str):
            self.positions: Positions = positions
            self._kind, self._k = parse_positions(positions)
        else:
            self.positions = _absolute_positions(positions)
            self._kind, self._k = "absolute", 0
        self.edits: dict[int, list[Edit]] = {}
        for layer, group in edits.items():
            group = [group] if isinstance(group, (Add, Ablate, Clamp)) else list(group)
            for edit in group:
                _check_edit(edit, lm.d_model, lm.dtype)
            self.edits[lm.check_layer(layer)] = group
        sizes = {s for g in self.edits.values() for s in map(_edit_rows, g) if s is not None}
        if len(sizes) > 1:
            raise SteerscopeError(f"per-row edits disagree on the batch size: {sorted(sizes)}")
        self.batch_size: int | None = sizes.pop() if sizes else None
        self._hooks: ExitStack | None = None
        self._mask: torch.Tensor | None = None
        self._prompt_len = 0
        self._prompt_last: torch.Tensor | None = None

    def rows(self, rows: slice | Sequence[int]) -> "Steering":
        """The same steering restricted to a subset of the batch rows."""
        sliced = {layer: [_slice_edit(e, rows) for e in group] for layer, group in self.edits.items()}
        return Steering(self.lm, sliced, self.positions)

    # -- hooks -------------------------------------------------------------------------------
    def _on_model_call(self, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        assert ref is not None  # a forward call gets input_ids or inputs_embeds
        batch, width = ref.shape[0], ref.shape[1]
        if self.batch_size is not None and batch != self.batch_size:
            raise SteerscopeError(f"per-row steering was built for {self.batch_size} rows but the model got {batch}")
        offset = past_length(kwargs, width)
        if offset == 0:
            self._prompt_len = width
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.ndim == 2:
                idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
                self._prompt_last = torch.where(mask.bool(), idx, -1).max(dim=1).values
            else:
                self._prompt_last = torch.full((batch,), width - 1, device=ref.device)
        pos = torch.arange(offset, offset + width, device=ref.device).unsqueeze(0).expand(batch, width)
        if self._kind == "all":
            self._mask = None
        elif self._kind == "absolute":
            self._mask = torch.isin(pos, torch.tensor(self.positions, device=ref.device))
        elif self._kind == "prompt":
            self._mask = pos < self._prompt_len
        elif self._kind == "generated":
            self._mask = pos >= self._prompt_len
        else:
            assert self._prompt_last is not None  # set by the prompt call (offset 0)
            last = self._prompt_last.to(ref.device).unsqueeze(1)
            self._mask = (pos <= last) & (pos > last - self._k)

    def _steer(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        steered = h
        for edit in self.edits[layer]:
            steered = _apply(edit, steered)
        if self._mask is not None:
            steered = torch.where(self._mask.to(h.device).unsqueeze(-1), steered, h)
        return steered

    def __enter__(self) -> "Steering":
        if self._hooks is not None:
            raise RuntimeError("this Steering context is already active")
        with ExitStack() as stack:
            stack.enter_context(hooks.before_call(self.lm, self._on_model_call))
            stack.enter_context(hooks.edit(self.lm, {layer: partial(self._steer, layer) for layer in self.edits}, first=True))
            self._hooks = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hooks is not None:
            self._hooks.close()
        self._hooks = None
        self._mask = None
        self._prompt_last = None


class HasDirections(Protocol):
    """Anything with per-layer directions ``{ℓ: [d]}``, such as a :class:`steerscope.vectors.SteeringVector`."""

    @property
    def directions(self) -> Mapping[int, torch.Tensor]: ...


#: A steering vector: a SteeringVector (anything with ``directions``) or a mapping ``{ℓ: [d] tensor}``.
VectorLike = Union[HasDirections, Mapping[int, torch.Tensor]]


def _directions(vector: VectorLike) -> Mapping[int, torch.Tensor]:
    if hasattr(vector, "directions"):
        return vector.directions
    return vector


def steer(
    lm: LoadedModel,
    vector: VectorLike,
    alpha: Scalar = 1.0,
    layers: Sequence[int] | None = None,
    positions: Positions = "all",
) -> Steering:
    """Steering that adds ``alpha·v_ℓ`` at each layer of ``vector``.

    ``vector`` is a :class:`steerscope.vectors.SteeringVector` or a mapping ``{ℓ: [d] tensor}``;
    ``layers`` restricts it to some of its layers.
    """
    directions = _directions(vector)
    chosen = list(directions) if layers is None else [lm.check_layer(layer) for layer in layers]
    missing = [layer for layer in chosen if layer not in directions]
    if missing:
        raise SteerscopeError(f"the vector has no direction for layer(s) {missing}; it has {sorted(directions)}")
    return Steering(lm, {layer: Add(directions[layer], alpha) for layer in chosen}, positions)


def steer_rows(
    lm: LoadedModel,
    vectors: Sequence[VectorLike | None],
    alphas: Sequence[float],
    positions: Positions = "all",
) -> Steering:
    """Per-row steering: row ``b`` gets ``alphas[b]·vectors[b]`` (``None`` = unsteered row).

    Each vector is a SteeringVector or ``{ℓ: [d]}``; rows are zero at layers a vector lacks.
    """
    if len(vectors) != len(alphas):
        raise SteerscopeError(f"got {len(vectors)} vectors but {len(alphas)} strengths")
    dirs = [_directions(v) if v is not None else {} for v in vectors]
    layers = sorted({layer for d in dirs for layer in d})
    if not layers:
        layers = [0]
    zero = torch.zeros(lm.d_model)
    edits = {
        layer: Add(torch.stack([d.get(layer, zero).float().cpu() for d in dirs]), torch.tensor([float(a) for a in alphas]))
        for layer in layers
    }
    return Steering(lm, edits, positions)


def relative_dose(alpha: float, vector_norm: float, mean_hidden_norm: float) -> float:
    """Strength as a fraction of the typical residual norm: ``|α|·‖v‖ / mean‖h‖``."""
    return abs(alpha) * vector_norm / mean_hidden_norm
