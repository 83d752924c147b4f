"""Benchmark of the Ray backend of sweeps: its overhead per cell against the local run.

A sweep of 2 traits × 2 layers of a tiny random model (6 layers, d_model 32, saved to a folder) at
small sizes, with a deterministic word-count scorer (so that the cells are the audit's own work, not
scorer loading), is run locally (one thread), then on a Ray cluster started here with 1 worker and
with 2 workers (one thread each). The fixed costs of Ray (starting the cluster, starting a worker:
imports and the model load) are measured apart; the overhead per cell is the rest of the difference
in wall time, divided by the cells. The transport alone is measured too: the cells of one audit
(their own payloads and blobs) committed to a run store from a local generator against streamed back
from an actor, as the sweep driver reads them. One audit alone (formality at layer 1) is run locally
and on 2 workers, over which it splits its independent parts (the α values, the seven stages after
calibration). Every audit's results.json is checked byte-identical to the local run's. Prints a
table and writes JSON to benchmarks/results/ray.json.
Usage: python benchmarks/bench_ray.py [--cpus 2] [--json-out benchmarks/results/ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from steerscope.runstore import RunStore, open_run
from steerscope.sweep import SweepSettings, run_sweep
from steerscope.sweep_plan import read_plan

SIZES = {"candidate_layers": 2, "alphas": [1.0, 4.0], "calib_prompts": 3, "calib_samples": 2, "calib_tokens": 8, "id_draws": 2,
         "id_prompts": 4, "id_samples": 2, "id_tokens": 8, "ns_prompts": 4, "rec_env_prompts": 2, "rec_map_prompts": 1, "rec_boot": 3,
         "reach_prompts": 2, "reach_positions": 3, "reach_alphas": [1.0], "reach_sweep_prompts": 1, "reach_tokens": 6, "reach_budget": 32,
         "mon_prompts": 2, "mon_samples": 1, "mon_tokens": 4, "se_doses": [2.0], "se_prompts": 2, "se_samples": 1, "se_tokens": 4,
         "se_capability": 6, "rob_prompts": 2, "rob_samples": 1, "rob_tokens": 4, "rob_boot": 4, "rob_halves": 2, "rob_curve": [4],
         "rob_draws": 1}


class WordScorer:
    """Deterministic scorer: a count of a few words plus length (pickled by value to the workers)."""

    name = "word-count"
    validity = None

    def __init__(self, trait: str):
        self.trait = trait

    def __call__(self, texts):
        return np.array([sum(t.count(w) for w in ("please", "thank", "good")) + 0.05 * len(t.split()) for t in texts], float)


def make_plan(folder: Path, traits: tuple[str, ...] = ("formality", "sentiment"), layers: tuple[int, ...] = (1, 3)) -> Path:
    from steerscope.testing import tiny_model

    if not (folder / "tiny").exists():
        lm = tiny_model("llama", n_layers=6)
        lm.model.save_pretrained(folder / "tiny")
        lm.tokenizer.save_pretrained(folder / "tiny")
    lines = ['models = ["tiny"]', f"traits = {json.dumps(list(traits))}", f"layers = {json.dumps(list(layers))}", 'device = "cpu"', "",
             "[sizes]"]
    plan = folder / f"plan-{len(traits)}x{len(layers)}.toml"
    plan.write_text("\n".join(lines + [f"{k} = {json.dumps(v)}" for k, v in SIZES.items()]) + "\n")
    return plan


def timed_sweep(plan: Path, out: Path, backend=None) -> dict:
    """Wall time of the sweep, and the cells and their summed compute time from the audits' stores."""
    from steerscope.data.traits import TRAITS

    start = time.perf_counter()
    run_sweep(read_plan(plan), out, SweepSettings(backend, {t: WordScorer(t) for t in TRAITS}))
    wall = time.perf_counter() - start
    cells, compute = 0, 0.0
    for audit in sorted((out / "audits").iterdir()):
        with RunStore.open(audit, readonly=True) as store:
            cells += store.count()
            compute += sum(store.timings().values())
    return {"wall_s": wall, "cells": cells, "compute_s": compute}


def identical(a: Path, b: Path) -> bool:
    return all((b / "audits" / x.name / "results.json").read_bytes() == (x / "results.json").read_bytes() for x in (a / "audits").iterdir())


def worker_start(ray, plan: Path) -> float:
    """Seconds to start one actor and load the model in it (imports included)."""
    from steerscope.distributed import AuditWorker

    start = time.perf_counter()
    actor = ray.remote(AuditWorker).options(num_cpus=1).remote(str(plan.parent / "tiny"), "cpu", "float32")
    ray.get(actor.fingerprint.remote())
    seconds = time.perf_counter() - start
    ray.kill(actor)
    return seconds


class Echo:
    """An actor that streams given cells back, ``rounds`` times, as the audit workers stream theirs."""

    def __init__(self, cells):
        self.cells = cells

    def stream(self, rounds: int):
        for r in range(rounds):
            for cell in self.cells:
                yield replace(cell, key=f"{r}/{cell.key}")


