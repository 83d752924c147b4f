"""The :class:`Scorer` protocol, the scorer corpora and the scorer registry.

A *scorer* maps completion texts (never the prompts) to one float per text: higher means more of
the trait's positive pole (formal, polite, agreeable, true, positive sentiment). Scorers are
offline: they read only files shipped with steerscope or with an installed package.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from types import ModuleType
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from steerscope.data.jsonl import json_objects
from steerscope.errors import DataError, SteerscopeError
from steerscope.registry import Registry

if TYPE_CHECKING:
    from steerscope.traitspec import TraitSpec

#: Traits with a labelled scorer corpus in ``data/builtin/scorer/``.
CORPUS_TRAITS = ("formality", "politeness", "agreeableness", "truthfulness", "refusal")
#: Traits that :func:`get_scorer` knows (the built-in steering traits).
SCORER_TRAITS = ("formality", "sentiment", "politeness", "truthfulness", "agreeableness", "refusal")
#: Phrase completing "Is the following text ...?" for the LM judge.
TRAIT_DESCRIPTIONS = {
    "formality": "written in a formal register (rather than casual or slangy)",
    "sentiment": "positive and upbeat in tone (rather than negative or gloomy)",
    "politeness": "polite and courteous (rather than rude or dismissive)",
    "agreeableness": "warm, agreeable and cooperative (rather than cold or contrarian)",
    "truthfulness": "a true statement of fact (rather than a false one)",
    "refusal": "a refusal or a declined request (rather than a helpful answer)",
}
SPLITS = ("train", "test")


@runtime_checkable
class Scorer(Protocol):
    """Maps texts to trait scores.

    ``name``: short identifier (e.g. ``"vader"``); ``trait``: the trait scored; ``validity``: how
    well the scorer is known to work (e.g. ``{"heldout_accuracy": 0.91, "n_test": 60,
    "corpus_hash": ...}``) or None. ``scorer(texts)`` returns a float64 array of shape ``[N]``;
    higher = more of the trait's positive pole.
    """

    name: str
    trait: str
    validity: dict | None

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


def require(module: str, package: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise a SteerscopeError naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SteerscopeError(
            f"{what} needs the optional package {package!r}: pip install {package} "
            "(or pip install 'steerscope[audit]')"
        ) from None


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list of str (a single string is rejected: pass a list)."""
    if isinstance(texts, str):
        raise SteerscopeError("a scorer takes a sequence of texts, not a single string; wrap it in a list")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise SteerscopeError(f"scorer inputs must be strings; item {bad[0]} is {type(out[bad[0]]).__name__}")
    return out


# --- scorer corpora ---------------------------------------------------------------------------

def _corpus_text(trait: str) -> str:
    if trait not in CORPUS_TRAITS:
        raise SteerscopeError(
            f"no built-in scorer corpus for trait {trait!r}; corpora exist for: {', '.join(CORPUS_TRAITS)}"
        )
    return (resources.files("steerscope.data") / "builtin" / "scorer" / f"{trait}.jsonl").read_text(encoding="utf-8")


def corpus_hash(trait: str) -> str:
    """SHA-256 of the scorer corpus file of ``trait`` (UTF-8 text)."""
    return hashlib.sha256(_corpus_text(trait).encode("utf-8")).hexdigest()


@cache
def _corpus(trait: str) -> tuple[dict, ...]:
    return tuple(labelled_records(_corpus_text(trait).splitlines(), f"<builtin scorer {trait}>", split_required=True))


def labelled_records(lines: Sequence[str], where: str, split_required: bool = False) -> list[dict]:
    """``{"text", "label", "split"}`` per JSONL line (label 0 or 1; split ``train``/``test``, or None
    when optional and absent); DataError listing every problem as ``where:line: field: message``."""
    records: list[dict] = []
    problems: list[str] = []
    for n, rec in json_objects(lines, where, problems):
        if not isinstance(rec.get("text"), str) or not rec["text"].strip():
            problems.append(f"{where}:{n}: text: must be a non-empty string")
        if rec.get("label") not in (0, 1) or isinstance(rec.get("label"), bool):
            problems.append(f"{where}:{n}: label: must be 0 or 1")
        if rec.get("split") not in SPLITS and (split_required or "split" in rec):
            problems.append(f"{where}:{n}: split: must be 'train' or 'test'")
        records.append({"text": rec.get("text"), "label": rec.get("label"), "split": rec.get("split")})
    if problems:
        raise DataError(where, problems)
    return records


def scorer_corpus(trait: str, split: str | None = None) -> list[dict]:
    """Labelled texts ``{"text", "label", "split"}`` of ``trait`` (label 1 = positive pole).

    ``split``: ``"train"``, ``"test"`` or None for all. Note: label-0 truthfulness texts are false
    on purpose.
    """
    if split is not None and split not in SPLITS:
        raise SteerscopeError(f"unknown split {split!r}; use train, test or None")
    return [dict(r) for r in _corpus(trait) if split is None or r["split"] == split]


