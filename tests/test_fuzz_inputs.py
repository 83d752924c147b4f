"""Property-based fuzzing of the text inputs: pair files (surface "pair files") and prompt files
(surface "prompt files").

Files are generated as bytes (any bytes, other encodings, cut in the middle of a character), as
lines (CRLF, blank lines, U+2028, huge lines, deep nesting, NaN, numbers beyond 4300 digits,
unpaired surrogate escapes) and as JSON shapes (every field of the format with values of every
JSON type, chat structures with bad roles and contents, unknown keys). The readers must return
well-formed data or raise a SteerscopeError whose message is one line; valid files must read back
exactly. A share of the cases also runs through the command line (``datasets validate``,
``extract --dataset``, ``audit nullspace --prompts``, ``audit identifiability --prompts``) and
must end in success or exit status 2 with one ``error:`` line and nothing written.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import event, example, given
from hypothesis import strategies as st

from fuzzing import count_case
from steerscope.data.pairs import FIELDS, ROLES, SPLITS, ContrastivePair, dataset_hash, read_pairs_file
from steerscope.data.prompts import prompts_from_spec, read_environment_prompts, read_prompt_environments, read_prompts
from steerscope.errors import DataError, SteerscopeError
from steerscope.traitspec import spec_from_files
from test_fuzz_cli import assert_clean, assert_no_output, run_main

PAIRS, PROMPTS = "pair files", "prompt files"


def outcome(call):
    """``(result, None)``, or ``(None, message)`` for a SteerscopeError with a one-line message; any other
    exception fails the test."""
    try:
        return call(), None
    except SteerscopeError as exc:
        message = str(exc)
        assert message.strip() and message.splitlines() == [message], repr(message)
        for problem in exc.problems if isinstance(exc, DataError) else ():
            assert problem.strip() and problem.splitlines() == [problem], repr(problem)
        return None, message


def _write(folder: str, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


def _decoded(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _lines_of(text: str) -> list[str]:
    """The lines as the readers count them: text-mode reading ends a line at LF, CRLF or a lone CR."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


# ---------------------------------------------------------------- lines and files

def _json(finite: bool):
    """JSON values; with ``finite`` False, floats include NaN and ±Inf (dumped as the non-standard literals)."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**80), 2**80),
                        st.floats(allow_nan=not finite, allow_infinity=not finite), st.text(max_size=12))

    def containers(kids):
        return st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3))

    return st.recursive(scalars, containers, max_leaves=10)


JSON = _json(finite=False)
_NAMES = st.one_of(st.sampled_from(sorted(FIELDS | {"role", "content", "prompt", "env", "postive", "Split", ""})),
                   st.text(max_size=10))
_ODD_LINES = st.one_of(
    st.text(max_size=40),
    st.integers(1, 3000).map(lambda n: "[" * n),  # nesting deeper than Python's recursion limit
    st.integers(4000, 6000).map(lambda n: '{"positive": "a", "negative": "b", "meta": {"n": ' + "7" * n + "}}"),  # over 4300 digits
    st.sampled_from(["NaN", "-Infinity", '{"positive": "a", "negative": "b", "meta": {"x": NaN}}',
                     '{"positive": "a\\ud800", "negative": "b"}', '{"positive": "\\udfff", "negative": "b"}',
                     '{"positive": "\\ud83d\\ude00", "negative": "b"}', "\ufeff{}", "{}", "[]", "null",
                     '{"positive": "a", "negative": "b", "x\\ny": 1}', '{"positive": "a", "negative": "b", "\\u2028": 1}']),
)


def _message():
    role = st.one_of(st.sampled_from(sorted(ROLES)), JSON)
    return st.one_of(st.fixed_dictionaries({"role": role, "content": st.one_of(st.text(max_size=20), JSON)},
                                           optional={"name": JSON}), JSON)


ITEM = st.one_of(st.text(max_size=30), st.lists(_message(), max_size=3), JSON)


def _record():
    return st.fixed_dictionaries(
        {"positive": ITEM, "negative": ITEM},
        optional={"trait": st.one_of(st.text(max_size=10), JSON), "split": st.one_of(st.sampled_from(sorted(SPLITS)), JSON),
                  "environment": st.one_of(st.text(max_size=70), JSON),
                  "meta": st.one_of(st.dictionaries(st.text(max_size=5), JSON), JSON)},
    ).flatmap(lambda rec: st.dictionaries(_NAMES, JSON, max_size=2).map(lambda extra: extra | rec))


def _dumped(value, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity come out as the non-standard literals


def _lines(records):
    """Lines of a JSONL file: dumped records and JSON values, odd lines, blank lines and huge lines."""
    dumped = st.tuples(st.one_of(records, JSON), st.booleans()).map(lambda t: _dumped(*t))
    huge = st.integers(20_000, 100_000).map(lambda n: json.dumps({"positive": "x" * n, "negative": "y"}))
    return st.lists(st.one_of(dumped, dumped, _ODD_LINES, st.sampled_from(["", "   ", "\r"]), huge), max_size=6)


def _file(records):
    """A file's bytes: lines joined by LF or CRLF, in UTF-8 or another encoding, sometimes cut, or any bytes."""
    text = st.tuples(_lines(records), st.sampled_from(["\n", "\r\n"]), st.booleans()).map(
        lambda t: t[1].join(t[0]) + (t[1] if t[2] else ""))
    encoded = st.tuples(text, st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"])).map(
        lambda t: t[0].encode(t[1], errors="replace"))
    cut = st.tuples(encoded, st.integers(0, 10**6)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)])
    return st.one_of(encoded, encoded, cut, st.binary(max_size=200))