def commit_all(cells, folder: Path, wait=None) -> float:
    """Seconds to commit every cell of the iterator ``cells`` to a new run store (``wait``: Ray, whose
    generator is waited on and read as the sweep driver reads it)."""
    store, _ = open_run(folder, {"bench": str(folder)}, "bench", "bench")
    with store:
        start = time.perf_counter()
        while True:
            if wait is not None:
                wait.wait([cells], num_returns=1)
            try:
                cell = next(cells) if wait is None else wait.get(next(cells))
            except StopIteration:
                return time.perf_counter() - start
            store.put(cell.key, cell.stage, cell.payload, cell.seconds, cell.trait, cell.blob)


def transport(ray, audit: Path, folder: Path, rounds: int) -> dict:
    """Per cell: committing the cells of a finished audit, read from a local generator against streamed
    back from an actor (the cells' own payloads and blobs; ``rounds`` passes)."""
    with RunStore.open(audit, readonly=True) as store:
        cells = list(store.cells())
    n = len(cells) * rounds
    local = commit_all(Echo(cells).stream(rounds), folder / "local-commit")
    actor = ray.remote(Echo).options(num_cpus=1).remote(cells)
    streamed = commit_all(actor.stream.remote(rounds), folder / "ray-commit", ray)
    ray.kill(actor)
    return {"cells": n, "bytes_per_cell": sum(len(c.blob or b"") + len(json.dumps(c.payload)) for c in cells) / len(cells),
            "local_ms_per_cell": 1000 * local / n, "ray_ms_per_cell": 1000 * streamed / n, "overhead_ms_per_cell": 1000 * (streamed - local) / n}


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time, with every run's wall time."""
    chosen = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return chosen | {"walls_s": [r["wall_s"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="Passes over an audit's cells in the transport measurement.")
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" / "ray.json"))
    args = parser.parse_args()
    import ray
    import torch

    from steerscope.distributed import RayBackend

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plan, one = make_plan(folder), make_plan(folder, ("formality",), (1,))
        timed_sweep(plan, folder / "warm-up")  # first imports and lazy initialisation, not counted
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
        cluster_start = time.perf_counter() - start
        worker = median_run([{"wall_s": worker_start(ray, plan)} for _ in range(args.repeats)])["wall_s"]
        moved = transport(ray, next((folder / "warm-up" / "audits").iterdir()), folder, args.rounds)
        kinds = {"local": (plan, None), "ray1": (plan, RayBackend(workers=1)), "ray2": (plan, RayBackend(workers=2)),
                 "one-local": (one, None), "one-ray2": (one, RayBackend(workers=2))}
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for i in range(args.repeats):  # interleaved, so that a slow spell of the shared machine hits every kind alike
            for kind, (which, backend) in kinds.items():
                runs[kind].append(timed_sweep(which, folder / f"{kind}-{i}", backend))
        same = all(identical(folder / f"{'one-' if kind.startswith('one') else ''}local-0", folder / f"{kind}-{i}")
                   for kind in kinds for i in range(args.repeats))
        ray.shutdown()
    local, ray1, ray2, one_local, one_ray2 = (median_run(runs[kind]) for kind in kinds)
    end_to_end = 1000 * (ray1["wall_s"] - worker - local["wall_s"]) / local["cells"]
    row = {"workload": "2 traits x 2 layers, tiny llama (6 layers, d_model 32), small sizes, word-count scorer", "cpus": args.cpus,
           "repeats": args.repeats, "local": local, "ray_1_worker": ray1, "ray_2_workers": ray2, "cluster_start_s": cluster_start,
           "worker_start_s": worker, "end_to_end_overhead_ms_per_cell": end_to_end, "transport": moved,
           "speedup_2_workers": local["wall_s"] / ray2["wall_s"], "one_audit_local": one_local, "one_audit_ray_2_workers": one_ray2,
           "one_audit_speedup_2_workers": one_local["wall_s"] / one_ray2["wall_s"], "results_identical": same, "ray_version": ray.__version__,
           "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "machine_cpus": os.cpu_count()}
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    table = Table(title=f"sweep on Ray vs local, {args.cpus} CPUs, {local['cells']} cells, median of {args.repeats}")
    for col in ("run", "wall s", "in cells s", "wall per cell ms"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for name, r in (("local, 1 thread", local), ("Ray, 1 worker", ray1), ("Ray, 2 workers", ray2), ("one audit, local", one_local),
                    ("one audit, Ray, 2 workers (split)", one_ray2)):
        table.add_row(name, f"{r['wall_s']:.1f}", f"{r['compute_s']:.1f}", f"{1000 * r['wall_s'] / r['cells']:.0f}")
    Console().print(table)
    Console().print(f"per cell, committed from a local generator: {moved['local_ms_per_cell']:.2f} ms; streamed from an actor: "
                    f"{moved['ray_ms_per_cell']:.2f} ms; Ray overhead {moved['overhead_ms_per_cell']:+.2f} ms per cell "
                    f"({moved['cells']} cells of {moved['bytes_per_cell'] / 1024:.1f} KiB on average)")
    Console().print(f"end to end, 1 worker against local: {end_to_end:+.1f} ms per cell after the fixed costs: cluster start "
                    f"{cluster_start:.1f} s, worker start (imports, model load) {worker:.1f} s; 2 workers: "
                    f"{row['speedup_2_workers']:.2f}× the local speed; one audit split over 2 workers: "
                    f"{row['one_audit_speedup_2_workers']:.2f}×; results identical to the local run: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
