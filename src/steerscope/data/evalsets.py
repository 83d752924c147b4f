"""Evaluation sets that belong to no trait, written for steerscope: neutral prompts with reference
responses (fluency and drift on text unrelated to the trait), a small capability check, and
paraphrases of each built-in trait's in-distribution prompts (robustness to wording)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from steerscope.data.jsonl import json_objects
from steerscope.errors import DataError, SteerscopeError

CAPABILITY_CATEGORIES = ("knowledge", "arithmetic", "instruction")


@dataclass(frozen=True)
class NeutralItem:
    """A request unrelated to any trait and a plain, correct reference response."""

    prompt: str
    response: str


@dataclass(frozen=True)
class CapabilityItem:
    """A question, its short answer ``choices`` and the index of the correct one; ``category`` is
    one of :data:`CAPABILITY_CATEGORIES`."""

    question: str
    choices: tuple[str, ...]
    answer: int
    category: str


def _records(name: str) -> list[tuple[int, dict]]:
    where = f"<builtin {name}>"
    text = (resources.files("steerscope.data") / "builtin" / name).read_text(encoding="utf-8")
    problems: list[str] = []
    records = list(json_objects(text.splitlines(), where, problems))
    if problems:
        raise DataError(where, problems)
    return records


def _text(record: dict, field: str, where: str, number: int, problems: list[str]) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}:{number}: {field}: missing or not a non-empty string")
        return ""
    return value


def neutral_set() -> list[NeutralItem]:
    """The 48 neutral prompts with their reference responses (``data/builtin/neutral.jsonl``)."""
    problems: list[str] = []
    items = [NeutralItem(_text(r, "prompt", "<builtin neutral>", n, problems), _text(r, "response", "<builtin neutral>", n, problems))
             for n, r in _records("neutral.jsonl")]
    if problems:
        raise DataError("<builtin neutral>", problems)
    return items


def _capability_item(record: dict, number: int, problems: list[str]) -> CapabilityItem | None:
    where = "<builtin capability>"
    question = _text(record, "question", where, number, problems)
    choices, answer, category = record.get("choices"), record.get("answer"), record.get("category")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        problems.append(f"{where}:{number}: choices: need a list of at least 2 non-empty strings")
        return None
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        problems.append(f"{where}:{number}: answer: need the index of one of the {len(choices)} choices")
        return None
    if category not in CAPABILITY_CATEGORIES:
        problems.append(f"{where}:{number}: category: must be one of {', '.join(CAPABILITY_CATEGORIES)}")
        return None
    return CapabilityItem(question, tuple(choices), answer, category) if question else None


def capability_set() -> list[CapabilityItem]:
    """The 72 capability items (24 per category, ``data/builtin/capability.jsonl``)."""
    problems: list[str] = []
    items = [_capability_item(r, n, problems) for n, r in _records("capability.jsonl")]
    if problems:
        raise DataError("<builtin capability>", problems)
    return [i for i in items if i is not None]


def interleaved(items: Sequence[CapabilityItem], n: int | None) -> list[CapabilityItem]:
    """The first ``n`` items taken in turn from each category (all items when None)."""
    if n is None or n >= len(items):
        return list(items)
    if n < 2:
        raise SteerscopeError(f"the capability check needs at least 2 items, got {n}")
    by_cat = [[i for i in items if i.category == c] for c in CAPABILITY_CATEGORIES]
    out = [group[k] for k in range(max(map(len, by_cat))) for group in by_cat if k < len(group)]
    return out[:n]


def builtin_paraphrases(trait: str) -> list[tuple[str, str]]:
    """``(prompt, paraphrase)`` for each in-distribution prompt of built-in ``trait``, in file order."""
    from steerscope.data.traits import TRAITS

    if trait not in TRAITS:
        raise SteerscopeError(f"unknown built-in trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    where = f"<builtin {trait} paraphrases>"
    problems: list[str] = []
    out = [(_text(r, "prompt", where, n, problems), _text(r, "paraphrase", where, n, problems))
           for n, r in _records(f"paraphrases/{trait}.jsonl")]
    if problems:
        raise DataError(where, problems)
    return out
