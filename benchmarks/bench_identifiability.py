"""Identifiability-audit benchmarks on a built-in model (CPU).

1. The ``--quick`` audit for one trait, end to end through the command line (model load, vector
   extraction, scorer, generation, distributional readout, statistics, plots): wall time and the
   child process's peak resident memory.
3. The Monte Carlo draws of the class size: ``--draws`` random ``v + u`` on 8 held-out pairs as
   rows of one batched pass against one pass per draw, and ``class_fraction`` with the distribution.
2. The audit's two model-bound stages at ``--quick`` size (8 conditions × 8 prompts × 2 samples,
   16 new tokens), batched as the audit runs them (conditions as rows of one call) against a loop
   with one call per condition, with a check that the results are the same. Generation is greedy
   here so that the two ways produce comparable texts (the audit samples; batching changes which
   random numbers each row draws, not the cost).

Prints a table and writes JSON (medians of --repeats runs of part 2, measured in this one process).
Usage: python benchmarks/bench_identifiability.py [--model smollm2-135m] [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import steerscope as ss
from steerscope.audit.equivalence import Margin
from steerscope.audit.identifiability import (
    audit_vector,
    behavioural_scores,
    build_conditions,
    distributional_readout,
    evaluation_prompts,
    reference_continuations,
)
from steerscope.audit.readouts import ClassSample, class_fraction, pair_margins_by_condition
from steerscope.data.traits import builtin_pairs
from steerscope.score.base import get_scorer


def _timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def bench_quick_cli(model: str, trait: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "steerscope", "audit", "identifiability", "--model", model, "--trait", trait,
               "--quick", "--out", str(Path(tmp) / "audit")]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the quick audit failed:\n{proc.stderr}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"command": " ".join(cmd[1:-2]), "seconds": seconds, "peak_rss_mib": peak_kib / 1024}


def bench_stages(lm, trait: str, layer: int, repeats: int) -> dict:
    vec = audit_vector(lm, trait, layer)
    conditions = [c for c in build_conditions(vec.directions[layer], 2.0, 2, 0) if c.name != "dose_margin"]
    prompts = evaluation_prompts(trait, "in_distribution", 8)
    scorer = get_scorer(trait)
    config = ss.GenerationConfig(max_new_tokens=16, do_sample=False)

    def gen_batched():
        return behavioural_scores(lm, layer, conditions, prompts, scorer, 2, config)

    def gen_loop():
        out = {}
        for cond in conditions:
            out |= behavioural_scores(lm, layer, [cond], prompts, scorer, 2, config)
        return out

    continuations = reference_continuations(lm, layer, conditions[1], prompts, 16)

    def div_batched():
        return distributional_readout(lm, layer, conditions, prompts, continuations)

    def div_loop():
        ref = conditions[1]
        return {c.name: distributional_readout(lm, layer, [ref, c] if c is not ref else [ref], prompts, continuations)[c.name]
                for c in conditions}

    out = {"conditions": len(conditions), "prompts": len(prompts), "samples": 2, "new_tokens": 16}
    for stage, batched, loop in (("generation", gen_batched, gen_loop), ("distributional", div_batched, div_loop)):
        t_b, runs_b, res_b = _timed(batched, repeats)
        t_l, runs_l, res_l = _timed(loop, repeats)
        if stage == "generation":
            same = sum(int(np.array_equal(res_b[n], res_l[n])) for n in res_b)
        else:
            same = sum(int(np.allclose(res_b[n]["js"], res_l[n]["js"], atol=1e-6, equal_nan=True)) for n in res_b)
        out[stage] = {"batched_s": t_b, "loop_s": t_l, "batched_runs_s": runs_b, "loop_runs_s": runs_l,
                      "speedup": t_l / t_b, "same_conditions": same, "total_conditions": len(res_b)}
    total_b = out["generation"]["batched_s"] + out["distributional"]["batched_s"]
    total_l = out["generation"]["loop_s"] + out["distributional"]["loop_s"]
    out["both_stages"] = {"batched_s": total_b, "loop_s": total_l, "speedup": total_l / total_b}
    return out


def bench_class_draws(lm, trait: str, layer: int, draws: int, repeats: int) -> dict:
    """Monte Carlo class-size draws on the pair margin (8 held-out pairs): every draw as rows of one
    batched pass against one pass per draw, and the full class_fraction (pair margin and distribution)."""
    v = audit_vector(lm, trait, layer).directions[layer]
    pairs = builtin_pairs(trait, "test")[:8]
    us = {f"u{i}": v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) * v.norm() for i in range(draws)}
    t_b, _, res_b = _timed(lambda: pair_margins_by_condition(lm, layer, us, 2.0, pairs), repeats)
    t_l, _, res_l = _timed(lambda: {k: pair_margins_by_condition(lm, layer, {k: u}, 2.0, pairs)[k] for k, u in us.items()}, repeats)
    same = sum(int(np.allclose(res_b[k], res_l[k], atol=1e-3)) for k in us)
    prompts = evaluation_prompts(trait, "in_distribution", 8)
    conts = reference_continuations(lm, layer, build_conditions(v, 2.0, 1, 0)[1], prompts, 16)
    t_full, _, _ = _timed(lambda: class_fraction(lm, layer, v, 2.0, pairs, (prompts, conts), Margin(), ClassSample(draws, (1.0,))), repeats)
    return {"draws": draws, "pairs": len(pairs), "margin_batched_s": t_b, "margin_loop_s": t_l, "speedup": t_l / t_b,
            "same_draws": same, "margin_draws_per_s": draws / t_b, "class_fraction_s": t_full, "class_draws_per_s": draws / t_full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--trait", default="formality")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--draws", type=int, default=24, help="Monte Carlo draws of the class-size benchmark.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "identifiability.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = bench_quick_cli(args.model, args.trait, args.threads)
    lm = ss.load_model(args.model, device="cpu")
    results = {
        "model": lm.info(), "trait": args.trait, "layer": args.layer, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "steerscope": ss.__version__,
        "quick_cli": quick, "stages": bench_stages(lm, args.trait, args.layer, args.repeats),
        "class_draws": bench_class_draws(lm, args.trait, args.layer, args.draws, args.repeats),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    table = Table(title=f"identifiability audit — {args.model}, {args.threads} CPU threads, median of {args.repeats}")
    table.add_column("benchmark")
    table.add_column("result")
    table.add_row(f"`audit identifiability --quick` ({args.trait})",
                  f"{quick['seconds']:.0f} s wall, peak RSS {quick['peak_rss_mib']:.0f} MiB")
    s = results["stages"]
    for stage in ("generation", "distributional"):
        r = s[stage]
        table.add_row(f"{stage}: {s['conditions']} conditions × {s['prompts']} prompts",
                      f"batched {r['batched_s']:.2f} s; loop {r['loop_s']:.2f} s; speed-up {r['speedup']:.2f}×; "
                      f"same {r['same_conditions']}/{r['total_conditions']}")
    b = s["both_stages"]
    table.add_row("both stages", f"batched {b['batched_s']:.2f} s; loop {b['loop_s']:.2f} s; speed-up {b['speedup']:.2f}×")
    c = results["class_draws"]
    table.add_row(f"class-size draws: {c['draws']} × {c['pairs']} pairs (pair margin)",
                  f"batched {c['margin_batched_s']:.2f} s ({c['margin_draws_per_s']:.2f} draws/s); loop {c['margin_loop_s']:.2f} s; "
                  f"speed-up {c['speedup']:.2f}×; same {c['same_draws']}/{c['draws']}")
    table.add_row("class_fraction (pair margin + distribution, 8 prompts)", f"{c['class_fraction_s']:.2f} s ({c['class_draws_per_s']:.2f} draws/s)")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