# ---------------------------------------------------------------- pair files


def _check_pairs(pairs, text: str) -> None:
    """Read pairs are well formed, one per non-blank line, and can be hashed and stored as strict UTF-8 JSON."""
    assert len(pairs) == sum(1 for line in _lines_of(text) if line.strip())
    for pair in pairs:
        for item in (pair.positive, pair.negative):
            assert (isinstance(item, str) and item.strip()) or (isinstance(item, list) and item and all(
                m["role"] in ROLES and m["content"].strip() for m in item))
        assert pair.positive != pair.negative and isinstance(pair.positive, str) == isinstance(pair.negative, str)
        assert pair.split in SPLITS | {None} and isinstance(pair.meta, dict)
        json.dumps(pair.to_json(), allow_nan=False, ensure_ascii=False).encode("utf-8")
    dataset_hash(pairs)


def _check_problems(message: str, path: Path, text: str | None) -> None:
    """A DataError names the file, and every line it cites exists."""
    assert str(path) in message
    if text is not None:
        cited = [int(n) for n in re.findall(re.escape(str(path)) + r":(\d+):", message)]
        assert all(1 <= n <= len(_lines_of(text)) for n in cited), (cited, message)


@given(data=_file(_record()))
@example(data=b"[" * 100_000)  # RecursionError
@example(data=b'{"positive": "a", "negative": "b", "meta": {"n": ' + b"1" * 5000 + b"}}")  # ValueError: over 4300 digits
@example(data=b'{"positive": "a", "negative": "b", "x\\ny": 1}')  # the unknown field's name broke the message over two lines
@example(data=b'{"positive": "a", "negative": "b", "meta": {"x": NaN}}')  # read, then refused by the run store's strict JSON
def test_pair_files(data):
    count_case(PAIRS)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "pairs.jsonl", data)
        pairs, message = outcome(lambda: read_pairs_file(path))
        event("read" if message is None else "refused")
        text = _decoded(data)
        if message is None:
            assert text is not None
            _check_pairs(pairs, text)
        else:
            _check_problems(message, path, text)


def _valid_pair():
    """Two different items of one kind: non-blank strings, or chats of messages with known roles and non-blank contents."""
    content = st.text(min_size=1, max_size=30).filter(str.strip)
    chat = st.lists(st.fixed_dictionaries({"role": st.sampled_from(sorted(ROLES)), "content": content}), min_size=1, max_size=3)
    return st.one_of(st.tuples(content, content), st.tuples(chat, chat)).map(_distinct)


