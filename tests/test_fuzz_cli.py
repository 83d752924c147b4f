"""Property-based fuzzing of the command line's options (surface "cli options").

Option values are negative, zero, small, huge (beyond 64 bits), NaN, ±Inf, empty, comma lists and
junk. Every case runs the real entry point (``steerscope.cli.main``) in-process and must end in
success or exit status 2 with one ``error: ...`` line on stderr, never a traceback, and leave no
output file (nor a temporary one) when it fails.

``generate``, ``extract`` and ``export`` run for real on a tiny model (context shortened to
:data:`CONTEXT` tokens so that a large ``--max-new-tokens`` is refused instead of generating for
minutes). The audit commands would start minutes of work once their options pass: there the
model load is replaced by :class:`ModelLoad`, so each case checks the whole parse-and-validate
path up to the load, and an accepted case must hold option values the audit can run with
(:func:`_domain_problems`).
"""

from __future__ import annotations

import io
import math
import re
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
import typer
from hypothesis import event, example, given
from hypothesis import strategies as st

import steerscope.cli as cli
from fuzzing import count_case
from steerscope.data import builtin_pairs
from steerscope.extract import extract
from steerscope.testing import tiny_model
from steerscope.vectors import SteeringVector, import_gguf

SURFACE = "cli options"
CONTEXT = 32
PROMPT = "tell me about your weekend"


# ---------------------------------------------------------------- the entry point, in-process


class ModelLoad(BaseException):
    """Raised where a command would load its model: its options were parsed and validated."""


@dataclass
class Outcome:
    status: object  # the exit status, or "load" when the command reached the model load
    out: str
    err: str


def _no_load(*args, **kwargs):
    raise ModelLoad


#: The click command that ``cli.app`` builds on every call (20 ms each time), built once.
COMMAND = typer.main.get_command(cli.app)


def run_main(args, lm=None) -> Outcome:
    """``steerscope ARGS`` through ``steerscope.cli.main``; the model load returns ``lm`` (or stops the command)."""
    out, err = io.StringIO(), io.StringIO()
    load = _no_load if lm is None else (lambda *a, **k: lm)
    with mock.patch.object(sys, "argv", ["steerscope", *map(str, args)]), mock.patch.object(cli, "_load", load), \
            mock.patch.object(cli, "app", COMMAND), redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main()
            status: object = 0
        except SystemExit as exc:
            status = 0 if exc.code is None else exc.code
        except ModelLoad:
            status = "load"
    return Outcome(status, out.getvalue(), err.getvalue())


def assert_clean(outcome: Outcome) -> None:
    """Success (or the model load reached), or exit 2 with one ``error:`` line last on stderr; never a traceback."""
    assert "Traceback" not in outcome.out + outcome.err, outcome.err
    if outcome.status in (0, "load"):
        return
    assert outcome.status == 2, (outcome.status, outcome.err)
    lines = [line for line in outcome.err.splitlines() if line.strip()]  # progress bars may come first
    assert lines and lines[-1].startswith("error: ") and len(lines[-1]) > len("error: "), outcome.err
    assert sum(line.startswith("error:") for line in lines) == 1, outcome.err


def assert_no_output(folder: Path) -> None:
    """Nothing was written under ``folder`` (no output file, no temporary file)."""
    left = sorted(p.name for p in folder.rglob("*")) if folder.exists() else []
    assert not left, left


# ---------------------------------------------------------------- option values


_INTS = st.one_of(st.integers(-3, 40), st.integers(-(2**70), 2**70),
                  st.sampled_from([0, -1, 1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, 10**30]))
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10),
                    st.sampled_from([0.0, -0.0, 1e-320, 5e-324, 1e300, -1e300, 0.5, 1.0]))
_JUNK = st.sampled_from(["", " ", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e-400", "0x10", "1_000",
                         "1,2", "1,,2", ",", ",1", "1,", "abc", "½", "²", "٣", "1.5", "-0", "+3", " 7 ", "1e3"])
#: One option value as typed: an integer, a float, junk, or a comma list of numbers.
NUMBER = st.one_of(_INTS.map(str), _FLOATS.map(repr), _JUNK,
                   st.lists(st.one_of(_INTS.map(str), _FLOATS.map(repr)), max_size=4).map(",".join))


