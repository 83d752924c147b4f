"""Identifiability audit: which vectors act like the steering vector v, under which readout?

For v and random ``u ⊥ v`` (‖u‖ = ‖v‖), three readouts compare steering with ``v + u`` to steering
with ``v``, each with its own verdict (:mod:`steerscope.audit.equivalence`), never merged:

* ``trait_score``: the trait score of sampled completions (scored without the prompt);
* ``pair_margin``: the teacher-forced margin ``log p(positive) − log p(negative)`` of held-out
  contrastive pairs (deterministic, so equivalence is testable at small sizes);
* ``distribution``: the per-token JS divergence of the next-token distribution from ``v``.

A trait without a scorer has no ``trait_score`` readout; its effect against the unsteered model is
then read on the pair margin.

Margins come from dose: w is equivalent to v at δ when it moves the readout no further than a δ
change of dose does. Conditions: ``none``; ``v``; the draws ``v+perp#i``; the dose conditions
``(1 − δ)·v`` (the distribution's margin), ``(1 − 2δ)·v`` and ``0.5·v`` (positive controls that must
be detected); ``v+grad`` (v plus the direction ⟂ v of steepest pair-margin increase, at ‖v‖).
The size of the class (the share of random u that keeps v's effect within δ) is measured by Monte
Carlo on the teacher-forced readouts next to its first-order prediction (:mod:`steerscope.audit.readouts`).

:func:`run_identifiability` is three parts with JSON payloads, each a cell of ``steerscope audit``:
:func:`identifiability_readouts` (everything but the class-size draws), :func:`identifiability_class_chunk`
per range of draws (:func:`class_parts`, independent of each other) and :func:`identifiability_report`.

A failed search for a difference is not proof of equivalence.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
import torch

from steerscope.audit.equivalence import Margin, ReadoutData, fraction, readout_verdict, redecide, two_sided_p
from steerscope.audit.readouts import (
    ClassReference,
    ClassSample,
    DrawRange,
    class_chunk,
    class_ranges,
    class_reference,
    class_summary,
    join_chunks,
    margin_gradient,
    pair_margins_by_condition,
    predicted_fractions,
)
from steerscope.divergence import condition_divergences
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import steer_rows
from steerscope.jsonable import jsonable
from steerscope.models.loading import LoadedModel
from steerscope.runstore import stored_payload
from steerscope.score.base import Scorer, spec_scorer
from steerscope.stats import cluster_bootstrap, hedges_g, holm, prompt_means
from steerscope.traitspec import TraitSpec, as_spec

KINDS = ("none", "v", "v+perp", "dose", "gradient")
READOUTS = ("trait_score", "pair_margin", "distribution")
CONTROLS = ("dose_control", "dose_half", "v+grad")
#: Scorers whose held-out accuracy is below this cannot support a verdict on the trait score.
MIN_SCORER_ACCURACY = 0.7
STATEMENT = (
    "each readout has its own verdict; w is equivalent to v at δ = {delta:g} when it moves the readout no further than a "
    "δ change of dose does (TOST per draw at level {level:g}); equivalence needs the dose control (1 − 2δ)·v to be "
    "detected; a failed search for a difference is not proof of equivalence"
)


@dataclass(frozen=True)
class Condition:
    """One steering condition at the audit layer: ``alpha·vector`` (``vector`` ``[d]``; None = unsteered)."""

    name: str
    vector: torch.Tensor | None
    alpha: float
    seed: int | None
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SteerscopeError(f"unknown condition kind {self.kind!r}; use one of {', '.join(KINDS)}")


# --- conditions -------------------------------------------------------------------------------

def _gaussian(d: int, seed: int) -> torch.Tensor:
    """``[d]`` float64 standard normal draw from ``torch.Generator().manual_seed(seed)``."""
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal_to(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x`` (``[d]`` float64) with its component along ``v`` removed, rescaled to ``‖v‖`` (float64)."""
    v64 = v.double()
    w = x.double() - (x.double() @ v64) / (v64 @ v64) * v64
    w = w - (w @ v64) / (v64 @ v64) * v64  # second pass: orthogonal to rounding error
    norm = w.norm()
    if not norm > 1e-12 * v64.norm():
        raise SteerscopeError("direction is parallel to v: no component orthogonal to v")
    return w * (v64.norm() / norm)


