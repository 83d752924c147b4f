"""The audit stages of ``steerscope audit``, as a registry.

A stage is one :class:`Stage` object: the sizes it reads from each profile, how it computes (or
reads back) its cells of the run store for a trait, how many trait cells it plans, how its
results are assembled from the store, its answers on the report's first screen, its plots and its
report section. The run store's cell plan, ``results.json`` and ``report.html`` are built from the
registered stages, in registration order; a new audit is one module that calls
:func:`register_stage` (see ``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from steerscope.errors import SteerscopeError

if TYPE_CHECKING:
    from steerscope.audit.pipeline import Auditor, StoredRun

#: Modules whose import registers the built-in stages.
BUILTIN_STAGE_MODULES = ("steerscope.audit.stages", "steerscope.audit.effect_stages")


@dataclass
class TraitRun:
    """What the stages of one trait hand on to later stages: the layer, the vector ``[d]``, the mean
    residual norm at the layer (for relative doses) and the strength."""

    trait: str
    layer: int = -1
    vector: torch.Tensor | None = None
    h_norm: float = 0.0
    method: str = "mean_diff"
    alpha: float = 0.0


@dataclass(frozen=True)
class Answer:
    """One of the questions on the report's first screen: ``key`` in ``results.json``, the question,
    and the function that answers it from a trait's assembled results (``status``, ``headline``, ``facts``)."""

    key: str
    question: str
    answer: Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One audit stage.

    ``sizes``: profile name → ``{size: value}`` (merged, in stage order, into the run's settings);
    ``run(auditor, trait_run)`` computes or reads back its cells and updates ``trait_run``;
    ``cells(settings)``: the number of trait cells it adds (shared cells not counted);
    ``assemble(stored, trait)``: its entries of the trait's results (``{key: value}``) from the store;
    ``answers``: questions it answers on the first screen; ``plots(trait, results, folder)``: its
    PNG files (name → path); ``section(results, plots)``: its HTML, under ``heading`` =
    ``(anchor, title)`` (an ``<h2>`` such as "formality: does it steer?") when it opens a part of the report.
    ``independent``: its cells read only what earlier stages hand on in the :class:`TraitRun` (and its own
    cells), and it changes nothing there; consecutive independent stages may run side by side on a
    cluster (:class:`~steerscope.audit.pipeline.FanOut`).
    """

    name: str
    sizes: Mapping[str, Mapping[str, Any]]
    run: Callable[[Auditor, TraitRun], None]
    cells: Callable[[Mapping[str, Any]], int]
    assemble: Callable[[StoredRun, str], dict[str, Any]]
    answers: tuple[Answer, ...] = ()
    plots: Callable[[str, Mapping[str, Any], Path], dict[str, Path]] | None = None
    section: Callable[[Mapping[str, Any], Mapping[str, Path]], str] | None = None
    heading: tuple[str, str] | None = None
    independent: bool = False


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add ``stage`` after the stages registered so far; a name can be registered once."""
    if stage.name in _STAGES:
        raise SteerscopeError(f"an audit stage named {stage.name!r} is already registered")
    _STAGES[stage.name] = stage
    return stage


def stages() -> list[Stage]:
    """The registered stages, in order (the built-in ones first)."""
    import importlib

    for module in BUILTIN_STAGE_MODULES:
        importlib.import_module(module)
    return list(_STAGES.values())
