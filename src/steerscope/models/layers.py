"""Find the decoder blocks of a causal LM (the residual stream lives between them)."""

from __future__ import annotations

from torch import nn

from steerscope.errors import SteerscopeError

# Dotted attribute paths of the decoder-block list, tried in order. Covers Llama, Mistral,
# Qwen2/3, Gemma 1-3, Phi (model.layers), multimodal Gemma 3 (model.language_model.layers),
# GPT-2 / GPT-J (transformer.h), GPT-NeoX / Pythia (gpt_neox.layers), OPT (model.decoder.layers).
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.blocks",
)


def _get_path(root: nn.Module, path: str) -> object | None:
    obj: object = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def find_decoder_layers(model: nn.Module, layers_path: str | None = None) -> tuple[nn.ModuleList, str]:
    """Return ``(blocks, path)``: the ModuleList of decoder blocks and its dotted path.

    ``layers_path`` overrides discovery (e.g. ``"backbone.blocks"``). Without it the known paths
    are tried, then the longest ``ModuleList`` in the model.
    """
    if layers_path is not None:
        found = _get_path(model, layers_path)
        if not isinstance(found, nn.ModuleList) or len(found) == 0:
            raise SteerscopeError(f"layers path {layers_path!r} is not a non-empty nn.ModuleList in this model")
        return found, layers_path
    for path in KNOWN_LAYER_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found, path
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > best[0]):
            best = (len(module), name, module)
    if best is None:
        raise SteerscopeError(
            "could not find the decoder layers of this model; pass layers_path (CLI: --layers-path)"
        )
    return best[2], best[1]