def orthogonal_draw(v: torch.Tensor, seed: int) -> torch.Tensor:
    """``u ⊥ v`` with ``‖u‖ = ‖v‖`` (``[d]`` float32): Gaussian, v projected out, rescaled."""
    return _orthogonal_to(_gaussian(v.shape[0], seed), v).float()


def random_draw(v: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction (not orthogonalised) rescaled to ``‖v‖`` (``[d]`` float32)."""
    x = _gaussian(v.shape[0], seed)
    return (x * (v.double().norm() / x.norm())).float()


def build_conditions(
    v: torch.Tensor,
    alpha: float,
    n_draws: int,
    seed: int,
    margin: Margin | None = None,
    gradient: torch.Tensor | None = None,
    perp_directions: Sequence[torch.Tensor] | None = None,
) -> list[Condition]:
    """The audit's conditions, all at strength ``alpha`` (``v``: ``[d]``).

    ``none``; ``v``; ``v+perp#i`` (``u_i`` from seed ``seed + i``, or the ``i``-th of
    ``perp_directions`` made ⟂ v and rescaled to ‖v‖, seed recorded as None); the dose conditions
    ``dose_margin`` = (1 − δ)·v, ``dose_control`` = (1 − 2δ)·v and ``dose_half`` = 0.5·v; and, when a
    readout ``gradient`` is given, ``v+grad`` = v + (gradient ⟂ v, rescaled to ‖v‖).
    """
    if v.ndim != 1 or not torch.isfinite(v).all() or float(v.norm()) == 0:
        raise SteerscopeError(f"v must be a finite non-zero [d] vector, got shape {tuple(v.shape)}")
    if perp_directions is None and n_draws < 1:
        raise SteerscopeError(f"n_draws must be at least 1, got {n_draws}")
    v32 = v.detach().float().cpu()
    v64 = v32.double()
    if perp_directions is not None:
        draws = [_orthogonal_to(u.detach().cpu().double(), v64).float() for u in perp_directions]
        seeds: list[int | None] = [None] * len(draws)
    else:
        draws = [orthogonal_draw(v32, seed + i) for i in range(n_draws)]
        seeds = [seed + i for i in range(n_draws)]
    if not draws:
        raise SteerscopeError("perp_directions is empty")
    conds = [Condition("none", None, 0.0, None, "none"), Condition("v", v32, alpha, None, "v")]
    conds += [Condition(f"v+perp#{i}", (v64 + u.double()).float(), alpha, s, "v+perp") for i, (u, s) in enumerate(zip(draws, seeds))]
    conds += [Condition(name, (scale * v64).float(), alpha, None, "dose") for name, scale in (margin or Margin()).dose_scales().items()]
    if gradient is not None:
        g = _orthogonal_to(torch.as_tensor(gradient).detach().cpu().double(), v64)
        conds.append(Condition("v+grad", (v64 + g).float(), alpha, None, "gradient"))
    return conds


def _steering_args(layer: int, conditions: Sequence[Condition], repeat: int) -> tuple[list, list[float]]:
    """Per-row ``({layer: vector} or None, alpha)`` lists, each condition repeated ``repeat`` times."""
    vectors = [{layer: c.vector} if c.vector is not None else None for c in conditions for _ in range(repeat)]
    alphas = [float(c.alpha) if c.vector is not None else 0.0 for c in conditions for _ in range(repeat)]
    return vectors, alphas


# --- readouts ---------------------------------------------------------------------------------

def behavioural_scores(
    lm: LoadedModel,
    layer: int,
    conditions: Sequence[Condition],
    prompts: Sequence[str],
    scorer: Scorer,
    samples_per_prompt: int,
    config: GenerationConfig,
    positions: str = "all",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Trait scores ``{name: [n_prompts, n_samples]}`` of completions under each condition.

    One :func:`generate` call over all rows (condition-major, then prompt, then sample) with
    per-row steering, sampled with ``config.seed`` (use ``do_sample=True`` for distinct samples).
    The scorer sees the completions only, never the prompt text.
    """
    if samples_per_prompt < 1 or not prompts or not conditions:
        raise SteerscopeError("need at least one condition, one prompt and one sample per prompt")
    per_cond = len(prompts) * samples_per_prompt
    rows = [p for _ in conditions for p in prompts for _ in range(samples_per_prompt)]
    vectors, alphas = _steering_args(layer, conditions, per_cond)
    steering = steer_rows(lm, vectors, alphas, positions)
    completions = generate(lm, rows, config, steering=steering, batch_size=batch_size)
    scores = np.asarray(scorer(completions), dtype=float)
    if scores.shape != (len(rows),):
        raise SteerscopeError(f"scorer returned shape {scores.shape} for {len(rows)} texts")
    cube = scores.reshape(len(conditions), len(prompts), samples_per_prompt)
    return {c.name: cube[i] for i, c in enumerate(conditions)}


