"""The ``steerscope`` command line, run in subprocesses against a tiny model saved to a folder.

Every CLI call is started once, in parallel, by the module fixture; the tests then check the results.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import save_file

from steerscope.data import builtin_pairs, dataset_hash, dataset_summary, read_pairs_file
from steerscope.extract import extract
from steerscope.testing import tiny_model
from steerscope.vectors import SteeringVector, import_gguf

PROMPT = "tell me about your weekend"


class _Touch:
    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _run_cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "steerscope", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


class CLI:
    def __init__(self, root, model_dir, lm):
        self.root, self.model, self.lm = root, model_dir, lm
        self.paths: dict[str, pathlib.Path] = {}
        self.futures = {}
        self.before: dict[str, bytes] = {}

    def __getitem__(self, name) -> subprocess.CompletedProcess:
        return self.futures[name].result()


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny-llama"
    lm = tiny_model("llama")
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    c = CLI(root, model_dir, lm)
    p = c.paths

    # Inputs made in-process.
    good_vec = extract(lm, builtin_pairs("formality", "train")[:8], [1, 2])
    p["vec"] = good_vec.save(root / "good.safetensors")
    p["vec48"] = extract(tiny_model("llama", d_model=48), builtin_pairs("formality", "train")[:4], [1]).save(root / "d48.safetensors")
    p["vec_other"] = extract(tiny_model("llama", seed=1), builtin_pairs("formality", "train")[:4], [1]).save(root / "other.safetensors")
    nan = torch.ones(lm.d_model)
    nan[3] = float("nan")
    strings = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in good_vec.metadata.items()}
    strings["layers"] = "[1]"
    p["vec_nan"] = root / "nan.safetensors"
    save_file({"direction.1": nan}, str(p["vec_nan"]), metadata=strings)
    p["marker"] = root / "pwned"
    p["vec_pickle"] = root / "evil.safetensors"
    p["vec_pickle"].write_bytes(pickle.dumps({"direction.1": _Touch(p["marker"])}))
    p["existing"] = root / "existing.safetensors"
    p["existing"].write_bytes(b"do not touch")
    c.before["existing"] = p["existing"].read_bytes()

    p["good_jsonl"] = root / "good.jsonl"
    p["good_jsonl"].write_text("\n".join(json.dumps(r) for r in [
        {"positive": "thank you very much for your kind help", "negative": "you are rude and bad", "split": "train"},
        {"positive": "please tell me more", "negative": "no", "split": "test"},
        {"positive": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "good day to you"}],
         "negative": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "what"}]},
    ]) + "\n", encoding="utf-8")
    p["my_jsonl"] = root / "my.jsonl"  # no splits: extract falls back to every pair
    p["my_jsonl"].write_text("\n".join(json.dumps({"positive": pos, "negative": neg}) for pos, neg in [
        ("thank you very much my friend", "you are rude"), ("please help me", "help me now"),
        ("i love this great book", "i hate this terrible book"), ("good day to you", "go away"),
        ("that is very kind of you", "that is bad"), ("hello friend", "what do you want"),
    ]) + "\n", encoding="utf-8")
    p["bad_jsonl"] = root / "bad.jsonl"
    p["bad_jsonl"].write_text("\n".join([
        json.dumps({"negative": "b"}),
        json.dumps({"positive": "a", "negative": "b"}),
        json.dumps({"postive": "a", "negative": "b", "split": "dev"}),
        '{"positive": "a", ',
        "",
        json.dumps({"positive": "same", "negative": "same"}),
    ]) + "\n", encoding="utf-8")
    for name in ("out_trait", "out_dataset", "out_range", "out_bad_data", "out_method", "gguf", "imported"):
        p[name] = root / f"{name}.out"

    env = dict(os.environ, STEERSCOPE_CACHE=str(root / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", COLUMNS="80")
    env.pop("FORCE_COLOR", None)
    m = ["--model", model_dir, "--device", "cpu"]
    gen = ["generate", PROMPT, "-n", "4", *m]
    calls = {
        # model loads first (slow), so that the pool is busy evenly
        "extract_trait": ["extract", "--trait", "formality", "--layer", "1", "-o", p["out_trait"], *m],
        "extract_dataset": ["extract", "--dataset", p["my_jsonl"], "-l", "1", "-l", "2", "--position", "last",
                            "-o", p["out_dataset"], *m],
        "generate_plain": gen,
        "generate_vector": ["generate", PROMPT, "hello friend", "-n", "4", "--vector", p["vec"], "--alpha", "2",
                            "--compare", "--json", *m],
        "layer_range": ["extract", "--trait", "formality", "--layer", "4", "-o", p["out_range"], *m],
        "d_model": [*gen, "--vector", p["vec48"]],
        "fingerprint_refused": [*gen, "--vector", p["vec_other"]],
        "fingerprint_allowed": [*gen, "--vector", p["vec_other"], "--allow-model-mismatch", "--layer", "1", "--json"],
        # fast ones (no model load)
        "models": ["models", "--json"],
        "datasets": ["datasets", "--json"],
        "validate_good": ["datasets", "validate", p["good_jsonl"]],
        "validate_bad": ["datasets", "validate", p["bad_jsonl"]],
        "unknown_model": ["generate", PROMPT, "--model", "no-such-model"],
        "existing": ["extract", "--trait", "formality", "--layer", "1", "-o", p["existing"], *m],
        "bad_dataset": ["extract", "--dataset", p["bad_jsonl"], "--layer", "1", "-o", p["out_bad_data"], *m],
        "nan_vector": [*gen, "--vector", p["vec_nan"]],
        "pickle_vector": [*gen, "--vector", p["vec_pickle"]],
        "unknown_method": ["extract", "--trait", "formality", "--layer", "1", "--method", "lda", "-o", p["out_method"], *m],
        "bad_positions": [*gen, "--vector", p["vec"], "--positions", "middle"],
    }

    def export_then_import():
        exported = _run_cli(["export", p["vec"], "--gguf", p["gguf"]], env, root)
        imported = _run_cli(["import", p["gguf"], "-o", p["imported"]], env, root) if exported.returncode == 0 else None
        return exported, imported

    with ThreadPoolExecutor(max_workers=3) as pool:
        c.futures = {name: pool.submit(_run_cli, args, env, root) for name, args in calls.items()}
        c.futures["export_import"] = pool.submit(export_then_import)
        yield c
        for future in c.futures.values():
            future.cancel()


def assert_ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


def assert_user_error(proc, *fragments) -> str:
    """Exit 2 with exactly one non-empty stderr line, ``error: ...``, containing every fragment."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------- listing


