"""The size of v's equivalence class on the pair margin against ‖u‖/‖v‖: Monte Carlo and first order.

For a built-in trait's mean-difference vector at one layer and strength, draws random u ⟂ v at
several norm ratios, counts how often v + u keeps the mean pair margin of the held-out pairs within
±δ of v's effect (efficacy in [1 − δ, 1 + δ]), and prints that share with its exact 95 % interval
next to the first-order prediction from the autograd gradient of the margin. Writes JSON.

Usage: python experiments/class_size_curve.py [--model smollm2-135m] [--trait formality] [--layer 12]
       [--alpha 2] [--draws 100] [--pairs 8] [--out experiments/results/class_size_curve.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import steerscope as ss
from steerscope.audit.equivalence import Margin
from steerscope.audit.identifiability import audit_vector
from steerscope.audit.readouts import ClassSample, class_fraction, margin_gradient
from steerscope.data.traits import builtin_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--trait", default="formality")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "class_size_curve.json"))
    args = parser.parse_args()
    lm = ss.load_model(args.model, device="cpu")
    v = audit_vector(lm, args.trait, args.layer).directions[args.layer]
    pairs = builtin_pairs(args.trait, "test")[: args.pairs]
    gradient = margin_gradient(lm, args.layer, v, args.alpha, pairs)
    mc = class_fraction(lm, args.layer, v, args.alpha, pairs, None, Margin(0.1), ClassSample(args.draws, (0.25, 0.5, 1.0)), gradient)
    result = {"model": lm.info(), "trait": args.trait, "layer": args.layer, "alpha": args.alpha, "pairs": len(pairs),
              "draws": args.draws, "delta": 0.1, "pair_margin": mc["pair_margin"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"| ‖u‖/‖v‖ | share within ±0.1 [95 % CI] ({args.draws} draws) | first-order prediction | efficacy 5 / 50 / 95 % |")
    print("|---|---|---|---|")
    for ratio, row in mc["pair_margin"].items():
        q = ", ".join(f"{x:.2f}" for x in row["efficacy_quantiles"])
        print(f"| {ratio} | {row['fraction']:.2f} [{row['low']:.2f}, {row['high']:.2f}] | {row['predicted']:.2f} | {q} |")


if __name__ == "__main__":
    main()