def reference_continuations(
    lm: LoadedModel,
    layer: int,
    v_condition: Condition,
    prompts: Sequence[str],
    max_new_tokens: int,
    positions: str = "all",
) -> list[str]:
    """Greedy completions ``[n_prompts]`` under the reference condition (teacher-forcing targets)."""
    vectors, alphas = _steering_args(layer, [v_condition], len(prompts))
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False)
    return generate(lm, list(prompts), config, steering=steer_rows(lm, vectors, alphas, positions))


def distributional_readout(
    lm: LoadedModel,
    layer: int,
    conditions: Sequence[Condition],
    prompts: Sequence[str],
    continuations: Sequence[str],
    reference: str = "v",
    positions: str = "all",
) -> dict[str, dict[str, np.ndarray]]:
    """Mean per-token ``KL(p_ref ‖ p_c)`` and ``JS`` per prompt: ``{name: {"kl": [P], "js": [P]}}``.

    Prompts whose continuation has no tokens are not evaluated and get NaN.
    """
    names = [c.name for c in conditions]
    if reference not in names:
        raise SteerscopeError(f"reference condition {reference!r} not among {names}")
    if len(prompts) != len(continuations):
        raise SteerscopeError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
    keep = [i for i, c in enumerate(continuations) if lm.tokenizer(c, add_special_tokens=False)["input_ids"]]
    out = {n: {"kl": np.full(len(prompts), np.nan), "js": np.full(len(prompts), np.nan)} for n in names}
    if not keep:
        return out
    vectors, alphas = _steering_args(layer, conditions, 1)
    div = condition_divergences(
        lm, [prompts[i] for i in keep], [continuations[i] for i in keep], vectors, alphas,
        reference=names.index(reference), positions=positions,
    )
    for which in ("kl", "js"):
        means = div.mean(which).numpy()  # [C, len(keep)]
        for c, name in enumerate(names):
            out[name][which][keep] = means[c]
    return out


# --- statistics -------------------------------------------------------------------------------

class Bootstrap(TypedDict):
    """The cluster-bootstrap settings of :func:`_interval`, passed on as keywords."""

    n_boot: int
    seed: int
    level: float


def _interval(statistic: Callable[..., float], arrays: Sequence[np.ndarray], n_boot: int, seed: int, level: float) -> dict:
    """``{"estimate", "low", "high"}`` of a cluster bootstrap, NaNs plus ``error`` when undefined."""
    try:
        est, low, high = cluster_bootstrap(statistic, arrays, n_boot=n_boot, seed=seed, level=level)
        return {"estimate": est, "low": low, "high": high}
    except ValueError as err:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan, "error": str(err)}


