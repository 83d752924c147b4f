"""Dose response of the teacher-forced pair margin: is (1 − 2δ)·v distinguishable from v?

For the mean-difference vector of a built-in trait at one layer, prints for each α the mean pair
margin effect of v over the unsteered model on held-out pairs, the efficacy of 0.8·v and 0.5·v
relative to v, and the paired p of each against v. Where the margin has passed its peak, a smaller
dose moves it as far as or further than v, and the identifiability audit's dose control is not
detected.

Usage: python experiments/pair_margin_dose.py [--model smollm2-135m] [--layer 12] [--pairs 8]
"""

from __future__ import annotations

import argparse

import steerscope as ss
from steerscope.audit.equivalence import two_sided_p
from steerscope.audit.identifiability import audit_vector
from steerscope.audit.readouts import pair_margins_by_condition
from steerscope.data.traits import builtin_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--traits", default="sentiment,formality")
    parser.add_argument("--alphas", default="1,2,3")
    args = parser.parse_args()
    lm = ss.load_model(args.model, device="cpu")
    print("| trait | α | margin effect of v (nats) | efficacy 0.8·v | efficacy 0.5·v | p (0.8·v vs v) | p (0.5·v vs v) |")
    print("|---|---|---|---|---|---|---|")
    for trait in args.traits.split(","):
        v = audit_vector(lm, trait, args.layer).directions[args.layer]
        pairs = builtin_pairs(trait, "test")[: args.pairs]
        for alpha in (float(a) for a in args.alphas.split(",")):
            m = pair_margins_by_condition(lm, args.layer, {"none": None, "v": v, "0.8": 0.8 * v, "0.5": 0.5 * v}, alpha, pairs)
            effect = float((m["v"] - m["none"]).mean())
            eff = {k: float((m[k] - m["none"]).mean()) / effect for k in ("0.8", "0.5")}
            print(f"| {trait} | {alpha:g} | {effect:.2f} | {eff['0.8']:.3f} | {eff['0.5']:.3f} | "
                  f"{two_sided_p(m['0.8'] - m['v']):.3g} | {two_sided_p(m['0.5'] - m['v']):.3g} |")


if __name__ == "__main__":
    main()
