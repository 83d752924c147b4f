"""llama.cpp control-vector GGUF export and import (steerscope.vectors.gguf_io)."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch

from steerscope.data import builtin_pairs
from steerscope.errors import SteerscopeError, VectorFileError
from steerscope.extract import extract
from steerscope.testing import tiny_model
from steerscope.vectors import SteeringVector, export_gguf, import_gguf

D = 32


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vec(lm):
    return extract(lm, builtin_pairs("formality", "train")[:8], [1, 3])


def _read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def _write_gguf(path, arch="controlvector", tensors=None, hint="llama", layer_count=None):
    """A GGUF written by hand, in the layout repeng writes (no steerscope.metadata)."""
    tensors = {} if tensors is None else tensors
    writer = gguf.GGUFWriter(str(path), arch)
    if arch == "controlvector":
        writer.add_string("controlvector.model_hint", hint)
        writer.add_uint32("controlvector.layer_count", len(tensors) if layer_count is None else layer_count)
    for name, data in tensors.items():
        writer.add_tensor(name, np.asarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _import_error(path) -> str:
    with pytest.raises(VectorFileError) as info:
        import_gguf(path)
    return str(info.value)


# ---------------------------------------------------------------- export / import


def test_round_trip_alpha_1_is_exact(tmp_path, vec, lm):
    path = export_gguf(vec, tmp_path / "v.gguf")
    assert path == tmp_path / "v.gguf" and path.is_file()
    back = import_gguf(path)
    assert back.layers == [1, 3]
    for layer in vec.layers:
        assert torch.equal(back.directions[layer], vec.directions[layer])
        assert back.directions[layer].dtype == torch.float32
    for key in ("model_name", "model_fingerprint", "model_type", "method", "dataset_hash", "trait", "position", "n_pairs", "format_version"):
        assert back.metadata[key] == vec.metadata[key], key
    assert "gguf_alpha" not in back.metadata
    assert back.metadata["layers"] == [1, 3] and back.metadata["d_model"] == D
    assert {int(k): v for k, v in back.metadata["h_norms"].items()} == vec.metadata["h_norms"]
    back.check_model(lm)  # provenance survives, so the fingerprint check still passes
    assert back.dose(1.0, 1) == pytest.approx(vec.dose(1.0, 1))
    # and it converts to a valid vector file
    saved = SteeringVector.load(back.save(tmp_path / "back.safetensors"), lm=lm)
    assert torch.equal(saved.directions[3], vec.directions[3])


@pytest.mark.parametrize("alpha", [2.0, -0.5])
def test_round_trip_scaled(tmp_path, vec, alpha):
    path = export_gguf(vec, tmp_path / "v.gguf", alpha=alpha)
    _, tensors = _read(path)
    for layer in vec.layers:
        data = np.array(tensors[f"direction.{layer}"].data)
        assert np.array_equal(data, (vec.directions[layer] * alpha).numpy())
    back = import_gguf(path)
    for layer in vec.layers:
        assert torch.allclose(back.directions[layer], vec.directions[layer], rtol=1e-6, atol=1e-7)
        assert not torch.equal(torch.from_numpy(np.array(tensors[f"direction.{layer}"].data)), vec.directions[layer])
    assert "gguf_alpha" not in back.metadata


def test_exported_file_read_independently(tmp_path, vec):
    path = export_gguf(vec, tmp_path / "v.gguf", alpha=2.0)
    fields, tensors = _read(path)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == vec.metadata["model_type"] == "llama"
    assert fields["controlvector.layer_count"] == len(vec.layers) == 2
    assert set(tensors) == {"direction.1", "direction.3"}
    for layer in vec.layers:
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert t.data.dtype == np.float32
        assert t.n_elements == D
        assert np.array_equal(np.array(t.data).reshape(-1), 2.0 * vec.directions[layer].numpy())
    assert '"gguf_alpha": 2.0' in fields["steerscope.metadata"]
    assert vec.metadata["model_fingerprint"] in fields["steerscope.metadata"]


def test_repeng_layout_imports(tmp_path, lm):
    rng = np.random.default_rng(0)
    data = {layer: rng.standard_normal(D).astype(np.float32) for layer in (2, 1, 3)}
    path = _write_gguf(tmp_path / "repeng.gguf", tensors={f"direction.{k}": v for k, v in data.items()}, hint="mistral")
    vec = import_gguf(path)
    assert vec.layers == [1, 2, 3]
    for layer, v in data.items():
        assert torch.equal(vec.directions[layer], torch.from_numpy(v))
    assert vec.metadata["model_fingerprint"] == ""
    assert vec.metadata["model_type"] == "mistral" and vec.metadata["model_name"] == "mistral"
    assert vec.metadata["method"] == "gguf-import"
    assert vec.metadata["layers"] == [1, 2, 3] and vec.metadata["d_model"] == D
    assert vec.dose(1.0, 1) is None
    # A vector of unknown provenance is refused unless the mismatch is allowed ...
    with pytest.raises(VectorFileError, match="allow-model-mismatch"):
        vec.check_model(lm)
    vec.check_model(lm, allow_mismatch=True)
    # ... and it still makes a complete vector file.
    loaded = SteeringVector.load(vec.save(tmp_path / "repeng.safetensors"))
    assert torch.equal(loaded.directions[2], vec.directions[2])
    assert loaded.metadata["model_fingerprint"] == ""


def test_foreign_tensors_are_ignored(tmp_path):
    path = _write_gguf(tmp_path / "extra.gguf", tensors={"direction.4": np.ones(D), "something.else": np.zeros(3)})
    vec = import_gguf(path)
    assert vec.layers == [4]


# ---------------------------------------------------------------- refusals


def test_layer_0_refused_on_export(tmp_path):
    vec = SteeringVector({0: torch.ones(D), 1: torch.ones(D)}, {"model_type": "llama"})
    with pytest.raises(VectorFileError, match="no layer 0"):
        export_gguf(vec, tmp_path / "v.gguf")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_nonfinite_alpha_refused(tmp_path, vec, alpha):
    with pytest.raises(VectorFileError, match="alpha must be finite"):
        export_gguf(vec, tmp_path / "v.gguf", alpha=alpha)
    assert os.listdir(tmp_path) == []


def test_overwrite_protection(tmp_path, vec):
    path = tmp_path / "v.gguf"
    path.write_bytes(b"keep me")
    with pytest.raises(SteerscopeError, match="already exists; pass --overwrite"):
        export_gguf(vec, path)
    assert path.read_bytes() == b"keep me"
    export_gguf(vec, path, overwrite=True)
    assert torch.equal(import_gguf(path).directions[1], vec.directions[1])
    export_gguf(-vec, path, overwrite=True)
    assert torch.equal(import_gguf(path).directions[1], -vec.directions[1])
    assert os.listdir(tmp_path) == ["v.gguf"]  # no temp files left behind


@pytest.mark.parametrize("content", [b"", b"GG", b"not a gguf file at all\n", os.urandom(2048), b"GGUF"])
def test_not_gguf(tmp_path, content):
    path = tmp_path / "junk.gguf"
    path.write_bytes(content)
    message = _import_error(path)
    assert f"{path} is not a readable GGUF file" in message


def test_safetensors_file_is_not_gguf(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    assert "is not a readable GGUF file" in _import_error(path)


def test_truncated_gguf(tmp_path, vec):
    data = export_gguf(vec, tmp_path / "v.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in list(range(4, 64)) + list(range(64, len(data) - 1, 17)):
        cut.write_bytes(data[:size])
        with pytest.raises(VectorFileError):
            import_gguf(cut)


def test_gguf_that_is_not_a_control_vector(tmp_path):
    path = _write_gguf(tmp_path / "model.gguf", arch="llama", tensors={"direction.1": np.ones(D)})
    assert _import_error(path) == f"{path} is a GGUF file but not a control vector (architecture 'llama')"


def test_control_vector_without_directions(tmp_path):
    path = _write_gguf(tmp_path / "empty.gguf", tensors={"other": np.ones(D)})
    assert _import_error(path) == f"{path}: no direction.<layer> tensors"


def test_bad_direction_name(tmp_path):
    path = _write_gguf(tmp_path / "bad.gguf", tensors={"direction.first": np.ones(D)})
    assert "bad tensor name 'direction.first'" in _import_error(path)


def test_nonfinite_direction(tmp_path):
    v = np.ones(D, dtype=np.float32)
    v[3] = np.nan
    path = _write_gguf(tmp_path / "nan.gguf", tensors={"direction.1": v})
    assert "tensor direction.1 contains NaN or Inf" in _import_error(path)


def test_missing_file(tmp_path):
    assert "does not exist" in _import_error(tmp_path / "nope.gguf")
