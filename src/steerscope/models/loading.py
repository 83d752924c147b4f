"""Load a causal LM (built-in short name, Hugging Face id or folder, or GGUF file) into a LoadedModel."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

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
        """Where inputs go: the device the input embedding computes on (see :func:`execution_device`)."""
        try:
            return execution_device(self.model.get_input_embeddings())
        except (AttributeError, NotImplementedError):  # a model that does not name its input embedding
            return execution_device(self.model)

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

    def memory_by_device(self) -> dict[str, int]:
        """Bytes of parameters and buffers by where they are kept: a device (``cpu``, ``cuda:0``, …) or ``disk``.

        Weights that accelerate offloads count where they are stored (``cpu`` or ``disk``, per the
        model's ``hf_device_map``; ``offloaded`` when it has none), not on the device they run on.
        """
        stored = getattr(self.model, "hf_device_map", None) or {}
        totals: dict[str, int] = {}
        for name, tensor in itertools.chain(self.model.named_parameters(), self.model.named_buffers()):
            where = str(tensor.device) if not tensor.is_meta else _mapped_place(name, stored)
            totals[where] = totals.get(where, 0) + tensor.numel() * tensor.element_size()
        return totals

    def info(self) -> dict:
        """JSON-serialisable description recorded in every artifact; a model placed by accelerate adds
        ``memory``, its :meth:`memory_by_device`."""
        info = {
            "name": self.name, "source": self.source, "model_type": self.model_type,
            "n_layers": self.n_layers, "d_model": self.d_model, "fingerprint": self.fingerprint,
            "layers_path": self.layers_path, "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }
        return {**info, "memory": self.memory_by_device()} if _dispatched(self.model) else info


def _dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed ``model``: loaded with a device map, or its hooks sit on some modules."""
    return hasattr(model, "hf_device_map") or any(hasattr(module, "_hf_hook") for module in model.modules())


def _mapped_place(name: str, device_map: Mapping[str, int | str]) -> str:
    """Where the offloaded tensor ``name`` is stored per an accelerate device map (its longest matching entry)."""
    keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
    if not keys:
        return "offloaded"
    place = device_map[max(keys, key=len)]
    return f"cuda:{place}" if isinstance(place, int) else str(place)


def format_memory(memory: Mapping[str, int]) -> str:
    """``{place: bytes}`` as one line, e.g. ``cuda:0 1.50 GiB, cpu 12.00 GiB, disk 30.00 GiB``."""
    return ", ".join(f"{place} {_size(size)}" for place, size in memory.items())


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: that of accelerate's hook on it when it has one (its weights
    may be kept elsewhere, or on the meta device while offloaded), else that of its first parameter."""
    hook = getattr(module, "_hf_hook", None)
    for part in getattr(hook, "hooks", (hook,)):
        device = getattr(part, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return next(module.parameters()).device


def onloaded_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``, detached, on the device the module computes on; a weight that accelerate
    offloaded (meta) is read back from its offload store (CPU RAM or disk) for the caller to keep."""
    weight = cast(torch.Tensor, module.weight)
    if not weight.is_meta:
        return weight.detach()
    from accelerate.utils import align_module_device  # type: ignore[import-untyped]

    with align_module_device(module):
        weight = cast(torch.Tensor, module.weight).detach()
    if weight.is_meta:
        raise SteerscopeError(f"the offloaded weight of {type(module).__name__} could not be read back from accelerate's offload store")
    return weight


