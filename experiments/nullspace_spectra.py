"""Null-space spectra of a built-in model at chosen layers (the numbers in docs/results.md).

Usage: python experiments/nullspace_spectra.py MODEL LAYER [LAYER ...] [--prompts 64] [--out DIR]
Writes DIR/MODEL-L{layer}.json per layer (the nullspace_audit result for that layer, with the gain
of the formality mean_diff vector extracted at the same layer).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import steerscope as ss
from steerscope.audit.nullspace import nullspace_audit
from steerscope.data.prompts import builtin_prompt_mix

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("layers", type=int, nargs="+")
parser.add_argument("--prompts", type=int, default=64)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--out", default="docs/nullspace")
args = parser.parse_args()
torch.set_num_threads(args.threads)
lm = ss.load_model(args.model, device="cpu")
prompts = builtin_prompt_mix(args.prompts)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
for layer in args.layers:
    vec = ss.extract(lm, ss.builtin_pairs("formality", "train"), [layer])
    start = time.perf_counter()
    result = nullspace_audit(lm, prompts, [layer], vectors=vec.directions, progress=False)
    result["wall_s"] = time.perf_counter() - start
    result["vector"] = {"trait": "formality", "method": "mean_diff", "norm": vec.norm(layer)}
    (out / f"{args.model}-L{layer}.json").write_text(json.dumps(result, indent=1))
    print(args.model, layer, f"{result['wall_s']:.0f}s", result["layers"][str(layer)]["logits"]["stacked"]["inert_fraction"], flush=True)