def v_vs_none(scores: Mapping[str, np.ndarray], n_boot: int, seed: int, readout: str = "trait_score") -> dict[str, Any]:
    """Hedges' g of v against the unsteered baseline on ``readout`` (trait scores ``[P, S]`` per prompt,
    or pair margins ``[P]`` per pair), 95 % cluster-bootstrap CI and paired p."""
    v, none = prompt_means(scores["v"]), prompt_means(scores["none"])
    g = _interval(hedges_g, [v, none], n_boot, seed, 0.95)
    return {"readout": readout, "g": g["estimate"], "g_low": g["low"], "g_high": g["high"], "p_diff": two_sided_p(v - none),
            "mean_v": float(v.mean()), "mean_none": float(none.mean())}


def score_readout(scores: Mapping[str, np.ndarray], conditions: Sequence[Condition], accuracy: float | None) -> ReadoutData:
    """The trait-score readout: per-prompt means of every generated condition."""
    invalid = (f"scorer invalid: held-out accuracy {accuracy:.2f} < {MIN_SCORER_ACCURACY} (near chance)"
               if accuracy is not None and accuracy < MIN_SCORER_ACCURACY else None)
    return ReadoutData("trait_score", "scalar", {n: prompt_means(s) for n, s in scores.items()}, _draws(conditions),
                       _controls(conditions), invalid)


def margin_readout(margins: Mapping[str, np.ndarray], conditions: Sequence[Condition]) -> ReadoutData:
    """The teacher-forced pair-margin readout (one value per held-out pair)."""
    return ReadoutData("pair_margin", "scalar", dict(margins), _draws(conditions), _controls(conditions))


def js_readout(divergences: Mapping[str, Mapping[str, np.ndarray]], conditions: Sequence[Condition]) -> ReadoutData:
    """The next-token distribution readout: mean per-token JS from v per prompt (prompts without tokens dropped)."""
    js = {n: np.asarray(d["js"], float) for n, d in divergences.items()}
    keep = np.all(np.stack([np.isfinite(a) for a in js.values()]), axis=0)
    return ReadoutData("distribution", "distribution", {n: a[keep] for n, a in js.items()}, _draws(conditions), _controls(conditions))


def _draws(conditions: Sequence[Condition]) -> list[str]:
    return [c.name for c in conditions if c.kind == "v+perp"]


def _controls(conditions: Sequence[Condition]) -> list[str]:
    return [c.name for c in conditions if c.name in CONTROLS]


def score_class(result: Mapping[str, Any], delta: float) -> dict[str, Any]:
    """Share of the audited draws whose trait-score efficacy lies within ``1 ± δ`` (exact interval over draws)."""
    effs = [result["conditions"][n]["efficacy"] for n in result["draws"]]
    return fraction([abs(e - 1) <= delta for e in effs if math.isfinite(e)]) | {"source": "audited draws"}


def holm_across_traits(reports: Mapping[str, dict], level: float = 0.05) -> dict[str, dict]:
    """Holm-correct the difference p-values of every draw of every trait, per readout.

    ``reports``: trait → :func:`run_identifiability` report. Each readout's ``p_different_holm``
    is replaced by the family-wide value (``holm_family`` records the family) and its verdict
    recomputed; equivalence (intersection–union) needs no correction. Inputs are not modified.
    """
    out = {t: copy.deepcopy(r) for t, r in reports.items()}
    for readout in READOUTS:
        results = [r["readouts"][readout] for r in out.values() if readout in r["readouts"]]
        keys = [(res, n) for res in results for n in res["draws"]]
        if not keys:
            continue
        for (res, n), p in zip(keys, holm([res["conditions"][n]["p_different"] for res, n in keys])):
            res["conditions"][n]["p_different_holm"] = float(p)
        for res in results:
            res |= redecide(res) | {"holm_family": {"traits": list(out), "n_tests": len(keys)}}
    for report in out.values():
        report["verdict"] = {k: {"verdict": r["verdict"], "reason": r["reason"]} for k, r in report["readouts"].items()}
    return out


# --- end to end -------------------------------------------------------------------------------

