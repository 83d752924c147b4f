"""Inversion benchmark: gradient-guided candidate policy vs exhaustive search (CPU by default).

Natural (unsteered) states of chat-templated evaluation prompts at one layer are inverted with
both policies. The chat template's closing tokens (the suffix shared by all prompts) are dropped,
the last ``--positions`` tokens of the user message are searched, and the tokens before them are
given. Exhaustive search scans the vocabulary in id
order in chunks and stops at the first chunk with an accepted token. Reports time and candidates
per recovered token, the exact-recovery rate and whether both policies return the same tokens.

Prints a table and writes JSON. Usage:
python benchmarks/bench_inversion.py [--model smollm2-135m] [--layer 12] [--prompts 3] [--positions 2] [--threads 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import steerscope as ss
from steerscope.encoding import encode_prompt
from steerscope.invert import SearchConfig, calibrate_threshold, hidden_states, invert


def run_policy(lm, layer, seqs, positions, epsilon, policy):
    tokens, tried, exact, start = [], [], [], time.perf_counter()
    for ids in seqs:
        cut = max(0, len(ids) - positions)
        res = invert(lm, hidden_states(lm, ids, layer), layer, epsilon, prefix=ids[:cut], config=SearchConfig(policy=policy))
        tokens.append(res.tokens)
        tried += res.tried
        exact += [a == b for a, b in zip(res.tokens[cut:], ids[cut:])]
    seconds = time.perf_counter() - start
    n = len(tried)
    return {"policy": policy, "positions": n, "seconds": seconds, "seconds_per_token": seconds / n,
            "candidates_per_token": statistics.mean(tried), "max_candidates": max(tried),
            "exact_rate": sum(exact) / n, "tokens": tokens}


def _common_suffix(seqs):
    n = 0
    while all(len(s) > n + 1 for s in seqs) and len({tuple(s[len(s) - n - 1:]) for s in seqs}) == 1:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--trait", default="formality", help="built-in trait whose evaluation prompts are used")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--positions", type=int, default=2, help="searched positions per prompt (the last ones of the user message)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inversion.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = ss.load_model(args.model, device="cpu")
    prompts = ss.builtin_prompts(args.trait, "in_distribution")
    seqs = [encode_prompt(lm.tokenizer, p) for p in prompts[: args.prompts]]
    tail = _common_suffix(seqs)
    seqs = [ids[: len(ids) - tail] for ids in seqs]
    calib = [encode_prompt(lm.tokenizer, p) for p in prompts[-2:]]
    start = time.perf_counter()
    threshold = calibrate_threshold(lm, args.layer, calib, last=12)
    calib_s = time.perf_counter() - start
    results = [run_policy(lm, args.layer, seqs, args.positions, threshold.epsilon, p) for p in ("gradient", "exhaustive")]
    grad, exh = results
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    report = {
        "model": args.model, "layer": args.layer, "threads": args.threads, "prompts": args.prompts,
        "positions_per_prompt": args.positions, "template_tail_dropped": tail, "vocab": vocab, "threshold": threshold.to_json(),
        "calibration_seconds": calib_s, "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "results": [{k: v for k, v in r.items() if k != "tokens"} for r in results],
        "same_tokens": grad["tokens"] == exh["tokens"],
        "candidate_ratio_exhaustive_over_gradient": exh["candidates_per_token"] / grad["candidates_per_token"],
        "gradient_fraction_of_vocab": grad["candidates_per_token"] / vocab,
    }
    table = Table(title=f"inversion of natural states, {args.model} layer {args.layer}, {args.threads} threads")
    for col in ("policy", "positions", "s / token", "candidates / token", "max candidates", "exact"):
        table.add_column(col)
    for r in results:
        table.add_row(r["policy"], str(r["positions"]), f"{r['seconds_per_token']:.2f}", f"{r['candidates_per_token']:.0f}",
                      str(r["max_candidates"]), f"{r['exact_rate']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"same tokens: {report['same_tokens']}; exhaustive/gradient candidates: "
                  f"{report['candidate_ratio_exhaustive_over_gradient']:.1f}x; ε = {threshold.epsilon:.3g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
