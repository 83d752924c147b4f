"""Null-space benchmark: exact Jacobian spectrum at one layer over 64 prompts (CPU by default).

Measures the wall time and the peak resident memory of :func:`steerscope.audit.nullspace.nullspace_audit`
for one layer (logits and log-probabilities, one position per prompt), prints a table and writes
JSON to benchmarks/results/nullspace.json (the audit result itself goes next to it).
Usage: python benchmarks/bench_nullspace.py [--model smollm2-135m] [--layer 15] [--prompts 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import steerscope as ss
from steerscope.audit.nullspace import nullspace_audit
from steerscope.data.prompts import builtin_prompt_mix


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=144)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "nullspace.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = ss.load_model(args.model, device="cpu")
    prompts = builtin_prompt_mix(args.prompts)
    vec = ss.extract(lm, ss.builtin_pairs("formality", "train"), [args.layer])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    audit = nullspace_audit(lm, prompts, [args.layer], vectors=vec.directions, chunk=args.chunk)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    entry = audit["layers"][str(args.layer)]
    row = {
        "model": args.model, "layer": args.layer, "prompts": args.prompts, "threads": args.threads, "chunk": args.chunk,
        "wall_s": wall, "jacobian_s": entry["seconds"], "s_per_prompt": entry["seconds"] / args.prompts,
        "peak_rss_mib": peak, "rss_before_mib": rss_before, "target_s": 300, "within_target": wall < 300,
        "inert_fraction_logits": entry["logits"]["stacked"]["inert_fraction"],
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    out.with_name(f"nullspace_audit_{args.model}_L{args.layer}.json").write_text(json.dumps(audit, indent=1))
    table = Table(title=f"Jacobian spectrum, {args.model} layer {args.layer}, {args.prompts} prompts, {args.threads} threads")
    for col in ("wall (s)", "s / prompt", "peak RSS (MiB)", "target", "inert fraction (logits) at 1e-2/1e-3/1e-4"):
        table.add_column(col)
    inert = "/".join(f"{v:.3f}" for v in row["inert_fraction_logits"].values())
    table.add_row(f"{wall:.1f}", f"{row['s_per_prompt']:.2f}", f"{peak:.0f}", "< 300 s " + ("✔" if row["within_target"] else "✘"), inert)
    Console().print(table)


if __name__ == "__main__":
    main()
