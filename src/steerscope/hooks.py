"""Forward hooks on decoder blocks: read, edit, or stop at a block's residual-stream output.

Layer ℓ is the output of decoder block ℓ (``lm.layers[ℓ]``, see :class:`steerscope.models.LoadedModel`):
the hidden-state tensor ``[B, T, d]`` that the block returns, alone or first in a tuple. Hooks
exist only inside the context managers of this module and are removed on exit, also when the body
raises. Hooks on one block run in the order they were registered, except those registered
``first``, which run before all others (the latest of them first): an edit registered ``first``
is seen by every reader of that block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch

from steerscope.models.loading import LoadedModel

#: A forward hook ``hook(module, args, output)``; a non-None return value replaces the output.
BlockHook = Callable[[torch.nn.Module, tuple, object], object]
#: Maps a block's hidden states ``[B, T, d]`` to the edited states (same shape).
HiddenEdit = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised by :func:`record` after the deepest recorded block, so that later blocks and the head are skipped.

    Catch it around the forward call, e.g. ``with contextlib.suppress(StopForward): lm.model(...)``.
    """


class RowEdits(Protocol):
    """Block edits entered as a context, possibly bound to a batch size (:class:`steerscope.intervene.Steering`)."""

    batch_size: int | None

    def rows(self, rows: Sequence[int]) -> RowEdits:
        """The same edits restricted to a subset of the batch rows."""

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


def block_hidden(output: object) -> torch.Tensor:
    """The hidden-state tensor ``[B, T, d]`` inside a decoder block's output (tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def with_hidden(output: object, hidden: torch.Tensor) -> object:
    """A decoder block's output with its hidden-state tensor replaced by ``hidden`` (``[B, T, d]``)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def _hooked(lm: LoadedModel, hooks: Mapping[int, BlockHook], first: bool = False) -> Iterator[None]:
    handles = []
    try:
        for layer, hook in hooks.items():
            handles.append(lm.layers[layer].register_forward_hook(hook, prepend=first))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record(lm: LoadedModel, layers: Sequence[int], stop_early: bool = False, detach: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Context manager yielding a dict that each forward pass fills with ``{ℓ: [B, T, d]}``.

    ``detach=False`` keeps the states in the autograd graph. With ``stop_early`` the hook of the
    deepest layer raises :class:`StopForward` once it has recorded, so later blocks do not run.
    """
    store: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def reader(layer: int) -> BlockHook:
        def hook(_module, _args, output):
            hidden = block_hidden(output)
            store[layer] = hidden.detach() if detach else hidden
            if stop_early and layer == deepest:
                raise StopForward
        return hook

    with _hooked(lm, {layer: reader(layer) for layer in layers}):
        yield store


@contextmanager
def edit(lm: LoadedModel, edits: Mapping[int, HiddenEdit], first: bool = False) -> Iterator[None]:
    """Context manager replacing the output ``h`` (``[B, T, d]``) of block ℓ by ``fn(h)`` for each ``{ℓ: fn}``.

    ``first``: the edits run before every other hook on their blocks.
    """
    def editor(fn: HiddenEdit) -> BlockHook:
        def hook(_module, _args, output):
            return with_hidden(output, fn(block_hidden(output)))
        return hook

    with _hooked(lm, {layer: editor(fn) for layer, fn in edits.items()}, first):
        yield


@contextmanager
def before_call(lm: LoadedModel, fn: Callable[[tuple, dict], None]) -> Iterator[None]:
    """Context manager calling ``fn(args, kwargs)`` before every forward call of the whole model."""
    handle = lm.model.register_forward_pre_hook(lambda _module, args, kwargs: fn(args, kwargs), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
