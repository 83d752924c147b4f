"""Steering-engine benchmarks on a built-in model (CPU by default).

1. Steered vs unsteered generation (batch 16, 64 new tokens forced): overhead of the hooks.
2. 32 conditions (vectors × strengths) × 8 prompts: one batched call vs a Python loop over
   conditions, with a check that the greedy outputs are identical.
3. Capture of 60 contrastive pairs (120 texts) at every layer in one pass.

Prints a table and writes JSON (medians of --repeats runs, measured in this one process).
Usage: python benchmarks/bench_steering.py [--model smollm2-135m] [--threads 2] [--repeats 3]
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
from steerscope.capture import capture
from steerscope.encoding import encode_item


def _timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def bench_overhead(lm, vec, layer, prompts, repeats):
    config = ss.GenerationConfig(max_new_tokens=64, min_new_tokens=64)
    steering = ss.steer(lm, {layer: vec.directions[layer]}, 4.0)
    plain_runs, steered_runs = [], []
    for _ in range(repeats):  # interleave so that machine noise hits both alike
        plain_runs.append(_timed(lambda: ss.generate(lm, prompts, config, batch_size=16), 1)[0])
        steered_runs.append(_timed(lambda: ss.generate(lm, prompts, config, steering, batch_size=16), 1)[0])
    plain, steered = statistics.median(plain_runs), statistics.median(steered_runs)
    tokens = len(prompts) * 64
    return {"batch": len(prompts), "new_tokens": 64, "unsteered_s": plain, "steered_s": steered,
            "unsteered_runs_s": plain_runs, "steered_runs_s": steered_runs,
            "unsteered_tok_per_s": tokens / plain, "steered_tok_per_s": tokens / steered,
            "overhead_pct": 100 * (steered / plain - 1)}


def bench_conditions(lm, vectors, layer, prompts, repeats):
    alphas = [-8, -6, -4, -3, -2, -1, 1, 2, 3, 4, 6, 8, 10, 12, 14, 16]
    conditions = [(v, a) for v in vectors for a in alphas]
    config = ss.GenerationConfig(max_new_tokens=24)
    rows_v = [{layer: v.directions[layer]} for v, _ in conditions for _ in prompts]
    rows_a = [a for _, a in conditions for _ in prompts]

    def batched():
        return ss.generate(lm, prompts * len(conditions), config, ss.steer_rows(lm, rows_v, rows_a), batch_size=len(rows_a))

    def loop():
        out = []
        for v, a in conditions:
            out += ss.generate(lm, prompts, config, ss.steer(lm, {layer: v.directions[layer]}, a), batch_size=len(prompts))
        return out

    t_batched, runs_b, out_b = _timed(batched, repeats)
    t_loop, runs_l, out_l = _timed(loop, repeats)
    same = sum(a == b for a, b in zip(out_b, out_l))
    return {"conditions": len(conditions), "prompts": len(prompts), "new_tokens": 24, "batched_s": t_batched,
            "loop_s": t_loop, "batched_runs_s": runs_b, "loop_runs_s": runs_l, "speedup": t_loop / t_batched,
            "identical_outputs": same, "total_outputs": len(out_b)}


def bench_capture(lm, pairs, repeats):
    items = [p.positive for p in pairs] + [p.negative for p in pairs]
    layers = list(range(lm.n_layers))
    median, runs, _ = _timed(lambda: capture(lm, items, layers, position="mean", batch_size=32), repeats)
    n_tokens = sum(len(encode_item(lm.tokenizer, item).ids) for item in items)
    return {"pairs": len(pairs), "texts": len(items), "tokens": n_tokens, "layers": len(layers), "seconds": median,
            "runs_s": runs, "tokens_per_s": n_tokens / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "steering.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = ss.load_model(args.model, device="cpu")
    formality = ss.extract(lm, ss.builtin_pairs("formality", "train"), [args.layer])
    sentiment = ss.extract(lm, ss.builtin_pairs("sentiment", "train"), [args.layer])
    prompts = ss.builtin_prompts("formality", "in_distribution")
    results = {
        "model": lm.info(), "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "steerscope": ss.__version__,
        "overhead": bench_overhead(lm, formality, args.layer, prompts[:16], args.repeats),
        "conditions": bench_conditions(lm, [formality, sentiment], args.layer, prompts[:8], args.repeats),
        "capture": bench_capture(lm, ss.builtin_pairs("formality")[:60], args.repeats),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    table = Table(title=f"steerscope steering benchmarks — {args.model}, {args.threads} CPU threads, median of {args.repeats}")
    table.add_column("benchmark")
    table.add_column("result")
    o, c, k = results["overhead"], results["conditions"], results["capture"]
    table.add_row("generation, batch 16 × 64 new tokens", f"unsteered {o['unsteered_s']:.2f} s ({o['unsteered_tok_per_s']:.0f} tok/s); steered {o['steered_s']:.2f} s; overhead {o['overhead_pct']:+.1f} %")
    table.add_row(f"{c['conditions']} conditions × {c['prompts']} prompts, {c['new_tokens']} tokens", f"one batched call {c['batched_s']:.2f} s; loop {c['loop_s']:.2f} s; speed-up {c['speedup']:.1f}×; identical {c['identical_outputs']}/{c['total_outputs']}")
    table.add_row(f"capture {k['pairs']} pairs at {k['layers']} layers", f"{k['seconds']:.2f} s for {k['tokens']} tokens ({k['tokens_per_s']:.0f} tokens/s)")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
