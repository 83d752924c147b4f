"""Does the steering effect hold up: against instructions, across environments and wordings, across
layers, and is the vector itself stable?

Effects are paired steered-against-unsteered comparisons (:func:`steerscope.side_effects.paired_effect`):
on the trait's teacher-forced pair margin of its held-out pairs (deterministic, always) and, where
the trait has a scorer, on the trait score of sampled completions (unit: prompt; steered and
unsteered completions from the same seed).

* **instructions** (steering against prompting): a system instruction asking for the trait's own
  pole (*supporting*) or the opposite pole (*opposing*), with and without ``+α·v``. The *retained*
  share is the steering shift under the opposing instruction over the shift without one (ratio of
  mean shifts, bootstrap interval); the instruction alone is compared with no instruction;
* **environments**: the effect on the pairs written in each environment and on the prompts of each
  environment; **paraphrases**: the effect on reworded prompts against the originals;
* **layer profile**: the mean-difference vector of the train pairs at every profiled layer, steered at
  the same *relative* dose ``ρ = α‖v‖/mean‖h‖`` as the audited one: held-out pair-margin effect and
  the next-token KL on neutral text (cost), so the choice of layer is shown;
* **stability**: cosine between the train pairs' mean difference and those of bootstrap resamples of
  the pairs and of disjoint halves, and a learning curve: cosine and pair-margin effect (at the
  audited displacement norm) of vectors from ``n`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from steerscope.audit.readouts import pair_margins_by_condition
from steerscope.capture import capture
from steerscope.data.evalsets import NeutralItem
from steerscope.data.pairs import ContrastivePair
from steerscope.divergence import condition_divergences
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate_paired
from steerscope.intervene import steer
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer
from steerscope.side_effects import mean_interval, paired_effect
from steerscope.stats import cluster_bootstrap
from steerscope.traitspec import TraitSpec

#: A retained share whose interval lies at or above this is "holds"; below it, "weakened".
HOLDS = 0.5


@dataclass(frozen=True)
class RobustnessSettings:
    """``alpha``: the audited strength; ``n_prompts`` × ``samples`` completions of ``max_new_tokens``
    tokens per condition; ``stability_boot`` resamples and ``halves`` disjoint splits of the train
    pairs; ``curve_sizes`` × ``curve_draws`` subsets for the learning curve; ``n_pairs``: held-out pairs
    (and pairs per environment) read (None: all); ``n_boot`` bootstrap resamples."""

    alpha: float = 2.0
    n_prompts: int = 12
    samples: int = 2
    max_new_tokens: int = 24
    stability_boot: int = 50
    halves: int = 10
    curve_sizes: tuple[int, ...] = (4, 8, 16, 32)
    curve_draws: int = 3
    n_pairs: int | None = None
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha) or self.alpha == 0:
            raise SteerscopeError(f"robustness needs a finite, non-zero strength, got alpha = {self.alpha}")
        if self.n_prompts < 2 or self.samples < 1 or self.max_new_tokens < 2 or self.n_boot < 1:
            raise SteerscopeError("robustness needs at least 2 prompts, 1 sample, 2 new tokens and 1 bootstrap resample")
        if self.n_pairs is not None and self.n_pairs < 2:
            raise SteerscopeError(f"robustness needs at least 2 held-out pairs, got {self.n_pairs}")
        if self.stability_boot < 2 or self.halves < 1 or self.curve_draws < 1 or any(n < 2 for n in self.curve_sizes):
            raise SteerscopeError("stability needs at least 2 resamples, 1 split, 1 draw and learning-curve sizes of at least 2 pairs")

    @property
    def generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=0.8, seed=self.seed)


def _with_system(item: Any, instruction: str | None) -> Any:
    """A chat item (or a prompt string) with ``instruction`` as its system message (None: unchanged)."""
    if instruction is None:
        return item
    messages = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
    return [{"role": "system", "content": instruction}] + messages


def instructed_pairs(pairs: Sequence[ContrastivePair], instruction: str | None) -> list[ContrastivePair]:
    """``pairs`` with ``instruction`` as the system message of both sides."""
    return [replace(p, positive=_with_system(p.positive, instruction), negative=_with_system(p.negative, instruction)) for p in pairs]


def retained(shift_under: np.ndarray, shift_plain: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """``mean(shift_under) / mean(shift_plain)`` over paired units with a 95 % bootstrap interval, and
    ``status``: ``holds`` (interval ≥ :data:`HOLDS`), ``weakened`` (interval below it) or ``undetermined``."""
    a, b = np.asarray(shift_under, float), np.asarray(shift_plain, float)
    if float(np.mean(b)) == 0:
        return {"ratio": None, "low": None, "high": None, "status": "undetermined", "why": "no effect without the instruction"}
    def ratio(x: np.ndarray, y: np.ndarray) -> float:
        if float(np.mean(y)) == 0:
            raise ValueError("no effect without the instruction in this resample")
        return float(np.mean(x) / np.mean(y))

    try:
        est, low, high = cluster_bootstrap(ratio, [a, b], n_boot, seed)
    except ValueError as err:
        return {"ratio": float(np.mean(a) / np.mean(b)), "low": None, "high": None, "status": "undetermined", "why": str(err)}
    status = "holds" if low >= HOLDS else "weakened" if high < HOLDS else "undetermined"
    return {"ratio": est, "low": low, "high": high, "status": status}


def _poles(instructions: tuple[str, str], alpha: float) -> dict[str, str | None]:
    """The instruction conditions: none, the pole the steering pushes toward, and the other."""
    toward, away = instructions if alpha > 0 else instructions[::-1]
    return {"none": None, "supporting": toward, "opposing": away}


def _margin_instruction_effects(lm, layer, vector, alpha, pairs, poles, s) -> dict[str, Any]:
    v = vector.detach().float()
    margins = {name: pair_margins_by_condition(lm, layer, {"off": None, "on": v}, alpha, instructed_pairs(pairs, text))
               for name, text in poles.items()}
    return _instruction_summary({k: (m["on"], m["off"]) for k, m in margins.items()}, "held-out pair", s)


def _instruction_summary(data: Mapping[str, tuple[np.ndarray, np.ndarray]], unit: str, s: RobustnessSettings) -> dict[str, Any]:
    """``data``: instruction → (steered, unsteered) per unit."""
    plain_on, plain_off = data["none"]
    out: dict[str, Any] = {"unit": unit, "steering": {}, "instruction_alone": {}}
    for name, (on, off) in data.items():
        out["steering"][name] = paired_effect(on, off, s.n_boot, s.seed)
        if name != "none":
            out["instruction_alone"][name] = paired_effect(off, plain_off, s.n_boot, s.seed)
            out.setdefault("net", {})[name] = paired_effect(on, plain_off, s.n_boot, s.seed)
    out["retained_under_opposing"] = retained(data["opposing"][0] - data["opposing"][1], plain_on - plain_off, s.n_boot, s.seed)
    return out


def _score_instruction_effects(lm, layer, vector, alpha, prompts, poles, scorer, s) -> dict[str, Any]:
    names = list(poles)
    v = vector.detach().float()
    blocks = {(n, a): generate_paired(lm, [_with_system(p, poles[n]) for p in prompts for _ in range(s.samples)], s.generation,
                                      [steer(lm, {layer: v}, a) if a else None])[0]
              for n in names for a in (0.0, alpha)}
    scores = {key: np.asarray(scorer(texts), dtype=float).reshape(len(prompts), s.samples).mean(axis=1) for key, texts in blocks.items()}
    return _instruction_summary({n: (scores[(n, alpha)], scores[(n, 0.0)]) for n in names}, "prompt", s) | {
        "examples": {f"{n}/{'steered' if a else 'unsteered'}": blocks[(n, a)][0] for n in names for a in (0.0, alpha)}}


def instruction_robustness(lm: LoadedModel, layer: int, vector: torch.Tensor, instructions: tuple[str, str],
                           pairs: Sequence[ContrastivePair], prompts: Sequence[str], scorer: Scorer | None,
                           s: RobustnessSettings) -> dict[str, Any]:
    """Steering with and without supporting / opposing instructions, on the pair margin and (with a scorer) the trait score."""
    poles = _poles(instructions, s.alpha)
    out = {"instructions": poles, "pair_margin": _margin_instruction_effects(lm, layer, vector, s.alpha, pairs, poles, s)}
    if scorer is not None:
        out["trait_score"] = _score_instruction_effects(lm, layer, vector, s.alpha, list(prompts[: s.n_prompts]), poles, scorer, s)
    return out


def _score_effect(lm, layer, vector, prompts, scorer, s) -> dict[str, Any]:
    """Trait scores of the prompts' completions unsteered and steered (the same seed for both), and their paired effect."""
    rows = [p for p in prompts for _ in range(s.samples)]
    texts = generate_paired(lm, rows, s.generation, [None, steer(lm, {layer: vector.detach().float()}, s.alpha)])
    scores = np.stack([np.asarray(scorer(t), dtype=float).reshape(len(prompts), s.samples).mean(axis=1) for t in texts])
    return paired_effect(scores[1], scores[0], s.n_boot, s.seed) | {"scores": scores}


