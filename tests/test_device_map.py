"""Models placed by accelerate compute exactly like the plain model: steering, capture, Jacobians, inversion.

Each offloaded model keeps some weights off its execution device: decoder blocks (and, in the mixed
map, the input and output embeddings) on disk, read from the checkpoint's safetensors, or every
weight in accelerate's CPU offload store (``cpu_offload``). Those parameters sit on the meta device
between calls, and accelerate's hooks (``AlignDevicesHook``) load them for each forward pass. The
loaded values are the same float32 numbers and every operation runs in the same order on the same
CPU, so results are compared with ``torch.equal`` (and texts with ``==``), not a tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from accelerate import cpu_offload
from accelerate.utils import has_offloaded_params

from steerscope.capture import capture
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import Add, Steering
from steerscope.invert import SearchConfig, embedding_space, hidden_states, invert
from steerscope.jacobian import head_jacobian, layer_map, logit_jacobian
from steerscope.likelihood import continuation_logprobs
from steerscope.models.loading import LoadedModel, Placement, format_memory, load_model, parse_max_memory, wrap_model
from steerscope.testing import tiny_model
from tests.conftest import CHAT_ITEMS

PROMPTS = ["tell me about your weekend", "write a short poem about the moon", "hello"]
#: Blocks alternate between CPU RAM and disk; the embeddings live on disk too.
MIXED = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
         "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
LAYER = 1


def _saved(arch: str, folder) -> str:
    lm = tiny_model(arch)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def _cpu_offloaded(folder: str) -> LoadedModel:
    """Every weight in accelerate's CPU offload store, loaded onto the CPU block by block as it runs."""
    lm = load_model(folder, device="cpu")
    return wrap_model(cpu_offload(lm.model, execution_device=torch.device("cpu")), lm.tokenizer, name="cpu_offload")


@pytest.fixture(scope="module", params=["mixed", "disk-offload", "cpu_offload"])
def pair(request, tmp_path_factory) -> tuple[LoadedModel, LoadedModel]:
    """``(plain, offloaded)``: the same checkpoint loaded plainly and through accelerate."""
    arch = "gemma3" if request.param == "disk-offload" else "llama"
    folder = _saved(arch, tmp_path_factory.mktemp(arch))
    plain = load_model(folder, device="cpu")
    if request.param == "cpu_offload":
        return plain, _cpu_offloaded(folder)
    return plain, load_model(folder, placement=Placement(MIXED if request.param == "mixed" else request.param))


def _steering(lm: LoadedModel) -> Steering:
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    return Steering(lm, {LAYER: Add(v, 4.0), LAYER + 1: Add(-v, 2.0)})


def test_blocks_run_behind_accelerate_hooks_with_weights_offloaded(pair):
    plain, lm = pair
    offloaded = [name for name, module in lm.model.named_modules() if has_offloaded_params(module)]
    assert any(name.startswith(f"{lm.layers_path}.") for name in offloaded)
    assert any(p.is_meta for p in lm.layers[LAYER].parameters())
    assert lm.device == torch.device("cpu") and lm.fingerprint == plain.fingerprint
    memory = lm.info()["memory"]
    assert memory == lm.memory_by_device() and sum(memory.values()) == sum(plain.memory_by_device().values())
    assert {"disk", "offloaded"} & set(memory)


def test_steered_generation_is_identical(pair):
    plain, lm = pair
    for config in (GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=8, do_sample=True, seed=5)):
        texts = [generate(m, PROMPTS, config, steering=_steering(m)) for m in pair]
        assert texts[0] == texts[1]
    ids = encode_prompt(plain.tokenizer, PROMPTS[0])
    steered = [continuation_logprobs(m, ids[:4], ids[4:], _steering(m)) for m in pair]
    assert torch.equal(*steered) and not torch.equal(steered[1], continuation_logprobs(lm, ids[:4], ids[4:]))


def test_captured_states_are_identical(pair):
    layers = list(range(pair[0].n_layers))
    for steered in (False, True):
        plain, lm = (capture(m, CHAT_ITEMS, layers, position="all", steering=_steering(m) if steered else None) for m in pair)
        assert all(torch.equal(a, b) for layer in layers for a, b in zip(plain[layer], lm[layer]))


