"""Steering-vector files (steerscope.vectors.file): safetensors layout, validation, safety, model checks."""

from __future__ import annotations

import json
import os
import pathlib
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerscope.data import builtin_pairs
from steerscope.errors import SteerscopeError, VectorFileError
from steerscope.extract import extract
from steerscope.testing import tiny_model
from steerscope.vectors import SteeringVector
from steerscope.vectors.file import REQUIRED_METADATA

D = 32


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vec(lm):
    return extract(lm, builtin_pairs("formality", "train")[:8], [1, 2])


def _meta(**changes):
    """String metadata of a valid file with one layer (1) of size D."""
    meta = {
        "format": "steerscope.vector", "format_version": "1", "model_name": "m", "model_fingerprint": "0123456789abcdef",
        "d_model": str(D), "method": "mean_diff", "layers": "[1]", "dataset_hash": "h", "steerscope_version": "0.1.0",
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def _write_raw(path, tensors=None, **meta_changes):
    tensors = {"direction.1": torch.randn(D)} if tensors is None else tensors
    save_file(tensors, str(path), metadata=_meta(**meta_changes))
    return path


def _load_error(path) -> str:
    with pytest.raises(VectorFileError) as info:
        SteeringVector.load(path)
    return str(info.value)


# ---------------------------------------------------------------- round trip and layout


def test_extracted_vector_is_sane(vec, lm):
    assert vec.layers == [1, 2]
    assert vec.d_model == D
    assert all(v.dtype == torch.float32 and v.shape == (D,) and torch.isfinite(v).all() for v in vec.directions.values())
    assert vec.metadata["model_fingerprint"] == lm.fingerprint
    assert vec.metadata["n_pairs"] == 8 and vec.metadata["trait"] == "formality"
    assert set(vec.metadata["h_norms"]) == {1, 2}


def test_round_trip_is_exact(tmp_path, vec, lm):
    path = vec.save(tmp_path / "v.safetensors")
    assert path == tmp_path / "v.safetensors"
    loaded = SteeringVector.load(path)
    assert loaded.layers == vec.layers
    for layer in vec.layers:
        assert torch.equal(loaded.directions[layer], vec.directions[layer])
        assert loaded.directions[layer].dtype == torch.float32
        assert loaded.dose(2.0, layer) == pytest.approx(vec.dose(2.0, layer), rel=1e-12)
    # Every metadata field comes back with its type; h_norms keys become strings (JSON object keys).
    for key, value in vec.metadata.items():
        if key == "h_norms":
            assert {int(k): v for k, v in loaded.metadata[key].items()} == value
        else:
            assert loaded.metadata[key] == value, key
    assert loaded.metadata["layers"] == [1, 2]
    assert loaded.metadata["d_model"] == D
    assert loaded.metadata["method"] == "mean_diff"
    assert loaded.metadata["model_fingerprint"] == lm.fingerprint
    assert loaded.metadata["model_type"] == "llama"
    assert loaded.metadata["format"] == "steerscope.vector"
    SteeringVector.load(path, lm=lm)  # fits the model it came from


def test_file_layout_read_independently(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        names = set(fh.keys())
        meta = fh.metadata()
        tensors = {name: fh.get_tensor(name) for name in names}
    assert names == {"direction.1", "direction.2"}
    for layer in (1, 2):
        t = tensors[f"direction.{layer}"]
        assert t.dtype == torch.float32 and tuple(t.shape) == (D,)
        assert torch.equal(t, vec.directions[layer])
    assert set(REQUIRED_METADATA) | {"format", "trait", "position", "n_pairs", "h_norms"} <= set(meta)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["format"] == "steerscope.vector"
    assert meta["format_version"] == "1"
    assert json.loads(meta["layers"]) == [1, 2]
    assert json.loads(meta["d_model"]) == D
    assert meta["method"] == "mean_diff"
    assert meta["model_fingerprint"] == vec.metadata["model_fingerprint"]
    assert json.loads(meta["h_norms"]) == {str(k): v for k, v in vec.metadata["h_norms"].items()}


def test_save_converts_other_dtypes_and_devices(tmp_path):
    meta = {k: v for k, v in _meta().items() if k not in ("layers", "d_model")}
    vec = SteeringVector({3: torch.arange(D, dtype=torch.float64)}, meta)
    path = vec.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert fh.get_tensor("direction.3").dtype == torch.float32
    loaded = SteeringVector.load(path)
    assert torch.equal(loaded.directions[3], torch.arange(D, dtype=torch.float32))
    assert loaded.metadata["layers"] == [3] and loaded.metadata["d_model"] == D


def test_vector_arithmetic_and_dose(vec):
    neg = -vec
    assert torch.equal(neg.directions[1], -vec.directions[1])
    assert neg.metadata["method"] == "mean_diff (negated)"
    doubled = 2 * vec
    assert torch.equal(doubled.directions[2], vec.directions[2] * 2)
    assert vec.metadata["method"] == "mean_diff"  # the original is untouched
    expected = 3.0 * vec.directions[1].norm().item() / vec.metadata["h_norms"][1]
    assert vec.dose(-3.0, 1) == pytest.approx(expected)
    assert SteeringVector({1: torch.ones(D)}).dose(1.0, 1) is None


# ---------------------------------------------------------------- overwrite protection and atomic writes


def test_existing_output_refused_without_overwrite(tmp_path, vec):
    path = tmp_path / "v.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(SteerscopeError, match="already exists; pass --overwrite"):
        vec.save(path)
    assert path.read_bytes() == b"precious"
    vec.save(path, overwrite=True)
    assert torch.equal(SteeringVector.load(path).directions[1], vec.directions[1])
    (-vec).save(path, overwrite=True)
    assert torch.equal(SteeringVector.load(path).directions[1], -vec.directions[1])
    assert sorted(os.listdir(tmp_path)) == ["v.safetensors"]


def test_directory_as_output_refused(tmp_path, vec):
    (tmp_path / "d").mkdir()
    with pytest.raises(SteerscopeError, match="is a directory"):
        vec.save(tmp_path / "d", overwrite=True)


def test_save_creates_parent_folders_and_leaves_no_temp_files(tmp_path, vec):
    path = tmp_path / "a" / "b" / "v.safetensors"
    vec.save(path)
    assert os.listdir(path.parent) == ["v.safetensors"]


def test_failed_write_leaves_existing_file_and_no_temp(tmp_path, vec, monkeypatch):
    path = vec.save(tmp_path / "v.safetensors")
    before = path.read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr("steerscope.vectors.file.save_file", broken_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        (-vec).save(path, overwrite=True)
    with pytest.raises(RuntimeError):
        vec.save(tmp_path / "new.safetensors")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["v.safetensors"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_refused_on_save(tmp_path, bad):
    direction = torch.ones(D)
    direction[5] = bad
    vec = SteeringVector({1: torch.ones(D), 2: direction}, {"model_fingerprint": "f"})
    with pytest.raises(VectorFileError, match=r"direction\.2: it contains NaN or Inf"):
        vec.save(tmp_path / "v.safetensors")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- files that are not vector files


class _Touch:
    """Unpickling this runs ``Path.touch(marker)``: a visible side effect."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_payload_is_live(tmp_path):
    # Guard for the test below: the payload really does create its marker when unpickled.
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps({"direction.1": _Touch(marker)}))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickle_file_is_never_unpickled(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"direction.1": _Touch(marker)}, protocol=protocol))
    assert "not a safetensors file" in _load_error(path)
    assert not marker.exists()


def test_torch_save_file_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"direction.1": torch.ones(D), "payload": _Touch(marker)}, path)
    assert "not a safetensors file" in _load_error(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, reason", [
    (bytes(range(256)) * 8, "bad header length"),
    (os.urandom(4096), "not a safetensors file"),
    (b"direction.1 = [0.1, 0.2, 0.3]\nmodel: llama\n", "bad header length"),
    (b"", "too short"),
    (b"\x05\x00\x00", "too short"),
    ((4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc", "header is not JSON"),
    ((4).to_bytes(8, "little") + b"nope", "header is not JSON"),
    ((0).to_bytes(8, "little"), "bad header length"),
    ((1 << 40).to_bytes(8, "little") + b"{}", "bad header length"),
    ((2).to_bytes(8, "little") + b"[]", "not a readable safetensors file"),
    ((20).to_bytes(8, "little") + b'{"a": {"dtype": 1}} ', "not a readable safetensors file"),
])
def test_not_safetensors(tmp_path, content, reason):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    message = _load_error(path)
    assert str(path) in message
    assert reason in message


def test_missing_file(tmp_path):
    assert "does not exist" in _load_error(tmp_path / "nope.safetensors")


def test_directory_is_not_a_vector_file(tmp_path):
    assert "does not exist" in _load_error(tmp_path)


# ---------------------------------------------------------------- invalid contents


def test_raw_valid_file_loads(tmp_path):
    t = torch.randn(D)
    vec = SteeringVector.load(_write_raw(tmp_path / "ok.safetensors", {"direction.1": t}))
    assert torch.equal(vec.directions[1], t)
    assert vec.metadata["d_model"] == D and vec.metadata["layers"] == [1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_refused_on_load(tmp_path, bad):
    t = torch.randn(D)
    t[0] = bad
    path = _write_raw(tmp_path / "bad.safetensors", {"direction.1": t})
    assert "tensor direction.1 contains NaN or Inf" in _load_error(path)


@pytest.mark.parametrize("key", REQUIRED_METADATA)
def test_missing_metadata_field(tmp_path, key):
    path = _write_raw(tmp_path / "m.safetensors", **{key: None})
    message = _load_error(path)
    assert message == f"{path}: metadata is missing field(s) {key}"


def test_no_metadata_lists_every_missing_field(tmp_path):
    path = tmp_path / "nometa.safetensors"
    save_file({"direction.1": torch.randn(D)}, str(path))
    message = _load_error(path)
    assert message == f"{path}: metadata is missing field(s) {', '.join(REQUIRED_METADATA)}"


def test_unsupported_format_version(tmp_path):
    assert "unsupported format_version '2'" in _load_error(_write_raw(tmp_path / "v2.safetensors", format_version="2"))


@pytest.mark.parametrize("changes, fragment", [
    ({"layers": "[1"}, "metadata field layers is not valid JSON"),
    ({"d_model": "thirty-two"}, "metadata field d_model is not valid JSON"),
    ({"h_norms": "{1: 2}"}, "metadata field h_norms is not valid JSON"),
    ({"layers": "5"}, "metadata field layers must be a JSON list of integers"),
    ({"layers": "null"}, "metadata field layers must be a JSON list of integers"),
    ({"layers": '["1"]'}, "metadata field layers must be a JSON list of integers"),
    ({"d_model": '"32"'}, "metadata field d_model must be an integer"),
    ({"d_model": "32.0"}, "metadata field d_model must be an integer"),
    ({"h_norms": "[1.0]"}, "metadata field h_norms must be a JSON object"),
])
def test_malformed_metadata_values(tmp_path, changes, fragment):
    assert fragment in _load_error(_write_raw(tmp_path / "m.safetensors", **changes))


@pytest.mark.parametrize("name", ["weight.1", "direction", "direction.x", "direction.-1", "layers.1.direction", "Direction.1"])
def test_wrong_tensor_name(tmp_path, name):
    path = _write_raw(tmp_path / "n.safetensors", {name: torch.randn(D)})
    assert f"unexpected tensor {name!r}" in _load_error(path)


@pytest.mark.parametrize("shape", [(D - 1,), (D + 1,), (1, D), (D, 1), (2, D), ()])
def test_wrong_tensor_shape(tmp_path, shape):
    path = _write_raw(tmp_path / "s.safetensors", {"direction.1": torch.randn(shape)})
    assert f"tensor direction.1 has shape {tuple(shape)}, expected [{D}]" in _load_error(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_wrong_tensor_dtype(tmp_path, dtype):
    path = _write_raw(tmp_path / "t.safetensors", {"direction.1": torch.ones(D).to(dtype)})
    assert f"tensor direction.1 is {dtype}, expected float32" in _load_error(path)


def test_layers_metadata_must_match_tensors(tmp_path):
    path = _write_raw(tmp_path / "l.safetensors", {"direction.1": torch.randn(D), "direction.2": torch.randn(D)})
    assert "metadata layers [1] do not match the tensors [1, 2]" in _load_error(path)
    path = _write_raw(tmp_path / "l2.safetensors", layers="[1, 3]")
    assert "metadata layers [1, 3] do not match the tensors [1]" in _load_error(path)


def test_no_tensors(tmp_path):
    path = _write_raw(tmp_path / "empty.safetensors", {}, layers="[]")
    assert "no direction.<layer> tensors" in _load_error(path)


# ---------------------------------------------------------------- check_model


def test_check_model_d_model_mismatch_always_refused(tmp_path, vec):
    wide = tiny_model("llama", d_model=48)
    for allow in (False, True):
        with pytest.raises(VectorFileError) as info:
            vec.check_model(wide, allow_mismatch=allow)
        assert str(info.value) == f"vector has d_model {D} but model tiny-llama has d_model 48"
    path = vec.save(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match="d_model"):
        SteeringVector.load(path, lm=wide, allow_mismatch=True)


def test_check_model_fingerprint_mismatch(tmp_path, vec, lm):
    other = tiny_model("llama", seed=1)  # same shapes, different weights
    assert other.fingerprint != lm.fingerprint and other.d_model == lm.d_model
    with pytest.raises(VectorFileError) as info:
        vec.check_model(other)
    message = str(info.value)
    assert f"fingerprint {lm.fingerprint}" in message
    assert f"has fingerprint {other.fingerprint}" in message
    assert "--allow-model-mismatch" in message and "allow_mismatch=True" in message
    vec.check_model(other, allow_mismatch=True)
    path = vec.save(tmp_path / "v.safetensors")
    with pytest.raises(VectorFileError, match="--allow-model-mismatch"):
        SteeringVector.load(path, lm=other)
    assert SteeringVector.load(path, lm=other, allow_mismatch=True).layers == [1, 2]


def test_check_model_unknown_fingerprint_refused(lm):
    vec = SteeringVector({1: torch.ones(D)}, {})
    with pytest.raises(VectorFileError, match=r"made for an unknown model \(fingerprint unknown\)"):
        vec.check_model(lm)
    vec.check_model(lm, allow_mismatch=True)


@pytest.mark.parametrize("layer", [4, 7, -1])
def test_check_model_layer_out_of_range(lm, layer):
    vec = SteeringVector({1: torch.ones(D), layer: torch.ones(D)}, {"model_fingerprint": lm.fingerprint})
    for allow in (False, True):
        with pytest.raises(VectorFileError) as info:
            vec.check_model(lm, allow_mismatch=allow)
        assert str(info.value) == f"vector has layer(s) [{layer}] but tiny-llama has layers 0..3"