def environment_robustness(lm: LoadedModel, layer: int, vector: torch.Tensor, env_pairs: Mapping[str, Sequence[ContrastivePair]],
                           env_prompts: Mapping[str, Sequence[str]], paraphrases: Sequence[tuple[str, str]], scorer: Scorer | None,
                           s: RobustnessSettings) -> dict[str, Any]:
    """The effect per environment (its pairs' margin; with a scorer, its prompts' trait score) and on paraphrased prompts."""
    v = vector.detach().float()
    out: dict[str, Any] = {"pair_margin": {}, "trait_score": {}, "paraphrase": None}
    for env, pairs in env_pairs.items():
        m = pair_margins_by_condition(lm, layer, {"off": None, "on": v}, s.alpha, pairs)
        out["pair_margin"][env] = paired_effect(m["on"], m["off"], s.n_boot, s.seed)
    if scorer is None:
        out["why_no_scores"] = "the trait has no scorer: environments are compared on their pairs' margins only, paraphrases not at all"
        return out
    for env, prompts in env_prompts.items():
        row = _score_effect(lm, layer, vector, list(prompts[: s.n_prompts]), scorer, s)
        row.pop("scores")
        out["trait_score"][env] = row
    if paraphrases:
        chosen = list(paraphrases[: s.n_prompts])
        orig = _score_effect(lm, layer, vector, [p for p, _ in chosen], scorer, s)
        para = _score_effect(lm, layer, vector, [q for _, q in chosen], scorer, s)
        out["paraphrase"] = {"original": {k: v for k, v in orig.items() if k != "scores"},
                             "paraphrased": {k: v for k, v in para.items() if k != "scores"},
                             "retained": retained(para["scores"][1] - para["scores"][0], orig["scores"][1] - orig["scores"][0],
                                                  s.n_boot, s.seed)}
    return out


