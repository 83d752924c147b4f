"""A trait specification: everything the audits need to know about one trait, as one value.

A :class:`TraitSpec` holds the contrastive pairs (train and test), the evaluation prompts by
environment, the scorer of the behavioural readout (a scorer spec, see
:func:`steerscope.score.base.scorer_from_spec`), and the instructions for the trait's two poles
used as the black-box baseline. Built-in traits are instances made from package data
(:func:`builtin_spec`); a user's trait is made from files (:func:`spec_from_files`). Runs record a
spec by content (:meth:`TraitSpec.content`, :meth:`TraitSpec.digest`), never by path.

Pairs without a ``split`` are split deterministically: ordered by the SHA-256 of their JSON,
the first quarter (at least :data:`MIN_PAIRS_PER_SPLIT`) is the test split.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from steerscope.data.pairs import ContrastivePair, read_pairs_file
from steerscope.data.prompts import read_prompt_environments
from steerscope.data.traits import (BUILTIN_INSTRUCTIONS, ENVIRONMENTS, TRAITS, builtin_env_pairs, builtin_pairs, builtin_prompts,
                                     group_by_environment)
from steerscope.errors import SteerscopeError, shown

#: Layer selection and the held-out readouts need at least this many pairs in each split.
MIN_PAIRS_PER_SPLIT = 2
TEST_SHARE = 0.25
SPLIT_RULE = "pairs without a split: ordered by SHA-256 of their JSON, the first 25 % (at least 2) are test"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class TraitSpec:
    """One trait as the audits use it.

    ``prompts``: environment → prompts (``in_distribution`` is required); ``scorer``: a scorer spec
    (``default`` = the built-in trait's own scorer) or None; ``instructions``: (positive pole,
    negative pole) system-style instructions, or None when the trait has none; ``environment_pairs``:
    environment → pairs written in it, from which multi-environment recovery extracts one vector per
    environment (built-in traits: the ``env_pairs`` files; a user's: the pairs with an
    ``environment`` field).
    """

    name: str
    train: tuple[ContrastivePair, ...]
    test: tuple[ContrastivePair, ...]
    prompts: Mapping[str, tuple[str, ...]]
    scorer: str | None = "default"
    instructions: tuple[str, str] | None = None
    builtin: bool = False
    provenance: Mapping[str, Any] = field(default_factory=dict)
    environment_pairs: Mapping[str, tuple[ContrastivePair, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise SteerscopeError(f"trait name {shown(self.name)}: use 1–64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        for split, pairs in (("train", self.train), ("test", self.test)):
            if len(pairs) < MIN_PAIRS_PER_SPLIT:
                raise SteerscopeError(f"trait {self.name!r} has {len(pairs)} {split} pair(s); at least {MIN_PAIRS_PER_SPLIT} are needed")
        if not self.prompts.get("in_distribution"):
            raise SteerscopeError(f"trait {self.name!r} has no in_distribution evaluation prompts")

    def env_prompts(self, env: str) -> list[str]:
        """The evaluation prompts of ``env`` (SteerscopeError naming the environments it has)."""
        if env not in self.prompts:
            raise SteerscopeError(f"trait {self.name!r} has no prompts in environment {env!r}; it has {', '.join(self.prompts)}")
        return list(self.prompts[env])

    def content(self) -> dict[str, Any]:
        """Everything that determines an audit's inputs, JSON-serialisable (what :meth:`digest` hashes)."""
        return {"name": self.name, "builtin": self.builtin,
                "train": [p.to_json() for p in self.train], "test": [p.to_json() for p in self.test],
                "prompts": {env: list(ps) for env, ps in self.prompts.items()},
                "scorer": self.scorer, "instructions": list(self.instructions) if self.instructions else None,
                "provenance": dict(self.provenance)} | self._environment_content()

    def _environment_content(self) -> dict[str, Any]:
        if not self.environment_pairs:
            return {}
        return {"environment_pairs": {env: [p.to_json() for p in ps] for env, ps in self.environment_pairs.items()}}

    def digest(self) -> str:
        """SHA-256 of :meth:`content` as canonical JSON."""
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and identity, for run configurations and reports."""
        return {"name": self.name, "builtin": self.builtin, "digest": self.digest(), "n_train": len(self.train),
                "n_test": len(self.test), "prompts": {env: len(ps) for env, ps in self.prompts.items()},
                "scorer": self.scorer, "instructions": self.instructions is not None,
                "environment_pairs": {env: len(ps) for env, ps in self.environment_pairs.items()}} | dict(self.provenance)

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> "TraitSpec":
        """The spec whose :meth:`content` is ``content`` (as stored by a run)."""
        pairs = {s: tuple(_pair(r) for r in content[s]) for s in ("train", "test")}
        instructions = content.get("instructions")
        return cls(content["name"], pairs["train"], pairs["test"], {e: tuple(p) for e, p in content["prompts"].items()},
                   content.get("scorer"), (instructions[0], instructions[1]) if instructions else None,
                   bool(content.get("builtin")), dict(content.get("provenance") or {}),
                   {e: tuple(_pair(r) for r in rs) for e, rs in (content.get("environment_pairs") or {}).items()})


def _pair(record: Mapping[str, Any]) -> ContrastivePair:
    return ContrastivePair(record["positive"], record["negative"], record.get("trait"), record.get("split"), record.get("meta") or {},
                           record.get("environment"))


def builtin_spec(trait: str) -> TraitSpec:
    """The built-in trait ``trait`` (pairs, prompts of the three environments, its scorer and instructions)."""
    from steerscope.score.base import SCORER_TRAITS

    if trait not in TRAITS:
        raise SteerscopeError(f"unknown built-in trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    return TraitSpec(trait, tuple(builtin_pairs(trait, "train")), tuple(builtin_pairs(trait, "test")),
                     {env: tuple(builtin_prompts(trait, env)) for env in ENVIRONMENTS}, "default" if trait in SCORER_TRAITS else None,
                     BUILTIN_INSTRUCTIONS[trait], builtin=True,
                     environment_pairs={env: tuple(ps) for env, ps in builtin_env_pairs(trait).items()})


def split_pairs(pairs: Sequence[ContrastivePair]) -> tuple[list[ContrastivePair], list[ContrastivePair]]:
    """``(train, test)``: pairs keep their ``split``; the others are split by :data:`SPLIT_RULE`.

    ``validation`` pairs are left out. SteerscopeError when either split ends up too small.
    """
    train = [p for p in pairs if p.split == "train"]
    test = [p for p in pairs if p.split == "test"]
    unsplit = sorted((p for p in pairs if p.split is None), key=_pair_hash)
    n_test = min(len(unsplit), max(MIN_PAIRS_PER_SPLIT, round(TEST_SHARE * len(unsplit)))) if unsplit else 0
    test += unsplit[:n_test]
    train += unsplit[n_test:]
    if len(train) < MIN_PAIRS_PER_SPLIT or len(test) < MIN_PAIRS_PER_SPLIT:
        raise SteerscopeError(f"{len(pairs)} pair(s) give {len(train)} train and {len(test)} test pairs; an audit needs at least "
                              f"{MIN_PAIRS_PER_SPLIT} of each ({2 * MIN_PAIRS_PER_SPLIT + 2} pairs without a split, or more)")
    return train, test


def _pair_hash(pair: ContrastivePair) -> str:
    return hashlib.sha256(json.dumps(pair.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def pair_questions(pairs: Sequence[ContrastivePair]) -> list[str]:
    """The user messages that chat pairs answer (the last user turn before the completion), unique, in order."""
    questions = []
    for pair in pairs:
        item = pair.positive
        if isinstance(item, list) and len(item) >= 2 and item[-2].get("role") == "user":
            questions.append(item[-2]["content"])
    return list(dict.fromkeys(questions))


def spec_from_files(
    dataset: str | Path, prompts: str | Path | None = None, name: str | None = None, scorer: str | None = None,
    instructions: tuple[str, str] | None = None,
) -> TraitSpec:
    """A user trait from a pair file (JSONL, :mod:`steerscope.data.pairs`) and optional prompt file.

    Prompts default to the questions of the chat pairs (all ``in_distribution``); plain-string
    pairs have no questions, so a prompt file is then required. ``name`` defaults to the pair
    file's stem; ``scorer`` None means the audit has no trait-score readout.
    """
    path = Path(dataset)
    pairs = read_pairs_file(path)
    train, test = split_pairs(pairs)
    if prompts is not None:
        by_env = read_prompt_environments(prompts)
        source = {"prompts_from": Path(prompts).name}
    else:
        questions = pair_questions(pairs)
        if not questions:
            raise SteerscopeError(f"{path}: the pairs are plain strings, so there are no questions to prompt with; give --prompts FILE")
        by_env, source = {"in_distribution": questions}, {"prompts_from": "the pairs' questions"}
    provenance = {"dataset": path.name, "split_rule": SPLIT_RULE} | source
    return TraitSpec(name or _default_name(path), tuple(train), tuple(test), {e: tuple(p) for e, p in by_env.items()},
                     scorer, instructions, builtin=False, provenance=provenance,
                     environment_pairs={env: tuple(ps) for env, ps in group_by_environment(pairs).items()})


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("_.-") or "trait"
    return stem[:64]


def as_spec(trait: str | TraitSpec) -> TraitSpec:
    """``trait`` itself, or the built-in trait of that name."""
    return trait if isinstance(trait, TraitSpec) else builtin_spec(trait)


def audit_specs(traits: Sequence[str] = (), dataset: str | Path | None = None, prompts: str | Path | None = None,
                name: str | None = None, scorer: str | None = None, instructions: Sequence[str] | None = None) -> list[TraitSpec]:
    """The traits of a command line: built-in ``traits`` by name, then the user trait of ``dataset``.

    ``scorer`` (a scorer spec) replaces the built-in traits' own scorers and is the user trait's;
    ``"none"`` removes the trait-score readout (the user trait has none unless a scorer is given).
    ``instructions``: the user trait's (positive pole, negative pole) instructions.
    """
    from steerscope.score.base import check_scorer_spec

    if prompts is not None and str(prompts).isdigit() and not Path(prompts).exists():
        raise SteerscopeError(f"--prompts takes a prompt file, and there is no file {str(prompts)!r}; "
                              "give a number of prompts with --n-prompts")
    if scorer is not None and not traits and dataset is None:
        raise SteerscopeError("--scorer scores a trait's completions; give --trait or --dataset")
    if dataset is None and (prompts is not None or name is not None):
        raise SteerscopeError("--prompts and --name describe a user trait; give its pairs with --dataset")
    if scorer is not None:
        check_scorer_spec(scorer)
    if instructions and (dataset is None or len(instructions) != 2 or not all(i.strip() for i in instructions)):
        raise SteerscopeError("--instructions gives a trait of your own (--dataset) its two poles: give it twice, the positive pole's "
                              f"instruction then the negative pole's (got {len(instructions)} value(s))")
    chosen = None if scorer == "none" else scorer
    specs = [builtin_spec(t) if scorer is None else replace(builtin_spec(t), scorer=chosen) for t in traits]
    if dataset is not None:
        specs.append(spec_from_files(dataset, prompts, name, chosen, (instructions[0], instructions[1]) if instructions else None))
    return specs
