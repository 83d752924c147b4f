"""Steering-vector files: steerscope safetensors and llama.cpp control-vector GGUF."""

from steerscope.vectors.file import SteeringVector, vector_metadata
from steerscope.vectors.foreign import (ForeignVector, from_directions, from_repeng, from_steering_vectors, load_vector_file,
                                        load_vector_layers)
from steerscope.vectors.gguf_io import export_gguf, import_gguf

__all__ = [
    "ForeignVector", "SteeringVector", "export_gguf", "from_directions", "from_repeng", "from_steering_vectors", "import_gguf",
    "load_vector_file", "load_vector_layers", "vector_metadata",
]