def test_jacobians_are_identical(pair):
    ids = encode_prompt(pair[0].tokenizer, PROMPTS[0])
    plain, lm = (head_jacobian(m, ids, LAYER, position=-3) for m in pair)
    assert torch.equal(plain.jz, lm.jz) and torch.equal(plain.probs, lm.probs)
    spread = [head_jacobian(m, ids, LAYER, position=2, spread=True).jz for m in pair]
    assert torch.equal(*spread)
    assert torch.equal(*(logit_jacobian(m, ids, LAYER, readout="logprobs") for m in pair))
    assert torch.equal(*(layer_map(m, ids, LAYER, LAYER + 2) for m in pair))


def test_inversion_is_identical_and_recovers_the_prompt(pair):
    plain, lm = pair
    e0, e1 = embedding_space(plain), embedding_space(lm)
    assert torch.equal(e0.weight, e1.weight) and e0.scale == e1.scale
    ids = encode_prompt(plain.tokenizer, PROMPTS[1])
    target = hidden_states(plain, ids, LAYER + 1)
    assert torch.equal(target, hidden_states(lm, ids, LAYER + 1))
    config = SearchConfig(batch=16, budget=64)
    found = [invert(m, target, LAYER + 1, 1e-4, config=config).to_json() for m in pair]
    assert found[0] == found[1] and found[1]["tokens"] == ids


def test_memory_by_device_of_a_plain_model_is_its_device(tiny_models):
    lm = tiny_models["llama"]
    assert lm.memory_by_device() == {"cpu": sum(t.numel() * t.element_size() for t in [*lm.model.parameters(), *lm.model.buffers()])}
    assert "memory" not in lm.info()
    assert format_memory({"cuda:0": 3 * 2**29, "cpu": 2048, "disk": 12}) == "cuda:0 1.50 GiB, cpu 2.00 KiB, disk 12 B"


def test_max_memory_is_parsed_per_device():
    assert parse_max_memory("cpu=1.5GiB, disk=10GB") == {"cpu": 3 * 2**29, "disk": 10**10}
    assert parse_max_memory("CPU=512mib") == {"cpu": 2**29}


@pytest.mark.parametrize(("text", "fragment"), [
    ("cpu20GiB", "'cpu20GiB' is not DEVICE=SIZE"),
    ("cpu=lots", "'lots' is not a size"),
    ("cpu=20GiB,gpu=1GiB", "unknown device 'gpu'"),
    ("cpu=20GiB,", "'' is not DEVICE=SIZE"),
    (f"{torch.cuda.device_count()}=1GiB", f"there is no GPU {torch.cuda.device_count()}"),
])
def test_a_malformed_max_memory_names_the_wrong_part(text, fragment):
    with pytest.raises(SteerscopeError, match="^--max-memory: ") as info:
        parse_max_memory(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_placements_are_refused_before_loading(tmp_path):
    with pytest.raises(SteerscopeError, match="unknown device map 'everywhere'; use one of auto, balanced, .*disk-offload"):
        Placement("everywhere")
    with pytest.raises(SteerscopeError, match="--max-memory needs --device-map"):
        Placement.parse(None, "cpu=1GiB")
    assert Placement.parse(None, None) is None
    assert Placement.parse("auto", "cpu=1KiB") == Placement("auto", {"cpu": 1024})
    with pytest.raises(SteerscopeError, match="--device cpu cannot be combined with --device-map"):
        load_model(str(tmp_path), device="cpu", placement=Placement("auto"))


def test_the_cli_places_the_model_and_reports_memory_per_device(tmp_path):
    folder = _saved("llama", tmp_path / "tiny")
    base = ["generate", PROMPTS[0], "-n", "6", "--json", "--model", folder]
    runs = [base + ["--device", "cpu"], base + ["--device-map", "disk-offload"], base + ["--device-map", "auto", "--max-memory", "cpu=lots"]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with ThreadPoolExecutor(len(runs)) as pool:
        plain, placed, bad = pool.map(lambda args: subprocess.run([sys.executable, "-m", "steerscope", *args], capture_output=True,
                                                                  text=True, env=env, timeout=300), runs)
    assert plain.returncode == placed.returncode == 0, placed.stderr
    plain_json, placed_json = json.loads(plain.stdout), json.loads(placed.stdout)
    assert placed_json["outputs"] == plain_json["outputs"]
    assert set(placed_json["model"]["memory"]) == {"cpu", "disk"}
    assert f"placed by accelerate (disk-offload): {format_memory(placed_json['model']['memory'])}" in placed.stderr
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --max-memory: 'lots' is not a size; use e.g. 20GiB, 512MiB or 8GB"
