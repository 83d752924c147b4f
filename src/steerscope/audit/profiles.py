"""Sizes and defaults of every audit: the one table that the pipeline and each audit command read.

``quick`` is the CPU demo (about 4 minutes per trait with smollm2-135m on 2 cores); ``full`` the
paper-scale run and the default of the single-audit commands (``steerscope audit identifiability``,
``audit reachability``, ``audit nullspace``, ``recover``), whose ``--quick`` takes the quick sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from steerscope.audit.blackbox import BlackBoxSettings
from steerscope.audit.identifiability import IdentifiabilitySettings
from steerscope.audit.reachability import AuditSettings
from steerscope.data.traits import TRAITS, builtin_prompts
from steerscope.errors import SteerscopeError
from steerscope.invert import SearchConfig
from steerscope.relax import RelaxConfig
from steerscope.sequence_search import SequenceConfig


@dataclass(frozen=True)
class Profile:
    """The sizes of every registered stage under one profile name; sizes read as attributes (``p.id_draws``)."""

    name: str
    sizes: Mapping[str, Any]

    def __getattr__(self, key: str) -> Any:
        sizes = self.__dict__.get("sizes", {})
        if key in sizes:
            return sizes[key]
        raise AttributeError(f"profile {self.__dict__.get('name')!r} has no size {key!r}")

    def settings(self) -> dict[str, Any]:
        """The run configuration's ``settings``: the name, then every stage's sizes in stage order."""
        return {"name": self.name, **self.sizes}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Profile:
        """The profile stored in a run's configuration (lists back to tuples)."""
        sizes = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k != "name"}
        return cls(str(settings["name"]), sizes)

    def identifiability(self, seed: int = 0, **overrides: Any) -> IdentifiabilitySettings:
        """Settings of the identifiability audit at this profile's sizes (``overrides`` win)."""
        sizes = IdentifiabilitySettings(n_draws=self.id_draws, n_prompts=self.id_prompts, samples_per_prompt=self.id_samples,
                                        max_new_tokens=self.id_tokens, n_pairs=self.id_pairs, class_draws=self.id_class_draws,
                                        class_ratios=tuple(self.id_class_ratios), seed=seed)
        return replace(sizes, **overrides)

    def reachability(self, seed: int = 0, budget: int | None = None, max_candidates: int | None = None, exhaustive: bool = False,
                     relax_steps: int | None = None, span_iterations: int | None = None, black_box: int | None = None,
                     **overrides: Any) -> AuditSettings:
        """Settings of the reachability audit at this profile's sizes. One search for natural and steered
        states: ``budget`` gradient-guided candidates per position, then the rest of the vocabulary up to
        ``max_candidates`` in all (``exhaustive``: the whole vocabulary); ``relax_steps`` Adam steps of the
        relaxation and ``span_iterations`` rounds of the whole-span search of the steered states; ``black_box``
        prompts for the black-box probes (0: none)."""
        cap = None if exhaustive else (self.reach_max_candidates if max_candidates is None else max_candidates)
        iterations = self.reach_span_iterations if span_iterations is None else span_iterations
        span = SequenceConfig(iterations=iterations, batch=self.reach_span_batch, seed=seed)
        sizes = AuditSettings(max_positions=self.reach_positions, alphas=self.reach_alphas, sweep_prompts=self.reach_sweep_prompts,
                              search=SearchConfig(budget=self.reach_budget if budget is None else budget, max_candidates=cap),
                              relax=RelaxConfig(steps=self.reach_relax_steps if relax_steps is None else relax_steps), sequence=span,
                              black_box=BlackBoxSettings(prompts=self.reach_black_box if black_box is None else black_box,
                                                         max_new_tokens=overrides.get("max_new_tokens", self.reach_tokens), seed=seed),
                              max_new_tokens=self.reach_tokens, seed=seed)
        return replace(sizes, **overrides)


PROFILE_NAMES = ("quick", "full")


