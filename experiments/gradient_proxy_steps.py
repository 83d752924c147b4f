"""Does optimising the gradient policy's proxy embedding longer bring the true token within reach?

At natural positions inside prompts (the 6 positions before the last 2 of the first two formality
in-distribution prompts, chat-templated), the proxy input embedding starts at the mean input
embedding and takes Adam steps (learning rate ``--lr`` × the RMS norm of the input embeddings per
coordinate, as :class:`steerscope.invert.SearchConfig`) on the policy's proposal loss
½·‖w ⊙ (h(e) − target)‖² (``w``: :func:`steerscope.invert.proposal_weights`). After 0, 5, 20, 50 and
100, 200 and 400 steps it records the rank of the true token (a) by first-order gain at the proxy,
(b) by L2 distance of its input embedding to the proxy and (c) by cosine similarity to the proxy. Prints the sorted ranks, writes JSON.
Usage: python experiments/gradient_proxy_steps.py MODEL --layer L [--lr 1.0] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import steerscope as ss
from steerscope.encoding import encode_prompt
from steerscope.invert import PrefixCache, embedding_space, hidden_states, proposal_weights

CHECKPOINTS = (0, 5, 20, 50, 100, 200, 400)


def positions(lm) -> list[tuple[list[int], int]]:
    out = []
    for prompt in ss.builtin_prompts("formality", "in_distribution")[:2]:
        ids = encode_prompt(lm.tokenizer, prompt)
        out += [(ids, t) for t in range(len(ids) - 8, len(ids) - 2)]
    return out


def ranks(lm, layer: int, ids: list[int], t: int, lr: float, weight: torch.Tensor, scale: float) -> dict[int, tuple[int, int, int]]:
    """Checkpoint → (rank by first-order gain, by embedding distance, by cosine to the proxy) of token ``ids[t]``."""
    rms = float(weight.norm(dim=-1).pow(2).mean().sqrt()) * abs(scale)
    target = hidden_states(lm, ids, layer)[t]
    w = proposal_weights(target)
    state = PrefixCache(lm, layer, ids[:t])
    e = (weight.mean(0) * scale).clone().requires_grad_(True)
    opt = torch.optim.Adam([e], lr=lr * rms / math.sqrt(e.numel()))
    out = {}
    for step in range(max(CHECKPOINTS) + 1):
        loss = 0.5 * ((state.embed_state(e[None])[0] - target) * w).pow(2).sum()
        (g,) = torch.autograd.grad(loss, e)
        if step in CHECKPOINTS:
            gain = weight @ g * scale
            d2 = ((weight * scale - e.detach()) ** 2).sum(-1)
            cos = torch.nn.functional.cosine_similarity(weight * scale, e.detach()[None], dim=-1)
            out[step] = (int((gain < gain[ids[t]]).sum()), int((d2 < d2[ids[t]]).sum()), int((cos > cos[ids[t]]).sum()))
        e.grad = g
        opt.step()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = ss.load_model(args.model, device="cpu")
    weight, scale = embedding_space(lm)
    rows = [ranks(lm, args.layer, ids, t, args.lr, weight.float(), scale) for ids, t in positions(lm)]
    result = {"model": args.model, "layer": args.layer, "lr": args.lr, "vocab": weight.shape[0],
              "by_steps": {step: {"gain_ranks": sorted(r[step][0] for r in rows), "nearest_ranks": sorted(r[step][1] for r in rows),
                                 "cosine_ranks": sorted(r[step][2] for r in rows)}
                           for step in CHECKPOINTS}}
    for step, r in result["by_steps"].items():
        print(f"{step:>3} steps  gain ranks {r['gain_ranks']}\n           nearest ranks {r['nearest_ranks']}\n           cosine ranks {r['cosine_ranks']}")
    out = args.out or Path(__file__).parent / "results" / f"proxy_steps_{args.model}_L{args.layer}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