def pair_differences(lm: LoadedModel, pairs: Sequence[ContrastivePair], layers: Sequence[int]) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """Per layer, the paired differences ``h⁺ − h⁻`` ``[N, d]`` (mean over each completion, as extraction) and the mean residual norm."""
    norms: dict[int, float] = {}
    acts = capture(lm, [p.positive for p in pairs] + [p.negative for p in pairs], list(layers), position="mean", norms_out=norms)
    n = len(pairs)
    return {layer: (a[:n] - a[n:]).double() for layer, a in acts.items()}, norms


def layer_profile(lm: LoadedModel, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair], layers: Sequence[int],
                  rho: float, neutral: Sequence[NeutralItem], s: RobustnessSettings) -> list[dict[str, Any]]:
    """Per layer: the train mean difference steered at relative dose ``rho``; held-out pair-margin effect and neutral KL."""
    diffs, norms = pair_differences(lm, train, layers)
    chosen = list(neutral[: s.n_prompts])
    rows = []
    for layer in layers:
        v = diffs[layer].mean(0).float()
        alpha = rho * norms[layer] / float(v.norm())
        m = pair_margins_by_condition(lm, layer, {"off": None, "on": v}, alpha, test)
        div = condition_divergences(lm, [i.prompt for i in chosen], [i.response for i in chosen], [None, {layer: v}], [0.0, alpha])
        rows.append({"layer": int(layer), "alpha": alpha, "norm": float(v.norm()), "h_norm": norms[layer],
                     "effect": paired_effect(m["on"], m["off"], s.n_boot, s.seed),
                     "kl": mean_interval(div.mean("kl")[1].numpy(), s.n_boot, s.seed)})
    return rows


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _spread(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, float)
    return {"mean": float(arr.mean()), "low": float(np.percentile(arr, 2.5)), "high": float(np.percentile(arr, 97.5)), "n": int(arr.size)}


