"""Why the gradient policy needed many candidates on Gemma 3: the rank of the true token by first-order gain.

At natural positions, the gradient g of ½·‖w ⊙ (h(e) − target)‖² at the mean input embedding e ranks
every token by its first-order gain −g·E_v; the rank of the token that produced the target says how
many candidates the policy's first half-batches need. ``w`` leaves out coordinates of the target
above RATIO × its median magnitude (``--ratios``; "none" = plain L2).

Positions: 12 inside prompts (the 6 positions before the last 2 of the first two formality
in-distribution prompts, chat-templated) and the first token of 12 replies of the built-in pairs
(train split, no template) — the position with no context. Prints a table, writes JSON.
Usage: python experiments/gradient_proposal_ranks.py MODEL [--layer L] [--split train] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import steerscope as ss
from steerscope.encoding import encode_prompt
from steerscope.invert import PrefixCache, embedding_space, hidden_states

from inversion_positive_control import replies

RATIOS = ("none", "10", "30", "100")


def positions(lm, split: str) -> dict[str, list[tuple[list[int], int]]]:
    inside = []
    for prompt in ss.builtin_prompts("formality", "in_distribution")[:2]:
        ids = encode_prompt(lm.tokenizer, prompt)
        inside += [(ids, t) for t in range(len(ids) - 8, len(ids) - 2)]
    texts = [r for trait in replies(split) for r in trait[:3]][:12]
    first = [(lm.tokenizer(text)["input_ids"][:4], 1) for text in texts]
    return {"inside prompts": inside, "first token of a text": first}


def rank(lm, layer: int, ids: list[int], t: int, ratio: str, weight: torch.Tensor, scale: float) -> int:
    target = hidden_states(lm, ids, layer)[t]
    mag = target.abs()
    w = torch.ones_like(mag) if ratio == "none" else (mag < float(ratio) * mag.median()).float()
    e = (weight.mean(0) * scale).clone().requires_grad_(True)
    state = PrefixCache(lm, layer, ids[:t])
    (g,) = torch.autograd.grad(0.5 * ((state.embed_state(e[None])[0] - target) * w).pow(2).sum(), e)
    order = (-(weight @ g)).argsort(descending=True)
    return int((order == ids[t]).nonzero()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, default=None, help="default: 40 %% of the depth")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lm = ss.load_model(args.model, device="cpu")
    layer = args.layer if args.layer is not None else round(0.4 * lm.n_layers)
    space = embedding_space(lm)
    weight, scale = space.weight, space.scale
    weight = weight.float()
    table = Table(title=f"Rank of the true token by first-order gain, {args.model} layer {layer}")
    for col in ("positions", "massive ratio", "median", "max", "≤ 256", "≤ 1 % of vocab"):
        table.add_column(col)
    out = {"model": args.model, "layer": layer, "vocab": weight.shape[0], "split": args.split, "sets": {}}
    for name, rows in positions(lm, args.split).items():
        out["sets"][name] = {}
        for ratio in RATIOS:
            ranks = [rank(lm, layer, ids, t, ratio, weight, scale) for ids, t in rows]
            out["sets"][name][ratio] = ranks
            table.add_row(name, ratio, f"{statistics.median(ranks):g}", str(max(ranks)), f"{sum(r < 256 for r in ranks)}/{len(ranks)}",
                          f"{sum(r < weight.shape[0] // 100 for r in ranks)}/{len(ranks)}")
    path = Path(args.out or Path(__file__).parent / "results" / f"proposal_ranks_{args.model}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    Console().print(table)


if __name__ == "__main__":
    main()
