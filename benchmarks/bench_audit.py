"""Benchmark of the one-command audit: `steerscope audit --quick` end to end on a built-in model.

Runs the CLI in a subprocess into a fresh run folder, measures wall time and the peak resident
memory of the child, reads the per-stage times from the run store, prints a table and writes
JSON to benchmarks/results/audit.json. The run folder is kept (its report is the README's demo).
The target is 5 minutes for smollm2-135m and 10 minutes for gemma3-270m (a vocabulary 5.3 times
as large), on 2 CPU cores; ``--target`` sets another.
Usage: python benchmarks/bench_audit.py [--model smollm2-135m] [--trait formality] [--threads 2] [--out runs/bench-quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from steerscope.runstore import RunStore

#: Seconds the quick audit of one trait should take on 2 CPU cores, per built-in model.
TARGETS = {"smollm2-135m": 300.0, "gemma3-270m": 600.0}


def cpu_flags() -> str:
    """The CPU's model name and which of the vector extensions that matmul kernels use it exposes (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return f"{name} ({', '.join(f for f in ('avx', 'fma', 'avx2', 'avx512f') if f in flags) or 'no AVX'})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--trait", default="formality")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-quick")
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" / "audit.json"))
    parser.add_argument("--target", type=float, default=None, help="seconds (default: 300 for smollm2-135m, 600 for gemma3-270m)")
    args = parser.parse_args()
    target = args.target if args.target is not None else TARGETS.get(args.model, 300.0)
    folder = Path(args.out)
    if folder.exists():
        shutil.rmtree(folder)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "steerscope", "audit", "--model", args.model, "--trait", args.trait, "--quick", "--out", str(folder), "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the audit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux -> MiB
    with RunStore.open(folder, readonly=True) as store:
        stages = store.timings()
    summary = json.loads(proc.stdout)
    total = sum(stages.values())
    row = {
        "model": args.model, "trait": args.trait, "threads": args.threads, "wall_s": wall, "peak_rss_mib": peak,
        "target_s": target, "within_target": wall <= target, "stage_s": stages, "stage_share": {k: v / total for k, v in stages.items()},
        "outside_stages_s": wall - total, "answers": summary["answers"], "torch": __import__("torch").__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "cpu": cpu_flags(),
    }
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    table = Table(title=f"steerscope audit --quick: {args.model}, {args.trait}, {args.threads} threads")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for stage, secs in stages.items():
        table.add_row(stage, f"{secs:.1f}", f"{secs / total:.0%}")
    table.add_row("model load, report, start-up", f"{wall - total:.1f}", "")
    table.add_row("total wall", f"{wall:.1f}", f"≤ {target:g} s ✔" if wall <= target else f"> {target:g} s ✘")
    Console().print(table)
    Console().print(f"peak RSS {peak:.0f} MiB; report: {folder / 'report.html'}")


if __name__ == "__main__":
    main()