def _distinct(pair):
    """``(positive, negative)`` with the negative changed where the two came out equal."""
    pos, neg = pair
    if pos != neg:
        return pos, neg
    if isinstance(neg, str):
        return pos, neg + " not"
    return pos, [*neg[:-1], {**neg[-1], "content": neg[-1]["content"] + " not"}]


def _valid_record():
    return st.fixed_dictionaries(
        {"pair": _valid_pair()},
        optional={"trait": st.text(min_size=1, max_size=10).filter(str.strip), "split": st.sampled_from(sorted(SPLITS)),
                  "environment": st.text(min_size=1, max_size=64).filter(str.strip),
                  "meta": st.dictionaries(st.text(max_size=5), _json(finite=True), max_size=2)},
    ).map(lambda r: {"positive": r["pair"][0], "negative": r["pair"][1], **{k: v for k, v in r.items() if k != "pair"}})


@given(records=st.lists(_valid_record(), min_size=1, max_size=10), ascii_only=st.booleans(), crlf=st.booleans(),
       blanks=st.integers(0, 3), name=st.one_of(st.none(), st.text(max_size=70)))
@example(records=[{"positive": "\U0001f600 smile", "negative": "frown"}], ascii_only=True, crlf=False, blanks=0,
         name=None)  # an escaped surrogate pair is text
@example(records=[{"positive": "a\u2028b", "negative": "c"}], ascii_only=False, crlf=True, blanks=1,
         name="abc\n")  # the trait name passed the $-anchored check, newline and all
def test_valid_pair_files_read_back_exactly(records, ascii_only, crlf, blanks, name):
    count_case(PAIRS)
    newline = "\r\n" if crlf else "\n"
    text = (newline * (1 + blanks)).join(_dumped(r, ascii_only) for r in records) + newline
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "mine.jsonl", text.encode("utf-8"))
        expected = [ContrastivePair(r["positive"], r["negative"], r.get("trait"), r.get("split"), r.get("meta", {}),
                                    r.get("environment")) for r in records]
        assert read_pairs_file(path) == expected
        prompts = _write(tmp, "prompts.txt", b"hello there\nhow are you\n")
        spec, _ = outcome(lambda: spec_from_files(path, prompts, name))
        event("spec: " + ("made" if spec is not None else "refused"))
        if spec is not None:
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", spec.name) and len(spec.train) + len(spec.test) <= len(records)
            spec.digest()


@given(data=_file(_record()), command=st.sampled_from(["validate", "extract"]))
@example(data=b"caf\xe9", command="extract")
def test_pair_files_through_the_cli(data, command):
    count_case(PAIRS)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "pairs.jsonl", data)
        _, message = outcome(lambda: read_pairs_file(path))
        folder = Path(tmp) / "out"
        if command == "validate":
            result = run_main(["datasets", "validate", path])
            assert "Traceback" not in result.out + result.err
            assert result.status == (0 if message is None else 2)
            lines = [line for line in result.err.splitlines() if line.strip()]
            assert all(line.startswith(str(path)) for line in lines), lines  # every problem as file:line: field: message
        else:
            result = run_main(["extract", "--dataset", path, "--layer", "1", "-o", folder / "v.safetensors"])
            assert_clean(result)
            assert result.status == ("load" if message is None else 2)
        event(f"{command}: exit {result.status}")
        assert_no_output(folder)


# ---------------------------------------------------------------- prompt files


def _prompt_record():
    text = st.one_of(st.text(max_size=20), JSON)
    return st.fixed_dictionaries({}, optional={"prompt": text, "env": text}).flatmap(
        lambda rec: st.dictionaries(_NAMES, JSON, max_size=1).map(lambda extra: extra | rec))


