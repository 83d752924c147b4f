"""JSON Lines: the one parser of every JSONL file steerscope reads (pairs, prompts, scorer corpora).

Problems are reported as ``where:line: message`` with the line number counted over every line of
the file, blank ones included, so that an editor jumps to the right place. Only standard JSON is
read: ``NaN`` and ``Infinity`` are refused, and so are unpaired UTF-16 surrogate escapes
(``"\\ud800"``), which decode to no text that could be written back or tokenised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NonStandard(ValueError):
    """A JSON constant outside the standard (NaN, Infinity, -Infinity)."""


def _refuse_constant(name: str) -> Any:
    raise _NonStandard(f"{name} is not a JSON number")


def _parse(line: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why)`` when ``line`` is not standard JSON text."""
    try:
        value = json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} (column {exc.colno})"
    except _NonStandard as exc:
        return None, str(exc)
    except RecursionError:
        return None, "nested too deeply"
    except ValueError:  # an integer beyond Python's digit limit (4300 digits)
        return None, "a number has too many digits"
    if _SURROGATE_ESCAPE.search(line):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "an unpaired surrogate escape (\\ud800-\\udfff) is not text"
    return value, None


def json_objects(lines: Iterable[str], where: str, problems: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line that holds a JSON object; every other
    non-blank line appends its problem to ``problems`` and is skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record, why = _parse(line)
        if why is not None:
            problems.append(f"{where}:{number}: invalid JSON: {why}")
            continue
        if not isinstance(record, dict):
            problems.append(f"{where}:{number}: line must be a JSON object, got {type(record).__name__}")
            continue
        yield number, record
