"""Vectors made by other tools (steerscope.vectors.foreign): file formats, bad files, library adapters.

The adapter tests train vectors with steering-vectors and repeng on tiny random models and check
that steering with the converted vector changes every block output exactly as the library's own
steering does. Both libraries pin old dependencies in their metadata (steering-vectors 0.12.2:
transformers<5; repeng 0.4.0: numpy<2), so they are not in the ``test`` extra: install them with
``pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0``; their tests skip otherwise. repeng
0.4.0 also uses ``np.float_`` (gone in NumPy 2) at import, so the test aliases it while repeng imports.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steerscope.errors import VectorFileError
from steerscope.hooks import record
from steerscope.intervene import steer
from steerscope.testing import tiny_model
from tests.test_gguf_io import _write_gguf
from steerscope.vectors import (
    SteeringVector, export_gguf, from_repeng, from_steering_vectors, load_vector_file, vector_metadata,
)

D = 32
N_LAYERS = 4
ALPHA = 3.0
PAIRS = [
    ("i love this good day", "i hate this bad day"),
    ("very happy friend", "very sad friend"),
    ("great kind people", "terrible rude people"),
    ("thank you, that is nice", "no, that is wrong"),
]
PROMPT = "hello my friend, tell me about the weather this week"
_NO_DEPS = "it pins old dependencies: pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def _v(seed: int, d: int = D) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _error(path, layer=None, n_layers=None) -> str:
    """The one-line VectorFileError message for ``path``; it names the file."""
    with pytest.raises(VectorFileError) as info:
        load_vector_file(path, D, layer=layer, n_layers=n_layers)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    return path


# ---------------------------------------------------------------- round trips


def test_steerscope_file(tmp_path, lm):
    vec = SteeringVector({1: _v(1), 3: _v(3)}, vector_metadata(lm, "test", [1, 3], "none"))
    got = load_vector_file(vec.save(tmp_path / "v.safetensors"), D, layer=3, n_layers=N_LAYERS)
    assert (got.layer, got.source, got.layers_in_file) == (3, "steerscope", [1, 3])
    assert torch.equal(got.vector, vec.directions[3]) and got.vector.dtype == torch.float32
    assert "no remapping" in got.note


def test_gguf_exported_by_steerscope(tmp_path, lm):
    vec = SteeringVector({1: _v(1), 3: _v(3)}, vector_metadata(lm, "test", [1, 3], "none"))
    path = export_gguf(vec, tmp_path / "v.gguf", alpha=2.0)
    got = load_vector_file(path, D, layer=1, n_layers=N_LAYERS)
    assert (got.layer, got.source, got.layers_in_file) == (1, "gguf", [1, 3])
    torch.testing.assert_close(got.vector, vec.directions[1])
    assert "llama.cpp" in got.note


def test_gguf_written_by_other_tools(tmp_path):
    path = _write_gguf(tmp_path / "cv.gguf", tensors={"direction.2": _v(2).numpy()})
    got = load_vector_file(path, D)
    assert got.layer == 2 and got.layers_in_file == [2] and torch.equal(got.vector, _v(2))


@pytest.mark.parametrize("style", ["{}", "layer.{}", "layers.{}", "direction.{}"])
def test_plain_safetensors_keys(tmp_path, style):
    path = tmp_path / "v.safetensors"
    save_file({style.format(0): _v(0), style.format(2): _v(2).to(torch.float16)}, str(path))
    got = load_vector_file(path, D, layer=2)
    assert (got.layer, got.source, got.layers_in_file) == (2, "safetensors", [0, 2])
    assert got.vector.dtype == torch.float32 and torch.equal(got.vector, _v(2).half().float())


def test_single_tensor_is_placed_at_the_requested_layer(tmp_path):
    path = tmp_path / "v.safetensors"
    save_file({"steering_vector": _v(5)[None]}, str(path))  # shape [1, d_model]
    got = load_vector_file(path, D, layer=-1, n_layers=N_LAYERS)
    assert (got.layer, got.layers_in_file) == (3, []) and torch.equal(got.vector, _v(5))
    assert "without a layer index" in _error(path) and "--layer" in _error(path)


@pytest.mark.parametrize("content", ["tensor", "int keys", "str keys"])
def test_torch_file(tmp_path, content):
    path = tmp_path / "v.pt"
    obj = {"tensor": _v(1), "int keys": {1: _v(1), 2: _v(2)}, "str keys": {"layer.1": _v(1), "layer.2": _v(2)}}[content]
    torch.save(obj, path)
    got = load_vector_file(path, D, layer=1)
    assert got.layer == 1 and got.source == "torch" and torch.equal(got.vector, _v(1))
    assert got.layers_in_file == ([] if content == "tensor" else [1, 2])


def test_numpy_file(tmp_path):
    rows = torch.stack([_v(i) for i in range(N_LAYERS)]).double().numpy()
    np.save(tmp_path / "rows.npy", rows)
    got = load_vector_file(tmp_path / "rows.npy", D, layer=2, n_layers=N_LAYERS)
    assert (got.layer, got.source, got.layers_in_file) == (2, "numpy", [0, 1, 2, 3])
    assert got.vector.dtype == torch.float32 and torch.equal(got.vector, _v(2))
    np.save(tmp_path / "one.npy", _v(7).numpy())
    got = load_vector_file(tmp_path / "one.npy", D, layer=1)
    assert (got.layer, got.layers_in_file) == (1, []) and torch.equal(got.vector, _v(7))


def test_format_is_recognised_by_content(tmp_path):
    save_file({"3": _v(3)}, str(tmp_path / "vector.bin"))
    np.save(tmp_path / "rows.npy", np.stack([_v(0).numpy(), _v(1).numpy()]))
    (tmp_path / "rows.npy").rename(tmp_path / "rows.dat")
    assert load_vector_file(tmp_path / "vector.bin", D).source == "safetensors"
    assert torch.equal(load_vector_file(tmp_path / "rows.dat", D, layer=1).vector, _v(1))


# ---------------------------------------------------------------- bad files


def _st(tensors):
    return lambda path: save_file(tensors, str(path))


def _pt(obj):
    return lambda path: torch.save(obj, path)


def _npy(arr):
    return lambda path: np.save(path, arr)


_NAN = _v(1).clone()
_NAN[4] = float("nan")
_INF_ROWS = np.stack([_v(0).numpy(), np.full(D, np.inf, np.float32)])

BAD = {
    "several layers": ("v.safetensors", _st({"1": _v(1), "3": _v(3)}), None, None, ["holds layers [1, 3]", "--layer"]),
    "missing layer": ("v.safetensors", _st({"1": _v(1), "3": _v(3)}), 2, None, ["has no layer 2", "layers in file: [1, 3]"]),
    "wrong d_model": ("v.safetensors", _st({"1": _v(1, 16)}), None, None, ["vector has d_model 16 but the model has d_model 32"]),
    "NaN": ("v.safetensors", _st({"1": _NAN, "3": _v(3)}), 1, None, ["layer 1 contains NaN or Inf"]),
    "Inf in a .npy row": ("v.npy", _npy(_INF_ROWS), 1, None, ["layer 1 contains NaN or Inf"]),
    "zeros": ("v.pt", _pt({2: torch.zeros(D)}), None, None, ["layer 2 is all zeros"]),
    "int tensor": ("v.pt", _pt({2: torch.arange(D)}), None, None, ["dtype torch.int64", "floating-point"]),
    "bool tensor": ("v.safetensors", _st({"2": torch.ones(D, dtype=torch.bool)}), None, None, ["dtype torch.bool"]),
    "int array": ("v.npy", _npy(np.arange(D)), 0, None, ["dtype int64"]),
    "3-d tensor": ("v.pt", _pt(torch.ones(2, 2, 8)), 0, None, ["shape [2, 2, 8]"]),
    "stacked tensor": ("v.pt", _pt(torch.ones(2, D)), 0, None, ["shape [2, 32]", "[d_model] or [1, d_model]"]),
    "3-d array": ("v.npy", _npy(np.ones((2, 2, 8), np.float32)), 0, None, ["shape [2, 2, 8]", "[n_layers, d_model]"]),
    "bad key": ("v.safetensors", _st({"1": _v(1), "mlp.1": _v(2)}), 1, None, ["key 'mlp.1' does not name a layer"]),
    "duplicate layer": ("v.safetensors", _st({"1": _v(1), "layer.1": _v(2)}), 1, None, ["layer 1 appears twice"]),
    "negative key": ("v.pt", _pt({-1: _v(1), 2: _v(2)}), 2, None, ["layer key -1 is negative"]),
    "list in .pt": ("v.pt", _pt([_v(1)]), 0, None, ["holds a list", "expected a tensor or a dict"]),
    "non-tensor entry": ("v.pt", _pt({"1": _v(1), "2": [1.0] * D}), 2, None, ["entry '2' is a list, not a tensor"]),
    "empty dict": ("v.pt", _pt({}), 0, None, ["holds no tensors"]),
    "layer out of range": ("v.safetensors", _st({"1": _v(1)}), 7, N_LAYERS, ["layer 7 is out of range", "layers 0..3"]),
    "file layer out of range": ("v.safetensors", _st({"9": _v(1)}), None, N_LAYERS, ["layer 9 is out of range"]),
    "negative layer, no n_layers": ("v.safetensors", _st({"1": _v(1)}), -1, None, ["layer -1 counts from the end"]),
    "unknown suffix": ("v.txt", lambda path: path.write_text("0.1 0.2 0.3\n"), 0, None, ["unknown vector format", ".txt"]),
    "empty file": ("v.safetensors", lambda path: path.write_bytes(b""), 0, None, ["is empty"]),
    "not a .npy": ("v.npy", lambda path: path.write_text("0.1 0.2\n"), 0, None, ["not a readable .npy file", "numpy header"]),
    "not a .gguf": ("v.gguf", lambda path: path.write_text("direction.1 0.5\n"), 1, None, ["not a readable .gguf file"]),
    "not a .pt": ("v.pt", lambda path: path.write_bytes(b"\x80\x02garbage"), 0, None, ["torch.load(weights_only=True)"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file(tmp_path, case):
    name, write, layer, n_layers, expected = BAD[case]
    path = tmp_path / name
    write(path)
    message = _error(path, layer, n_layers)
    for part in expected:
        assert part in message


def test_missing_file(tmp_path):
    assert "does not exist" in _error(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".gguf", ".pt", ".npy"])
def test_truncated_file(tmp_path, suffix):
    path = tmp_path / f"v{suffix}"
    if suffix == ".safetensors":
        save_file({"1": _v(1)}, str(path))
    elif suffix == ".gguf":
        _write_gguf(path, tensors={"direction.1": _v(1).numpy()})
    elif suffix == ".pt":
        torch.save({1: _v(1)}, path)
    else:
        np.save(path, _v(1).numpy()[None])
    assert "not a readable" in _error(_truncated(path), layer=1)


def test_npy_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.array([{"layer": 1}], dtype=object), allow_pickle=True)
    message = _error(path, layer=1)
    assert "allow_pickle=False" in message and "Object arrays" in message


UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class _Payload:
    """Unpickling this calls ``_record_unpickling``: proof of whether the file was unpickled."""

    def __reduce__(self):
        return (_record_unpickling, ("unpickled",))


def test_pt_with_python_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "v.pt"
    torch.save({"1": _v(1), "2": _Payload()}, path)
    message = _error(path, layer=1)
    assert "pickled Python object" in message and "_record_unpickling" in message and "weights_only=True" in message
    assert UNPICKLED == []


# ---------------------------------------------------------------- adapters without the libraries


def test_steering_vectors_adapter_checks():
    acts = {1: _v(1), -1: _v(3)}
    out = from_steering_vectors(SimpleNamespace(layer_activations=acts, layer_type="decoder_block"), D, n_layers=N_LAYERS)
    assert sorted(out) == [1, 3] and torch.equal(out[3], _v(3))
    bad = [
        (SimpleNamespace(layer_activations={1: _v(1)}, layer_type="mlp"), {}, "layer_type 'mlp'"),
        (SimpleNamespace(layer_activations={}), {}, "no layer_activations"),
        (SimpleNamespace(layer_activations={-1: _v(1)}), {}, "counts from the end"),
        (SimpleNamespace(layer_activations={4: _v(1)}), {"n_layers": N_LAYERS}, "out of range"),
        (SimpleNamespace(layer_activations={3: _v(3), -1: _v(1)}), {"n_layers": N_LAYERS}, "layer 3 twice"),
        (SimpleNamespace(layer_activations={1: _v(1, 16)}), {}, "vector has d_model 16 but the model has d_model 32"),
        (SimpleNamespace(layer_activations={1: torch.zeros(D)}), {}, "layer 1 is all zeros"),
        (SimpleNamespace(layer_activations={1: torch.arange(D)}), {}, "dtype torch.int64"),
    ]
    for obj, kwargs, expected in bad:
        with pytest.raises(VectorFileError, match=expected):
            from_steering_vectors(obj, D, **kwargs)


def test_repeng_adapter_checks():
    out = from_repeng(SimpleNamespace(model_type="llama", directions={2: _v(2).numpy()}), D)
    assert list(out) == [2] and torch.equal(out[2], _v(2)) and out[2].dtype == torch.float32
    nan = _v(1).numpy()
    nan[0] = np.nan
    bad = [
        ({-1: _v(1).numpy()}, "layer key -1"),
        ({1: np.arange(D)}, "dtype int64"),
        ({1: nan}, "layer 1 contains NaN or Inf"),
        ({1: np.ones((2, D), np.float32)}, r"shape \[2, 32\]"),
    ]
    for directions, expected in bad:
        with pytest.raises(VectorFileError, match=expected):
            from_repeng(SimpleNamespace(model_type="llama", directions=directions), D)


# ---------------------------------------------------------------- adapters on real library objects


def _states(lm, ids) -> dict[int, torch.Tensor]:
    """Every block's output ``{ℓ: [1, T, d]}`` for one forward pass."""
    with torch.no_grad(), record(lm, list(range(lm.n_layers))) as store:
        lm.model(**ids)
    return dict(store)