def _typical_ints(low: int, high: int) -> st.SearchStrategy[str]:
    """:data:`NUMBER` or, twice as often, an integer near the option's range (so that a fair share of the cases runs)."""
    return st.one_of(NUMBER, st.integers(low, high).map(str), st.integers(low, high).map(str))


def _typical_floats(low: float, high: float, lists: bool = False) -> st.SearchStrategy[str]:
    typical = st.floats(low, high).map(repr)
    if lists:
        typical = st.lists(st.floats(low, high), min_size=1, max_size=3).map(lambda xs: ",".join(map(repr, xs)))
    return st.one_of(NUMBER, typical, typical)


#: Values per option: junk and extremes, and typical values near the valid range; unlisted options draw NUMBER.
TYPICAL = {
    "--alpha": _typical_floats(-8, 8), "--temperature": _typical_floats(0, 3), "--top-p": _typical_floats(0, 1.2),
    "--delta": _typical_floats(-0.1, 0.6), "--alphas": _typical_floats(-4, 4, lists=True), "--tol": _typical_floats(-1, 1),
    "--tolerances": _typical_floats(-0.1, 1.1, lists=True), "--target-effect": _typical_floats(-1, 3),
    "--max-ppl-ratio": _typical_floats(0, 4),
    "--seed": st.one_of(_typical_ints(0, 99), _typical_ints(-1, 2**33)), "--max-new-tokens": _typical_ints(-1, 24),
    "--batch-size": _typical_ints(-1, 5), "--layer": _typical_ints(-5, 5), "--layers": _typical_ints(-5, 5),
    "--seeds": _typical_ints(-1, 4),
    "--n-prompts": _typical_ints(-1, 30), "--samples": _typical_ints(-1, 4), "--class-draws": _typical_ints(-2, 8),
    "--max-prompts": _typical_ints(-1, 60), "--chunk": _typical_ints(-1, 200), "--all-positions": _typical_ints(-2, 4),
    "--positions": _typical_ints(-20, 20), "--sweep-prompts": _typical_ints(-1, 4), "--budget": _typical_ints(-1, 64),
    "--prompts": _typical_ints(-1, 30), "--capture-layer": _typical_ints(-5, 5), "--env-prompts": _typical_ints(-1, 8),
    "--k": _typical_ints(-1, 40), "--components": _typical_ints(-1, 8), "--boot": _typical_ints(-1, 30),
    "--later-layers": _typical_ints(-5, 5),
    "--max-positions": _typical_ints(-1, 16), "--max-candidates": _typical_ints(-1, 300),
}


def _value(option: str) -> st.SearchStrategy[str]:
    return TYPICAL.get(option, NUMBER)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _numbers(text: str) -> list[float | None]:
    return [_number(part) for part in text.split(",") if part.strip()]


def _in(text: str, low: float = -math.inf, high: float = math.inf, open_low: bool = False) -> bool:
    x = _number(text)
    return x is not None and math.isfinite(x) and (x > low if open_low else x >= low) and x <= high


def _all_in(text: str, low: float, high: float) -> bool:
    xs = _numbers(text)
    return bool(xs) and all(x is not None and low < x < high for x in xs)


_COUNTS = ("--max-new-tokens", "--batch-size", "--seeds", "--n-prompts", "--samples", "--max-prompts", "--chunk", "--sweep-prompts",
           "--budget", "--env-prompts", "--k", "--components", "--boot", "--prompts")
#: What an accepted value of each option must be, read as the CLI reads it (a necessary condition only).
DOMAIN = {name: (lambda t: _in(t, 1)) for name in _COUNTS} | {
    "--alpha": lambda t: _in(t), "--seed": lambda t: _in(t, 0, 2**32 - 1), "--temperature": lambda t: _in(t, cli.MIN_TEMPERATURE),
    "--top-p": lambda t: _in(t, 0, 1, True), "--delta": lambda t: _in(t, 0, 0.5, True), "--class-draws": lambda t: _in(t, 0),
    "--all-positions": lambda t: _in(t, 0), "--tol": lambda t: _in(t, 0, open_low=True),
    "--target-effect": lambda t: _in(t, 0, open_low=True), "--max-ppl-ratio": lambda t: _in(t, 1),
    "--alphas": lambda t: _all_in(t, -math.inf, math.inf), "--tolerances": lambda t: _all_in(t, 0, 1),
    "--positions": lambda t: bool(_numbers(t)),
}
_WINDOW = re.compile(r"\s*(user|all|last:0*[1-9][0-9]*|-?[0-9]*:-?[0-9]*|0*[1-9][0-9]*)\s*")
#: The reachability audit's --positions is a window of tokens (user, all, last:N or A:B); the null-space audit's, token positions.
REACH_DOMAIN = DOMAIN | {"--positions": lambda t: bool(_WINDOW.fullmatch(t)) and t.strip() != ":",
                         "--max-positions": lambda t: _in(t, 1), "--max-candidates": lambda t: _in(t, 1)}
