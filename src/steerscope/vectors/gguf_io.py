"""llama.cpp control-vector GGUF files (the layout repeng writes and ``--control-vector`` reads).

The file has architecture ``controlvector``, keys ``controlvector.model_hint`` (the model type)
and ``controlvector.layer_count``, and one float32 tensor ``direction.{ℓ}`` per layer. llama.cpp
adds ``direction.{ℓ}`` to the output of block ℓ, the same convention as steerscope's layer ℓ; it
has no slot for layer 0, so vectors at layer 0 cannot be exported. Exported tensors are
``α·v_ℓ`` (``alpha`` defaults to 1: scale in llama.cpp with ``--control-vector-scaled``).
steerscope's metadata is kept under ``steerscope.metadata`` so that import restores it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerscope.errors import VectorFileError, first_line, shown
from steerscope.fileio import atomic_write
from steerscope.vectors.file import FORMAT_VERSION, SteeringVector, metadata_strings, parse_metadata

ARCH = "controlvector"
_NAME = re.compile(r"direction\.(0|[1-9][0-9]{0,8})")  # matched whole
_TYPES = ("F32", "F16", "F64")  # tensor types read as float values (quantised types are refused)
#: What gguf's reader raises on a malformed file (it parses lazily, with numpy views and struct).
_READ_ERRORS = (ValueError, OSError, KeyError, IndexError, TypeError, OverflowError, struct.error, MemoryError)


def export_gguf(vector: SteeringVector, path: str | Path, alpha: float = 1.0, overwrite: bool = False) -> Path:
    """Write ``vector`` (scaled by ``alpha``) as a llama.cpp control vector."""
    import gguf

    if 0 in vector.directions:
        raise VectorFileError("llama.cpp control vectors have no layer 0; extract at layers >= 1 to export")
    scaled = _scaled(vector, alpha)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", str(vector.metadata.get("model_type", "")))
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
        meta = dict(vector.metadata, gguf_alpha=float(alpha))
        writer.add_string("steerscope.metadata", json.dumps(meta, default=str))
        for layer, data in scaled.items():
            writer.add_tensor(f"direction.{layer}", data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write, overwrite)


def _scaled(vector: SteeringVector, alpha: float) -> dict[int, np.ndarray]:
    """``{ℓ: alpha·v_ℓ}`` as float32 arrays; VectorFileError when alpha is zero or not finite, or float32
    cannot hold the result (an overflow to Inf, or non-zero values that underflow to zero or subnormals)."""
    if not math.isfinite(alpha) or alpha == 0:
        raise VectorFileError(f"alpha must be finite and non-zero, got {alpha:g}")
    scaled = {}
    for layer in vector.layers:
        direction = vector.directions[layer].detach().double().cpu()
        with np.errstate(over="ignore", under="ignore"):  # checked on the next line
            data = (direction * float(alpha)).numpy().astype(np.float32)
        underflow = (np.abs(data) < np.finfo(np.float32).tiny) & (direction.numpy() != 0)  # zeros or subnormals: precision lost
        if not np.isfinite(data).all() or underflow.any():
            raise VectorFileError(f"alpha {alpha:g} times direction.{layer} does not fit in float32 (it overflows or underflows)")
        scaled[layer] = data
    return scaled


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    return field.contents()


def _read(file: Path) -> tuple[Any, list[tuple[str, str, np.ndarray]], Any, Any]:
    """``(architecture, [(name, type, values)] of the direction tensors, steerscope.metadata, model_hint)``."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(file))
        tensors = [(t.name, t.tensor_type.name, np.asarray(t.data)) for t in reader.tensors if t.name.startswith("direction")]
        fields = [_field_value(reader, key) for key in ("general.architecture", "steerscope.metadata", f"{ARCH}.model_hint")]
    except _READ_ERRORS as exc:
        raise VectorFileError(f"{file} is not a readable GGUF file: {first_line(exc)}") from None
    return fields[0], tensors, fields[1], fields[2]


def _directions(file: Path, tensors: list[tuple[str, str, np.ndarray]]) -> dict[int, torch.Tensor]:
    """``{ℓ: [d] float32}`` from the ``direction.{ℓ}`` tensors: F32/F16/F64, 1-D (or ``[1, d]``), one size, finite."""
    directions: dict[int, torch.Tensor] = {}
    for name, kind, values in tensors:
        match = _NAME.fullmatch(name)
        if match is None:
            raise VectorFileError(f"{file}: bad tensor name {shown(name)} (expected direction.<layer>)")
        if kind not in _TYPES:
            raise VectorFileError(f"{file}: tensor {name} has type {kind}; control-vector directions are {', '.join(_TYPES)}")
        data = values.reshape(values.shape[1:]) if values.ndim == 2 and values.shape[0] == 1 else values
        if data.ndim != 1 or data.size == 0:
            raise VectorFileError(f"{file}: tensor {name} has shape {list(values.shape)}; a direction is one vector [d_model]")
        vector = torch.from_numpy(np.array(data, dtype=np.float32))
        if directions and vector.shape[0] != next(iter(directions.values())).shape[0]:
            raise VectorFileError(f"{file}: tensor {name} has {vector.shape[0]} values, another direction has "
                                  f"{next(iter(directions.values())).shape[0]}")
        if not torch.isfinite(vector).all():
            raise VectorFileError(f"{file}: tensor {name} contains NaN or Inf")
        directions[int(match.group(1))] = vector
    if not directions:
        raise VectorFileError(f"{file}: no direction.<layer> tensors")
    return directions


def _stored_metadata(file: Path, stored: Any) -> dict[str, Any]:
    """The JSON object that steerscope stored under ``steerscope.metadata``."""
    try:
        meta = json.loads(stored) if isinstance(stored, str) else None
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise VectorFileError(f"{file}: field steerscope.metadata is not a JSON object: {shown(stored, 60)}")
    return meta


def import_gguf(path: str | Path) -> SteeringVector:
    """Read a llama.cpp control vector (from steerscope, repeng or llama.cpp's generator).

    steerscope's own metadata (``steerscope.metadata``) is restored and checked like a vector
    file's; fields it lacks, and files without it, get the ``gguf-import`` defaults.
    """
    file = Path(path)
    if not file.is_file():
        raise VectorFileError(f"GGUF file {file} does not exist")
    arch, tensors, stored, hint = _read(file)
    if arch != ARCH:
        raise VectorFileError(f"{file} is a GGUF file but not a control vector (architecture {shown(arch, 60)})")
    directions = _directions(file, tensors)
    hint = hint if isinstance(hint, str) else ""
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "model_name": hint, "model_type": hint, "model_fingerprint": "",
                            "method": "gguf-import", "dataset_hash": "", "steerscope_version": ""}
    if stored:
        meta |= _stored_metadata(file, stored)
        alpha = meta.pop("gguf_alpha", 1.0)
        if type(alpha) not in (int, float) or not math.isfinite(alpha):
            raise VectorFileError(f"{file}: gguf_alpha in steerscope.metadata must be a finite number, got {shown(alpha, 60)}")
        if alpha not in (0, 1):
            directions = {k: v / alpha for k, v in directions.items()}
            if not all(torch.isfinite(v).all() for v in directions.values()):
                raise VectorFileError(f"{file}: the directions divided by gguf_alpha = {alpha:g} overflow float32")
    meta["layers"] = sorted(directions)
    meta["d_model"] = int(next(iter(directions.values())).shape[0])
    return SteeringVector(directions, parse_metadata(file, metadata_strings(meta)))
