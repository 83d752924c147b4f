"""Recovery report for every built-in trait on a built-in model (the table in docs/results.md).

Usage: python experiments/recovery_report.py [--model smollm2-135m] [--layer 15] [--env-prompts 6]
       [--map-prompts 4] [--boot 20] [--out docs/nullspace/recovery-MODEL-L{layer}.json]
Jacobian Gram matrices (per environment, mixed over traits) and layer maps are computed once and
shared by all traits; each trait's audited vector is its mean difference on the train pairs, and
multienv extracts one vector per environment from the trait's env_pairs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import steerscope as ss
from steerscope.data.traits import ENVIRONMENTS, TRAITS, builtin_env_pairs, builtin_prompts
from steerscope.recover.trait import layer_maps, prompt_grams, recover_trait

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--layer", type=int, default=15)
parser.add_argument("--env-prompts", type=int, default=6)
parser.add_argument("--map-prompts", type=int, default=4)
parser.add_argument("--boot", type=int, default=20)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default=None)
args = parser.parse_args()
torch.set_num_threads(args.threads)
lm = ss.load_model(args.model, device="cpu")
start = time.perf_counter()
by_env = {env: [builtin_prompts(t, env)[i] for i in range(args.env_prompts) for t in TRAITS][: args.env_prompts] for env in ENVIRONMENTS}
grams = {env: prompt_grams(lm, prompts, args.layer) for env, prompts in by_env.items()}
targets = [t for t in (args.layer + 3,) if t < lm.n_layers]
maps = layer_maps(lm, by_env["in_distribution"][: args.map_prompts], args.layer, targets)
print(f"Jacobians and maps: {time.perf_counter() - start:.0f}s", flush=True)
rows = []
for trait in TRAITS:
    pairs = ss.builtin_pairs(trait, "train")
    env_pairs = builtin_env_pairs(trait)
    for method in ("ica", "sparse", "multienv", "crosslayer"):
        kwargs = {"observe": "jacobian", "k": 8} if method == "sparse" else {}
        r = recover_trait(lm, method, pairs, args.layer, grams=grams, maps=maps, n_boot=args.boot, seed=args.seed, env_pairs=env_pairs,
                          **kwargs)
        row = r.to_dict() | {"trait": trait, "model": args.model}
        row.pop("direction")
        rows.append(row)
        agree, test = r.agreement or {}, r.assumption or {}
        print(trait, method, f"unique {r.identifiable}", f"assumption holds {test.get('holds')} (p {test.get('p')})",
              f"cos {agree.get('cos', float('nan')):.3f} [{agree.get('ci_low') or float('nan'):.3f}, {agree.get('ci_high') or float('nan'):.3f}]",
              f"identifies {r.identifies}", flush=True)
out = Path(args.out or f"docs/nullspace/recovery-{args.model}-L{args.layer}.json")
out.parent.mkdir(parents=True, exist_ok=True)
config = {"layer": args.layer, "env_prompts": args.env_prompts, "map_prompts": args.map_prompts, "map_targets": targets,
          "boot": args.boot, "seed": args.seed, "wall_s": time.perf_counter() - start}
out.write_text(json.dumps({"config": config, "environments": by_env, "rows": rows}, indent=1))
