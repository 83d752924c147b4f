import pytest

from steerscope.data.prompts import builtin_prompt_mix, prompts_from_spec, read_environment_prompts, read_prompt_environments, read_prompts
from steerscope.data.traits import ENVIRONMENTS, MIX_TRAITS, builtin_prompts
from steerscope.errors import DataError, SteerscopeError


def test_text_file_skips_blank_lines(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\n  second prompt  \n")
    assert read_prompts(text) == ["first prompt", "second prompt"]


def test_jsonl_errors_name_every_bad_line_with_its_number_in_the_file(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n\n{"text": "b"}\nnot json\n[1]\n{"prompt": "  "}\n')
    with pytest.raises(DataError) as info:
        read_prompts(jsonl)
    assert info.value.problems == [
        f"{jsonl}:3: prompt: missing or not a non-empty string",
        f"{jsonl}:4: invalid JSON: Expecting value (column 1)",
        f"{jsonl}:5: line must be a JSON object, got list",
        f"{jsonl}:6: prompt: missing or not a non-empty string",
    ]


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(SteerscopeError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(SteerscopeError, match="no prompts"):
        read_prompts(empty)


def test_environment_file_groups_prompts_in_file_order(tmp_path):
    path = tmp_path / "envs.jsonl"
    path.write_text('{"prompt": "a", "env": "x"}\n{"prompt": "b", "env": "y"}\n{"prompt": "c", "env": "x"}\n')
    assert read_environment_prompts(path) == {"x": ["a", "c"], "y": ["b"]}
    path.write_text('{"prompt": "a", "env": "x"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match=r"envs.jsonl:2: env: missing"):
        read_environment_prompts(path)
    with pytest.raises(SteerscopeError, match="is JSONL"):
        read_environment_prompts(tmp_path / "envs.txt")


def test_builtin_prompt_mix_cycles_over_traits_and_environments():
    assert builtin_prompt_mix(15) == [builtin_prompts(t, e)[0] for t in MIX_TRAITS for e in ENVIRONMENTS]
    assert len(builtin_prompt_mix(360)) == 360
    with pytest.raises(SteerscopeError, match="only 360"):
        builtin_prompt_mix(361)


def test_spec_is_a_count_or_a_file(tmp_path):
    assert prompts_from_spec("3") == builtin_prompt_mix(3)
    path = tmp_path / "p.txt"
    path.write_text("hello\n")
    assert prompts_from_spec(str(path)) == ["hello"]
    with pytest.raises(SteerscopeError, match="number of built-in prompts or a file"):
        prompts_from_spec("nope")


def test_prompt_environments_default_to_in_distribution(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a\n\nb\n", encoding="utf-8")
    assert read_prompt_environments(text) == {"in_distribution": ["a", "b"]}
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"prompt": "b", "env": "topic_shift"}\n{"prompt": "c"}\n', encoding="utf-8")
    assert read_prompt_environments(jsonl) == {"in_distribution": ["a", "c"], "topic_shift": ["b"]}
    jsonl.write_text('{"prompt": "a"}\n{"prompt": "b", "env": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match="p.jsonl:2: env"):
        read_prompt_environments(jsonl)