def test_models_json(cli):
    proc = cli["models"]
    assert_ok(proc)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert (rows["smollm2-135m"]["n_layers"], rows["smollm2-135m"]["d_model"]) == (30, 576)
    assert (rows["gemma3-270m"]["n_layers"], rows["gemma3-270m"]["d_model"]) == (18, 640)
    assert rows["smollm2-135m"]["default"] is True and rows["gemma3-270m"]["default"] is False
    assert rows["smollm2-135m"]["architecture"] == "llama"
    assert all(isinstance(r["installed"], bool) and r["converted"] is False for r in rows.values())  # fresh cache


def test_datasets_json(cli):
    proc = cli["datasets"]
    assert_ok(proc)
    rows = json.loads(proc.stdout)
    assert rows == dataset_summary()
    assert [r["trait"] for r in rows] == ["formality", "sentiment", "politeness", "truthfulness", "agreeableness", "refusal",
                                         "evaluation_awareness"]
    assert all(r["pairs"] >= 60 and min(r["prompts"].values()) >= 20 for r in rows)


def test_datasets_validate_good(cli):
    proc = cli["validate_good"]
    assert_ok(proc)
    text = " ".join(proc.stdout.split())  # rich may wrap this line at 80 columns
    assert text == f"{cli.paths['good_jsonl']}: 3 valid pairs (none: 1, test: 1, train: 1)"
    assert proc.stderr.strip() == ""


