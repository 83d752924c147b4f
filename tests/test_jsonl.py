from steerscope.data.jsonl import json_objects


def test_objects_come_with_their_line_numbers_and_every_bad_line_is_a_problem():
    lines = ['{"a": 1}', "", "  ", "{oops", "[1, 2]", '"text"', '{"b": 2}']
    problems: list[str] = []
    assert list(json_objects(lines, "f.jsonl", problems)) == [(1, {"a": 1}), (7, {"b": 2})]
    assert problems == [
        "f.jsonl:4: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        "f.jsonl:5: line must be a JSON object, got list",
        "f.jsonl:6: line must be a JSON object, got str",
    ]