def _assert_edit_at(lm, base, theirs, ours, layer, vector):
    """``theirs`` and ``ours`` agree at every block; both add ``ALPHA·vector`` to block ``layer``'s output."""
    for ell in range(lm.n_layers):
        torch.testing.assert_close(ours[ell], theirs[ell])
    for ell in range(layer):
        assert torch.equal(theirs[ell], base[ell])
    torch.testing.assert_close(theirs[layer] - base[layer], (ALPHA * vector).expand_as(base[layer]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_steering_vectors_layers_match_steerscope(arch):
    sv = pytest.importorskip("steering_vectors", reason=f"steering-vectors is not installed ({_NO_DEPS})")
    lm = tiny_model(arch, n_layers=N_LAYERS, d_model=D)
    trained = sv.train_steering_vector(lm.model, lm.tokenizer, PAIRS, layers=[1, 2])
    dirs = from_steering_vectors(trained, d_model=lm.d_model, n_layers=lm.n_layers)
    assert sorted(dirs) == [1, 2]
    ids = lm.tokenizer([PROMPT], return_tensors="pt")
    base = _states(lm, ids)
    for key, layer in ((1, 1), (2, 2), (-2, 2)):
        theirs_vector = sv.SteeringVector({key: trained.layer_activations[layer]})
        with theirs_vector.apply(lm.model, multiplier=ALPHA):
            theirs = _states(lm, ids)
        converted = from_steering_vectors(theirs_vector, lm.d_model, lm.n_layers)
        assert list(converted) == [layer]
        with steer(lm, converted, ALPHA):
            ours = _states(lm, ids)
        _assert_edit_at(lm, base, theirs, ours, layer, dirs[layer])


def _import_repeng():
    """repeng 0.4.0 annotates with ``np.float_``, which NumPy 2 removed: alias it only while repeng imports."""
    missing = not hasattr(np, "float_")
    if missing:
        np.float_ = np.float64
    try:
        return pytest.importorskip("repeng", reason=f"repeng is not installed ({_NO_DEPS})")
    finally:
        if missing:
            del np.float_


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_repeng_layers_match_steerscope_and_its_gguf(arch, tmp_path):
    repeng = _import_repeng()
    lm = tiny_model(arch, n_layers=N_LAYERS, d_model=D)
    trained = repeng.ControlVector.train(lm.model, lm.tokenizer, [repeng.DatasetEntry(p, n) for p, n in PAIRS])
    dirs = from_repeng(trained, d_model=lm.d_model)
    assert sorted(dirs) == sorted(trained.directions) == [1, 2, 3]  # repeng's default: every block but the first
    ids = lm.tokenizer([PROMPT], return_tensors="pt")
    base = _states(lm, ids)
    for layer in dirs:
        control = repeng.ControlModel(lm.model, [layer])  # swaps block `layer` for a wrapper in lm.layers
        try:
            control.set_control(trained, ALPHA)
            theirs = _states(lm, ids)
        finally:
            control.unwrap()
        with steer(lm, {layer: dirs[layer]}, ALPHA):
            ours = _states(lm, ids)
        _assert_edit_at(lm, base, theirs, ours, layer, dirs[layer])
    path = tmp_path / "repeng.gguf"
    trained.export_gguf(str(path))
    for layer, vector in dirs.items():
        got = load_vector_file(path, lm.d_model, layer=layer, n_layers=lm.n_layers)
        assert got.layers_in_file == [1, 2, 3] and torch.equal(got.vector, vector)
