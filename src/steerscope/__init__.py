"""steerscope: activation steering with audits of what a steering vector means.

Pipeline: data (contrastive pairs) → models (load, layers) → capture (residual states) →
extract (vector) → intervene (steer) → generate / likelihood → vectors (save, export).
"""

from steerscope._version import __version__
from steerscope.capture import capture, mean_norms
from steerscope.data import ContrastivePair, builtin_pairs, builtin_prompts, load_pairs
from steerscope.errors import SteerscopeError
from steerscope.extract import METHODS, extract, register_method
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import Ablate, Add, Clamp, Steering, relative_dose, steer, steer_rows
from steerscope.likelihood import completion_logprobs, pair_margins
from steerscope.models import LoadedModel, load_model, wrap_model
from steerscope.vectors import SteeringVector, export_gguf, import_gguf

__all__ = [
    "METHODS", "Ablate", "Add", "Clamp", "ContrastivePair", "GenerationConfig", "LoadedModel", "Steering",
    "SteeringVector", "SteerscopeError", "__version__", "builtin_pairs", "builtin_prompts", "capture",
    "completion_logprobs", "export_gguf", "extract", "generate", "import_gguf", "load_model", "load_pairs",
    "mean_norms", "pair_margins", "register_method", "relative_dose", "steer", "steer_rows", "wrap_model",
]
