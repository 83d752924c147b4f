"""Steering vectors made by other tools, read into steerscope's layer convention.

steerscope's layer ℓ is the output of decoder block ℓ (0-based; Hugging Face ``hidden_states[ℓ + 1]``).
Each source below numbers layers the same way once negative indices are resolved, so every
mapping is the identity:

* llama.cpp control-vector GGUF (written by llama.cpp, repeng or :func:`export_gguf`): llama.cpp
  adds ``direction.{il}`` to the output of block ``il``; it never applies ``il = 0``.
* steering-vectors ``SteeringVector`` (``layer_type="decoder_block"``): key ``i`` hooks the output
  of the i-th module matched by the guessed block pattern (``model.layers.{num}``,
  ``transformer.h.{num}``), i.e. block ``i``; a negative key is a Python index into the blocks.
* repeng ``ControlVector``: key ``i`` wraps ``model.model.layers[i]`` (``transformer.h[i]``) and
  adds to its output. Keys are non-negative (``ControlModel`` resolves negative ``layer_ids``
  before looking them up; training keeps layers 1..n-1 by default) and ``export_gguf`` writes key
  ``i`` as ``direction.{i}``, so its GGUF and object paths agree. repeng trains its last layer on
  HF's ``hidden_states[-1]``, which is after the final norm, but adds it before the norm.
* plain safetensors / ``.pt`` / ``.npy`` files record no convention: keys (or ``.npy`` rows) are
  taken as steerscope layers.

Files are never unpickled: ``.pt`` uses ``torch.load(weights_only=True)`` and ``.npy``
``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from steerscope.errors import VectorFileError, first_line, shown
from steerscope.vectors.file import FORMAT, SteeringVector
from steerscope.vectors.gguf_io import import_gguf

SUFFIXES = {".safetensors": "safetensors", ".gguf": "gguf", ".pt": "torch", ".pth": "torch", ".npy": "numpy"}
_MAGIC = ((b"GGUF", "gguf"), (b"\x93NUMPY", "numpy"), (b"PK\x03\x04", "torch"))
_KEY = re.compile(r"(?:(?:layer|layers|direction)\.)?([0-9]{1,9})")  # matched whole
_MAX_LAYER = 10**9
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_AS_IS = "layer indices taken as-is (layer ℓ = output of decoder block ℓ; a file indexed like HF hidden_states is off by one)"
_UNPLACED = "one vector without a layer index, placed at the requested layer"
#: What torch.load raises on a malformed file besides UnpicklingError (its zip and legacy readers; for a
#: path ending in .safetensors, safetensors' reader).
_TORCH_ERRORS = (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                 MemoryError, SafetensorError)


@dataclass(frozen=True, eq=False)
class ForeignVector:
    """One layer of a vector file: ``vector`` is ``[d_model]`` float32 at steerscope layer ``layer``.

    ``source`` names the format, ``layers_in_file`` lists the file's layers (empty when the file
    holds one vector without a layer index) and ``note`` says how its layer numbers were mapped.
    """

    layer: int
    vector: torch.Tensor
    source: str
    layers_in_file: list[int]
    note: str


class _Contents(NamedTuple):
    """A file's vectors by steerscope layer, or ``single``: one vector without a layer index."""

    layers: Mapping[int, torch.Tensor]
    single: torch.Tensor | None
    source: str
    note: str


def load_vector_file(path: str | Path, d_model: int | None, layer: int | None = None, n_layers: int | None = None) -> ForeignVector:
    """Read one layer of a steering vector made by steerscope or another tool.

    The format is recognised by content, else by suffix (``.safetensors``, ``.gguf``, ``.pt``,
    ``.pth``, ``.npy``). ``layer`` is required when the file holds several layers or one vector
    without a layer index; negative values count from the end when ``n_layers`` is given, which
    also bounds the layer; ``d_model`` None skips the size check (for a caller that checks it once the
    model is loaded). Raises :class:`VectorFileError` naming the file and the problem.
    """
    file = Path(path)
    contents = _read(file, _kind(file))
    wanted = None if layer is None else _in_range(file, layer, n_layers)
    chosen, tensor = _select(file, contents, wanted)
    chosen = _in_range(file, chosen, n_layers)
    label = f"{file}: the vector" if contents.single is not None else f"{file}: layer {chosen}"
    return ForeignVector(chosen, _checked(tensor, d_model, label), contents.source, sorted(contents.layers), contents.note)


