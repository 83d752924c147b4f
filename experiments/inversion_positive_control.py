"""Positive control of the inversion engine: natural states of real text must be recovered exactly.

Usage: python experiments/inversion_positive_control.py MODEL [--layer L] [--prompts 50] [--tokens 20]
       [--threads 2] [--out experiments/results/inversion_control_MODEL.json]
Texts: the assistant replies of the built-in pairs (test split, both sides, round-robin over the
five traits), tokenised without a chat template and cut to their first ``--tokens`` tokens (a BOS
token the tokenizer adds is given as a known prefix, not searched). The threshold is calibrated on
two train-split replies that are not in the test set. Prints a table and writes JSON (after every
text, so that a run stopped early keeps the texts it finished; ``prompts`` counts them).
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
from steerscope.data import TRAITS
from steerscope.invert import calibrate_threshold, hidden_states, invert


def replies(split: str) -> list[list[str]]:
    """Per trait: assistant replies of the pairs of ``split`` (positive and negative side)."""
    out = []
    for trait in TRAITS:
        pairs = ss.builtin_pairs(trait, split)
        out.append([item if isinstance(item, str) else item[-1]["content"] for p in pairs for item in (p.positive, p.negative)])
    return out


def round_robin(groups: list[list[str]], n: int) -> list[str]:
    picked = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} texts available, asked for {n}")
    return picked[:n]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, default=None, help="default: 40 %% of the depth")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = ss.load_model(args.model, device="cpu")
    layer = args.layer if args.layer is not None else round(0.4 * lm.n_layers)
    bos = lm.tokenizer.bos_token_id
    encode = lm.tokenizer

    def tokens(text: str) -> list[int]:
        ids = encode(text)["input_ids"]
        return ids[: args.tokens + (1 if ids and ids[0] == bos else 0)]

    calib = [tokens(t) for t in round_robin(replies("train"), 2)]
    seqs = [tokens(t) for t in round_robin(replies("test"), args.prompts)]
    start = time.perf_counter()
    threshold = calibrate_threshold(lm, layer, calib)
    calib_s = time.perf_counter() - start
    out = Path(args.out or Path(__file__).parent / "results" / f"inversion_control_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    rows, start = [], time.perf_counter()
    for k, ids in enumerate(seqs):
        prefix = ids[:1] if ids[0] == bos else []
        t0 = time.perf_counter()
        inv = invert(lm, hidden_states(lm, ids, layer), layer, threshold.epsilon, prefix=prefix)
        searched = ids[len(prefix):]
        found = inv.tokens[len(prefix):]
        rows.append({"ids": ids, "found": found, "exact": [a == b for a, b in zip(searched, found)],
                     "tried": inv.tried, "distances": inv.distances, "seconds": time.perf_counter() - t0})
        print(f"{k + 1}/{len(seqs)} exact {sum(rows[-1]['exact'])}/{len(searched)} "
              f"median tried {statistics.median(inv.tried)} {rows[-1]['seconds']:.1f}s", flush=True)
        exact = [e for r in rows for e in r["exact"]]
        tried = [t for r in rows for t in r["tried"]]
        wall = time.perf_counter() - start
        summary = {
            "model": args.model, "layer": layer, "prompts": len(rows), "prompts_planned": len(seqs), "tokens_per_prompt": args.tokens,
            "positions": len(exact), "exact_rate": sum(exact) / len(exact), "exact_sequences": sum(all(r["exact"]) for r in rows),
            "candidates_per_position": {"mean": statistics.mean(tried), "median": statistics.median(tried), "max": max(tried)},
            "mean_fraction_of_vocab": statistics.mean(tried) / vocab, "vocab": vocab,
            "threshold": threshold.to_json(), "calibration_s": calib_s, "search_s": wall, "s_per_token": wall / len(exact),
            "threads": args.threads, "torch": torch.__version__,
        }
        out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))  # after every text: a stopped run keeps its texts
    table = Table(title=f"Natural-state inversion, {args.model} layer {layer}")
    for col in ("positions", "exact", "candidates / position (mean, median, max)", "of vocab", "s / token"):
        table.add_column(col)
    c = summary["candidates_per_position"]
    table.add_row(str(len(exact)), f"{summary['exact_rate']:.2%}", f"{c['mean']:.0f}, {c['median']:.0f}, {c['max']}",
                  f"{summary['mean_fraction_of_vocab']:.3%}", f"{summary['s_per_token']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
