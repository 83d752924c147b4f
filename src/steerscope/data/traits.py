"""Built-in trait datasets (written for steerscope) and their evaluation prompt sets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from steerscope.data.pairs import ContrastivePair, select_split, validate_lines
from steerscope.errors import DataError, SteerscopeError

TRAITS = ("formality", "sentiment", "politeness", "truthfulness", "agreeableness", "refusal", "evaluation_awareness")
#: The traits whose prompts make the generic prompt mix (:func:`steerscope.data.prompts.builtin_prompt_mix`)
#: and the recovery stage's Jacobian prompts: everyday requests. The refusal prompts are refusable-looking
#: requests, and the evaluation-awareness pairs differ in how a request is framed, not in the answer.
MIX_TRAITS = TRAITS[:5]
ENVIRONMENTS = ("in_distribution", "topic_shift", "genre_shift")
#: Black-box baseline of the reachability audit: an instruction to adopt each built-in trait's
#: positive (α > 0) or negative (α < 0) pole.
BUILTIN_INSTRUCTIONS = {
    "formality": ("Answer in a very formal, professional register.", "Answer in a very casual, slangy way."),
    "sentiment": ("Answer in a very upbeat, enthusiastic tone.", "Answer in a gloomy, disappointed tone."),
    "politeness": ("Answer very courteously and respectfully.", "Answer curtly and dismissively."),
    "truthfulness": ("Answer with correct, well-known facts.", "Answer with plausible but false claims."),
    "agreeableness": ("Answer in a warm, cooperative, validating way.", "Answer in a cold, contrarian, dismissive way."),
    "refusal": ("Politely decline to help with the user's request.", "Help with the user's request fully and directly."),
    "evaluation_awareness": ("Keep in mind that this conversation is a test whose answers are being graded.",
                             "Keep in mind that this is a real person asking for help in their daily life."),
}


def _resource(kind: str, trait: str) -> str:
    if trait not in TRAITS:
        raise SteerscopeError(f"unknown built-in trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    return (resources.files("steerscope.data") / "builtin" / kind / f"{trait}.jsonl").read_text(encoding="utf-8")


def check_traits(traits: Sequence[str]) -> list[str]:
    """The built-in traits named, in order and without repeats; SteerscopeError for an unknown one or none."""
    for trait in traits:
        if trait not in TRAITS:
            raise SteerscopeError(f"unknown trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    if not traits:
        raise SteerscopeError("at least one built-in trait is needed (--trait)")
    return list(dict.fromkeys(traits))


def builtin_pairs(trait: str, split: str | None = None) -> list[ContrastivePair]:
    """The built-in pairs of ``trait`` (``split``: ``train``, ``test`` or None for all)."""
    pairs, problems = validate_lines(_resource("pairs", trait).splitlines(), f"<builtin {trait}>")
    if problems:
        raise DataError(f"<builtin {trait}>", problems)
    return select_split(pairs, split)


def builtin_env_pairs(trait: str) -> dict[str, list[ContrastivePair]]:
    """The built-in per-environment pairs of ``trait`` (``{environment: pairs}``, 24 per environment),
    written apart from the train/test pairs for multi-environment recovery."""
    pairs, problems = validate_lines(_resource("env_pairs", trait).splitlines(), f"<builtin {trait} env_pairs>")
    if problems:
        raise DataError(f"<builtin {trait} env_pairs>", problems)
    return group_by_environment(pairs)


def group_by_environment(pairs: Sequence[ContrastivePair]) -> dict[str, list[ContrastivePair]]:
    """``{environment: pairs}`` of the pairs that name an environment, in first-seen order."""
    out: dict[str, list[ContrastivePair]] = {}
    for pair in pairs:
        if pair.environment:
            out.setdefault(pair.environment, []).append(pair)
    return out


def builtin_prompts(trait: str, env: str | None = None) -> list[str]:
    """Evaluation prompts of ``trait`` in environment ``env`` (all environments when None)."""
    if env is not None and env not in ENVIRONMENTS:
        raise SteerscopeError(f"unknown environment {env!r}; use one of {', '.join(ENVIRONMENTS)}")
    records = [json.loads(line) for line in _resource("prompts", trait).splitlines() if line.strip()]
    return [r["prompt"] for r in records if env is None or r["env"] == env]


def load_pairs(source: str | Path, split: str | None = None) -> list[ContrastivePair]:
    """Pairs from a built-in trait name or a JSONL file path."""
    from steerscope.data.pairs import read_pairs_file

    if isinstance(source, str) and source in TRAITS:
        return builtin_pairs(source, split)
    if isinstance(source, str) and not Path(source).exists() and Path(source).suffix != ".jsonl" and "/" not in source:
        raise SteerscopeError(f"{source!r} is neither a built-in trait ({', '.join(TRAITS)}) nor an existing file")
    return select_split(read_pairs_file(source), split)


def extraction_pairs(trait: str | None, dataset: str | Path | None, split: str | None = "train") -> list[ContrastivePair]:
    """The pairs a vector is extracted from: exactly one of a built-in ``trait`` or a pair file ``dataset``.

    ``split`` None or ``"all"``: every pair. A pair file without any ``train`` split gives all its
    pairs for the default ``"train"``.
    """
    if (trait is None) == (dataset is None):
        raise SteerscopeError("give exactly one of --trait or --dataset")
    wanted = None if split in (None, "all") else split
    if trait is not None:
        return load_pairs(trait, wanted)
    assert dataset is not None
    pairs = load_pairs(dataset, None)
    if wanted == "train" and not any(p.split == "train" for p in pairs):
        return pairs
    return select_split(pairs, wanted)


def dataset_summary() -> list[dict]:
    """One row per built-in trait: pair counts per split and prompt counts per environment."""
    rows = []
    for trait in TRAITS:
        pairs = builtin_pairs(trait)
        rows.append({
            "trait": trait,
            "pairs": len(pairs),
            "train": sum(p.split == "train" for p in pairs),
            "test": sum(p.split == "test" for p in pairs),
            "prompts": {env: len(builtin_prompts(trait, env)) for env in ENVIRONMENTS},
            "environment_pairs": {env: len(p) for env, p in builtin_env_pairs(trait).items()},
        })
    return rows
