"""Load a causal LM (built-in short name, Hugging Face id or folder, or GGUF file) into a LoadedModel."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from steerscope.errors import SteerscopeError
from steerscope.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, convert_to_cache
from steerscope.models.fingerprint import model_fingerprint
from steerscope.models.layers import find_decoder_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A causal LM with what steering needs to know about it.

    ``layers[ℓ]`` is decoder block ℓ; layer ℓ's residual stream is that block's output
    (Hugging Face ``hidden_states[ℓ + 1]``, except that for the last block HF applies the final
    norm and steerscope does not).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    layers: nn.ModuleList
    layers_path: str
    fingerprint: str
    source: str = ""

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        config = getattr(self.model, "config", None)
        for key in ("hidden_size", "n_embd", "d_model"):
            if config is not None and isinstance(getattr(config, key, None), int):
                return getattr(config, key)
        return int(self.model.get_input_embeddings().weight.shape[1])  # type: ignore[index]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def model_type(self) -> str:
        return str(getattr(getattr(self.model, "config", None), "model_type", type(self.model).__name__))

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if valid (negative counts from the end), else raise with the valid range."""
        idx = layer + self.n_layers if layer < 0 else layer
        if not 0 <= idx < self.n_layers:
            raise SteerscopeError(
                f"layer {layer} is out of range for {self.name}: valid layers are 0..{self.n_layers - 1}"
            )
        return idx

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model's position scheme allows, when its config states one."""
        config = getattr(self.model, "config", None)
        for key in ("max_position_embeddings", "n_positions"):
            if isinstance(getattr(config, key, None), int):
                return getattr(config, key)
        return None

    def check_context(self, ids: Sequence[int], extra: int = 0) -> None:
        """Raise if the token ids ``ids`` plus ``extra`` tokens to generate exceed :attr:`context_length`.

        The message quotes the start of the text, so the user can find which one is too long.
        """
        limit = self.context_length
        if limit is None or len(ids) + extra <= limit:
            return
        start = " ".join(str(self.tokenizer.decode(list(ids)[:64], skip_special_tokens=True)).split())
        plus = f" plus {extra} to generate" if extra else ""
        raise SteerscopeError(
            f"a text of {len(ids)} tokens{plus} (starting {start[:60]!r}) exceeds the context of {self.name}, "
            f"{limit} tokens; shorten it{' or generate fewer tokens' if extra else ''}")

    def info(self) -> dict:
        """JSON-serialisable description recorded in every artifact."""
        return {
            "name": self.name, "source": self.source, "model_type": self.model_type,
            "n_layers": self.n_layers, "d_model": self.d_model, "fingerprint": self.fingerprint,
            "layers_path": self.layers_path, "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SteerscopeError("--device cuda requested but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SteerscopeError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise SteerscopeError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (the EOS token) if it has none."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def wrap_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str | None = None, layers_path: str | None = None, source: str = "",
) -> LoadedModel:
    """Wrap an already-loaded Hugging Face model and tokenizer (e.g. a tiny model built in code)."""
    model.eval()
    layers, path = find_decoder_layers(model, layers_path)
    label = name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    return LoadedModel(
        model=model, tokenizer=prepare_tokenizer(tokenizer), name=label, layers=layers,
        layers_path=path, fingerprint=model_fingerprint(model), source=source or label,
    )


def _from_pretrained(
    source: str, dtype: torch.dtype, trust_remote_code: bool, gguf_file: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, bool | str] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


# A tqdm progress-bar frame, e.g. "Converting ...:  40%|####      | 109/272 [00:01<00:02, 70.1it/s]".
_PROGRESS_FRAME = re.compile(r"\d+/\d+ \[[^\]]*\]")


@contextlib.contextmanager
def _without_progress_bars() -> Iterator[None]:
    """Drop the tqdm bars a third-party step prints on stderr; pass on everything else it printed."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        kept = [line for line in re.split(r"[\r\n]", buffer.getvalue()) if line.strip() and not _PROGRESS_FRAME.search(line)]
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")


def _load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # transformers de-quantises GGUF tensors under its own tqdm bar, which its progress-bar switch does not reach.
    with _without_progress_bars():
        return _from_pretrained(str(path.parent), dtype, False, gguf_file=path.name)


def _unknown_model(name: str) -> SteerscopeError:
    known = ", ".join(BUILTIN_MODELS)
    return SteerscopeError(
        f"unknown model {name!r}: use a built-in model ({known}), a Hugging Face model id, "
        "a local model folder, or a .gguf file"
    )


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    layers_path: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM for steering.

    ``name`` is a built-in short name (``smollm2-135m``, ``gemma3-270m``), a Hugging Face hub id
    or local folder (standard ``from_pretrained``; set ``HF_HUB_OFFLINE=1`` to stay offline), or a
    path to a ``.gguf`` file. Built-in models are dequantised once into ``cache_dir`` (default:
    :func:`steerscope.models.builtin.cache_root`) and load from safetensors afterwards.
    Computation defaults to float32.
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS:
        folder = convert_to_cache(name, _load_gguf, cache)
        model, tokenizer = _from_pretrained(str(folder), torch_dtype, False)
        label = name
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path.resolve(), torch_dtype)
        label = path.name
    elif path.is_dir():
        model, tokenizer = _from_pretrained(str(path), torch_dtype, trust_remote_code)
        label = str(path)
    elif path.exists():
        raise SteerscopeError(f"{name} is a file but not a .gguf model; pass a model folder or a .gguf file")
    elif "/" in name and not name.startswith((".", "/", "~")):
        try:
            model, tokenizer = _from_pretrained(name, torch_dtype, trust_remote_code)
        except OSError as exc:
            raise SteerscopeError(
                f"could not load {name!r} from the Hugging Face hub or its cache: {str(exc).splitlines()[0]}"
            ) from None
        label = name
    else:
        raise _unknown_model(name)
    model.to(dev)  # type: ignore[arg-type]
    return wrap_model(model, tokenizer, name=label, layers_path=layers_path, source=name)
