"""Steering-vector files: safetensors with one ``direction.{ℓ}`` tensor per layer plus metadata.

Each tensor is float32 with shape ``[d_model]``. Metadata (all strings, as safetensors requires)
records at least: ``format``, ``format_version``, ``model_name``, ``model_fingerprint``,
``d_model``, ``method``, ``layers`` (JSON list), ``dataset_hash`` and ``steerscope_version``;
steerscope also writes ``trait``, ``position``, ``n_pairs`` and ``h_norms`` (JSON ``{ℓ: mean
‖h‖}``, for relative doses). Files are never unpickled.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from steerscope._version import __version__
from steerscope.errors import SteerscopeError, VectorFileError, first_line, shown
from steerscope.fileio import atomic_write

FORMAT = "steerscope.vector"
FORMAT_VERSION = "1"
REQUIRED_METADATA = ("format_version", "model_name", "model_fingerprint", "d_model", "method", "layers", "dataset_hash", "steerscope_version")
_TENSOR_NAME = re.compile(r"direction\.(0|[1-9][0-9]{0,8})")  # matched whole: one spelling per layer
_JSON_KEYS = ("layers", "h_norms")
_COUNT_KEYS = ("d_model", "n_layers", "n_pairs")


def vector_metadata(lm, method: str, layers, dataset_hash: str, **extra: Any) -> dict[str, Any]:
    """Metadata for a vector extracted from ``lm`` (a LoadedModel)."""
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model_name": lm.name,
        "model_fingerprint": lm.fingerprint, "model_type": lm.model_type, "d_model": lm.d_model,
        "n_layers": lm.n_layers, "method": method, "layers": sorted(layers), "dataset_hash": dataset_hash,
        "steerscope_version": __version__,
    }
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


@dataclass
class SteeringVector:
    """Directions per layer (``{ℓ: [d_model] float32}``) and their provenance metadata."""

    directions: dict[int, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def norm(self, layer: int) -> float:
        """``‖v_ℓ‖``, computed in float64 (finite for every finite float32 direction)."""
        return float(self.directions[layer].double().norm())

    def dose(self, alpha: float, layer: int) -> float | None:
        """Relative dose ``|α|·‖v_ℓ‖ / mean‖h_ℓ‖``, or None when the mean norm was not recorded."""
        h_norm = self.metadata.get("h_norms", {}).get(str(layer)) or self.metadata.get("h_norms", {}).get(layer)
        return abs(alpha) * self.norm(layer) / float(h_norm) if h_norm else None

    def _with(self, directions: dict[int, torch.Tensor], note: str) -> "SteeringVector":
        meta = dict(self.metadata)
        meta["method"] = f"{meta.get('method', '?')}{note}"
        return SteeringVector(directions, meta)

    def __neg__(self) -> "SteeringVector":
        return self._with({k: -v for k, v in self.directions.items()}, " (negated)")

    def __mul__(self, scale: float) -> "SteeringVector":
        return self._with({k: v * float(scale) for k, v in self.directions.items()}, f" (x{float(scale):g})")

    __rmul__ = __mul__

    def check_alpha(self, alpha: float) -> None:
        """Raise unless ``alpha·v`` is finite in float32 at every layer (NaN, Inf, or a strength so large that it overflows)."""
        if not math.isfinite(alpha):
            raise SteerscopeError(f"--alpha must be a finite number, got {alpha:g}")
        for layer in self.layers:
            with torch.no_grad():
                if not torch.isfinite(self.directions[layer].float() * alpha).all():
                    raise SteerscopeError(f"--alpha {alpha:g} times the direction at layer {layer} overflows float32")

    def check_model(self, lm, allow_mismatch: bool = False) -> None:
        """Raise unless the vector fits ``lm``: same ``d_model`` always, same fingerprint unless
        ``allow_mismatch`` (the CLI's ``--allow-model-mismatch``)."""
        if self.d_model != lm.d_model:
            raise VectorFileError(f"vector has d_model {self.d_model} but model {lm.name} has d_model {lm.d_model}")
        bad = [layer for layer in self.layers if not 0 <= layer < lm.n_layers]
        if bad:
            raise VectorFileError(f"vector has layer(s) {bad} but {lm.name} has layers 0..{lm.n_layers - 1}")
        fp = self.metadata.get("model_fingerprint", "")
        if fp != lm.fingerprint and not allow_mismatch:
            made_for = self.metadata.get("model_name", "an unknown model")
            raise VectorFileError(
                f"vector was made for {made_for} (fingerprint {fp or 'unknown'}) but the loaded model {lm.name} "
                f"has fingerprint {lm.fingerprint}; pass --allow-model-mismatch (allow_mismatch=True) to use it anyway"
            )

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the vector atomically; refuses to replace an existing file unless ``overwrite``."""
        tensors = {f"direction.{layer}": self.directions[layer].detach().float().cpu().contiguous() for layer in self.layers}
        for name, tensor in tensors.items():
            if not torch.isfinite(tensor).all():
                raise VectorFileError(f"refusing to save {name}: it contains NaN or Inf")
        meta = dict(self.metadata)
        meta.setdefault("format", FORMAT)
        meta.setdefault("format_version", FORMAT_VERSION)
        meta["layers"] = self.layers
        meta["d_model"] = self.d_model
        missing = [k for k in REQUIRED_METADATA if k not in meta]
        if missing:
            raise VectorFileError(f"refusing to save a vector without metadata field(s) {', '.join(missing)}")
        strings = metadata_strings(meta)
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=strings), overwrite)

    @classmethod
    def load(cls, path: str | Path, lm=None, allow_mismatch: bool = False) -> "SteeringVector":
        """Read and validate a vector file; with ``lm``, also check that it fits the model."""
        vec = _read(Path(path))
        if lm is not None:
            vec.check_model(lm, allow_mismatch)
        return vec


def metadata_strings(meta: dict[str, Any]) -> dict[str, str]:
    """``meta`` as safetensors metadata: strings kept, ``layers``, ``h_norms`` and non-strings as JSON."""
    return {k: json.dumps(v) if k in _JSON_KEYS or not isinstance(v, str) else v for k, v in meta.items()}


def _check_header(path: Path) -> None:
    """Reject files that are not safetensors before handing them to the parser."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise VectorFileError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > size - 8 or n > 100_000_000:
            raise VectorFileError(f"{path} is not a safetensors file (bad header length)")
        try:
            json.loads(fh.read(n))
        except (ValueError, RecursionError):  # not JSON, not text, too deep, or a number over the digit limit
            raise VectorFileError(f"{path} is not a safetensors file (header is not JSON)") from None


def parse_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    """A vector file's string metadata, checked, with its JSON fields parsed (VectorFileError naming ``path``)."""
    missing = [k for k in REQUIRED_METADATA if k not in raw]
    if missing:
        raise VectorFileError(f"{path}: metadata is missing field(s) {', '.join(missing)}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise VectorFileError(f"{path}: unsupported format_version {shown(raw.get('format_version'))} (this steerscope reads {FORMAT_VERSION})")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _JSON_KEYS or key in _COUNT_KEYS:
            try:
                meta[key] = json.loads(value)
            except (ValueError, RecursionError):
                raise VectorFileError(f"{path}: metadata field {key} is not valid JSON: {shown(value[:60])}") from None
        else:
            meta[key] = value
    _check_metadata(path, meta, raw)
    return meta


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_metadata(path: Path, meta: dict[str, Any], raw: dict[str, str]) -> None:
    if not isinstance(meta["layers"], list) or not all(type(x) is int for x in meta["layers"]):
        raise VectorFileError(f"{path}: metadata field layers must be a JSON list of integers, got {shown(raw['layers'][:60])}")
    if type(meta["d_model"]) is not int or meta["d_model"] < 1:
        raise VectorFileError(f"{path}: metadata field d_model must be an integer of at least 1, got {shown(raw['d_model'][:60])}")
    for key in ("n_layers", "n_pairs"):
        if key in meta and (type(meta[key]) is not int or meta[key] < 0):
            raise VectorFileError(f"{path}: metadata field {key} must be a non-negative integer, got {shown(raw[key][:60])}")
    norms = meta.get("h_norms", {})
    if not isinstance(norms, dict) or not all(re.fullmatch(r"[0-9]{1,9}", k) and _is_number(v) and v > 0 for k, v in norms.items()):
        raise VectorFileError(f"{path}: metadata field h_norms must be a JSON object {{layer: positive number}}, "
                              f"got {shown(raw['h_norms'][:60])}")


def _read(path: Path) -> SteeringVector:
    if not path.is_file():
        raise VectorFileError(f"vector file {path} does not exist")
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw_meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise VectorFileError(f"{path} is not a readable safetensors file: {first_line(exc)}") from None
    meta = parse_metadata(path, raw_meta)
    directions: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():
        match = _TENSOR_NAME.fullmatch(name)
        if not match:
            raise VectorFileError(f"{path}: unexpected tensor {shown(name)} (expected direction.<layer>)")
        if tensor.ndim != 1 or tensor.shape[0] != meta["d_model"]:
            raise VectorFileError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, expected [{meta['d_model']}]")
        if tensor.dtype != torch.float32:
            raise VectorFileError(f"{path}: tensor {name} is {tensor.dtype}, expected float32")
        if not torch.isfinite(tensor).all():
            raise VectorFileError(f"{path}: tensor {name} contains NaN or Inf")
        directions[int(match.group(1))] = tensor
    if not directions:
        raise VectorFileError(f"{path}: no direction.<layer> tensors")
    if sorted(directions) != sorted(meta["layers"]):
        raise VectorFileError(f"{path}: metadata layers {meta['layers']} do not match the tensors {sorted(directions)}")
    return SteeringVector(directions, meta)
