"""The null-space audit computed in chunks of prompts: each chunk a cell, the report rebuilt from the cells."""

from functools import partial

import pytest
import torch

from steerscope.audit.nullspace import (
    audit_header,
    cell_chunk,
    covariance_spectra,
    gram_chunk,
    jacobian_entry,
    nullspace_audit,
    ChunkSettings,
    angle_chunk_prompts,
    prompt_chunks,
)
from steerscope.audit.pipeline import Auditor, Done, FanOut, Split, audit_config
from steerscope.audit.registry import TraitRun, stages
from steerscope.data.prompts import builtin_prompt_mix
from steerscope.errors import SteerscopeError
from steerscope.jsonable import jsonable
from steerscope.runstore import RunStore, stored_payload

PROMPTS = ["hello there my friend", "what is the weather like today", "tell me a short story about a dog",
           "one more prompt", "and a fifth prompt here"]
TOL = (0.1, 1e-2, 1e-3)
#: Two positions a prompt: with angle_prompts = 5, the first chunk holds 3 prompts (the angles' 5 Gram matrices), the next 2.
SETTINGS = {"positions": (-1, -2), "tolerances": TOL, "angle_prompts": 5, "all_positions": 3}


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def vector(llama):
    return torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def chunked(llama, vector):
    result = nullspace_audit(llama, PROMPTS, [1], vectors={1: vector}, prompt_chunk=2, **SETTINGS)
    result["layers"]["1"].pop("seconds")
    return result


def _close(a, b, path="") -> None:
    """``a == b`` except floats, equal to 1e-12 relative (float64 rounding)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-12, abs=1e-300), path
    else:
        assert a == b, path


def _chunk_cell(llama, start: int, stop: int, spread: bool):
    payload, blob = gram_chunk(llama, PROMPTS, 1, start, stop,
                               ChunkSettings(SETTINGS["positions"], SETTINGS["angle_prompts"], TOL, spread=spread))
    return jsonable(payload), blob


def test_prompt_chunks_cover_the_prompts_in_order():
    assert prompt_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert prompt_chunks(8, 8) == [(0, 8)] and prompt_chunks(0, 8) == []
    assert prompt_chunks(7, 2, first=3) == [(0, 3), (3, 5), (5, 7)] and prompt_chunks(2, 1, first=8) == [(0, 2)]
    assert angle_chunk_prompts(5, 2) == 3 and angle_chunk_prompts(8, 1) == 8
    with pytest.raises(SteerscopeError, match="at least one prompt"):
        prompt_chunks(4, 0)


def test_chunked_audit_equals_the_unchunked_one_up_to_rounding(llama, vector, chunked):
    whole = nullspace_audit(llama, PROMPTS, [1], vectors={1: vector}, prompt_chunk=len(PROMPTS), **SETTINGS)
    whole["layers"]["1"].pop("seconds")
    entry = chunked["layers"]["1"]
    angles = [row for r in ("logits", "logprobs") for row in entry[r]["null_space_angles"]]
    assert all(len(row["null_dims"]) == 5 for row in angles) and any(row["pairs"] for row in angles)  # the first 5 Gram matrices
    assert entry["all_positions"]["logits"]["null_space_angles"][0]["null_dims"].__len__() == 3
    _close(whole, chunked)


def test_chunks_computed_alone_and_stored_give_the_audit_exactly(llama, vector, chunked, tmp_path):
    """Each chunk computed on its own, last first, goes through a run store (payload as canonical JSON,
    arrays in the blob); summarised, the cells give exactly what ``nullspace_audit`` gives."""
    positions, angle_prompts, all_positions = SETTINGS["positions"], SETTINGS["angle_prompts"], SETTINGS["all_positions"]
    parts = {f"prompts={a}-{b}": (a, b, False) for a, b in prompt_chunks(len(PROMPTS), 2, angle_chunk_prompts(angle_prompts, 2))}
    parts |= {f"all_positions={a}-{b}": (a, b, True) for a, b in prompt_chunks(all_positions, 2, angle_prompts)}
    assert list(parts) == ["prompts=0-3", "prompts=3-5", "all_positions=0-3"]
    with RunStore.create(tmp_path / "run", {"test": "chunks"}, "0", "test") as store:
        for key, (a, b, spread) in reversed(parts.items()):
            store.cached(key, "nullspace", partial(_chunk_cell, llama, a, b, spread))
        cells = {key: store.get(key) for key in parts}
    chunks = [cell_chunk(c.payload, c.blob) for key, c in cells.items() if not parts[key][2]]
    spread_chunks = [cell_chunk(c.payload, c.blob) for key, c in cells.items() if parts[key][2]]
    result = audit_header(llama, len(PROMPTS), [1], positions, TOL, angle_prompts, all_positions)
    result["layers"]["1"] = (jacobian_entry(chunks, spread_chunks, TOL, vector.double())
                             | {"covariance": covariance_spectra(llama, PROMPTS, [1], TOL)[1]})
    assert result == chunked
    with pytest.raises(SteerscopeError, match="in order"):
        jacobian_entry(chunks[::-1], spread_chunks, TOL, vector.double())


def test_audit_stage_splits_into_chunk_cells_and_gives_the_audit(llama, vector, tmp_path):
    """The stage's chunk cells, split off and each computed alone, then the final cell: what
    ``nullspace_audit`` gives, and as many trait cells as the stage plans."""
    settings = {"ns_prompts": 10, "ns_all_positions": 1}
    config = audit_config("tiny-llama", ["formality"], "quick", sizes=settings)
    stage = {s.name: s for s in stages()}["nullspace"]
    with RunStore.create(tmp_path / "run", config, "0", "test") as store:
        with pytest.raises(Split) as split:
            stage.run(Auditor(llama, store, config, fan_out=FanOut(split=True)), TraitRun("formality", 1, vector))
        assert split.value.keys == ("formality/nullspace/prompts=0-8", "formality/nullspace/prompts=8-10",
                                    "formality/nullspace/all_positions=0-1", "formality/nullspace/covariance")
        for key in reversed(split.value.keys):
            with pytest.raises(Done):
                stage.run(Auditor(llama, store, config, fan_out=FanOut(only=key)), TraitRun("formality", 1, vector))
        stage.run(Auditor(llama, store, config), TraitRun("formality", 1, vector))
        keys = [c.key for c in store.cells()]
        payload = store.get("formality/nullspace").payload
    assert keys == [*reversed(split.value.keys), "formality/nullspace"]
    assert stage.cells(config["settings"]) == len(keys) == 5
    prompts = builtin_prompt_mix(10)
    expected = nullspace_audit(llama, prompts, [1], vectors={1: vector}, angle_prompts=8, all_positions=1)
    expected["layers"]["1"].pop("seconds")
    assert payload == stored_payload(jsonable(expected))
    assert len(expected["layers"]["1"]["logits"]["null_space_angles"][0]["null_dims"]) == 8