#: Strength of the single-audit commands when ``--alpha`` is not given (the pipeline calibrates it).
DEFAULT_ALPHA = 2.0


def profile(name: str) -> Profile:
    """The profile called ``name`` (``quick`` or ``full``), with the sizes every registered stage declares for it."""
    from steerscope.audit.registry import stages

    if name not in PROFILE_NAMES:
        raise SteerscopeError(f"unknown profile {name!r}; use one of {', '.join(PROFILE_NAMES)}")
    sizes: dict[str, Any] = {}
    for stage in stages():
        sizes |= stage.sizes[name]
    return Profile(name, sizes)


def override_sizes(settings: Mapping[str, Any], sizes: Mapping[str, Any]) -> dict[str, Any]:
    """A run's ``settings`` with ``sizes`` replacing some of the profile's (e.g. a smaller audit).

    Each size must be one that a stage declares, and of the kind the profiles give it: a whole
    number ≥ 0, a number ≥ 0, a boolean, a non-empty list of numbers ≥ 0, or one of the words the
    profiles use. SteerscopeError naming the size otherwise.
    """
    out = dict(settings)
    for key, value in sizes.items():
        if key == "name" or key not in settings:
            raise SteerscopeError(f"unknown size {key!r}; the sizes are {', '.join(k for k in settings if k != 'name')}")
        examples = [v for v in (profile(name).sizes[key] for name in PROFILE_NAMES) if v is not None]
        if not any(_same_kind(value, example, examples) for example in examples):
            raise SteerscopeError(f"size {key!r} takes {_kind(examples)}, got {value!r}")
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _kind(examples: list[Any]) -> str:
    """What a size whose profile values are ``examples`` takes, for messages."""
    example = examples[0]
    if isinstance(example, bool):
        return "true or false"
    if isinstance(example, str):
        return "one of " + ", ".join(repr(e) for e in dict.fromkeys(examples))
    if isinstance(example, (list, tuple)):
        return "a non-empty list of numbers >= 0"
    return "a whole number >= 0" if isinstance(example, int) else "a number >= 0"


def _same_kind(value: Any, example: Any, examples: list[Any]) -> bool:
    """Whether ``value`` can stand where a profile has ``example`` (``examples``: every profile's value)."""
    if isinstance(example, bool) or isinstance(value, bool):
        return isinstance(example, bool) and isinstance(value, bool)
    if isinstance(example, str):
        return value in examples
    if isinstance(example, (list, tuple)):
        return isinstance(value, (list, tuple)) and bool(value) and all(_same_kind(v, 0.0, []) for v in value)
    if isinstance(example, int):
        return isinstance(value, int) and value >= 0
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def command_profile(quick: bool) -> Profile:
    """The profile of a single-audit command: ``quick`` with ``--quick``, else ``full``."""
    return profile("quick" if quick else "full")


def sequential_budget(until_conclusive: bool, max_prompts: int | None) -> int | None:
    """The prompt budget of ``--until-conclusive --max-prompts N`` (None: one look); each flag needs the other."""
    if until_conclusive != (max_prompts is not None):
        raise SteerscopeError("--until-conclusive and --max-prompts go together: give both or neither")
    return max_prompts


def default_layer(n_layers: int) -> int:
    """The layer audited when none is given: 40 % of the depth (the pipeline selects one by held-out separation)."""
    return round(0.4 * n_layers)


def crosslayer_targets(layer: int, n_layers: int) -> list[int]:
    """The later layer that cross-layer recovery constrains the direction with: ℓ + 10 % of the depth (at least ℓ + 1)."""
    target = min(layer + max(1, round(0.1 * n_layers)), n_layers - 1)
    return [target] if target > layer else []


def threshold_prompts() -> list[str]:
    """Prompts on which the reachability audit calibrates its inversion threshold (disjoint from the audited ones)."""
    return builtin_prompts(TRAITS[0], "topic_shift")[:2]