def _fingerprint(model: nn.Module) -> str:
    """:func:`model_fingerprint`, with the weights accelerate offloaded read back onto the CPU while it
    hashes, so that an offloaded model has the fingerprint of a plain load of the same checkpoint."""
    with contextlib.ExitStack() as stack:
        if _dispatched(model):
            from accelerate.utils import align_module_device, has_offloaded_params  # type: ignore[import-untyped]

            for module in model.modules():
                if has_offloaded_params(module):
                    stack.enter_context(align_module_device(module, torch.device("cpu")))
        return model_fingerprint(model)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SteerscopeError("--device cuda requested but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise SteerscopeError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


#: Device maps by name: accelerate's strategies (GPUs, then CPU RAM, then disk, within the memory caps)
#: and block offload (every decoder block kept in CPU RAM or on disk, moved to the GPU when it runs).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu-offload", "disk-offload")
_BLOCK_STORES = {"cpu-offload": "cpu", "disk-offload": "disk"}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*([a-z]*)")


@dataclass(frozen=True)
class Placement:
    """How accelerate spreads a model too big for one device.

    ``device_map``: a name of :data:`DEVICE_MAPS` or an explicit ``{module or tensor name: device}``
    map (device: GPU index, ``"cpu"`` or ``"disk"``), as ``from_pretrained`` takes it.
    ``max_memory``: caps in bytes per device (GPU index, ``"cpu"``, ``"disk"``) for the strategies;
    devices left out are not used.
    """

    device_map: str | Mapping[str, int | str] = "auto"
    max_memory: Mapping[int | str, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.device_map, str) and self.device_map not in DEVICE_MAPS:
            raise SteerscopeError(f"unknown device map {self.device_map!r}; use one of {', '.join(DEVICE_MAPS)}")

    @classmethod
    def parse(cls, device_map: str | None, max_memory: str | None) -> Placement | None:
        """From ``--device-map NAME`` and ``--max-memory 0=20GiB,cpu=60GiB``; None without a device map."""
        if device_map is None:
            if max_memory is not None:
                raise SteerscopeError("--max-memory needs --device-map (e.g. --device-map auto)")
            return None
        return cls(device_map, parse_max_memory(max_memory) if max_memory is not None else None)


def parse_max_memory(text: str) -> dict[int | str, int]:
    """``0=20GiB,1=20GiB,cpu=60GiB`` as accelerate's ``max_memory``: GPU index, ``cpu`` or ``disk`` to bytes.

    Sizes take B, KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024); a bare number is bytes.
    """
    caps: dict[int | str, int] = {}
    for part in text.split(","):
        key, sep, size = (s.strip().lower() for s in part.partition("="))
        if not (sep and key and size):
            raise SteerscopeError(f"--max-memory: {part.strip()!r} is not DEVICE=SIZE (e.g. 0=20GiB,cpu=60GiB)")
        caps[_memory_device(key)] = _memory_size(size)
    return caps


def _memory_device(key: str) -> int | str:
    if key in ("cpu", "disk"):
        return key
    index = key.removeprefix("cuda:")
    if not index.isdigit():
        raise SteerscopeError(f"--max-memory: unknown device {key!r}; use a GPU index (0, 1, …), cpu or disk")
    if int(index) >= torch.cuda.device_count():
        raise SteerscopeError(f"--max-memory: there is no GPU {index} (this machine has {torch.cuda.device_count()})")
    return int(index)


def _memory_size(size: str) -> int:
    match = _SIZE.fullmatch(size)
    if match is None or match.group(2) not in _UNITS:
        raise SteerscopeError(f"--max-memory: {size!r} is not a size; use e.g. 20GiB, 512MiB or 8GB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


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
        layers_path=path, fingerprint=_fingerprint(model), source=source or label,
    )


@dataclass(frozen=True)
class _Source:
    """What ``from_pretrained`` loads: a hub id or folder (and a GGUF file in it), in ``dtype``."""

    path: str
    dtype: torch.dtype
    trust_remote_code: bool = False
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"trust_remote_code": self.trust_remote_code, **({"gguf_file": self.gguf_file} if self.gguf_file else {})}


def _from_pretrained(
    source: _Source, placement: Placement | None = None, layers_path: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    if placement is not None:
        return _dispatch(source, placement, layers_path), tokenizer
    return AutoModelForCausalLM.from_pretrained(source.path, dtype=source.dtype, **source.kwargs()), tokenizer


def _dispatch(source: _Source, placement: Placement, layers_path: str | None) -> PreTrainedModel:
    """The model loaded through accelerate with ``placement``. Weights offloaded to disk are read from
    the checkpoint's safetensors where they are; those that must be re-saved go to a temporary folder
    that is removed with the model."""
    from transformers import AutoModelForCausalLM

    device_map = placement.device_map
    if isinstance(device_map, str) and device_map in _BLOCK_STORES:
        device_map = _block_offload_map(source, layers_path, _BLOCK_STORES[device_map])
    max_memory = dict(placement.max_memory) if placement.max_memory else None
    folder = tempfile.mkdtemp(prefix="steerscope-offload-")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=source.dtype, device_map=device_map, max_memory=max_memory, offload_folder=folder, **source.kwargs())
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, ValueError):  # a device map or memory caps that accelerate cannot satisfy
            raise SteerscopeError(f"accelerate could not place {source.path}: {str(exc).splitlines()[0]}") from None
        raise
    weakref.finalize(model, shutil.rmtree, folder, True)
    return model


