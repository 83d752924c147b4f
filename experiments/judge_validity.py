"""Held-out accuracy of the built-in models as LM judges (``get_scorer(trait, "judge", lm=...)``).

The judge's score is log p(Yes) − log p(No); accuracy counts a text as positive when the score is
above 0, and the AUC is the probability that a random positive text outscores a random negative
one. Measured on the train and test splits of the trait's scorer corpus.

Usage: python experiments/judge_validity.py [--trait truthfulness] [--models smollm2-135m,gemma3-270m]
Writes experiments/results/judge_validity.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import steerscope as ss
from steerscope.score.base import get_scorer, scorer_corpus


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trait", default="truthfulness")
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "judge_validity.json"))
    args = parser.parse_args()
    results = {"trait": args.trait, "models": {}}
    for name in args.models.split(","):
        judge = get_scorer(args.trait, "judge", lm=ss.load_model(name, device="cpu"))
        row = {}
        for split in ("train", "test"):
            corpus = scorer_corpus(args.trait, split)
            scores = np.asarray(judge([r["text"] for r in corpus]))
            labels = np.array([r["label"] for r in corpus])
            row[split] = {"n": len(corpus), "accuracy_at_0": float(np.mean((scores > 0) == labels)), "auc": auc(scores, labels)}
            print(f"{name} {args.trait} {split}: accuracy {row[split]['accuracy_at_0']:.3f}, AUC {row[split]['auc']:.3f}")
        results["models"][name] = row
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
