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
from pathlib import Path

import numpy as np
import torch

from steerscope.errors import VectorFileError
from steerscope.fileio import atomic_write
from steerscope.vectors.file import FORMAT_VERSION, SteeringVector

ARCH = "controlvector"


def export_gguf(vector: SteeringVector, path: str | Path, alpha: float = 1.0, overwrite: bool = False) -> Path:
    """Write ``vector`` (scaled by ``alpha``) as a llama.cpp control vector."""
    import gguf

    if 0 in vector.directions:
        raise VectorFileError("llama.cpp control vectors have no layer 0; extract at layers >= 1 to export")
    if not np.isfinite(alpha):
        raise VectorFileError("alpha must be finite")

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", str(vector.metadata.get("model_type", "")))
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
        meta = dict(vector.metadata, gguf_alpha=float(alpha))
        writer.add_string("steerscope.metadata", json.dumps(meta, default=str))
        for layer in vector.layers:
            data = (vector.directions[layer].detach().float().cpu() * float(alpha)).numpy().astype(np.float32)
            writer.add_tensor(f"direction.{layer}", data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write, overwrite)


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    return field.contents()


def import_gguf(path: str | Path) -> SteeringVector:
    """Read a llama.cpp control vector (from steerscope, repeng or llama.cpp's generator)."""
    import gguf

    file = Path(path)
    if not file.is_file():
        raise VectorFileError(f"GGUF file {file} does not exist")
    try:
        reader = gguf.GGUFReader(str(file))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise VectorFileError(f"{file} is not a readable GGUF file: {exc}") from None
    arch = _field_value(reader, "general.architecture")
    if arch != ARCH:
        raise VectorFileError(f"{file} is a GGUF file but not a control vector (architecture {arch!r})")
    directions = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        try:
            layer = int(tensor.name.split(".", 1)[1])
        except ValueError:
            raise VectorFileError(f"{file}: bad tensor name {tensor.name!r}") from None
        data = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
        if not torch.isfinite(data).all():
            raise VectorFileError(f"{file}: tensor {tensor.name} contains NaN or Inf")
        directions[layer] = data
    if not directions:
        raise VectorFileError(f"{file}: no direction.<layer> tensors")
    stored = _field_value(reader, "steerscope.metadata")
    if stored:
        meta = json.loads(stored)
        alpha = float(meta.pop("gguf_alpha", 1.0))
        if alpha != 1.0 and alpha != 0.0:
            directions = {k: v / alpha for k, v in directions.items()}
    else:
        hint = _field_value(reader, f"{ARCH}.model_hint") or ""
        meta = {"format_version": FORMAT_VERSION, "model_name": hint, "model_type": hint, "model_fingerprint": "",
                "method": "gguf-import", "dataset_hash": "", "steerscope_version": ""}
    meta["layers"] = sorted(directions)
    meta["d_model"] = int(next(iter(directions.values())).shape[0])
    return SteeringVector(directions, meta)