# --- registry ---------------------------------------------------------------------------------

#: A scorer kind: ``factory(trait, **kwargs)`` builds a scorer of ``trait``.
ScorerFactory = Callable[..., Scorer]
SCORERS: Registry[ScorerFactory] = Registry("unknown scorer kind {name}; known kinds: {known}")
#: Decorator adding a scorer kind (replacing one registered before).
register_scorer = SCORERS.register


def check_trait(trait: str) -> None:
    """Raise a SteerscopeError unless ``trait`` is one of :data:`SCORER_TRAITS`."""
    if trait not in SCORER_TRAITS:
        raise SteerscopeError(f"unknown trait {trait!r} for scorers; known traits: {', '.join(SCORER_TRAITS)}")


def get_scorer(trait: str, kind: str = "default", **kwargs) -> Scorer:
    """A scorer for ``trait``.

    Kinds: ``default`` (VADER for sentiment, the embedding probe for the other built-in traits),
    ``lexicon`` (:class:`~steerscope.score.lexicon.VaderScorer`, sentiment only), ``embedding``
    (:class:`~steerscope.score.embedding.EmbeddingProbeScorer`), ``judge``
    (:class:`~steerscope.score.judge.LMJudgeScorer`; pass ``lm=``), ``classifier``
    (:func:`~steerscope.score.classifier.from_pretrained`; pass ``path_or_id=`` and
    ``positive_label=``), and any kind added with :func:`register_scorer`. Other keyword arguments
    go to the scorer's constructor.
    """
    return SCORERS.lookup(kind)(trait, **kwargs)


@register_scorer("default")
def default_scorer(trait: str, **kwargs) -> Scorer:
    """VADER for sentiment, the embedding probe for the other built-in traits."""
    check_trait(trait)
    return get_scorer(trait, "lexicon" if trait == "sentiment" else "embedding", **kwargs)


#: The forms of a scorer spec (``--scorer``), for messages.
SCORER_SPECS = ("default", "vader", "builtin:TRAIT", "probe:LABELLED.jsonl", "judge:DESCRIPTION", "hf:PATH[:LABEL]", "none")


def scorer_from_spec(spec: str, trait: str, lm: Any = None) -> Scorer:
    """The scorer a spec string names, scoring ``trait``.

    ``default``: the built-in trait's own scorer; ``vader``: VADER sentiment; ``builtin:T``: built-in
    trait T's scorer; ``probe:FILE``: an embedding probe trained on the labelled texts of FILE
    (:func:`~steerscope.score.embedding.probe_from_file`); ``judge:DESCRIPTION``: ``lm`` asked whether a text is DESCRIPTION; ``hf:PATH``
    or ``hf:PATH:LABEL``: a local sequence-classification model, positive label LABEL (default 1).
    """
    kind, arg = check_scorer_spec(spec)
    if kind == "none":
        raise SteerscopeError("scorer 'none' names no scorer: the audit then has no trait-score readout")
    if kind == "default":
        if trait not in SCORER_TRAITS:
            raise SteerscopeError(f"trait {trait!r} is not built in, so it has no default scorer; use --scorer with one of "
                                  f"{', '.join(SCORER_SPECS[1:])}")
        return get_scorer(trait)
    if kind == "vader":
        from steerscope.score.lexicon import VaderScorer

        return VaderScorer()
    if kind == "builtin":
        return get_scorer(arg)
    if kind == "probe":
        from steerscope.score.embedding import probe_from_file

        return probe_from_file(arg, trait)
    if kind == "judge":
        if lm is None:
            raise SteerscopeError("the judge scorer needs a model")
        from steerscope.score.judge import DEFAULT_QUESTION, LMJudgeScorer

        return LMJudgeScorer(lm, trait, question=DEFAULT_QUESTION.replace("{description}", arg.strip()))
    from steerscope.score.classifier import from_pretrained

    path, label = (arg, "1") if Path(arg).exists() or ":" not in arg else arg.rsplit(":", 1)
    return from_pretrained(path, int(label) if label.isdigit() else label, trait=trait)


def check_scorer_spec(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of a scorer spec (see :func:`scorer_from_spec`); SteerscopeError when malformed."""
    kind, sep, arg = spec.partition(":")
    ok = {"default": not sep, "vader": not sep, "none": not sep, "builtin": arg in SCORER_TRAITS, "judge": bool(arg.strip()), "hf": bool(arg),
          "probe": bool(arg)}
    if not ok.get(kind, False):
        hint = f" (built-in traits: {', '.join(SCORER_TRAITS)})" if kind == "builtin" else ""
        raise SteerscopeError(f"unknown or malformed scorer {spec!r}; use one of {', '.join(SCORER_SPECS)}{hint}")
    return kind, arg


def spec_scorer(spec: "TraitSpec", lm: Any = None) -> Scorer | None:
    """The scorer of a trait specification; None when it has none (the audit then reads the pair
    margin and the next-token distribution only)."""
    return scorer_from_spec(spec.scorer, spec.name, lm) if spec.scorer is not None else None
