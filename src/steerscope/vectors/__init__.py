"""Steering-vector files: steerscope safetensors and llama.cpp control-vector GGUF."""

from steerscope.vectors.file import SteeringVector, vector_metadata
from steerscope.vectors.gguf_io import export_gguf, import_gguf

__all__ = ["SteeringVector", "export_gguf", "import_gguf", "vector_metadata"]
