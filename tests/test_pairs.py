"""The JSONL pair format (steerscope.data.pairs) and the built-in trait datasets (steerscope.data.traits)."""

from __future__ import annotations

import json
import re

import pytest

from steerscope.data import (
    ENVIRONMENTS, TRAITS, ContrastivePair, builtin_pairs, builtin_prompts, dataset_hash, dataset_summary, load_pairs,
    read_pairs_file,
)
from steerscope.data.pairs import select_split, validate_lines
from steerscope.errors import DataError, SteerscopeError

ROLES_TEXT = "['assistant', 'system', 'user']"
SPLITS_TEXT = "['test', 'train', 'validation']"
ALLOWED_TEXT = "allowed: environment, meta, negative, positive, split, trait"

CHAT_POS = [{"role": "user", "content": "How was your weekend?"}, {"role": "assistant", "content": "It was very pleasant, thank you."}]
CHAT_NEG = [{"role": "user", "content": "How was your weekend?"}, {"role": "assistant", "content": "meh, whatever"}]


def _write(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def _problems(path) -> list[str]:
    with pytest.raises(DataError) as info:
        read_pairs_file(path)
    assert info.value.path == str(path)
    return info.value.problems


def _only_problem(tmp_path, record) -> list[str]:
    """Problems of a file whose line 1 is ``record``, without the ``path:1: `` prefix."""
    path = _write(tmp_path, [record])
    problems = _problems(path)
    prefix = f"{path}:1: "
    assert all(p.startswith(prefix) for p in problems), problems
    return [p[len(prefix):] for p in problems]


# ---------------------------------------------------------------- valid input


def test_string_pairs_parse_with_optional_fields(tmp_path):
    path = _write(tmp_path, [
        {"positive": "Good evening, sir.", "negative": "yo dude", "trait": "formality", "split": "train", "meta": {"id": 7}},
        {"positive": "I would be delighted.", "negative": "sure whatever"},
        {"positive": "Kindly proceed.", "negative": "go on", "split": "validation"},
    ])
    pairs = read_pairs_file(path)
    assert pairs == [
        ContrastivePair("Good evening, sir.", "yo dude", "formality", "train", {"id": 7}),
        ContrastivePair("I would be delighted.", "sure whatever", None, None, {}),
        ContrastivePair("Kindly proceed.", "go on", None, "validation", {}),
    ]


def test_chat_pairs_parse(tmp_path):
    system = [{"role": "system", "content": "Be helpful."}]
    path = _write(tmp_path, [
        {"positive": CHAT_POS, "negative": CHAT_NEG, "trait": "formality", "split": "test"},
        {"positive": system + CHAT_POS, "negative": system + CHAT_NEG},
    ])
    pairs = read_pairs_file(path)
    assert len(pairs) == 2
    assert pairs[0].positive == CHAT_POS and pairs[0].negative == CHAT_NEG and pairs[0].split == "test"
    assert pairs[1].positive[0] == {"role": "system", "content": "Be helpful."}


def test_to_json_round_trips_and_omits_empty_optionals():
    full = ContrastivePair(CHAT_POS, CHAT_NEG, "formality", "train", {"source": "x"})
    assert full.to_json() == {"positive": CHAT_POS, "negative": CHAT_NEG, "trait": "formality", "split": "train", "meta": {"source": "x"}}
    bare = ContrastivePair("a", "b")
    assert bare.to_json() == {"positive": "a", "negative": "b"}
    pairs, problems = validate_lines([json.dumps(full.to_json()), json.dumps(bare.to_json())], "mem")
    assert problems == [] and pairs == [full, bare]


def test_blank_lines_are_ignored_but_counted(tmp_path):
    path = tmp_path / "blank.jsonl"
    good = json.dumps({"positive": "a", "negative": "b"})
    path.write_text(f"\n{good}\n   \n\t\n{{\"negative\": \"b\"}}\n\n", encoding="utf-8")
    assert _problems(path) == [f"{path}:5: positive: missing required field"]
    path.write_text(f"\n{good}\n   \n{good.replace('b', 'c')}\n\n\n", encoding="utf-8")
    assert [p.negative for p in read_pairs_file(path)] == ["b", "c"]


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "crlf.jsonl"
    lines = [json.dumps({"positive": "a", "negative": "b"}), json.dumps({"positive": "c", "negative": "d"})]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    assert [(p.positive, p.negative) for p in read_pairs_file(path)] == [("a", "b"), ("c", "d")]


def test_unicode_line_separators_inside_strings_are_not_line_breaks(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 raw; they are not JSONL line breaks.
    path = tmp_path / "u2028.jsonl"
    records = [{"positive": "one\u2028two", "negative": "three\u2029four"}, {"positive": "five\x85six", "negative": "seven"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    pairs = read_pairs_file(path)
    assert [(p.positive, p.negative) for p in pairs] == [("one\u2028two", "three\u2029four"), ("five\x85six", "seven")]


# ---------------------------------------------------------------- one problem per kind


def test_invalid_json(tmp_path):
    path = _write(tmp_path, [{"positive": "a", "negative": "b"}, '{"positive": "a", "negative": '])
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:2: invalid JSON: ")
    assert re.search(r"\(column \d+\)$", problem)


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"just a string"', "str"), ("42", "int"), ("null", "NoneType")])
def test_line_not_an_object(tmp_path, line, kind):
    path = _write(tmp_path, [line])
    assert _problems(path) == [f"{path}:1: line must be a JSON object, got {kind}"]


def test_missing_positive_and_negative(tmp_path):
    assert _only_problem(tmp_path, {"negative": "b"}) == ["positive: missing required field"]
    assert _only_problem(tmp_path, {"positive": "a"}) == ["negative: missing required field"]
    assert _only_problem(tmp_path, {}) == ["positive: missing required field", "negative: missing required field"]


@pytest.mark.parametrize("empty", ["", "   ", "\n\t"])
def test_empty_string(tmp_path, empty):
    assert _only_problem(tmp_path, {"positive": empty, "negative": "b"}) == ["positive: empty string"]
    assert _only_problem(tmp_path, {"positive": "a", "negative": empty}) == ["negative: empty string"]


@pytest.mark.parametrize("value, kind", [(3, "int"), (1.5, "float"), (True, "bool"), ({"text": "a"}, "dict"), (None, "NoneType")])
def test_wrong_item_type(tmp_path, value, kind):
    problems = _only_problem(tmp_path, {"positive": value, "negative": "b"})
    assert problems[0] == f"positive: expected a string or a list of chat messages, got {kind}"


def test_empty_message_list(tmp_path):
    assert _only_problem(tmp_path, {"positive": [], "negative": CHAT_NEG}) == ["positive: empty message list"]
    assert _only_problem(tmp_path, {"positive": CHAT_POS, "negative": []}) == ["negative: empty message list"]


def test_message_without_role_or_content(tmp_path):
    assert _only_problem(tmp_path, {"positive": [{"content": "hi"}], "negative": CHAT_NEG}) == [
        f"positive[0].role: expected one of {ROLES_TEXT}, got None"]
    assert _only_problem(tmp_path, {"positive": CHAT_POS, "negative": [CHAT_NEG[0], {"role": "assistant"}]}) == [
        "negative[1].content: expected a non-empty string"]
    assert _only_problem(tmp_path, {"positive": CHAT_POS, "negative": [{"role": "user", "content": "  "}]}) == [
        "negative[0].content: expected a non-empty string"]
    assert _only_problem(tmp_path, {"positive": CHAT_POS, "negative": [{"role": "user", "content": 5}]}) == [
        "negative[0].content: expected a non-empty string"]


@pytest.mark.parametrize("role", ["bot", "User", "", 3, ["user"], {"r": "user"}])
def test_bad_role(tmp_path, role):
    # Unhashable roles (list, dict) used to crash with TypeError instead of being reported.
    problems = _only_problem(tmp_path, {"positive": [{"role": role, "content": "hi"}], "negative": CHAT_NEG})
    assert problems == [f"positive[0].role: expected one of {ROLES_TEXT}, got {role!r}"]


def test_message_not_an_object_and_unknown_message_key(tmp_path):
    problems = _only_problem(tmp_path, {"positive": [CHAT_POS[0], "hello"], "negative": [dict(CHAT_NEG[0], name="bob"), CHAT_NEG[1]]})
    assert problems == ["positive[1]: expected an object with role and content", "negative[0]: unknown key(s) ['name']"]


def test_unknown_field_typo(tmp_path):
    problems = _only_problem(tmp_path, {"postive": "a", "negative": "b"})
    assert problems == [f"postive: unknown field ({ALLOWED_TEXT})", "positive: missing required field"]
    assert _only_problem(tmp_path, {"positive": "a", "negative": "b", "Split": "train", "extra": 1}) == [
        f"Split: unknown field ({ALLOWED_TEXT})", f"extra: unknown field ({ALLOWED_TEXT})"]


def test_positive_identical_to_negative(tmp_path):
    assert _only_problem(tmp_path, {"positive": "same", "negative": "same"}) == ["negative: identical to positive"]
    assert _only_problem(tmp_path, {"positive": CHAT_POS, "negative": CHAT_POS}) == ["negative: identical to positive"]


def test_string_vs_messages_mismatch(tmp_path):
    expected = ["negative: must be the same kind (string or messages) as positive"]
    assert _only_problem(tmp_path, {"positive": "a", "negative": CHAT_NEG}) == expected
    assert _only_problem(tmp_path, {"positive": CHAT_POS, "negative": "b"}) == expected


@pytest.mark.parametrize("split", ["dev", "Train", "", None, 1, ["train"], {"name": "train"}])
def test_bad_split(tmp_path, split):
    # Unhashable splits (list, dict) used to crash with TypeError instead of being reported.
    problems = _only_problem(tmp_path, {"positive": "a", "negative": "b", "split": split})
    assert problems == [f"split: expected one of {SPLITS_TEXT}, got {split!r}"]


@pytest.mark.parametrize("environment", ["", "  ", None, 3, ["topic_shift"], "x" * 65])
def test_bad_environment(tmp_path, environment):
    problems = _only_problem(tmp_path, {"positive": "a", "negative": "b", "environment": environment})
    assert problems == [f"environment: expected a non-empty name of at most 64 characters, got {environment!r}"]


def test_environment_is_read_and_written_back(tmp_path):
    from steerscope.data.pairs import read_pairs_file

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"positive": "a", "negative": "b", "environment": "legal"}) + "\n")
    (pair,) = read_pairs_file(path)
    assert pair.environment == "legal" and pair.to_json()["environment"] == "legal"


@pytest.mark.parametrize("meta", [[1, 2], "note", 3, None])
def test_meta_not_an_object(tmp_path, meta):
    assert _only_problem(tmp_path, {"positive": "a", "negative": "b", "meta": meta}) == ["meta: expected an object"]


@pytest.mark.parametrize("trait", ["", "  ", 5, None])
def test_bad_trait(tmp_path, trait):
    assert _only_problem(tmp_path, {"positive": "a", "negative": "b", "trait": trait}) == ["trait: expected a non-empty string"]


@pytest.mark.parametrize("content", ["", "\n\n", "   \n\t\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    assert _problems(path) == [f"{path}: no pairs (the file is empty)"]


# ---------------------------------------------------------------- several problems, file-level errors


def test_every_problem_in_a_file_is_reported(tmp_path):
    path = _write(tmp_path, [
        {"positive": "fine", "negative": "also fine"},
        "{not json}",
        {"negative": "b"},
        "",
        {"postive": "a", "negative": "b", "split": "dev"},
        {"positive": "x", "negative": "x", "meta": []},
        {"positive": "a", "negative": "b", "trait": "formality"},
        [1],
    ])
    problems = _problems(path)
    assert problems[0].startswith(f"{path}:2: invalid JSON: ")
    assert problems[1:] == [
        f"{path}:3: positive: missing required field",
        f"{path}:5: postive: unknown field ({ALLOWED_TEXT})",
        f"{path}:5: positive: missing required field",
        f"{path}:5: split: expected one of {SPLITS_TEXT}, got 'dev'",
        f"{path}:6: negative: identical to positive",
        f"{path}:6: meta: expected an object",
        f"{path}:8: line must be a JSON object, got list",
    ]


def test_data_error_message_summarises(tmp_path):
    path = _write(tmp_path, [{"negative": "b"}] * 7)
    with pytest.raises(DataError) as info:
        read_pairs_file(path)
    assert len(info.value.problems) == 7
    message = str(info.value)
    assert message.startswith(f"7 problem(s) in {path}: {path}:1: positive: missing required field; ")
    assert message.endswith("(and 2 more)")
    assert "\n" not in message
    assert isinstance(info.value, SteerscopeError)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"positive": "caf\u00e9", "negative": "bar"}, ensure_ascii=False).encode("latin-1") + b"\n")
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: not UTF-8 text (")
    assert "at byte 17" in problems[0]


def test_missing_file(tmp_path):
    with pytest.raises(SteerscopeError, match="does not exist") as info:
        read_pairs_file(tmp_path / "nope.jsonl")
    assert not isinstance(info.value, DataError)


# ---------------------------------------------------------------- select_split, load_pairs, dataset_hash

PAIRS = [
    ContrastivePair("a", "b", split="train"),
    ContrastivePair("c", "d", split="test"),
    ContrastivePair("e", "f", split="train"),
    ContrastivePair("g", "h"),
]


def test_select_split():
    assert select_split(PAIRS, "train") == [PAIRS[0], PAIRS[2]]
    assert select_split(PAIRS, "test") == [PAIRS[1]]
    assert select_split(PAIRS, None) == PAIRS
    assert select_split(PAIRS, None) is not PAIRS
    with pytest.raises(SteerscopeError, match="no pairs with split 'validation'"):
        select_split(PAIRS, "validation")


def test_load_pairs_from_file_and_builtin(tmp_path):
    path = _write(tmp_path, [p.to_json() for p in PAIRS])
    assert load_pairs(path) == PAIRS
    assert load_pairs(str(path), "test") == [PAIRS[1]]
    assert load_pairs("formality", "test") == builtin_pairs("formality", "test")


def test_dataset_hash_is_stable_and_sensitive():
    h = dataset_hash(PAIRS)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert dataset_hash(list(PAIRS)) == h
    assert dataset_hash([ContrastivePair(p.positive, p.negative, p.trait, p.split, dict(p.meta)) for p in PAIRS]) == h
    assert dataset_hash(PAIRS[::-1]) != h  # order matters
    assert dataset_hash(PAIRS[:3]) != h
    assert dataset_hash([ContrastivePair("a", "b", split="test"), *PAIRS[1:]]) != h
    assert dataset_hash([ContrastivePair("b", "a", split="train"), *PAIRS[1:]]) != h
    # Pinned value: the hash is recorded in vector files, so it must not drift between versions.
    assert dataset_hash([ContrastivePair("a", "b")]) == dataset_hash([ContrastivePair("a", "b", None, None, {})])
    assert dataset_hash([ContrastivePair("a", "b")]) == "27ead8930bc346c8"


def test_dataset_hash_matches_file_contents(tmp_path):
    path = _write(tmp_path, [p.to_json() for p in PAIRS])
    assert dataset_hash(read_pairs_file(path)) == dataset_hash(PAIRS)


# ---------------------------------------------------------------- built-in datasets


def _question(item) -> str:
    if isinstance(item, str):
        return item
    return next(m["content"] for m in item if m["role"] == "user")


@pytest.mark.parametrize("trait", TRAITS)
def test_builtin_pairs(trait):
    assert len(TRAITS) == 7
    pairs = builtin_pairs(trait)
    assert len(pairs) >= 60
    train, test = builtin_pairs(trait, "train"), builtin_pairs(trait, "test")
    assert train and test and len(train) + len(test) == len(pairs)
    assert all(p.trait == trait for p in pairs)
    assert {_question(p.positive) for p in train}.isdisjoint({_question(p.positive) for p in test})
    for p in pairs:
        assert p.positive != p.negative
        if trait == "evaluation_awareness":  # the framing of the request differs, the answer is the same
            assert _question(p.positive) != _question(p.negative) and p.positive[-1] == p.negative[-1]
        else:
            assert _question(p.positive) == _question(p.negative)


@pytest.mark.parametrize("trait", TRAITS)
def test_builtin_prompts(trait):
    everything = builtin_prompts(trait)
    per_env = {env: builtin_prompts(trait, env) for env in ENVIRONMENTS}
    assert set(ENVIRONMENTS) == {"in_distribution", "topic_shift", "genre_shift"}
    for env, prompts in per_env.items():
        assert len(prompts) >= 20, env
        assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert sorted(everything) == sorted(p for prompts in per_env.values() for p in prompts)


def test_dataset_summary_matches():
    rows = {r["trait"]: r for r in dataset_summary()}
    assert list(rows) == list(TRAITS)
    for trait, row in rows.items():
        assert row["pairs"] == len(builtin_pairs(trait)) == row["train"] + row["test"]
        assert row["prompts"] == {env: len(builtin_prompts(trait, env)) for env in ENVIRONMENTS}


def test_unknown_trait_and_environment():
    for call in (lambda: builtin_pairs("humour"), lambda: builtin_prompts("humour")):
        with pytest.raises(SteerscopeError) as info:
            call()
        assert "'humour'" in str(info.value)
        assert all(t in str(info.value) for t in TRAITS)
    with pytest.raises(SteerscopeError) as info:
        builtin_prompts("formality", "out_of_domain")
    assert "'out_of_domain'" in str(info.value)
    assert all(env in str(info.value) for env in ENVIRONMENTS)
