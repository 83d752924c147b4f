"""JSON Lines: the one parser of every JSONL file steerscope reads (pairs, prompts, scorer corpora).

Problems are reported as ``where:line: message`` with the line number counted over every line of
the file, blank ones included, so that an editor jumps to the right place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def json_objects(lines: Iterable[str], where: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line that holds a JSON object; every other
    non-blank line appends its problem to ``problems`` and is skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}:{number}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{where}:{number}: line must be a JSON object, got {type(record).__name__}")
            continue
        yield number, record
