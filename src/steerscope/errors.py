"""Errors that steerscope reports to the user as a one-line message (CLI exit code 2)."""

from __future__ import annotations


class SteerscopeError(Exception):
    """Bad input or an unsatisfiable request; the message says what is wrong and how to fix it."""


class DataError(SteerscopeError):
    """A data file is malformed; ``problems`` lists every ``file:line: field: message``."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} problem(s) in {path}: {shown}{more}")


class VectorFileError(SteerscopeError):
    """A steering-vector file is unreadable, invalid, or does not fit the model."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for quoting bad input in a one-line message: at most ``limit`` characters."""
    try:
        text = " ".join(repr(value).split("\n"))
    except (ValueError, RecursionError):  # an int beyond Python's digit limit, a self-nested list
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (its type's name when empty), at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
