"""The KV cache across transformers versions: how a model takes it, returns it, and how long it is.

transformers 4.x passes the cache as ``past_key_values`` (with ``cache_position``); 5.x renames
it ``cache`` (``past_key_values`` is deprecated, to be removed in 5.40) and ``generate`` no longer
passes ``cache_position``. Everything in steerscope that feeds a cache to a model, reads one back,
or needs the number of positions already cached goes through this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch

from steerscope.errors import SteerscopeError

#: Keyword names under which transformers passes the KV cache, newest first.
CACHE_NAMES = ("cache", "past_key_values")


def cache_argument(module: torch.nn.Module) -> str:
    """The keyword that ``module.forward`` takes its KV cache under (``cache`` or ``past_key_values``)."""
    params = inspect.signature(module.forward).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise SteerscopeError(f"{type(module).__name__}.forward takes no KV cache (none of {', '.join(CACHE_NAMES)})")


def with_cache(module: torch.nn.Module, cache: object | None) -> dict[str, object]:
    """Keyword arguments that hand ``cache`` to ``module`` (``use_cache`` set when there is one)."""
    return {cache_argument(module): cache, "use_cache": cache is not None}


def output_cache(output: Mapping[str, object]) -> object:
    """The KV cache a model returned (``output.cache`` or ``output.past_key_values``)."""
    for name in CACHE_NAMES:
        if output.get(name) is not None:
            return output[name]
    raise SteerscopeError("the model returned no KV cache; call it with use_cache=True")


def cache_length(cache: object) -> int:
    """Number of positions held by a cache object or a legacy tuple of ``(key, value)`` per layer."""
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2]) if len(cache) else 0  # type: ignore[index,arg-type]


def past_length(kwargs: Mapping[str, object], width: int) -> int:
    """Positions already in the KV cache when a model is called with ``kwargs`` on ``width`` new tokens.

    Read from ``cache_position`` when given, else from the cache object under any of
    :data:`CACHE_NAMES`; 0 when neither is present (a pass over a whole sequence). Raises when
    no cache is visible but ``position_ids`` or a 2-D ``attention_mask`` wider than the call show
    that it continues a longer sequence (a cache passed in a way this module does not know):
    edits at prompt or generated positions would silently land on the wrong tokens.
    """
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel() > 0:
        return int(cache_position.reshape(-1)[0])
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return cache_length(kwargs[name])
    position_ids, mask = kwargs.get("position_ids"), kwargs.get("attention_mask")
    if isinstance(position_ids, torch.Tensor) and position_ids.numel() > 0 and int(position_ids.max()) >= width:
        _refuse(f"at position ids up to {int(position_ids.max())}", width)
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] > width:
        _refuse(f"with an attention mask over {mask.shape[1]} positions", width)
    return 0


def _refuse(evidence: str, width: int) -> None:
    raise SteerscopeError(
        f"the model was called on {width} token(s) {evidence} without a KV cache that steerscope can read (looked for "
        f"cache_position and {', '.join(CACHE_NAMES)}); this transformers version passes the cache in a way steerscope "
        "does not support"
    )