def audit_vector(lm: LoadedModel, trait: str | TraitSpec, layer: int):
    """The mean-difference vector of ``trait``'s train pairs at ``layer`` (a SteeringVector)."""
    from steerscope.extract import extract

    spec = as_spec(trait)
    return extract(lm, list(spec.train), [layer], method="mean_diff", trait=spec.name)


def evaluation_prompts(trait: str | TraitSpec, env: str, n_prompts: int) -> list[str]:
    """The first ``n_prompts`` evaluation prompts of ``trait`` in ``env``; SteerscopeError when fewer
    exist or fewer than 2 are asked for (the prompt is the statistical unit)."""
    spec = as_spec(trait)
    prompts = spec.env_prompts(env)
    if n_prompts < 2:
        raise SteerscopeError(f"need at least 2 prompts, got {n_prompts}")
    if n_prompts > len(prompts):
        raise SteerscopeError(f"asked for {n_prompts} prompts but the {spec.name!r} {env} set has only {len(prompts)}")
    return prompts[:n_prompts]


@dataclass(frozen=True)
class IdentifiabilitySettings:
    """Sizes, generation and statistics of the identifiability audit and its extensions.

    ``n_draws`` orthogonal draws u ⊥ v (seeds ``seed + i``); ``n_prompts`` evaluation prompts of
    environment ``env`` (the prompt is the statistical unit) × ``samples_per_prompt`` completions
    of ``max_new_tokens`` tokens sampled at ``temperature``; ``n_pairs`` held-out pairs for the pair
    margin (None: all); equivalence margin ``delta`` (fraction of the dose) and test ``level``;
    ``class_draws`` Monte Carlo draws per norm ratio in ``class_ratios`` for the class size
    (0 draws: skipped); ``n_boot`` bootstrap resamples.
    """

    n_draws: int = 4
    env: str = "in_distribution"
    n_prompts: int = 12
    samples_per_prompt: int = 3
    max_new_tokens: int = 24
    seed: int = 0
    delta: float = 0.1
    level: float = 0.05
    n_pairs: int | None = None
    max_prompts: int | None = None
    class_draws: int = 200
    class_ratios: tuple[float, ...] = (0.25, 0.5, 1.0)
    n_boot: int = 2000
    temperature: float = 0.8

    def __post_init__(self) -> None:
        if not self.env:
            raise SteerscopeError("the environment name must not be empty")
        if self.n_draws < 1:
            raise SteerscopeError(f"n_draws (--seeds) must be at least 1, got {self.n_draws}")
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1:
            raise SteerscopeError("--samples and --max-new-tokens must be at least 1")
        if self.n_boot < 1 or self.class_draws < 0 or (self.n_pairs is not None and self.n_pairs < 2):
            raise SteerscopeError("need at least one bootstrap resample, a non-negative number of class draws and at least 2 pairs")
        if self.max_prompts is not None and self.max_prompts < self.n_prompts:
            raise SteerscopeError(f"--max-prompts ({self.max_prompts}) must be at least --n-prompts ({self.n_prompts})")
        self.margin()  # validates delta and level

    def margin(self) -> Margin:
        """The equivalence margin δ and the test level."""
        return Margin(self.delta, self.level)

    def class_sample(self) -> ClassSample:
        """The Monte Carlo of the class size (seeds from ``seed + 50 000``); SteerscopeError when it is skipped (0 draws)."""
        return ClassSample(self.class_draws, tuple(self.class_ratios), self.seed + 50_000)

    def generation(self) -> GenerationConfig:
        """The sampling configuration of the trait-score readout."""
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature, seed=self.seed)


def _pairs(spec: TraitSpec, n: int | None) -> list:
    """The first ``n`` held-out (test) pairs of ``spec`` (all when None)."""
    return list(spec.test if n is None else spec.test[:n])