#: Typical reachability windows and near misses.
WINDOWS = st.one_of(st.sampled_from(["user", "all", "last:3", "0:5", ":4", "-6:", "-3:-1", ":", "last:", "last:0", "user ", "first",
                                     "last-3"]),
                    st.tuples(st.integers(-40, 40), st.integers(-40, 40)).map(lambda t: f"{t[0]}:{t[1]}"),
                    _INTS.map(lambda n: f"last:{n}"), NUMBER)


def _domain_problems(options: dict[str, str], domain=DOMAIN) -> list[str]:
    return [f"{k}={v!r}" for k, v in options.items() if k in domain and not domain[k](v)]


def _argv(options: dict[str, str]) -> list[str]:
    return [f"{name}={value}" for name, value in options.items()]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lm_and_vector(tmp_path_factory):
    model = tiny_model("llama")
    folder = tmp_path_factory.mktemp("fuzz-cli")
    vector = extract(model, builtin_pairs("formality", "train")[:4], [1, 2]).save(folder / "v.safetensors")
    model.model.config.max_position_embeddings = CONTEXT  # a large --max-new-tokens is refused, not generated
    return model, vector


@pytest.fixture(scope="module")
def lm(lm_and_vector):
    return lm_and_vector[0]


@pytest.fixture(scope="module")
def inputs(lm_and_vector, tmp_path_factory):
    pairs = tmp_path_factory.mktemp("fuzz-cli") / "pairs.jsonl"
    lines = [f'{{"positive": "thank you kindly my friend {i}", "negative": "go away {i}"}}' for i in range(4)]
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"pairs": pairs, "vector": lm_and_vector[1]}


# ---------------------------------------------------------------- generate (runs on the tiny model)

GENERATE = ("--alpha", "--max-new-tokens", "--seed", "--temperature", "--top-p", "--batch-size", "--layer", "--positions")
POSITIONS = st.one_of(st.sampled_from(["all", "prompt", "generated", "last", "", "last-", "first"]),
                      _INTS.map(lambda k: f"last-{k}"), NUMBER)


def _generate_options():
    value = {name: _value(name) for name in GENERATE} | {"--positions": st.one_of(POSITIONS, TYPICAL["--positions"])}
    return st.lists(st.sampled_from(GENERATE), unique=True, max_size=3).flatmap(
        lambda names: st.fixed_dictionaries({n: value[n] for n in names}))


@given(options=_generate_options(), sample=st.booleans())
@example(options={"--batch-size": "0"}, sample=False)  # ValueError: range() arg 3 must not be zero
@example(options={"--batch-size": "-1"}, sample=False)  # printed nothing and exited 0
@example(options={"--seed": str(10**30)}, sample=False)  # ValueError: Overflow when unpacking long long
@example(options={"--alpha": "nan"}, sample=False)  # generated from NaN states and exited 0
@example(options={"--max-new-tokens": "1", "--alpha": "1e+300"}, sample=True)  # α·v = Inf: RuntimeError in multinomial
@example(options={"--temperature": "nan"}, sample=True)  # transformers' ValueError, a traceback
@example(options={"--temperature": "9e-251"}, sample=True)  # logits / T overflowed: RuntimeError in torch.multinomial
@example(options={"--positions": "last-" + "9" * 30}, sample=False)  # OverflowError: int too big to convert
@example(options={"--max-new-tokens": "abc"}, sample=False)  # click's usage error: a framed, multi-line message
def test_generate_options(options, sample, lm, inputs):
    count_case(SURFACE)
    options = {"--max-new-tokens": "4"} | options  # the default, 40, exceeds the shortened context
    args = ["generate", PROMPT, "--vector", inputs["vector"], *_argv(options), *(["--sample"] if sample else [])]
    outcome = run_main(args, lm)
    assert_clean(outcome)
    event(f"exit {outcome.status}")
    if outcome.status == 0:
        assert outcome.out.startswith(f">>> {PROMPT}"), outcome.out
        domain = DOMAIN if sample else {k: v for k, v in DOMAIN.items() if k != "--temperature"}
        assert not _domain_problems(options, domain)


