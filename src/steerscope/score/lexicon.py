"""VADER sentiment: a rule-based lexicon scorer (needs the optional package ``vaderSentiment``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steerscope.errors import SteerscopeError
from steerscope.score.base import Scorer, check_texts, check_trait, register_scorer, require


class VaderScorer:
    """VADER compound score per text, in ``[-1, 1]`` (higher = more positive sentiment).

    ``validity`` is ``{"method": "lexicon"}``: there is no steerscope sentiment scorer corpus to
    measure VADER against.
    """

    name = "vader"
    trait = "sentiment"

    def __init__(self) -> None:
        module = require("vaderSentiment.vaderSentiment", "vaderSentiment", "the VADER sentiment scorer")
        self._analyzer = module.SentimentIntensityAnalyzer()
        self.validity: dict | None = {"method": "lexicon"}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        return np.array([self._analyzer.polarity_scores(t)["compound"] for t in items], dtype=np.float64).reshape(len(items))

    def __repr__(self) -> str:
        return "VaderScorer()"


@register_scorer("lexicon")
def lexicon_scorer(trait: str, **kwargs) -> Scorer:
    """:class:`VaderScorer` (sentiment only)."""
    check_trait(trait)
    if trait != "sentiment":
        raise SteerscopeError(f"the lexicon (VADER) scorer scores sentiment only, not {trait!r}")
    return VaderScorer(**kwargs)
