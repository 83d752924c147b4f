"""Theorem 4.5 of arXiv 2604.09839 at scale: adversarial collision at position i, divergence at i+1.

For each (prompt, position i) pair: q = p with token i replaced by the token nearest to it in input
embedding space; v* = h_ℓ(q)_i − h_ℓ(p)_i is added at positions i and i+1 of p (layer ℓ, states
compared at ℓ). The search recovers q's token at i within ε (collision) or not; at i+1, with the
prefix q₁..ᵢ, the whole vocabulary is scanned (exhaustive) and the best distance is the divergence.

Usage: python experiments/theorem45_at_scale.py MODEL [--layer L] [--prompts 10] [--per-prompt 2]
       [--threads 2] [--out experiments/results/theorem45_MODEL.json]
Prompts: the in-distribution evaluation prompts of the built-in traits (round-robin), chat-templated;
positions i: evenly spread over the user's words. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import steerscope as ss
from steerscope.audit.reachability import AuditSettings, adversarial_collision
from steerscope.data import TRAITS
from steerscope.encoding import encode_prompt, prompt_user_span
from steerscope.invert import calibrate_threshold, embedding_space


def prompts(n: int) -> list[str]:
    groups = [ss.builtin_prompts(t, "in_distribution") for t in TRAITS[:5]]
    picked = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return picked[:n]


def positions(span: tuple[int, int], k: int) -> list[int]:
    """``k`` positions spread over the user's words, each leaving a next position inside the span."""
    start, end = span
    usable = list(range(max(start, 1), end - 1))
    step = max(1, len(usable) // k)
    return usable[::step][:k]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, default=None, help="default: 40 %% of the depth")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--per-prompt", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = ss.load_model(args.model, device="cpu")
    layer = args.layer if args.layer is not None else round(0.4 * lm.n_layers)
    calib = [encode_prompt(lm.tokenizer, p) for p in ss.builtin_prompts("sentiment", "topic_shift")[:2]]
    threshold = calibrate_threshold(lm, layer, calib, last=8)
    space = embedding_space(lm)
    settings = AuditSettings(adversarial_exhaustive=True)
    rows = []
    for prompt in prompts(args.prompts):
        ids = encode_prompt(lm.tokenizer, prompt)
        for i in positions(prompt_user_span(lm.tokenizer, prompt, ids), args.per_prompt):
            near = space.nearest(space.weight[ids[i]], 2)
            replacement = int(near[near != ids[i]][0])
            t0 = time.perf_counter()
            adv = adversarial_collision(lm, ids, layer, i, replacement, threshold, settings)
            adv |= {"prompt": prompt, "seconds": time.perf_counter() - t0}
            rows.append(adv)
            print(f"{len(rows)}: i={i} collision {adv['collision']['accepted']} next {adv['next']['distance']:.4g} "
                  f"({adv['next']['distance'] / threshold.epsilon:.3g} ε, {adv['next']['tried']} tried) {adv['seconds']:.0f}s", flush=True)
    nxt = [r["next"]["distance"] for r in rows]
    summary = {
        "model": args.model, "layer": layer, "pairs": len(rows), "epsilon": threshold.epsilon, "noise": threshold.noise,
        "collision_rate": statistics.mean(r["collision"]["accepted"] for r in rows),
        "collision_recovers_replacement": statistics.mean(r["collision"]["recovered_replacement"] for r in rows),
        "next_accepted_rate": statistics.mean(r["next"]["accepted"] for r in rows),
        "next_all_exhaustive": all(r["next"]["exhaustive"] for r in rows),
        "next_distance": {"min": min(nxt), "median": statistics.median(nxt), "max": max(nxt)},
        "next_over_epsilon": {"min": min(nxt) / threshold.epsilon, "median": statistics.median(nxt) / threshold.epsilon},
        "next_over_noise_min": min(nxt) / threshold.noise,
        "vector_norm_median": statistics.median(r["vector_norm"] for r in rows),
        "threads": args.threads, "torch": torch.__version__,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"theorem45_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "threshold": threshold.to_json(), "rows": rows}, indent=1))
    table = Table(title=f"Theorem 4.5 at scale, {args.model} layer {layer}")
    for col in ("pairs", "collision at i", "accepted at i+1", "i+1 distance min / median / max", "min / ε"):
        table.add_column(col)
    d = summary["next_distance"]
    table.add_row(str(len(rows)), f"{summary['collision_rate']:.0%}", f"{summary['next_accepted_rate']:.0%}",
                  f"{d['min']:.3g} / {d['median']:.3g} / {d['max']:.3g}", f"{summary['next_over_epsilon']['min']:.3g}")
    Console().print(table)


if __name__ == "__main__":
    main()
