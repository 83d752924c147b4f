"""Models: built-in offline models, loading, decoder-layer discovery and fingerprints."""

from steerscope.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, cache_root
from steerscope.models.layers import find_decoder_layers
from steerscope.models.loading import LoadedModel, load_model, wrap_model

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "LoadedModel", "cache_root", "find_decoder_layers", "load_model", "wrap_model"]