def _block_offload_map(source: _Source, layers_path: str | None, store: str) -> dict[str, int | str]:
    """A device map keeping every decoder block on ``store`` (``cpu`` or ``disk``) and the rest of
    the model on the GPU (the CPU without one), where the blocks run too."""
    from accelerate import init_empty_weights  # type: ignore[import-untyped]
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source.path, **source.kwargs())
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=source.trust_remote_code)
    _, path = find_decoder_layers(skeleton, layers_path)
    return _spread(skeleton, path.split("."), 0 if torch.cuda.is_available() else "cpu", store)


def _spread(module: nn.Module, path: list[str], main: int | str, store: str, prefix: str = "") -> dict[str, int | str]:
    """``{name: main}`` for everything of ``module`` off ``path`` (the dotted path to the block list),
    ``{block name: store}`` for each block."""
    placed: dict[str, int | str] = {}
    own = itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
    placed.update((prefix + name, main) for name, _ in own)
    for name, child in module.named_children():
        if name != path[0]:
            placed[prefix + name] = main
        elif len(path) > 1:
            placed.update(_spread(child, path[1:], main, store, f"{prefix}{name}."))
        else:
            placed.update((f"{prefix}{name}.{i}", store) for i in range(len(child)))  # type: ignore[arg-type]
    return placed


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


def _load_gguf(
    path: Path, dtype: torch.dtype = torch.float32, placement: Placement | None = None, layers_path: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # transformers de-quantises GGUF tensors under its own tqdm bar, which its progress-bar switch does not reach.
    with _without_progress_bars():
        return _from_pretrained(_Source(str(path.parent), dtype, gguf_file=path.name), placement, layers_path)


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
    placement: Placement | None = None,
) -> LoadedModel:
    """Load a causal LM for steering.

    ``name`` is a built-in short name (``smollm2-135m``, ``gemma3-270m``), a Hugging Face hub id
    or local folder (standard ``from_pretrained``; set ``HF_HUB_OFFLINE=1`` to stay offline), or a
    path to a ``.gguf`` file. Built-in models are dequantised once into ``cache_dir`` (default:
    :func:`steerscope.models.builtin.cache_root`) and load from safetensors afterwards.
    Computation defaults to float32. With a ``placement`` accelerate spreads the model over the
    GPUs, CPU RAM and disk (``device`` must then stay ``auto``).
    """
    torch_dtype = resolve_dtype(dtype)
    if placement is not None and device != "auto":
        raise SteerscopeError(f"--device {device} cannot be combined with --device-map, which places the model itself; leave --device at auto")
    dev = resolve_device(device)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS:
        folder = convert_to_cache(name, _load_gguf, cache)
        model, tokenizer = _from_pretrained(_Source(str(folder), torch_dtype), placement, layers_path)
        label = name
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path.resolve(), torch_dtype, placement, layers_path)
        label = path.name
    elif path.is_dir():
        model, tokenizer = _from_pretrained(_Source(str(path), torch_dtype, trust_remote_code), placement, layers_path)
        label = str(path)
    elif path.exists():
        raise SteerscopeError(f"{name} is a file but not a .gguf model; pass a model folder or a .gguf file")
    elif "/" in name and not name.startswith((".", "/", "~")):
        try:
            model, tokenizer = _from_pretrained(_Source(name, torch_dtype, trust_remote_code), placement, layers_path)
        except OSError as exc:
            raise SteerscopeError(
                f"could not load {name!r} from the Hugging Face hub or its cache: {str(exc).splitlines()[0]}"
            ) from None
        label = name
    else:
        raise _unknown_model(name)
    if placement is None:
        model.to(dev)  # type: ignore[arg-type]
    return wrap_model(model, tokenizer, name=label, layers_path=layers_path, source=name)