@dataclass(frozen=True)
class PromptData:
    """What the prompt-based readouts saw: prompts ``[P]``, trait scores ``{condition: [P, S]}``, the
    reference continuations ``[P]`` and the divergences from v ``{condition: {"kl", "js": [P]}}``."""

    prompts: list[str]
    scores: dict[str, np.ndarray]
    continuations: list[str]
    divergences: dict[str, dict[str, np.ndarray]]

    def extend(self, more: PromptData) -> PromptData:
        """This data followed by ``more`` (same conditions), concatenated along the prompt axis."""
        return PromptData(self.prompts + more.prompts, {k: np.concatenate([x, more.scores[k]]) for k, x in self.scores.items()},
                          self.continuations + more.continuations,
                          {k: {m: np.concatenate([x[m], more.divergences[k][m]]) for m in x} for k, x in self.divergences.items()})


def prompt_data(lm: LoadedModel, layer: int, conditions: Sequence[Condition], prompts: Sequence[str], scorer: Scorer | None,
                s: IdentifiabilitySettings) -> PromptData:
    """Trait scores (every condition but the distribution's margin; none without a scorer) and
    divergences from v on ``prompts``."""
    generated = [c for c in conditions if c.name != "dose_margin"]
    scores = behavioural_scores(lm, layer, generated, prompts, scorer, s.samples_per_prompt, s.generation()) if scorer else {}
    continuations = reference_continuations(lm, layer, conditions[1], prompts, s.max_new_tokens)
    return PromptData(list(prompts), scores, continuations, distributional_readout(lm, layer, conditions, prompts, continuations))


def prompt_looks(lm: LoadedModel, layer: int, conditions: Sequence[Condition], pool: Sequence[str], scorer: Scorer | None,
                 s: IdentifiabilitySettings) -> tuple[PromptData, dict[str, dict], list[dict[str, Any]]]:
    """The trait-score and distribution verdicts, adding ``s.n_prompts`` prompts of ``pool`` at a time.

    Group-sequential: look ``k`` at ``n_k`` prompts tests at level ``α·(n_k − n_{k−1}) / N`` (linear
    alpha spending over the ``N = len(pool)`` prompt budget, a Bonferroni split over looks, valid for
    every test at every look); it stops at the first look where both readouts are conclusive.
    Returns the data seen, the last look's verdicts and every look's ``{n_prompts, level, verdicts}``.
    Without a scorer only the distribution is read.
    """
    generated = [c for c in conditions if c.name != "dose_margin"]
    accuracy, budget = scorer_accuracy(scorer) if scorer else None, len(pool)
    seen: PromptData | None = None
    looks: list[dict[str, Any]] = []
    readouts: dict[str, dict] = {}
    while seen is None or len(seen.prompts) < budget:
        start = len(seen.prompts) if seen else 0
        batch = prompt_data(lm, layer, conditions, pool[start:start + s.n_prompts], scorer, s)
        seen = batch if seen is None else seen.extend(batch)
        level = s.level * (len(seen.prompts) - start) / budget
        margin = Margin(s.delta, level)
        data = ((score_readout(seen.scores, generated, accuracy),) if scorer else ()) + (js_readout(seen.divergences, conditions),)
        readouts = {d.name: readout_verdict(d, margin, s.n_boot, s.seed) for d in data}
        looks.append({"n_prompts": len(seen.prompts), "level": level, "verdicts": {k: r["verdict"] for k, r in readouts.items()}})
        if all(r["verdict"] != "inconclusive" for r in readouts.values()):
            break
    assert seen is not None
    return seen, readouts, looks


def class_parts(s: IdentifiabilitySettings) -> list[DrawRange]:
    """The ranges of class-size draws of ``s``, one :func:`identifiability_class_chunk` each (none when skipped)."""
    return class_ranges(s.class_sample()) if s.class_draws else []


def class_distribution(lm: LoadedModel, prompts: Sequence[str], continuations: Sequence[str]) -> tuple[list[str], list[str]]:
    """The prompts whose reference continuation has tokens, and those continuations: the class size's next-token readout."""
    keep = [i for i, c in enumerate(continuations) if lm.tokenizer(c, add_special_tokens=False)["input_ids"]]
    return [prompts[i] for i in keep], [continuations[i] for i in keep]