def test_datasets_validate_bad(cli):
    proc = cli["validate_bad"]
    bad = cli.paths["bad_jsonl"]
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[:4] == [
        f"{bad}:1: positive: missing required field",
        f"{bad}:3: postive: unknown field (allowed: environment, meta, negative, positive, split, trait)",
        f"{bad}:3: positive: missing required field",
        f"{bad}:3: split: expected one of ['test', 'train', 'validation'], got 'dev'",
    ]
    assert lines[4].startswith(f"{bad}:4: invalid JSON: ")
    assert lines[5:] == [f"{bad}:6: negative: identical to positive"]


# ---------------------------------------------------------------- extract


def test_extract_trait(cli):
    proc = cli["extract_trait"]
    assert_ok(proc)
    out = cli.paths["out_trait"]
    assert "wrote" in proc.stdout and "layer 1:" in proc.stdout
    vec = SteeringVector.load(out, lm=cli.lm)  # loadable, and made for this model
    assert vec.layers == [1]
    assert vec.metadata["trait"] == "formality"
    assert vec.metadata["n_pairs"] == len(builtin_pairs("formality", "train"))
    assert vec.metadata["dataset_hash"] == dataset_hash(builtin_pairs("formality", "train"))
    assert vec.metadata["method"] == "mean_diff" and vec.metadata["position"] == "mean"
    assert vec.metadata["model_name"] == str(cli.model)
    expected = extract(cli.lm, builtin_pairs("formality", "train"), [1])
    assert torch.allclose(vec.directions[1], expected.directions[1], rtol=1e-4, atol=1e-6)