# ---------------------------------------------------------------- extract (runs on the tiny model)

EXTRACT_VALUES = {"--layer": _value("--layer"), "--batch-size": _value("--batch-size"),
                  "--position": st.sampled_from(["mean", "last", "", "first"]),
                  "--method": st.sampled_from(["mean_diff", "pca", "probe", "", "lda"]),
                  "--split": st.sampled_from(["train", "all", "test", ""])}


@given(options=st.lists(st.sampled_from(sorted(EXTRACT_VALUES)), unique=True, max_size=3).flatmap(
    lambda names: st.fixed_dictionaries({n: EXTRACT_VALUES[n] for n in names})))
@example(options={"--batch-size": "0"})  # ValueError: range() arg 3 must not be zero
def test_extract_options(options, lm, inputs):
    count_case(SURFACE)
    options = {"--layer": "1"} | options
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "out"
        output = folder / "v.safetensors"
        outcome = run_main(["extract", "--dataset", inputs["pairs"], "-o", output, *_argv(options)], lm)
        assert_clean(outcome)
        event(f"exit {outcome.status}")
        if outcome.status != 0:
            assert_no_output(folder)
            return
        vec = SteeringVector.load(output, lm=lm)
        assert vec.layers == sorted({lm.check_layer(int(x)) for x in options["--layer"].split(",")})
        assert not _domain_problems(options)
        assert sorted(p.name for p in folder.iterdir()) == ["v.safetensors"]


# ---------------------------------------------------------------- export (no model)