def identifiability_readouts(
    lm: LoadedModel,
    trait: str | TraitSpec,
    layer: int,
    alpha: float,
    settings: IdentifiabilitySettings | None = None,
    scorer: Scorer | None = None,
    vector=None,
) -> dict[str, Any]:
    """Everything of :func:`run_identifiability` but the class-size draws, JSON-safe (arguments as there).

    Returns ``{"report": the report without the Monte Carlo class sizes, "monte_carlo": None when skipped, else
    {"reference": the :class:`~steerscope.audit.readouts.ClassReference` fields, "predicted": [n_ratios] first-order shares}}``.
    """
    s = settings or IdentifiabilitySettings()
    margin = s.margin()
    layer = lm.check_layer(layer)
    spec = as_spec(trait)
    scorer = scorer if scorer is not None else spec_scorer(spec, lm)
    vec = vector if vector is not None else audit_vector(lm, spec, layer)
    v = vec.directions[layer].detach().float().cpu()
    pairs = _pairs(spec, s.n_pairs)
    gradient = margin_gradient(lm, layer, v, alpha, pairs)
    conditions = build_conditions(v, alpha, s.n_draws, s.seed, margin, torch.from_numpy(gradient))
    margins = pair_margins_by_condition(lm, layer, {c.name: c.vector for c in conditions}, alpha, pairs)
    seen, readouts, looks = prompt_looks(lm, layer, conditions, evaluation_prompts(spec, s.env, s.max_prompts or s.n_prompts),
                                         scorer, s)
    readouts["pair_margin"] = readout_verdict(margin_readout(margins, conditions), margin, s.n_boot, s.seed)
    readouts = {k: readouts[k] for k in READOUTS if k in readouts}
    prompts, scores, continuations, divergences = seen.prompts, seen.scores, seen.continuations, seen.divergences
    classes: dict[str, Any] = {"trait_score": score_class(readouts["trait_score"], s.delta)} if scorer else {}
    base = (v_vs_none(scores, s.n_boot, s.seed) if scorer else
            v_vs_none({k: margins[k] for k in ("v", "none")}, s.n_boot, s.seed, "pair_margin"))
    monte_carlo = None
    if s.class_draws:
        reference = class_reference(lm, layer, v, alpha, pairs, class_distribution(lm, prompts, continuations), s.delta,
                                    base={"none": margins["none"], "v": margins["v"]})
        monte_carlo = {"reference": asdict(reference), "predicted": predicted_fractions(gradient, v, s.class_sample(), s.delta)}
    report = {
        "config": {
            "trait": spec.name, "trait_spec": spec.summary(), "layer": layer, "alpha": alpha, "n_draws": s.n_draws, "env": s.env, "n_prompts": len(prompts),
            "n_pairs": len(pairs), "samples_per_prompt": s.samples_per_prompt, "max_new_tokens": s.max_new_tokens, "seed": s.seed,
            "delta": s.delta, "level": s.level, "n_boot": s.n_boot, "temperature": s.temperature,
            "class_draws": s.class_draws, "class_ratios": list(s.class_ratios), "steered_positions": "all",
            "max_prompts": s.max_prompts,
            "draw_seeds": [s.seed + i for i in range(s.n_draws)], "generation": s.generation().__dict__,
            "extraction": {"method": vec.metadata.get("method", "mean_diff"), "split": "train"}, "pairs": {"split": "test"},
        },
        "model": lm.info(),
        "vector": {"norm": vec.norm(layer), "relative_dose": vec.dose(alpha, layer)},
        "gradient": {"norm": float(np.linalg.norm(gradient)),
                     "cos_with_v": float(gradient @ v.double().numpy() / (np.linalg.norm(gradient) * float(v.norm()) or 1.0))},
        "scorer": {"name": getattr(scorer, "name", type(scorer).__name__), "validity": getattr(scorer, "validity", None)} if scorer else None,
        "conditions": [{"name": c.name, "kind": c.kind, "seed": c.seed, "alpha": c.alpha,
                        "norm": float(c.vector.norm()) if c.vector is not None else 0.0} for c in conditions],
        "mean_scores": {name: float(x.mean()) for name, x in scores.items()},
        "v_vs_none": base | {"js": float(np.nanmean(divergences["none"]["js"]))},
        "readouts": readouts,
        "class_size": classes,
        "prompts": prompts,
        "reference_continuations": continuations,
        "sequential": looks,
        "verdict": {k: {"verdict": r["verdict"], "reason": r["reason"]} for k, r in readouts.items()},
        "statement": STATEMENT.format(delta=s.delta, level=s.level),
    }
    return jsonable({"report": report, "monte_carlo": monte_carlo})