def vector_stability(lm: LoadedModel, train: Sequence[ContrastivePair], test: Sequence[ContrastivePair], layer: int,
                     s: RobustnessSettings) -> dict[str, Any]:
    """Cosines of resampled and half-data mean differences with the full one, and the learning curve."""
    diffs = pair_differences(lm, train, [layer])[0][layer]
    n = diffs.shape[0]
    if n < 4:
        raise SteerscopeError(f"vector stability needs at least 4 train pairs, got {n}")
    full = diffs.mean(0)
    rng = np.random.default_rng(s.seed)
    boot = [_cos(diffs[rng.integers(0, n, n)].mean(0), full) for _ in range(s.stability_boot)]
    halves = []
    for _ in range(s.halves):
        order = rng.permutation(n)
        halves.append(_cos(diffs[order[: n // 2]].mean(0), diffs[order[n // 2:]].mean(0)))
    sizes = sorted({k for k in s.curve_sizes if k < n} | {n})
    subsets = {k: [rng.choice(n, k, replace=False) for _ in range(s.curve_draws if k < n else 1)] for k in sizes}
    target = float(abs(s.alpha) * full.norm())
    directions: dict[str, torch.Tensor | None] = {"none": None}
    for k, draws in subsets.items():
        for j, idx in enumerate(draws):
            v = diffs[idx].mean(0)
            directions[f"{k}/{j}"] = (math.copysign(target, s.alpha) * v / v.norm()).float()
    margins = pair_margins_by_condition(lm, layer, directions, 1.0, test)
    curve = []
    for k, draws in subsets.items():
        effects = [paired_effect(margins[f"{k}/{j}"], margins["none"], s.n_boot, s.seed)["g"] for j in range(len(draws))]
        cosines = [_cos(diffs[idx].mean(0), full) for idx in draws]
        curve.append({"n_pairs": k, "draws": len(draws), "cos_with_full": _spread(cosines) if len(draws) > 1 else {"mean": cosines[0]},
                      "g": [e for e in effects]})
    return {"n_pairs": n, "bootstrap_cos": _spread(boot), "split_half_cos": _spread(halves), "learning_curve": curve,
            "of": "the mean difference of the train pairs", "displacement_norm": target}


PARTS = ("instructions", "environments", "layers", "stability")


def robustness_part(part: str, lm: LoadedModel, spec: TraitSpec, layer: int, vector: torch.Tensor, h_norm: float, layers: Sequence[int],
                    scorer: Scorer | None, s: RobustnessSettings) -> dict[str, Any]:
    """One of :data:`PARTS` for trait ``spec`` steered with ``s.alpha·vector`` at ``layer`` (``h_norm``:
    the mean residual norm there, for the relative dose of the layer profile over ``layers``)."""
    from steerscope.data.evalsets import builtin_paraphrases, neutral_set

    test = list(spec.test[: s.n_pairs])
    if part == "instructions":
        if spec.instructions is None:
            return {"not_run": "the trait has no instructions for its two poles (a trait of your own gets them with --instructions)"}
        return instruction_robustness(lm, layer, vector, spec.instructions, test, spec.env_prompts("in_distribution"), scorer, s)
    if part == "environments":
        paraphrases = builtin_paraphrases(spec.name) if spec.builtin else []
        env_pairs = {env: list(pairs[: s.n_pairs]) for env, pairs in spec.environment_pairs.items()}
        return environment_robustness(lm, layer, vector, env_pairs, spec.prompts, paraphrases, scorer, s) | {
            "paraphrases_from": "built-in paraphrases" if paraphrases else None}
    if part == "layers":
        rho = abs(s.alpha) * float(vector.norm()) / h_norm
        return {"relative_dose": rho, "audited_layer": layer, "rows": layer_profile(lm, spec.train, test, layers, rho, neutral_set(), s)}
    if part == "stability":
        return vector_stability(lm, spec.train, test, layer, s)
    raise SteerscopeError(f"unknown robustness part {part!r}; use one of {', '.join(PARTS)}")