def test_extract_own_dataset(cli):
    proc = cli["extract_dataset"]
    assert_ok(proc)
    vec = SteeringVector.load(cli.paths["out_dataset"], lm=cli.lm)
    pairs = read_pairs_file(cli.paths["my_jsonl"])
    assert vec.layers == [1, 2]
    assert vec.metadata["n_pairs"] == len(pairs) == 6
    assert vec.metadata["dataset_hash"] == dataset_hash(pairs)
    assert vec.metadata["position"] == "last"
    expected = extract(cli.lm, pairs, [1, 2], position="last")
    assert torch.allclose(vec.directions[2], expected.directions[2], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- generate


def test_generate_without_vector(cli):
    proc = cli["generate_plain"]
    assert_ok(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == f">>> {PROMPT}"
    assert len(lines) == 2  # the prompt, then its completion
    assert "relative dose" not in proc.stderr


def test_generate_with_vector_json(cli):
    proc = cli["generate_vector"]
    assert_ok(proc)
    result = json.loads(proc.stdout)
    assert result["vector"] == str(cli.paths["vec"])
    assert result["alpha"] == 2.0
    assert result["model"]["fingerprint"] == cli.lm.fingerprint and result["model"]["n_layers"] == 4
    assert [o["prompt"] for o in result["outputs"]] == [PROMPT, "hello friend"]
    for o in result["outputs"]:
        assert isinstance(o["completion"], str) and isinstance(o["unsteered"], str)
    vec = SteeringVector.load(cli.paths["vec"])
    assert set(result["relative_dose"]) == {"1", "2"}
    for layer in (1, 2):
        assert result["relative_dose"][str(layer)] == pytest.approx(vec.dose(2.0, layer))
    assert result["config"]["max_new_tokens"] == 4


# ---------------------------------------------------------------- export / import


def test_export_and_import(cli):
    exported, imported = cli["export_import"]
    assert_ok(exported)
    assert "wrote" in exported.stdout
    original = SteeringVector.load(cli.paths["vec"])
    from_gguf = import_gguf(cli.paths["gguf"])
    assert_ok(imported)
    back = SteeringVector.load(cli.paths["imported"], lm=cli.lm)
    for layer in original.layers:
        assert torch.equal(from_gguf.directions[layer], original.directions[layer])
        assert torch.equal(back.directions[layer], original.directions[layer])
    assert back.metadata["model_fingerprint"] == original.metadata["model_fingerprint"]


# ---------------------------------------------------------------- errors: exit 2, one line, no traceback


def test_unknown_model(cli):
    assert_user_error(cli["unknown_model"], "'no-such-model'", "smollm2-135m", "gemma3-270m")


def test_layer_out_of_range(cli):
    assert_user_error(cli["layer_range"], "layer 4 is out of range", "0..3")
    assert not cli.paths["out_range"].exists()


def test_existing_output_without_overwrite(cli):
    assert_user_error(cli["existing"], str(cli.paths["existing"]), "already exists", "--overwrite")
    assert cli.paths["existing"].read_bytes() == cli.before["existing"]


def test_malformed_dataset(cli):
    bad = cli.paths["bad_jsonl"]
    line = assert_user_error(cli["bad_dataset"], f"in {bad}", f"{bad}:1: positive: missing required field", f"{bad}:4: invalid JSON")
    assert line.startswith(f"error: 6 problem(s) in {bad}: ")
    assert line.endswith("(and 1 more)")
    assert not cli.paths["out_bad_data"].exists()


def test_vector_with_nan(cli):
    assert_user_error(cli["nan_vector"], str(cli.paths["vec_nan"]), "NaN or Inf")


def test_vector_not_safetensors(cli):
    assert_user_error(cli["pickle_vector"], str(cli.paths["vec_pickle"]), "not a safetensors file")
    assert not cli.paths["marker"].exists()


def test_vector_d_model_mismatch(cli):
    assert_user_error(cli["d_model"], "d_model 48", "d_model 32")


def test_vector_fingerprint_mismatch(cli):
    other = SteeringVector.load(cli.paths["vec_other"]).metadata["model_fingerprint"]
    assert other != cli.lm.fingerprint
    assert_user_error(cli["fingerprint_refused"], other, cli.lm.fingerprint, "--allow-model-mismatch")
    allowed = cli["fingerprint_allowed"]
    assert_ok(allowed)
    result = json.loads(allowed.stdout)
    assert [o["prompt"] for o in result["outputs"]] == [PROMPT] and isinstance(result["outputs"][0]["completion"], str)
    assert set(result["relative_dose"]) == {"1"}


def test_layer_missing_from_vector(cli, monkeypatch, capsys):
    # --layer naming a valid model layer that the vector lacks used to end in a KeyError traceback.
    # Run in-process through the same entry point (main) to spare one more subprocess.
    from steerscope.cli import main

    monkeypatch.setattr(sys, "argv", ["steerscope", "generate", PROMPT, "-n", "2", "--model", str(cli.model), "--device", "cpu",
                                      "--vector", str(cli.paths["vec"]), "--layer", "3"])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    assert_user_error(subprocess.CompletedProcess([], info.value.code, captured.out, captured.err),
                      "no direction for layer(s) [3]", "it has [1, 2]")


def test_unknown_method(cli):
    assert_user_error(cli["unknown_method"], "'lda'", "mean_diff", "pca", "probe")
    assert not cli.paths["out_method"].exists()


def test_bad_positions(cli):
    assert_user_error(cli["bad_positions"], "'middle'", "last-K")


def test_the_cli_only_parses_and_prints():
    """No command function of the CLI is longer than 40 lines: what it decides lives in the library."""
    import ast

    import steerscope.cli

    tree = ast.parse(pathlib.Path(steerscope.cli.__file__).read_text(encoding="utf-8"))
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert lengths and max(lengths.values()) <= 40, {k: v for k, v in lengths.items() if v > 40}
