"""Contrastive pairs in JSONL: reading, validation with file/line/field messages, hashing.

One JSON object per line::

    {"positive": ITEM, "negative": ITEM, "trait": "formality", "split": "train", "environment": "topic_shift", "meta": {...}}

ITEM is a non-empty string or a chat conversation: a non-empty list of ``{"role", "content"}``
messages (roles ``system``, ``user``, ``assistant``). Both items of a pair are of the same kind.
``trait``, ``split`` (``train``, ``test`` or ``validation``), ``environment`` (the data
distribution the pair was written in, a name of at most 64 characters; multi-environment recovery
extracts one vector per environment) and ``meta`` (an object) are optional. Blank lines are ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerscope.encoding import Item
from steerscope.data.jsonl import json_objects
from steerscope.errors import DataError, SteerscopeError, shown

FIELDS = {"positive", "negative", "trait", "split", "environment", "meta"}
SPLITS = {"train", "test", "validation"}
ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class ContrastivePair:
    """Two items that differ in one trait: ``positive`` has it, ``negative`` its opposite."""

    positive: Item
    negative: Item
    trait: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    environment: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"positive": self.positive, "negative": self.negative}
        for key in ("trait", "split", "environment"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        if self.meta:
            data["meta"] = self.meta
        return data


def _item_problems(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [] if value.strip() else [f"{name}: empty string"]
    if not isinstance(value, list):
        return [f"{name}: expected a string or a list of chat messages, got {type(value).__name__}"]
    if not value:
        return [f"{name}: empty message list"]
    problems = []
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            problems.append(f"{where}: expected an object with role and content")
            continue
        extra = set(msg) - {"role", "content"}
        if extra:
            problems.append(f"{where}: unknown key(s) {shown(sorted(extra))}")
        if not isinstance(msg.get("role"), str) or msg["role"] not in ROLES:
            problems.append(f"{where}.role: expected one of {sorted(ROLES)}, got {shown(msg.get('role'))}")
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"{where}.content: expected a non-empty string")
    return problems


def _key(name: str) -> str:
    """A field name as written in a message: itself when short and printable, else quoted and cut."""
    return name if name.isprintable() and 0 < len(name) <= 40 else shown(name, 40)


def _record_problems(record: dict[str, Any]) -> list[str]:
    problems = [f"{_key(key)}: unknown field (allowed: {', '.join(sorted(FIELDS))})" for key in sorted(set(record) - FIELDS)]
    for key in ("positive", "negative"):
        if key not in record:
            problems.append(f"{key}: missing required field")
        else:
            problems += _item_problems(record[key], key)
    pos, neg = record.get("positive"), record.get("negative")
    if pos is not None and neg is not None:
        if isinstance(pos, str) != isinstance(neg, str):
            problems.append("negative: must be the same kind (string or messages) as positive")
        elif pos == neg:
            problems.append("negative: identical to positive")
    if "trait" in record and (not isinstance(record["trait"], str) or not record["trait"].strip()):
        problems.append("trait: expected a non-empty string")
    if "split" in record and (not isinstance(record["split"], str) or record["split"] not in SPLITS):
        problems.append(f"split: expected one of {sorted(SPLITS)}, got {shown(record['split'])}")
    env = record.get("environment")
    if "environment" in record and (not isinstance(env, str) or not env.strip() or len(env) > 64):
        problems.append(f"environment: expected a non-empty name of at most 64 characters, got {shown(env)}")
    if "meta" in record and not isinstance(record["meta"], dict):
        problems.append("meta: expected an object")
    return problems


def validate_lines(lines: Sequence[str], path: str) -> tuple[list[ContrastivePair], list[str]]:
    """Parse JSONL lines; return the pairs and every problem as ``path:line: field: message``."""
    pairs: list[ContrastivePair] = []
    problems: list[str] = []
    for number, record in json_objects(lines, path, problems):
        found = _record_problems(record)
        if found:
            problems += [f"{path}:{number}: {p}" for p in found]
            continue
        pairs.append(ContrastivePair(record["positive"], record["negative"], record.get("trait"), record.get("split"), record.get("meta", {}),
                                     record.get("environment")))
    if not pairs and not problems:
        problems.append(f"{path}: no pairs (the file is empty)")
    return pairs, problems


def read_pairs_file(path: str | Path) -> list[ContrastivePair]:
    """Read and validate a JSONL pair file; raise :class:`DataError` listing every problem."""
    file = Path(path)
    if not file.is_file():
        raise SteerscopeError(f"dataset file {file} does not exist")
    try:
        lines = file.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028 etc.
    except UnicodeDecodeError as exc:
        raise DataError(str(file), [f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    pairs, problems = validate_lines(lines, str(file))
    if problems:
        raise DataError(str(file), problems)
    return pairs


def select_split(pairs: Sequence[ContrastivePair], split: str | None) -> list[ContrastivePair]:
    """Pairs of one split (all pairs when ``split`` is None); raise if none match."""
    if split is None:
        return list(pairs)
    chosen = [p for p in pairs if p.split == split]
    if not chosen:
        raise SteerscopeError(f"no pairs with split {split!r}")
    return chosen


def dataset_hash(pairs: Sequence[ContrastivePair]) -> str:
    """SHA-256 (first 16 hex chars) of the pairs' canonical JSON."""
    blob = json.dumps([p.to_json() for p in pairs], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
