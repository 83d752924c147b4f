"""Prompt files: one reader for every command, with ``file:line: field: message`` errors.

Two formats: a text file with one prompt per line (blank lines skipped), or JSONL (``.jsonl``)
with an object per line holding a non-empty string ``prompt`` and, where environments are asked
for, a non-empty string ``env``. Files are UTF-8; lines end at ``\n`` only, as in the pair reader (a
JSON string may hold U+2028). Line numbers count every line of the file, blank ones included.
"""

from __future__ import annotations

import re
from pathlib import Path

from steerscope.data.jsonl import json_objects
from steerscope.errors import DataError, SteerscopeError, shown


def _no_prompts(file: Path) -> list[dict[str, str]]:
    raise SteerscopeError(f"no prompts in {file}")


def _lines(file: Path) -> list[str]:
    """The lines of a UTF-8 prompt file (SteerscopeError when it is missing, DataError when it is not UTF-8)."""
    if not file.is_file():
        raise SteerscopeError(f"prompt file {file} does not exist")
    try:
        return file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(str(file), [f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None


def _records(file: Path, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """Every line as ``{field: value}``; DataError listing every malformed line."""
    lines = _lines(file)
    if file.suffix != ".jsonl":
        return [{"prompt": line.strip()} for line in lines if line.strip()] or _no_prompts(file)
    records: list[dict[str, str]] = []
    problems: list[str] = []
    for number, record in json_objects(lines, str(file), problems):
        bad = [f for f in fields if not isinstance(record.get(f), str) or not record[f].strip()]
        problems += [f"{file}:{number}: {f}: missing or not a non-empty string" for f in bad]
        if not bad:
            records.append({f: record[f] for f in fields})
    if problems:
        raise DataError(str(file), problems)
    return records or _no_prompts(file)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file (one per line) or a JSONL file with a ``prompt`` field per line."""
    return [r["prompt"] for r in _records(Path(path), ("prompt",))]


def read_environment_prompts(path: str | Path) -> dict[str, list[str]]:
    """``{env: [prompt, …]}`` from a JSONL file with ``prompt`` and ``env`` on every line (file order)."""
    file = Path(path)
    if file.suffix != ".jsonl":
        raise SteerscopeError(f"{file}: an environments file is JSONL with 'prompt' and 'env' on every line")
    by_env: dict[str, list[str]] = {}
    for record in _records(file, ("prompt", "env")):
        by_env.setdefault(record["env"], []).append(record["prompt"])
    return by_env


def read_prompt_environments(path: str | Path, default_env: str = "in_distribution") -> dict[str, list[str]]:
    """``{env: [prompt, …]}`` from a prompt file whose ``env`` is optional: text lines and JSONL lines
    without ``env`` go to ``default_env`` (file order within each environment)."""
    file = Path(path)
    if file.suffix != ".jsonl":
        return {default_env: read_prompts(file)}
    records = _records(file, ("prompt",))
    lines = _lines(file)
    problems: list[str] = []
    envs = []
    for number, record in json_objects(lines, str(file), problems):
        env = record.get("env", default_env)
        if not isinstance(env, str) or not env.strip():
            problems.append(f"{file}:{number}: env: must be a non-empty string when given")
        envs.append(env)
    if problems:
        raise DataError(str(file), problems)
    by_env: dict[str, list[str]] = {}
    for record, env in zip(records, envs):
        by_env.setdefault(env, []).append(record["prompt"])
    return by_env


def _prompt_mix() -> list[str]:
    """Every built-in evaluation prompt, round-robin over every trait of the mix × environment."""
    from steerscope.data.traits import ENVIRONMENTS, MIX_TRAITS, builtin_prompts

    pools = [builtin_prompts(trait, env) for trait in MIX_TRAITS for env in ENVIRONMENTS]
    return [pool[i] for i in range(max(map(len, pools))) for pool in pools if i < len(pool)]


def builtin_prompt_mix(n: int) -> list[str]:
    """``n`` built-in evaluation prompts, taken round-robin over every trait of the mix × environment."""
    mixed = _prompt_mix()
    if n < 1:
        raise SteerscopeError(f"at least 1 built-in prompt is needed, {n} requested")
    if n > len(mixed):
        raise SteerscopeError(f"only {len(mixed)} built-in prompts exist, {n} requested")
    return mixed[:n]


def prompts_from_spec(spec: str) -> list[str]:
    """``N`` (that many built-in prompts, see :func:`builtin_prompt_mix`) or a prompt file (:func:`read_prompts`)."""
    if re.fullmatch(r"[0-9]+", spec):
        digits = spec.lstrip("0") or "0"
        if len(digits) > 9:
            raise SteerscopeError(f"only {len(_prompt_mix())} built-in prompts exist, {shown(spec, 40)} requested")
        return builtin_prompt_mix(int(digits))
    if not Path(spec).is_file():
        raise SteerscopeError(f"--prompts must be a number of built-in prompts or a file, got {shown(spec)}")
    return read_prompts(spec)
