"""The seed paper's own protocol (arXiv 2602.06801), reproduced so that its claims can be checked.

What the paper's code does, as documented in its repository: unit-norm vectors; strengths
α ∈ {0, 0.5, 1, 2}; steering at the last prompt token; trait scores of sampled completions compared
with Cohen's d (population SDs, all samples pooled, no prompt clustering, no test), read as
"negligible" when |d| < 0.2; last-token logit L2 distances from v for v + v⊥ and for a random
direction of the same norm as v + v⊥; and a mean-difference against a first-principal-component
vector. This module computes exactly those quantities, plus the one the protocol omits: d of v
against the unsteered model at each α. When that d is itself below 0.2, a "negligible" d between
v and v + v⊥ is vacuous — the readout cannot see v at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerscope.audit.identifiability import Condition, behavioural_scores, evaluation_prompts, orthogonal_draw, random_draw
from steerscope.capture import forward
from steerscope.encoding import encode_prompt, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig
from steerscope.intervene import steer_rows
from steerscope.jsonable import jsonable
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer
from steerscope.traitspec import TraitSpec, as_spec

#: The paper's reading of Cohen's d.
NEGLIGIBLE_D = 0.2


@dataclass(frozen=True)
class PaperSettings:
    """The paper's sizes (its code defaults): ``alphas``, ``n_draws`` v⊥ seeds, ``n_prompts`` × ``samples``
    completions of ``max_new_tokens`` at ``temperature``, ``n_random`` same-norm random directions."""

    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    n_draws: int = 5
    n_prompts: int = 20
    samples: int = 5
    max_new_tokens: int = 40
    temperature: float = 0.8
    n_random: int = 3
    env: str = "in_distribution"
    seed: int = 0

    @classmethod
    def quick_sizes(cls) -> PaperSettings:
        """A CPU-sized run: 2 draws, 8 prompts × 2 samples of 16 tokens."""
        return cls(n_draws=2, n_prompts=8, samples=2, max_new_tokens=16)

    def __post_init__(self) -> None:
        if self.n_draws < 1 or self.n_random < 1 or self.samples < 1 or self.n_prompts < 2 or not self.alphas:
            raise SteerscopeError("the paper protocol needs ≥ 1 draw, random direction and sample, ≥ 2 prompts and one α")


def cohens_d(x: np.ndarray, y: np.ndarray) -> float:
    """``|mean(x) − mean(y)| / sqrt((var x + var y) / 2)`` with population variances (the paper's
    definition), over all samples; 0 when both are constant and equal, inf when only the means differ."""
    x, y = np.ravel(np.asarray(x, float)), np.ravel(np.asarray(y, float))
    diff, sd = abs(x.mean() - y.mean()), np.sqrt((x.var() + y.var()) / 2)
    if sd == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / sd)


def unit_vectors(lm: LoadedModel, trait: str | TraitSpec, layer: int) -> dict[str, torch.Tensor]:
    """Unit-norm mean-difference and PCA vectors of ``trait``'s train pairs at ``layer`` (``[d]`` each)."""
    from steerscope.extract import extract

    spec = as_spec(trait)
    pairs = list(spec.train)
    out = {}
    for method in ("mean_diff", "pca"):
        v = extract(lm, pairs, [layer], method=method, trait=spec.name).directions[layer].detach().float().cpu()
        out[method] = v / v.norm()
    return out