def identifiability_class_chunk(
    lm: LoadedModel,
    trait: str | TraitSpec,
    layer: int,
    alpha: float,
    settings: IdentifiabilitySettings,
    v: torch.Tensor,
    readouts: Mapping[str, Any],
    part: DrawRange,
) -> dict[str, Any]:
    """The per-draw class-size readouts of the draws ``part`` (:func:`~steerscope.audit.readouts.class_chunk`) around
    the audited ``v`` (``[d]``), JSON-safe; ``readouts``: the :func:`identifiability_readouts` payload as stored."""
    report = readouts["report"]
    chunk = class_chunk(lm, lm.check_layer(layer), v, alpha, _pairs(as_spec(trait), settings.n_pairs),
                        class_distribution(lm, report["prompts"], report["reference_continuations"]),
                        ClassReference(**readouts["monte_carlo"]["reference"]), settings.class_sample(), part)
    return jsonable(chunk)


def identifiability_report(settings: IdentifiabilitySettings, readouts: Mapping[str, Any], chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report of :func:`run_identifiability` from the :func:`identifiability_readouts` payload and the
    :func:`identifiability_class_chunk` payloads of :func:`class_parts` (in order), as stored."""
    report = copy.deepcopy(dict(readouts["report"]))
    for name in ("readouts", "verdict"):  # in the order of READOUTS (a stored payload's keys are sorted)
        report[name] = {k: report[name][k] for k in READOUTS if k in report[name]}
    if settings.class_draws:
        sample, monte_carlo = settings.class_sample(), readouts["monte_carlo"]
        mc = class_summary(ClassReference(**monte_carlo["reference"]), sample, settings.delta, join_chunks(sample, chunks),
                           monte_carlo["predicted"])
        report["class_size"] |= {"pair_margin": mc["pair_margin"], "distribution": mc["distribution"]}
    return jsonable(report)


def run_identifiability(
    lm: LoadedModel,
    trait: str | TraitSpec,
    layer: int,
    alpha: float,
    settings: IdentifiabilitySettings | None = None,
    scorer: Scorer | None = None,
    vector=None,
) -> dict[str, Any]:
    """Full audit of ``trait``'s mean-diff vector at ``layer``; returns a JSON-serialisable report.

    ``trait``: a built-in trait's name or a :class:`~steerscope.traitspec.TraitSpec`. ``vector``: the
    SteeringVector when the caller already has it (default :func:`audit_vector`); ``scorer``
    defaults to the spec's scorer. Without one (a spec whose scorer is None) there is no trait-score
    readout, and v against the unsteered model is read on the pair margin.
    :func:`identifiability_readouts`, :func:`identifiability_class_chunk` per :func:`class_parts` and
    :func:`identifiability_report`, each payload read back as a run store gives it.
    """
    s = settings or IdentifiabilitySettings()
    layer = lm.check_layer(layer)
    vec = vector if vector is not None else audit_vector(lm, trait, layer)
    readouts = stored_payload(identifiability_readouts(lm, trait, layer, alpha, s, scorer, vec))
    chunks = [stored_payload(identifiability_class_chunk(lm, trait, layer, alpha, s, vec.directions[layer], readouts, part))
              for part in class_parts(s)]
    return identifiability_report(s, readouts, chunks)


def scorer_accuracy(scorer: Scorer) -> float | None:
    """A scorer's held-out accuracy from its ``validity`` dict (None when not measured)."""
    return (getattr(scorer, "validity", None) or {}).get("heldout_accuracy")
