"""Candidates the gradient policy scores per natural position, against its Adam steps per round.

At the positions of :mod:`gradient_proxy_steps` (``--where end``: the 6 positions before the last 2
of the first two formality in-distribution prompts, chat-templated: on SmolLM2 half of them template
tokens, on Gemma-3 user words), at the user's words of the first four prompts (``--where user``, at
most 6 per prompt, as the reachability audit searches them) or at positions 1–19 of the first 3
texts of the natural control (``--where text``: test replies, no template), each position's natural
state is inverted alone (the tokens before it given) with :func:`steerscope.invert.invert`: rounds
of 32 candidates, each followed by ``steps`` Adam steps of the proxy, up to ``--budget`` candidates,
then the fallback (capped at ``--cap`` candidates). ``--fixed-order``: the
gain half of each round continues down the first-order order at the mean embedding
(:class:`~steerscope.invert.SearchConfig` ``fixed_order``). The model's own likeliest next
tokens are scored first and the fallback goes down that order (``SearchConfig.prior``, the default);
``--no-prior``: without them, the fallback in id order (the policy before the prior). ε is calibrated on the two prompts of
``--where end``. Reports, per ``steps``: candidates per position, their mean as a share of the
vocabulary, exact recoveries and seconds. Prints a line per setting and writes JSON after each.
Usage: python experiments/gradient_policy_steps.py MODEL --layer L [--where end|user|text] [--fixed-order] [--no-prior]
       [--steps 1,5,10] [--cap N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from gradient_proxy_steps import positions
from inversion_positive_control import replies, round_robin

import steerscope as ss
from steerscope.encoding import encode_prompt, prompt_user_span
from steerscope.invert import SearchConfig, calibrate_threshold, embedding_space, hidden_states, invert


def user_positions(lm) -> list[tuple[list[int], int]]:
    out = []
    for prompt in ss.builtin_prompts("formality", "in_distribution")[:4]:
        ids = encode_prompt(lm.tokenizer, prompt)
        lo, hi = prompt_user_span(lm.tokenizer, prompt, ids)
        out += [(ids, t) for t in range(lo, min(hi, lo + 6))]
    return out


def text_positions(lm) -> list[tuple[list[int], int]]:
    """Positions 1–19 of the first 3 test replies of the natural control (no template; BOS given)."""
    out = []
    for text in round_robin(replies("test"), 3):
        ids = lm.tokenizer(text)["input_ids"][:21]
        out += [(ids, t) for t in range(2, len(ids))]
    return out


def run(lm, layer: int, eps: float, cfg: SearchConfig, where: list[tuple[list[int], int]]) -> dict:
    tried, exact, start = [], 0, time.perf_counter()
    for ids, t in where:
        target = hidden_states(lm, ids[: t + 1], layer)
        inv = invert(lm, target, layer, eps, prefix=ids[:t], config=cfg)
        tried.append(inv.tried[0])
        exact += inv.tokens[t] == ids[t]
    return {"steps": cfg.steps, "tried": tried, "exact": exact, "positions": len(tried), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--where", choices=("end", "user", "text"), default="end")
    parser.add_argument("--fixed-order", action="store_true", help="the gain half continues down the first-order order at the start")
    parser.add_argument("--no-prior", dest="prior", action="store_false", help="without the model's likeliest next tokens first")
    parser.add_argument("--steps", default="1,5,10")
    parser.add_argument("--budget", type=int, default=512)
    parser.add_argument("--cap", type=int, default=None, help="candidates per position at most (default: the vocabulary)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = ss.load_model(args.model, device="cpu")
    sequences = [ids for ids, _ in positions(lm)[::6]]
    eps = calibrate_threshold(lm, args.layer, sequences, last=8).epsilon
    vocab = embedding_space(lm)[0].shape[0]
    out = args.out or Path(__file__).parent / "results" / f"policy_steps_{args.model}_L{args.layer}_{args.where}{'_fixed' if args.fixed_order else ''}{'_prior' if args.prior else ''}.json"
    where = {"end": positions, "user": user_positions, "text": text_positions}[args.where](lm)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        row = run(lm, args.layer, eps, SearchConfig(steps=steps, budget=args.budget, max_candidates=args.cap, fixed_order=args.fixed_order,
                                                  prior=args.prior), where)
        row["mean_share"] = sum(row["tried"]) / len(row["tried"]) / vocab
        rows.append(row)
        print(f"steps {steps:>3}: exact {row['exact']}/{row['positions']}, mean {100 * row['mean_share']:.2f} % of {vocab:,}, "
              f"tried {sorted(row['tried'])}, {row['seconds']:.0f} s", flush=True)
        out.write_text(json.dumps({"model": args.model, "layer": args.layer, "where": args.where, "epsilon": eps, "vocab": vocab,
                                   "budget": args.budget, "cap": args.cap, "fixed_order": args.fixed_order, "prior": args.prior, "threads": args.threads, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