def load_vector_layers(path: str | Path, d_model: int | None, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """``{ℓ: [d_model]}`` for those of ``layers`` the file holds (a single vector without a layer
    index is placed at every one of them), each checked like :func:`load_vector_file`'s;
    :class:`VectorFileError` when the file holds none of them."""
    file = Path(path)
    contents = _read(file, _kind(file))
    if contents.single is not None:
        return {ell: _checked(contents.single, d_model, f"{file}: the vector") for ell in layers}
    found = {ell: _checked(contents.layers[ell], d_model, f"{file}: layer {ell}") for ell in layers if ell in contents.layers}
    if not found:
        raise VectorFileError(f"{file} has none of layers {list(layers)}; layers in file: {sorted(contents.layers)}")
    return found


def check_made_for(path: str | Path, lm: Any, allow_mismatch: bool = False) -> None:
    """A steerscope vector file must have been made for ``lm`` (same fingerprint) unless
    ``allow_mismatch``; files of other tools carry no model identity (their ``d_model`` is checked
    when they are loaded)."""
    file = Path(path)
    if _kind(file) == "safetensors" and _read_safetensors(file).source == "steerscope":
        SteeringVector.load(file, lm, allow_mismatch)


def from_directions(directions: Mapping[int, torch.Tensor], d_model: int | None, layer: int | None = None,
                    n_layers: int | None = None, source: str = "python") -> ForeignVector:
    """One layer of in-memory directions ``{ℓ: [d_model]}`` (a SteeringVector's, or an adapter's
    output), checked like a file's; ``layer`` is required when there are several."""
    label = Path(f"<{source} vector>")
    contents = _Contents(dict(directions), None, source, "layers as given (steerscope convention)")
    wanted = None if layer is None else _in_range(label, layer, n_layers)
    chosen, tensor = _select(label, contents, wanted)
    chosen = _in_range(label, chosen, n_layers)
    return ForeignVector(chosen, _checked(_tensor(tensor, str(label)), d_model, f"{label}: layer {chosen}"), source,
                         sorted(contents.layers), contents.note)


def from_steering_vectors(obj: object, d_model: int | None = None, n_layers: int | None = None) -> dict[int, torch.Tensor]:
    """``{ℓ: [d_model] float32}`` from a ``steering_vectors.SteeringVector`` (duck-typed).

    Only ``layer_type="decoder_block"`` matches steerscope's layers; negative keys need ``n_layers``.
    """
    layer_type = getattr(obj, "layer_type", "decoder_block")
    if layer_type != "decoder_block":
        raise VectorFileError(f"steering-vectors vector has layer_type {layer_type!r}; steerscope steers decoder-block outputs")
    acts = _mapping(obj, "layer_activations", "steering-vectors vector")
    out: dict[int, torch.Tensor] = {}
    for key, value in acts.items():
        layer = _sv_layer(key, n_layers)
        if layer in out:
            raise VectorFileError(f"steering-vectors vector has layer {layer} twice (key {key} counts from the end)")
        what = f"steering-vectors vector: layer {key}"
        out[layer] = _checked(_tensor(value, what), d_model, what)
    return out


def from_repeng(obj: object, d_model: int | None = None) -> dict[int, torch.Tensor]:
    """``{ℓ: [d_model] float32}`` from a ``repeng.ControlVector`` (duck-typed; keys map as-is)."""
    dirs = _mapping(obj, "directions", "repeng vector")
    out: dict[int, torch.Tensor] = {}
    for key, value in dirs.items():
        if type(key) is not int or key < 0:
            raise VectorFileError(f"repeng vector has layer key {key!r}; repeng applies only non-negative integer layer ids")
        what = f"repeng vector: layer {key}"
        out[key] = _checked(_tensor(value, what), d_model, what)
    return out


# -- reading files --------------------------------------------------------------------------


def _kind(path: Path) -> str:
    """The format of ``path``: from its first bytes, else from its suffix."""
    if not path.is_file():
        raise VectorFileError(f"vector file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if not head:
        raise VectorFileError(f"vector file {path} is empty")
    sniffed = _sniff(head)
    if sniffed is not None:
        return sniffed
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise VectorFileError(f"{path}: unknown vector format (suffix {path.suffix or 'none'}); use {', '.join(SUFFIXES)}")
    if kind in ("gguf", "numpy"):  # these always start with their magic bytes (legacy .pt files are plain pickles)
        raise VectorFileError(f"{path} is not a readable {path.suffix} file: it does not start with the {kind} header")
    return kind


def _sniff(head: bytes) -> str | None:
    """The format that a file's first 9 bytes announce, if any (safetensors: a JSON header after 8 bytes)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "safetensors" if head[8:9] == b"{" else None


def _read(path: Path, kind: str) -> _Contents:
    if kind == "gguf":
        note = "llama.cpp direction.{il} is added to the output of block il = steerscope layer il (no remapping)"
        return _Contents(import_gguf(path).directions, None, "gguf", note)
    if kind == "torch":
        return _read_torch(path)
    if kind == "numpy":
        return _read_numpy(path)
    return _read_safetensors(path)


def _read_safetensors(path: Path) -> _Contents:
    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("format") != FORMAT:
                return _from_keys(path, list(fh.keys()), fh.get_tensor, "safetensors")
    except (SafetensorError, OSError, ValueError) as exc:
        raise VectorFileError(f"{path} is not a readable safetensors file: {first_line(exc)}") from None
    note = "steerscope vector file: direction.{ℓ} is the output of decoder block ℓ (no remapping)"
    return _Contents(SteeringVector.load(path).directions, None, "steerscope", note)


def _read_torch(path: Path) -> _Contents:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        held = f"a pickled Python object ({found.group(1)})" if found else "data that weights_only loading refuses"
        raise VectorFileError(
            f"{path} holds {held}; steerscope reads .pt files with torch.load(weights_only=True) and never "
            "unpickles arbitrary objects: save plain tensors"
        ) from None
    except _TORCH_ERRORS as exc:
        raise VectorFileError(f"{path} is not a readable PyTorch file: {first_line(exc)}") from None
    if isinstance(obj, torch.Tensor):
        return _Contents({}, obj, "torch", _UNPLACED)
    if not isinstance(obj, dict):
        raise VectorFileError(f"{path} holds a {type(obj).__name__}; expected a tensor or a dict {{layer: tensor}}")

    def get(key: object) -> torch.Tensor:
        if not isinstance(obj[key], torch.Tensor):
            raise VectorFileError(f"{path}: entry {shown(key)} is a {type(obj[key]).__name__}, not a tensor")
        return obj[key]

    return _from_keys(path, list(obj), get, "torch")


def _read_numpy(path: Path) -> _Contents:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError, SyntaxError, TokenError) as exc:  # a header declaring a huge shape, or unparsable
        raise VectorFileError(f"{path} is not a readable .npy file (read with allow_pickle=False): {first_line(exc)}") from None
    if arr.dtype.kind != "f":
        raise VectorFileError(f"{path} has dtype {arr.dtype}; expected a floating-point array")
    with np.errstate(over="ignore"):  # values beyond float32 become Inf, refused by _checked
        data = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if data.ndim == 1:
        return _Contents({}, data, "numpy", _UNPLACED)
    if data.ndim != 2 or data.shape[0] == 0:
        raise VectorFileError(f"{path} has shape {list(data.shape)}; expected [d_model] or [n_layers, d_model]")
    return _Contents(dict(enumerate(data)), None, "numpy", "row i is layer i; " + _AS_IS)


def _from_keys(path: Path, keys: list, get: Callable[[Any], torch.Tensor], source: str) -> _Contents:
    """Tensors named by layer keys; a lone key that names no layer holds a vector without a layer index."""
    if not keys:
        raise VectorFileError(f"{path} holds no tensors")
    if len(keys) == 1 and _layer_of(keys[0]) is None:
        return _Contents({}, get(keys[0]), source, _UNPLACED)
    by_layer: dict[int, object] = {}
    for key in keys:
        layer = _layer_of(key)
        if layer is None:
            raise VectorFileError(f"{path}: key {shown(key)} does not name a layer (use 5, 'layer.5', 'layers.5' or 'direction.5')")
        if layer < 0:
            raise VectorFileError(f"{path}: layer key {key} is negative; files must number layers from 0")
        if layer in by_layer:
            raise VectorFileError(f"{path}: layer {layer} appears twice (keys {shown(by_layer[layer])} and {shown(key)})")
        by_layer[layer] = key
    return _Contents({layer: get(key) for layer, key in by_layer.items()}, None, source, _AS_IS)


def _layer_of(key: object) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key if -_MAX_LAYER < key < _MAX_LAYER else None
    match = _KEY.fullmatch(key) if isinstance(key, str) else None
    return int(match.group(1)) if match else None


# -- choosing and checking ------------------------------------------------------------------


def _in_range(path: Path, layer: int, n_layers: int | None) -> int:
    """``layer`` resolved against ``n_layers`` (negative counts from the end) and bounds-checked."""
    if n_layers is None:
        if layer < 0:
            raise VectorFileError(f"{path}: layer {layer} counts from the end, which needs the model's n_layers")
        return layer
    idx = layer + n_layers if layer < 0 else layer
    if not 0 <= idx < n_layers:
        raise VectorFileError(f"{path}: layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
    return idx


def _select(path: Path, contents: _Contents, layer: int | None) -> tuple[int, torch.Tensor]:
    if contents.single is not None:
        if layer is None:
            raise VectorFileError(f"{path} holds one vector without a layer index; pass --layer (layer=...) to place it")
        return layer, contents.single
    available = sorted(contents.layers)
    if layer is None:
        if len(available) != 1:
            raise VectorFileError(f"{path} holds layers {available}; pass --layer (layer=...) to choose one")
        layer = available[0]
    elif layer not in contents.layers:
        raise VectorFileError(f"{path} has no layer {layer}; layers in file: {available}")
    return layer, contents.layers[layer]


def _checked(tensor: torch.Tensor, d_model: int | None, what: str) -> torch.Tensor:
    """``tensor`` (``[d]`` or ``[1, d]``, dense, floating point, finite, non-zero) as a ``[d]`` float32 copy."""
    if tensor.is_meta or tensor.is_nested or tensor.layout != torch.strided:
        kind = "meta" if tensor.is_meta else "nested" if tensor.is_nested else str(tensor.layout).removeprefix("torch.")
        raise VectorFileError(f"{what} is a {kind} tensor; expected a dense tensor of values")
    if not tensor.is_floating_point():
        raise VectorFileError(f"{what} has dtype {tensor.dtype}; expected a floating-point vector")
    if tensor.ndim == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 1 or tensor.shape[0] == 0:
        raise VectorFileError(f"{what} has shape {list(tensor.shape)}; expected [d_model] or [1, d_model]")
    if d_model is not None and tensor.shape[0] != d_model:
        raise VectorFileError(f"{what}: vector has d_model {tensor.shape[0]} but the model has d_model {d_model}")
    vec = tensor.detach().to("cpu", torch.float32, copy=True)
    if not torch.isfinite(vec).all():
        raise VectorFileError(f"{what} contains NaN or Inf")
    if not vec.any():
        raise VectorFileError(f"{what} is all zeros")
    return vec


def _mapping(obj: object, attr: str, what: str) -> Mapping:
    value = getattr(obj, attr, None)
    if not isinstance(value, Mapping) or not value:
        raise VectorFileError(f"{what} has no {attr} (expected a non-empty dict {{layer: vector}})")
    return value


def _tensor(value: object, what: str) -> torch.Tensor:
    """A tensor, or a floating-point array-like as a float32 tensor."""
    if isinstance(value, torch.Tensor):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise VectorFileError(f"{what} has dtype {arr.dtype}; expected a floating-point vector")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _sv_layer(key: object, n_layers: int | None) -> int:
    """A steering-vectors layer key (negative: a Python index into the ``n_layers`` blocks) as a steerscope layer."""
    if type(key) is not int:
        raise VectorFileError(f"steering-vectors vector has layer key {key!r}; expected an integer")
    if n_layers is None:
        if key < 0:
            raise VectorFileError(f"steering-vectors vector has layer {key}, which counts from the end; pass n_layers")
        return key
    if not -n_layers <= key < n_layers:
        raise VectorFileError(f"steering-vectors vector has layer {key}, out of range for a model with {n_layers} layers")
    return key % n_layers
