import sys

import pytest
import torch
from torch import nn

from steerscope.errors import SteerscopeError
from steerscope.models import builtin
from steerscope.models.builtin import BuiltinModel, convert_to_cache, converted_dir
from steerscope.models.fingerprint import model_fingerprint
from steerscope.models.layers import find_decoder_layers
from steerscope.models.loading import load_model, resolve_device, resolve_dtype, wrap_model
from steerscope.testing import tiny_model

EXPECTED_PATHS = {"llama": "model.layers", "gemma3": "model.layers", "gpt2": "transformer.h", "qwen2": "model.layers", "gpt_neox": "gpt_neox.layers"}


@pytest.mark.parametrize("arch", sorted(EXPECTED_PATHS))
def test_layer_discovery(tiny_models, arch):
    lm = tiny_models[arch]
    assert lm.layers_path == EXPECTED_PATHS[arch]
    assert lm.n_layers == 4 and lm.d_model == 32


def test_layer_override_and_fallback():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.short = nn.ModuleList([nn.Linear(2, 2)])
            self.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])

    model = Odd()
    assert find_decoder_layers(model)[1] == "blocks"
    assert find_decoder_layers(model, "short")[1] == "short"
    with pytest.raises(SteerscopeError, match="not a non-empty nn.ModuleList"):
        find_decoder_layers(model, "missing.path")


def test_fingerprint_is_stable_and_sensitive(tmp_path):
    lm = tiny_model("llama", seed=0)
    assert tiny_model("llama", seed=0).fingerprint == lm.fingerprint
    assert tiny_model("llama", seed=1).fingerprint != lm.fingerprint
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), device="cpu")
    assert reloaded.fingerprint == lm.fingerprint
    assert load_model(str(tmp_path), device="cpu", dtype="bfloat16").fingerprint == lm.fingerprint
    with torch.no_grad():  # a fine-tune moves every weight
        for param in reloaded.model.parameters():
            param.add_(0.05)
    assert model_fingerprint(reloaded.model) != lm.fingerprint


def test_loaded_folder_computes_like_the_original(tmp_path, tiny_models):
    lm = tiny_models["gpt2"]
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), device="cpu")
    ids = torch.tensor([[2, 10, 11, 12]])
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, lm.model(ids).logits)
    assert again.info()["n_layers"] == 4 and again.info()["dtype"] == "float32"


def test_unknown_model_lists_builtins(tmp_path):
    with pytest.raises(SteerscopeError, match="smollm2-135m, gemma3-270m"):
        load_model("no-such-model")
    text = tmp_path / "weights.bin"
    text.write_text("x")
    with pytest.raises(SteerscopeError, match="not a .gguf model"):
        load_model(str(text))


def test_check_layer_gives_the_valid_range(tiny_models):
    lm = tiny_models["llama"]
    assert lm.check_layer(-1) == 3
    with pytest.raises(SteerscopeError, match="valid layers are 0..3"):
        lm.check_layer(4)


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype(None) == torch.float32
    with pytest.raises(SteerscopeError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(SteerscopeError, match="unknown dtype"):
        resolve_dtype("int8")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(SteerscopeError, match="no CUDA"):
            resolve_device("cuda")


def test_pad_token_is_added_when_missing():
    lm = tiny_model("gpt2")
    tok = lm.tokenizer
    tok.pad_token = None
    assert wrap_model(lm.model, tok).tokenizer.pad_token == tok.eos_token


def test_conversion_cache_is_written_once_and_atomically(tmp_path, monkeypatch):
    source = tiny_model("llama")
    calls = []

    def fake_loader(path):
        calls.append(path)
        return source.model, source.tokenizer

    spec = BuiltinModel("tiny", "x/tiny", "llama", 4, 32, 100, "none", "none", locate=lambda: tmp_path / "tiny.gguf")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "tiny", spec)
    folder = convert_to_cache("tiny", fake_loader, tmp_path)
    assert folder == converted_dir("tiny", tmp_path) and (folder / "config.json").is_file()
    assert convert_to_cache("tiny", fake_loader, tmp_path) == folder
    assert len(calls) == 1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]

    def broken_loader(path):
        raise RuntimeError("disk full")

    monkeypatch.setitem(builtin.BUILTIN_MODELS, "tiny2", spec)
    with pytest.raises(RuntimeError):
        convert_to_cache("tiny2", broken_loader, tmp_path)
    assert not converted_dir("tiny2", tmp_path).exists()


def test_cache_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERSCOPE_CACHE", str(tmp_path / "c"))
    assert builtin.cache_root() == tmp_path / "c"
    monkeypatch.delenv("STEERSCOPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert builtin.cache_root() == tmp_path / "x" / "steerscope"


def test_converted_models_are_keyed_by_the_transformers_release(monkeypatch, tmp_path):
    assert builtin.transformers_key("5.24.0") == "transformers5.24"
    assert builtin.transformers_key("4.57.1+local") == "transformers4.57"
    current = converted_dir("tiny", tmp_path)
    monkeypatch.setattr(builtin, "transformers_key", lambda: "transformers4.57")
    assert converted_dir("tiny", tmp_path) != current and converted_dir("tiny", tmp_path).parent == current.parent


def test_third_party_progress_bars_are_dropped_and_other_output_kept(capsys):
    from tqdm import tqdm

    from steerscope.models.loading import _without_progress_bars

    with _without_progress_bars():
        for _ in tqdm(range(50), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        print("a warning the user should see", file=sys.stderr)
    assert capsys.readouterr().err == "a warning the user should see\n"


def test_texts_longer_than_the_context_are_refused_in_every_pass(tiny_models):
    from steerscope.capture import capture
    from steerscope.generate import GenerationConfig, generate
    from steerscope.jacobian import head_jacobian
    from steerscope.likelihood import continuation_logprobs

    lm = tiny_models["gpt2"]  # learned positions: 256 (a longer pass fails inside the embedding)
    assert lm.context_length == 256
    long_ids = lm.tokenizer("good " * 300)["input_ids"]
    assert len(long_ids) > 256
    calls = {
        "capture": lambda: capture(lm, ["good " * 300], [1]),
        "generate": lambda: generate(lm, ["good " * 250], config=GenerationConfig(max_new_tokens=40)),
        "likelihood": lambda: continuation_logprobs(lm, long_ids[:200], long_ids[200:]),
        "jacobian": lambda: head_jacobian(lm, long_ids, 1),
    }
    for name, call in calls.items():
        with pytest.raises(SteerscopeError, match="exceeds the context of .*256 tokens") as info:
            call()
        assert "\n" not in str(info.value) and "good good" in str(info.value), name
    with pytest.raises(SteerscopeError, match="plus 40 to generate"):
        calls["generate"]()
    generate(lm, ["good " * 200], config=GenerationConfig(max_new_tokens=4))  # within the context: runs