@given(data=_file(_prompt_record()), suffix=st.sampled_from([".txt", ".jsonl", ".md"]))
@example(data=b"caf\xe9\n", suffix=".txt")  # UnicodeDecodeError
@example(data=b'{"prompt": "caf\xe9"}\n', suffix=".jsonl")  # UnicodeDecodeError
@example(data=b"[" * 100_000, suffix=".jsonl")  # RecursionError
@example(data=b'{"prompt": "a\\ud800"}\n', suffix=".jsonl")  # read, then the tokenizer fails on the lone surrogate
@example(data='{"prompt": "a\u2028b"}\n'.encode(), suffix=".jsonl")  # split in two by splitlines(): two invalid lines
def test_prompt_files(data, suffix):
    count_case(PROMPTS)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, f"prompts{suffix}", data)
        prompts, message = outcome(lambda: read_prompts(path))
        by_env, env_message = outcome(lambda: read_prompt_environments(path))
        strict, _ = outcome(lambda: read_environment_prompts(path))
        text = _decoded(data)
        event("read" if message is None else "refused")
        if message is not None:
            assert str(path) in message and env_message is not None
            return
        assert text is not None and all(isinstance(p, str) and p.strip() for p in prompts)
        if suffix != ".jsonl":
            assert prompts == [line.strip() for line in _lines_of(text) if line.strip()] and strict is None
        if by_env is not None:
            assert sorted(p for ps in by_env.values() for p in ps) == sorted(prompts)
            assert all(isinstance(e, str) and e.strip() for e in by_env)
        if strict is not None:
            assert by_env == strict
        for prompt in prompts:
            prompt.encode("utf-8")


def _valid_prompts():
    prompt = st.text(min_size=1, max_size=40).filter(str.strip)
    env = st.one_of(st.none(), st.text(min_size=1, max_size=10).filter(str.strip))
    return st.lists(st.tuples(prompt, env), min_size=1, max_size=8)


@given(rows=_valid_prompts(), ascii_only=st.booleans(), crlf=st.booleans())
def test_valid_jsonl_prompt_files_read_back_exactly(rows, ascii_only, crlf):
    count_case(PROMPTS)
    records = [{"prompt": p} | ({"env": e} if e is not None else {}) for p, e in rows]
    text = ("\r\n" if crlf else "\n").join(_dumped(r, ascii_only) for r in records)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "prompts.jsonl", text.encode("utf-8"))
        assert read_prompts(path) == [p for p, _ in rows]
        expected: dict[str, list[str]] = {}
        for p, e in rows:
            expected.setdefault(e or "in_distribution", []).append(p)
        assert read_prompt_environments(path) == expected


@given(spec=st.one_of(st.from_regex(r"[0-9]{1,30}", fullmatch=True), st.text(max_size=12),
                      st.sampled_from(["²", "٣", "0", "00", "-1", "1e3"])))
@example(spec="²")  # ValueError: invalid literal for int()
@example(spec="9" * 5000)  # ValueError: over 4300 digits
@example(spec="0")  # an empty list of prompts, refused only after the model load
def test_prompt_count_specs(spec):
    count_case(PROMPTS)
    prompts, message = outcome(lambda: prompts_from_spec(spec))
    event("read" if message is None else "refused")
    if message is None:
        assert re.fullmatch(r"[0-9]+", spec) and len(prompts) == int(spec) >= 1 and all(p.strip() for p in prompts)


@given(data=_file(_prompt_record()), command=st.sampled_from(["nullspace", "identifiability"]))
def test_prompt_files_through_the_cli(data, command):
    count_case(PROMPTS)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "prompts.jsonl", data)
        folder = Path(tmp) / "out"
        if command == "nullspace":
            _, message = outcome(lambda: prompts_from_spec(str(path)))
            result = run_main(["audit", "nullspace", "--layers", "1", "--prompts", path, "--out", folder])
            assert result.status == ("load" if message is None else 2)
        else:
            lines = [json.dumps({"positive": f"kind words {i}", "negative": f"rude {i}"}) for i in range(6)]
            pairs = _write(tmp, "pairs.jsonl", "\n".join(lines).encode())
            result = run_main(["audit", "identifiability", "--dataset", pairs, "--prompts", path, "--n-prompts", "2", "--quick",
                               "--out", folder])
        assert_clean(result)
        event(f"{command}: exit {result.status}")
        if result.status == 2:
            assert_no_output(folder)