@given(alpha=NUMBER)
@example(alpha="1e300")  # wrote Inf directions that import then refused
@example(alpha="0")  # wrote all-zero directions
@example(alpha="1e-300")  # underflowed to zeros, imported back as NaN
@example(alpha="1.8862942629097614e-41")  # float32 subnormals: the import was 2 % off
def test_export_alpha(alpha, inputs):
    count_case(SURFACE)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "out"
        output = folder / "v.gguf"
        outcome = run_main(["export", inputs["vector"], "--gguf", output, f"--alpha={alpha}"])
        assert_clean(outcome)
        event(f"exit {outcome.status}")
        if outcome.status != 0:
            assert_no_output(folder)
            return
        assert _in(alpha) and float(alpha) != 0
        original, back = SteeringVector.load(inputs["vector"]), import_gguf(output)
        for layer in original.layers:
            assert torch.allclose(back.directions[layer], original.directions[layer], rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------- audit commands (stopped at the model load)

#: Each command: its fixed arguments, and the numeric options fuzzed (with their domain).
COMMANDS = {
    "identifiability": (["audit", "identifiability", "--trait", "formality", "--quick"],
                        ["--alpha", "--seeds", "--n-prompts", "--samples", "--max-new-tokens", "--delta", "--class-draws", "--alphas",
                         "--layer", "--seed"]),
    "sequential": (["audit", "identifiability", "--trait", "formality", "--quick", "--until-conclusive"],
                   ["--max-prompts", "--n-prompts"]),
    "nullspace": (["audit", "nullspace"], ["--layers", "--prompts", "--positions", "--tolerances", "--chunk", "--all-positions"]),
    "reachability": (["audit", "reachability", "--trait", "formality", "--quick"],
                     ["--alpha", "--n-prompts", "--positions", "--max-positions", "--max-candidates", "--alphas", "--sweep-prompts",
                      "--budget", "--max-new-tokens", "--layer", "--capture-layer", "--seed"]),
    "side-effects": (["audit", "side-effects", "--trait", "formality", "--quick"], ["--alpha", "--layer", "--seed"]),
    "robustness": (["audit", "robustness", "--trait", "formality", "--quick"], ["--alpha", "--layer", "--seed"]),
    "monitor": (["monitor", "--trait", "formality"],
                ["--alpha", "--n-prompts", "--samples", "--max-new-tokens", "--layer", "--seed"]),
    "recover": (["recover", "--method", "crosslayer", "--trait", "formality"],
                ["--layer", "--env-prompts", "--k", "--components", "--tol", "--boot", "--later-layers", "--seed"]),
    "audit": (["audit", "--trait", "formality", "--quick"], ["--target-effect", "--max-ppl-ratio", "--seed", "--layer"]),
}
#: Options that each command needs (a default value, replaced when fuzzed).
REQUIRED = {"side-effects": {"--alpha": "2"}, "robustness": {"--alpha": "2"}, "reachability": {"--alpha": "2"},
            "nullspace": {"--layers": "1", "--prompts": "2"}, "recover": {"--layer": "1"}, "sequential": {"--max-prompts": "24"}}


def _command_case():
    def value(name, option):
        return WINDOWS if (name, option) == ("reachability", "--positions") else _value(option)

    def options(name):
        return st.lists(st.sampled_from(COMMANDS[name][1]), unique=True, max_size=3).flatmap(
            lambda names: st.fixed_dictionaries({n: value(name, n) for n in names}))
    return st.sampled_from(sorted(COMMANDS)).flatmap(lambda name: st.tuples(st.just(name), options(name)))


@given(case=_command_case())
@example(case=("reachability", {"--alpha": "nan"}))  # RuntimeError (cannot reshape a tensor of 0 elements) after the load
@example(case=("monitor", {"--alpha": "nan"}))  # RuntimeError: probability tensor contains inf or nan
@example(case=("identifiability", {"--alpha": "nan"}))  # loaded the scorer, then a misleading "parallel to v"
@example(case=("side-effects", {"--alpha": "nan"}))  # refused only after the model load
@example(case=("nullspace", {"--positions": ""}))  # RuntimeError: stack expects a non-empty TensorList
@example(case=("nullspace", {"--tolerances": "nan"}))  # ValueError writing results.json, after the whole audit
@example(case=("nullspace", {"--chunk": "0"}))  # ValueError: range() arg 3 must not be zero
@example(case=("nullspace", {"--prompts": "0"}))  # refused only after the model load
@example(case=("nullspace", {"--prompts": "²"}))  # ValueError: invalid literal for int()
@example(case=("recover", {"--boot": "0"}))  # silently ran the default 20 resamples
@example(case=("reachability", {"--n-prompts": "0"}))  # silently audited the default number of prompts
@example(case=("monitor", {"--seed": "-1"}))  # numpy's ValueError in default_rng, after the model load
@example(case=("audit", {"--target-effect": "inf"}))  # accepted: no α can reach an infinite effect
@example(case=("audit", {"--max-ppl-ratio": "inf"}))  # accepted, as a ratio limit
def test_audit_command_options(case):
    count_case(SURFACE)
    name, options = case
    fixed, _ = COMMANDS[name]
    options = REQUIRED.get(name, {}) | options
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        outcome = run_main([*fixed, "--out", folder, *_argv(options)])
        assert_clean(outcome)
        event(f"{name}: {outcome.status}")
        if outcome.status == 2:
            assert_no_output(folder)
        else:
            assert outcome.status == "load", outcome
            assert not _domain_problems(options, REACH_DOMAIN if name == "reachability" else DOMAIN)


# Before: parse_window read digits with str.isdigit (true for '²') and int() (over 4300 digits: ValueError).
@pytest.mark.parametrize("window", ["last:²", "²:3", "last:" + "9" * 5000])
def test_reachability_windows_with_odd_digits(window):
    with tempfile.TemporaryDirectory() as tmp:
        args = [*COMMANDS["reachability"][0], "--alpha", "2", f"--positions={window}", "--out", Path(tmp) / "run"]
        outcome = run_main(args)
    assert outcome.status == 2 and outcome.err.startswith("error: ")


def test_default_options_reach_the_model_load():
    """The stop at the model load is reached by valid options (the property above is not vacuous)."""
    for name, (fixed, _) in COMMANDS.items():
        with tempfile.TemporaryDirectory() as tmp:
            outcome = run_main([*fixed, "--out", Path(tmp) / "run", *_argv(REQUIRED.get(name, {}))])
        assert outcome.status == "load", (name, outcome.err)