def last_token_logits(lm: LoadedModel, layer: int, prompts: Sequence[str], vectors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Next-token logits ``[C, P, V]`` (float64) at the last prompt token, each vector added there at α = 1."""
    ids = [encode_prompt(lm.tokenizer, p) for p in prompts]
    rows = [i for _ in vectors for i in ids]
    steering = steer_rows(lm, [None if v is None else {layer: v} for v in vectors for _ in ids],
                          [0.0 if v is None else 1.0 for v in vectors for _ in ids], "last")
    with steering, torch.inference_mode():
        logits = forward(lm, pad_batch(rows, lm.tokenizer.pad_token_id, "left"), logits_to_keep=1).logits[:, -1]
    return logits.double().cpu().reshape(len(vectors), len(prompts), -1)


def _conditions(v: torch.Tensor, alphas: Sequence[float], draws: Sequence[torch.Tensor]) -> list[Condition]:
    conds = [Condition("none", None, 0.0, None, "none")]
    for a in alphas:
        conds.append(Condition(f"v@{a:g}", v, a, None, "v"))
        conds += [Condition(f"v+perp#{i}@{a:g}", v + u, a, i, "v+perp") for i, u in enumerate(draws)]
    return conds


def _orthogonal_test(scores: Mapping[str, np.ndarray], alphas: Sequence[float], n_draws: int) -> list[dict[str, Any]]:
    rows = []
    for a in alphas:
        v = scores[f"v@{a:g}"]
        ds = [cohens_d(v, scores[f"v+perp#{i}@{a:g}"]) for i in range(n_draws)]
        d_none = cohens_d(v, scores["none"])
        rows.append({"alpha": a, "d_v_vs_perp_mean": float(np.mean(ds)), "d_v_vs_perp_sd": float(np.std(ds)), "d_v_vs_none": d_none,
                     "paper_reading": "negligible" if np.mean(ds) < NEGLIGIBLE_D else "not negligible",
                     "vacuous": bool(d_none < NEGLIGIBLE_D)})
    return rows


def run_paper_protocol(lm: LoadedModel, trait: str | TraitSpec, layer: int, scorer: Scorer, settings: PaperSettings | None = None) -> dict[str, Any]:
    """The paper's orthogonal test, α sweep, logit-distance test and mean-diff vs PCA comparison.

    Returns a JSON-serialisable dict; every Cohen's d is the paper's (population SDs, samples pooled).
    """
    s = settings or PaperSettings()
    layer = lm.check_layer(layer)
    vecs = unit_vectors(lm, trait, layer)
    v = vecs["mean_diff"]
    draws = [orthogonal_draw(v, s.seed + i) for i in range(s.n_draws)]
    prompts = evaluation_prompts(trait, s.env, s.n_prompts)
    config = GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=True, temperature=s.temperature, seed=s.seed)
    conds = _conditions(v, s.alphas, draws) + [Condition("pca@1", vecs["pca"], 1.0, None, "v")]
    if 1.0 not in s.alphas:
        conds.append(Condition("v@1", v, 1.0, None, "v"))
    scores = behavioural_scores(lm, layer, conds, prompts, scorer, s.samples, config, positions="last")
    randoms = [random_draw(v + draws[0], s.seed + 10_000 + j) for j in range(s.n_random)]
    logits = last_token_logits(lm, layer, prompts, [v, None, *[v + u for u in draws], *randoms])

    def distance(k: int) -> float:
        return float((logits[k] - logits[0]).norm(dim=-1).mean())

    d_perp = [distance(2 + i) for i in range(s.n_draws)]
    d_random = [distance(2 + s.n_draws + j) for j in range(s.n_random)]
    pca_sign = float(torch.sign(vecs["pca"] @ v))
    return jsonable({
        "config": {"trait": as_spec(trait).name, "layer": layer, "alphas": list(s.alphas), "n_draws": s.n_draws, "n_prompts": len(prompts),
                   "samples": s.samples, "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "n_random": s.n_random,
                   "seed": s.seed, "env": s.env, "positions": "last", "vector_norm": 1.0},
        "model": lm.info(),
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "mean_scores": {k: float(x.mean()) for k, x in scores.items()},
        "orthogonal_test": _orthogonal_test(scores, s.alphas, s.n_draws),
        "logit_distance": {"alpha": 1.0, "v_vs_none": distance(1), "v_vs_v_plus_perp": float(np.mean(d_perp)),
                           "v_vs_random": float(np.mean(d_random)), "random_norm": float(randoms[0].norm()),
                           "perp_shift_smaller_by": 1 - float(np.mean(d_perp)) / float(np.mean(d_random))},
        "mean_diff_vs_pca": {"cos": float(vecs["pca"] @ v), "pca_sign_aligned": pca_sign > 0,
                             "d": cohens_d(scores["v@1"], scores["pca@1"])},
    })


def paper_markdown(report: Mapping[str, Any]) -> str:
    """The paper protocol's numbers, with the vacuity check next to each 'negligible'."""
    from steerscope.formatting import num

    cfg, ld, pca = report["config"], report["logit_distance"], report["mean_diff_vs_pca"]
    lines = [f"# Paper protocol (arXiv 2602.06801): {cfg['trait']} on {report['model']['name']}, layer {cfg['layer']}", "",
             f"Unit-norm mean-difference vector, last-token steering, {cfg['n_prompts']} prompts × {cfg['samples']} samples, "
             f"{cfg['n_draws']} v⊥ draws; Cohen's d with population SDs over all samples (the paper's definition); scorer "
             f"{report['scorer']}.", "",
             "| α | d(v, v+v⊥), mean ± SD over draws | paper's reading (|d| < 0.2) | d(v, unsteered) | vacuous? |", "|---|---|---|---|---|"]
    for r in report["orthogonal_test"]:
        lines.append(f"| {r['alpha']:g} | {num(r['d_v_vs_perp_mean'], '.3f')} ± {num(r['d_v_vs_perp_sd'], '.3f')} | {r['paper_reading']} | "
                     f"{num(r['d_v_vs_none'], '.3f')} | {'yes: v itself is not visible' if r['vacuous'] else 'no'} |")
    lines += ["", f"Last-token logit L2 distance from v at α = 1: unsteered {num(ld['v_vs_none'], '.3g')}, v + v⊥ "
              f"{num(ld['v_vs_v_plus_perp'], '.3g')}, same-norm random {num(ld['v_vs_random'], '.3g')} (v + v⊥ shifts "
              f"{100 * ld['perp_shift_smaller_by']:.0f} % less than random; the paper reports 27–53 %).",
              f"Mean-difference vs PCA vector: cos {num(pca['cos'], '.3f')}, Cohen's d of their scores {num(pca['d'], '.3f')}.", ""]
    return "\n".join(lines)
