"""Property-based fuzzing of vector files (surface "vector files"): steerscope safetensors files,
tensor dicts of other tools (safetensors, ``.pt``, ``.npy``) and llama.cpp control-vector GGUF files.

Each case starts from a valid file and applies mutations: metadata fields dropped or replaced
(junk, NaN, numbers over 4300 digits, deep nesting), tensors renamed, of other dtypes, shapes,
layouts (sparse, meta) or values (zeros, NaN, Inf); GGUF files of another architecture, with
other tensor names and types, and a ``steerscope.metadata`` of any content; and bytes truncated or
overwritten. The readers (``SteeringVector.load``, ``load_vector_file``, ``load_vector_layers``,
``import_gguf``) must return vectors that hold what their docs promise or raise a SteerscopeError
with a one-line message. A share of the cases also runs through the command line (``info``,
``import``, ``export``, ``audit side-effects --vector``): success or exit status 2 with one
``error:`` line, and no output file on failure. Nothing is ever unpickled: ``.pt`` files are read
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import pickle
import tempfile
import warnings
from pathlib import Path

import gguf
import numpy as np
import torch
from hypothesis import event, example, given
from hypothesis import strategies as st
from safetensors.torch import save_file

from fuzzing import count_case
from steerscope.vectors import SteeringVector, import_gguf, load_vector_file, load_vector_layers
from test_fuzz_cli import assert_clean, assert_no_output, run_main
from test_fuzz_inputs import outcome

SURFACE = "vector files"
D = 8
N_LAYERS = 4

# ---------------------------------------------------------------- checking what a reader returns


def _check_direction(vector: torch.Tensor, d_model: int | None = D) -> None:
    assert vector.dtype == torch.float32 and vector.ndim == 1 and vector.shape[0] >= 1
    assert d_model is None or vector.shape[0] == d_model
    assert torch.isfinite(vector).all()


def _check_steering_vector(vec: SteeringVector, path: Path) -> None:
    """A loaded vector as docs/vector-format.md describes it, and it saves and loads back unchanged."""
    assert vec.layers and vec.layers == sorted(vec.metadata["layers"]) and vec.metadata["d_model"] == vec.d_model
    for layer in vec.layers:
        assert 0 <= layer < 10**9
        _check_direction(vec.directions[layer], vec.d_model)
        dose = vec.dose(1.0, layer)
        assert dose is None or math.isfinite(dose)
    back = SteeringVector.load(vec.save(path.with_name("resaved.safetensors"), overwrite=True))
    assert back.layers == vec.layers and all(torch.equal(back.directions[k], vec.directions[k]) for k in vec.layers)


def _check_foreign(path: Path, layer, n_layers) -> None:
    """``load_vector_file`` and ``load_vector_layers``: a checked ``[D]`` vector at a valid layer, or a one-line refusal."""
    got, _ = outcome(lambda: load_vector_file(path, D, layer, n_layers))
    event("load_vector_file: " + ("read" if got is not None else "refused"))
    if got is not None:
        _check_direction(got.vector)
        assert got.vector.any() and got.layer >= 0 and (n_layers is None or got.layer < n_layers)
        assert layer is None or got.layer in (layer, layer + (n_layers or 0))
    layers, _ = outcome(lambda: load_vector_layers(path, D, [0, 1, 2, 3]))
    for ell, vector in (layers or {}).items():
        assert ell in range(4)
        _check_direction(vector)


# ---------------------------------------------------------------- tensors

DTYPES = [torch.float32] * 4 + [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.bool, torch.uint8,
                                 torch.complex64]
SHAPES = [(D,)] * 4 + [(D - 1,), (D + 1,), (1, D), (2, D), (D, 1), (), (0,)]
VALUES = ["normal"] * 4 + ["zeros", "nan", "inf", "huge", "subnormal"]


def _tensor(dtype, shape, values, seed: int) -> torch.Tensor:
    base = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if values == "zeros":
        base = torch.zeros(shape, dtype=torch.float64)
    elif values in ("nan", "inf") and base.numel():
        base.view(-1)[seed % base.numel()] = float(values)
    elif values == "huge":
        base = base * 1e300
    elif values == "subnormal":
        base = base * 1e-310
    if dtype.is_complex:
        return base.to(torch.complex64)
    if dtype.is_floating_point:
        return base.to(dtype)
    return (base.nan_to_num(0, 1, -1) * 3).clamp(-100, 100).to(dtype)


TENSORS = st.builds(_tensor, st.sampled_from(DTYPES), st.sampled_from(SHAPES), st.sampled_from(VALUES), st.integers(0, 2**16))
_DIGITS = st.integers(1, 6000).map(lambda n: "7" * n)
#: Strings for a metadata value or a tensor name: plausible ones, junk, JSON of any kind, NaN, deep nesting, huge numbers.
JUNK = st.one_of(
    st.text(max_size=20), _DIGITS, st.integers(1, 3000).map(lambda n: "[" * n),
    st.sampled_from(["1", "8", "0", "-8", "8.0", "1e999", "NaN", "[1]", "[1, 1]", "[-1]", "[true]", "[]", "{}", '"8"', "null",
                     '{"1": 3.5}', '{"1": "x"}', '{"1": NaN}', '{"x": 1}', '{"1": -2}', "direction.1", "direction.01", "direction.-1",
                     "direction.1\n", "direction. 1", "direction.1_0", "direction.٣", "layers.1", "weight"]),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
                 lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=4), kids, max_size=3)),
                 max_leaves=6).map(json.dumps),
)


# ---------------------------------------------------------------- steerscope safetensors files

REQUIRED = ("format_version", "model_name", "model_fingerprint", "d_model", "method", "layers", "dataset_hash", "steerscope_version")


def _valid_metadata(layers) -> dict[str, str]:
    return {"format": "steerscope.vector", "format_version": "1", "model_name": "m", "model_fingerprint": "0123456789abcdef",
            "d_model": str(D), "method": "mean_diff", "layers": json.dumps(layers), "dataset_hash": "h", "steerscope_version": "0.1",
            "n_layers": str(N_LAYERS), "n_pairs": "4", "h_norms": json.dumps({str(k): 2.5 for k in layers})}


_LAYER_1 = {"direction.1": torch.ones(D)}


def _meta(**changes: str) -> dict[str, str]:
    return _valid_metadata([1]) | changes


@st.composite
def steerscope_files(draw):
    """``(tensors, metadata or None)`` of a safetensors file: a valid steerscope vector file, then a few mutations."""
    layers = draw(st.lists(st.integers(0, N_LAYERS - 1), min_size=1, max_size=3, unique=True))
    tensors = {f"direction.{k}": _tensor(torch.float32, (D,), "normal", k) for k in layers}
    meta: dict[str, str] | None = _valid_metadata(layers)
    keys = sorted(meta) + ["h_norms", "trait", "extra"]
    for kind in draw(st.lists(st.sampled_from(["drop", "set", "rename", "retype", "add", "clear", "no metadata"]), max_size=3)):
        if kind == "drop" and meta:
            meta.pop(draw(st.sampled_from(sorted(meta))), None)
        elif kind == "set" and meta is not None:
            meta[draw(st.sampled_from(keys))] = draw(JUNK)
        elif kind == "rename" and tensors:
            tensors[draw(JUNK)] = tensors.pop(draw(st.sampled_from(sorted(tensors))))
        elif kind == "retype" and tensors:
            tensors[draw(st.sampled_from(sorted(tensors)))] = draw(TENSORS)
        elif kind == "add":
            tensors[draw(st.one_of(JUNK, st.integers(0, 9).map(lambda k: f"direction.{k}")))] = draw(TENSORS)
        elif kind == "clear":
            tensors = {}
        elif kind == "no metadata":
            meta = None
    return tensors, meta


def _save_safetensors(path: Path, tensors, meta) -> bool:
    """Write the file; False when safetensors itself refuses these tensors (then there is no file to read)."""
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    except (ValueError, TypeError, RuntimeError):  # e.g. no tensors with no metadata, or an empty name
        return False
    return True


@given(case=steerscope_files(), layer=st.one_of(st.none(), st.integers(-5, 5), st.integers(-(2**70), 2**70)),
       n_layers=st.sampled_from([None, N_LAYERS]))
@example(case=(_LAYER_1, _meta(d_model="7" * 5000)), layer=None, n_layers=None)  # ValueError: over 4300 digits
@example(case=(_LAYER_1, _meta(layers="[" * 5000)), layer=None, n_layers=None)  # RecursionError
@example(case=({"direction." + "1" * 5000: torch.ones(D)}, _meta()), layer=None, n_layers=None)  # ValueError in int()
@example(case=(_LAYER_1, _meta(h_norms='{"1": "abc"}')), layer=1, n_layers=None)  # read; then ValueError in dose()
@example(case=(_LAYER_1, _meta(h_norms='{"1": [2]}')), layer=1, n_layers=None)  # read; then TypeError in dose()
@example(case=(_LAYER_1 | {"direction.01": torch.ones(D)}, _meta()), layer=1, n_layers=None)  # two tensors for layer 1
@example(case=({"5\n": torch.ones(D)}, None), layer=None, n_layers=None)  # read as layer 5: the key pattern ended in $
def test_steerscope_safetensors_files(case, layer, n_layers):
    count_case(SURFACE)
    tensors, meta = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.safetensors"
        if not _save_safetensors(path, tensors, meta):
            return
        vec, _ = outcome(lambda: SteeringVector.load(path))
        event("SteeringVector.load: " + ("read" if vec is not None else "refused"))
        if vec is not None:
            assert meta is not None and all(k in meta for k in REQUIRED)
            _check_steering_vector(vec, path)
        _check_foreign(path, layer, n_layers)


# ---------------------------------------------------------------- tensor dicts of other tools (.pt, .npy, plain safetensors)

_KEYS = st.one_of(st.integers(-3, 6), st.integers(-(2**70), 2**70), st.booleans(),
                  st.sampled_from(["1", "layer.2", "layers.3", "direction.0"]), JUNK, st.tuples(st.integers(0, 3), st.integers(0, 3)))


def _nested(dense: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "nested tensors are in prototype stage"
        return torch.nested.nested_tensor([dense])


def _odd_tensor(kind: str, seed: int) -> torch.Tensor:
    dense = _tensor(torch.float32, (D,), "normal", seed)
    return {"sparse": lambda: dense.to_sparse(), "meta": lambda: torch.empty(D, device="meta"),
            "nested": lambda: _nested(dense), "float8": lambda: dense.to(torch.float8_e4m3fn)}[kind]()


ODD_TENSORS = st.builds(_odd_tensor, st.sampled_from(["sparse", "meta", "nested", "float8"]), st.integers(0, 99))
_LEAVES = st.one_of(TENSORS, TENSORS, ODD_TENSORS, st.none(), st.integers(), st.text(max_size=5), st.lists(st.floats(), max_size=D))
PT_OBJECTS = st.one_of(_LEAVES, st.dictionaries(_KEYS, _LEAVES, max_size=4), st.lists(_LEAVES, max_size=3),
                       st.dictionaries(_KEYS, st.dictionaries(_KEYS, TENSORS, max_size=2), max_size=2))
NPY_DTYPES = ["float32", "float32", "float16", "float64", "longdouble", "int32", "bool", "complex64", "object", "V8", "U4"]
NPY_SHAPES = [(D,), (D,), (3, D), (1, D), (0, D), (0,), (), (2, 2, 2), (D + 1,)]


def _array(dtype: str, shape, values: str, seed: int) -> np.ndarray:
    data = _tensor(torch.float64, shape, values, seed).numpy()
    if dtype in ("object", "V8", "U4"):
        return np.zeros(shape, dtype=dtype)
    with np.errstate(all="ignore"):
        return data.astype(dtype)


ARRAYS = st.builds(_array, st.sampled_from(NPY_DTYPES), st.sampled_from(NPY_SHAPES), st.sampled_from(VALUES), st.integers(0, 2**16))


def _write_pt(path: Path, obj) -> None:
    torch.save(obj, path)


def _write_npy(path: Path, arr) -> None:
    np.save(path, arr, allow_pickle=True)


def _write_plain_safetensors(path: Path, tensors) -> None:
    save_file({str(k): v.contiguous() for k, v in tensors.items()}, str(path))


FOREIGN = st.one_of(
    st.tuples(st.just(".pt"), PT_OBJECTS),
    st.tuples(st.just(".npy"), ARRAYS),
    st.tuples(st.just(".safetensors"), st.dictionaries(_KEYS.map(str), TENSORS, min_size=1, max_size=3)),
)


@given(case=FOREIGN, layer=st.one_of(st.none(), st.integers(-5, 5)), n_layers=st.sampled_from([None, N_LAYERS]))
@example(case=(".pt", {1: torch.empty(D, device="meta")}), layer=None, n_layers=None)  # NotImplementedError: meta tensor
@example(case=(".pt", {1: torch.ones(D).to_sparse()}), layer=None, n_layers=None)  # NotImplementedError: sparse tensor
@example(case=(".pt", {1: _nested(torch.ones(D))}), layer=None, n_layers=None)  # RuntimeError: nested tensor
@example(case=(".pt", {"1" * 5000: torch.ones(D), 2: torch.ones(D)}), layer=2, n_layers=None)  # ValueError: over 4300 digits
@example(case=(".npy", np.zeros(0, np.float32)), layer=1, n_layers=None)  # an empty vector, reported as "all zeros"
def test_foreign_vector_files(case, layer, n_layers):
    count_case(SURFACE)
    suffix, content = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"v{suffix}"
        write = {".pt": _write_pt, ".npy": _write_npy, ".safetensors": _write_plain_safetensors}[suffix]
        try:
            write(path, content)
        except (ValueError, TypeError, RuntimeError, pickle.PicklingError):  # the writing library refuses this content
            return
        _check_foreign(path, layer, n_layers)


# ---------------------------------------------------------------- llama.cpp control-vector GGUF

GGUF_DTYPES = [np.float32] * 4 + [np.float16, np.float64, np.int32, np.int8]


def _gguf_tensor(dtype, shape, values: str, seed: int) -> np.ndarray:
    data = _tensor(torch.float64, shape, values, seed).numpy()
    with np.errstate(all="ignore"):
        return data.astype(dtype) if np.issubdtype(dtype, np.floating) else np.nan_to_num(data).clip(-100, 100).astype(dtype)


_GGUF_TENSORS = st.builds(_gguf_tensor, st.sampled_from(GGUF_DTYPES), st.sampled_from([s for s in SHAPES if s not in ((), (0,))]),
                          st.sampled_from(VALUES), st.integers(0, 2**16))
_STORED_FIELDS = {
    "gguf_alpha": st.one_of(st.floats(), st.sampled_from([0, 1, 2.0, 1e-320, "x", None])),
    "h_norms": st.one_of(st.just({"1": 2.0}), st.dictionaries(st.text(max_size=3), st.floats(), max_size=2)),
    "format_version": st.sampled_from(["1", "2", 1]), "model_name": st.one_of(st.text(max_size=5), st.integers()),
    "d_model": st.integers(), "layers": st.lists(st.integers(), max_size=2),
}
#: ``steerscope.metadata``: absent, junk, or a JSON object with some of the fields export writes (of any value).
_STORED = st.one_of(st.none(), JUNK, st.fixed_dictionaries({}, optional=_STORED_FIELDS).map(json.dumps))


@st.composite
def gguf_files(draw):
    """``(architecture, model hint, steerscope.metadata, {name: array})`` of a GGUF file."""
    arch = draw(st.sampled_from(["controlvector"] * 4 + ["llama", "", "controlvector2"]))
    hint = draw(st.one_of(st.text(max_size=8), st.integers(0, 2**31)))
    stored = draw(_STORED)
    layers = draw(st.lists(st.integers(1, N_LAYERS - 1), min_size=0, max_size=3, unique=True))
    tensors = {f"direction.{k}": _gguf_tensor(np.float32, (D,), "normal", k) for k in layers}
    for _ in range(draw(st.integers(0, 2))):
        # GGUF tensor names have fewer than 64 bytes
        name = draw(st.one_of(JUNK.map(lambda s: s[:15] or "x"), st.integers(0, 9).map(lambda k: f"direction.{k}")))
        tensors[name] = draw(_GGUF_TENSORS)
    return arch, hint, stored, tensors


def _write_gguf(path: Path, arch, hint, stored, tensors) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    if isinstance(hint, str):
        writer.add_string("controlvector.model_hint", hint)
    else:
        writer.add_uint32("controlvector.model_hint", hint)
    writer.add_uint32("controlvector.layer_count", len(tensors))
    if stored is not None:
        writer.add_string("steerscope.metadata", stored)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _stored(**fields) -> str:
    return json.dumps({"format_version": "1", "model_name": "m", "model_fingerprint": "", "method": "m", "dataset_hash": "",
                       "steerscope_version": ""} | fields)


_ONE = {"direction.1": np.ones(D, np.float32)}


@given(case=gguf_files(), layer=st.one_of(st.none(), st.integers(-5, 5)))
@example(case=("controlvector", "llama", "{not json", _ONE), layer=None)  # JSONDecodeError
@example(case=("controlvector", "llama", "[1]", _ONE), layer=None)  # TypeError: list.pop
@example(case=("controlvector", "llama", _stored(gguf_alpha="x"), _ONE), layer=None)  # ValueError: float('x')
@example(case=("controlvector", "llama", _stored(gguf_alpha=float("nan")), _ONE), layer=None)  # NaN directions, read as valid
@example(case=("controlvector", "llama", _stored(gguf_alpha=1e-320), _ONE), layer=None)  # Inf directions, read as valid
@example(case=("controlvector", "", _stored(h_norms={"1": 2.0}, gguf_alpha=1.2e-38), {"direction.1": np.full(D, 1.5, np.float32)}),
         layer=None)  # finite directions whose float32 norm overflowed: an infinite dose
@example(case=("controlvector", "llama", _stored(h_norms="x"), _ONE), layer=None)  # imported, then `import` wrote an unreadable file
@example(case=("controlvector", "llama", None, {"direction.-1": np.ones(D, np.float32)}), layer=None)  # read as layer -1
@example(case=("controlvector", "llama", None, {"direction.1": np.ones((2, D), np.float32)}), layer=None)  # flattened to d_model 16
@example(case=("controlvector", "llama", None, {"direction.1": np.arange(D, dtype=np.int32)}), layer=None)  # integers read as values
@example(case=("controlvector", 7, None, _ONE | {"direction.2": np.ones(D + 1, np.float32)}), layer=1)  # two sizes in one vector
def test_gguf_files(case, layer):
    count_case(SURFACE)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.gguf"
        try:
            _write_gguf(path, *case)
        except (ValueError, TypeError, KeyError):  # the gguf writer refuses this content
            return
        vec, _ = outcome(lambda: import_gguf(path))
        event("import_gguf: " + ("read" if vec is not None else "refused"))
        if vec is not None:
            assert case[0] == "controlvector"
            _check_steering_vector(vec, path)
        _check_foreign(path, layer, N_LAYERS)


def test_quantised_gguf_tensors_are_refused(tmp_path):
    """A Q8_0 direction used to be read as its raw block bytes (silently wrong values)."""
    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_tensor("direction.1", np.zeros(34, np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _, message = outcome(lambda: import_gguf(path))
    assert message is not None and "type Q8_0" in message


# ---------------------------------------------------------------- damaged bytes


def _valid_bytes(kind: str, folder: Path) -> tuple[str, bytes]:
    path = folder / f"valid.{kind}"
    if kind == "safetensors":
        save_file({"direction.1": torch.ones(D), "direction.2": torch.full((D,), 2.0)}, str(path), metadata=_valid_metadata([1, 2]))
    elif kind == "gguf":
        _write_gguf(path, "controlvector", "llama", _stored(layers=[1, 2], d_model=D), {"direction.1": np.ones(D, np.float32)})
    elif kind == "pt":
        torch.save({1: torch.ones(D), 2: torch.ones(D)}, path)
    else:
        np.save(path, np.ones((3, D), np.float32))
    return f".{kind}", path.read_bytes()


def _damage(data: bytes, edits) -> bytes:
    """Apply ``edits``: ("cut", i) truncates, ("set", i, b) overwrites one byte, ("length", n) rewrites the 8-byte header length."""
    out = bytearray(data)
    for edit in edits:
        if edit[0] == "cut":
            del out[edit[1] % (len(out) + 1):]
        elif edit[0] == "set" and out:
            out[edit[1] % len(out)] = edit[2]
        elif edit[0] == "length" and len(out) >= 8:
            out[:8] = edit[1].to_bytes(8, "little")
    return bytes(out)


EDITS = st.lists(st.one_of(st.tuples(st.just("cut"), st.integers(0, 10**6)),
                           st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
                           st.tuples(st.just("length"), st.integers(0, 2**64 - 1))), min_size=1, max_size=4)
PREFIXES = st.sampled_from([b"", b"\x80\x02", b"PK\x03\x04", b"GGUF", b"\x93NUMPY"])


@given(kind=st.sampled_from(["safetensors", "gguf", "pt", "npy"]), edits=EDITS, prefix=PREFIXES)
@example(kind="npy", edits=[("set", 50, ord("9"))], prefix=b"")  # a header declaring a huge shape: MemoryError
@example(kind="npy", edits=[("set", 10, 0)], prefix=b"")  # a NUL in the header: SyntaxError from numpy's header parser
@example(kind="safetensors", edits=[("cut", 0)], prefix=b"PK\x03\x04")  # torch.load reads a .safetensors path itself: SafetensorError
def test_damaged_vector_files(kind, edits, prefix):
    count_case(SURFACE)
    with tempfile.TemporaryDirectory() as tmp:
        suffix, data = _valid_bytes(kind, Path(tmp))
        path = Path(tmp) / f"damaged{suffix}"
        path.write_bytes(prefix + _damage(data, edits))
        if suffix == ".safetensors":
            vec, _ = outcome(lambda: SteeringVector.load(path))
            if vec is not None:
                _check_steering_vector(vec, path)
        if suffix == ".gguf":
            vec, _ = outcome(lambda: import_gguf(path))
            if vec is not None:
                _check_steering_vector(vec, path)
        _check_foreign(path, 1, N_LAYERS)


# ---------------------------------------------------------------- through the command line


@st.composite
def any_vector_file(draw):
    """``(suffix, write)`` for one file of any kind above."""
    kind = draw(st.sampled_from(["steerscope", "foreign", "gguf", "damaged"]))
    if kind == "steerscope":
        tensors, meta = draw(steerscope_files())
        return ".safetensors", lambda path: _save_safetensors(path, tensors, meta)
    if kind == "foreign":
        suffix, content = draw(FOREIGN)
        writer = {".pt": _write_pt, ".npy": _write_npy, ".safetensors": _write_plain_safetensors}[suffix]
        return suffix, lambda path: writer(path, content)
    if kind == "gguf":
        case = draw(gguf_files())
        return ".gguf", lambda path: _write_gguf(path, *case)
    source, edits = draw(st.sampled_from(["safetensors", "gguf"])), draw(EDITS)

    def damaged(path: Path) -> None:
        path.write_bytes(_damage(_valid_bytes(source, path.parent)[1], edits))
    return f".{source}", damaged


def _written(write, path: Path) -> bool:
    try:
        return write(path) is not False
    except (ValueError, TypeError, RuntimeError, KeyError, pickle.PicklingError):
        return False


@given(file=any_vector_file())
# `import` wrote a vector file that could not be loaded
@example(file=(".gguf", lambda path: _write_gguf(path, "controlvector", "llama", _stored(h_norms="x"), _ONE)))
def test_vector_files_through_the_cli(file):
    count_case(SURFACE)
    suffix, write = file
    with tempfile.TemporaryDirectory() as tmp:
        path, folder = Path(tmp) / f"v{suffix}", Path(tmp) / "out"
        if not _written(write, path):
            return
        commands = [["info", path], ["audit", "side-effects", "--trait", "formality", "--vector", path, "--layer", "1", "--alpha", "1",
                                     "--quick", "--out", folder]]
        if suffix == ".gguf":
            commands.append(["import", path, "-o", folder / "imported.safetensors"])
        if suffix == ".safetensors":
            commands.append(["export", path, "--gguf", folder / "exported.gguf"])
        for args in commands:
            result = run_main(args)
            assert_clean(result)
            event(f"{args[0]}: exit {result.status}")
            if result.status == 2:
                assert_no_output(folder)
            elif args[0] == "import":
                _check_steering_vector(SteeringVector.load(folder / "imported.safetensors"), path)
            elif args[0] == "export":
                assert import_gguf(folder / "exported.gguf").layers == SteeringVector.load(path).layers
            for leftover in folder.glob("*") if folder.exists() else ():
                leftover.unlink()


def test_pt_payloads_are_never_unpickled(tmp_path):
    """A .pt file holding a Python object is refused without running it (the reader uses weights_only=True)."""
    marker = tmp_path / "ran"
    path = tmp_path / "v.pt"
    torch.save({1: _Touch(marker)}, path)
    _, message = outcome(lambda: load_vector_file(path, D, 1))
    assert message is not None and "weights_only" in message and not marker.exists()


class _Touch:
    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))
