"""The whole audit of a trait, from contrastive pairs to the four answers, as resumable cells.

The stages are those of :mod:`steerscope.audit.registry` (the built-in ones in
:mod:`steerscope.audit.stages`: layer selection, vector, strength calibration, identifiability,
null space, recovery, reachability), run in registration order for each trait; each computes
cells of the run store (:mod:`steerscope.runstore`), some shared between traits.

Every cell is a pure function of the configuration and of earlier cells as stored, so a run that
was killed and resumed gives the same results as one that was not. Wall times live in the store,
never in ``results.json``. Work that does not read other work may run side by side on a cluster
(:class:`FanOut`): consecutive independent stages (identifiability to robustness, which read only the
layer, the vector and α), and the cells of a batch (:meth:`Auditor.batch`: one per α value, per
recovery method, per robustness part).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerscope.audit.profiles import profile as get_profile
from steerscope.audit.profiles import Profile, override_sizes
from steerscope.audit.registry import Stage, TraitRun, stages
from steerscope.errors import SteerscopeError
from steerscope.jsonable import jsonable
from steerscope.models.loading import LoadedModel
from steerscope.runstore import Cell, CellStore, RunStore, RunStoreError
from steerscope.audit.inputs import GivenVector, check_given, check_prompt_supply, check_specs, run_specs, vector_for_run
from steerscope.score.base import Scorer, spec_scorer
from steerscope.traitspec import TraitSpec, as_spec


def audit_config(model: str, traits: Sequence[str | TraitSpec], profile: str, seed: int = 0, target_g: float = 0.8,
                 max_ppl_ratio: float = 2.0, dtype: str = "float32", given: Mapping[str, GivenVector] | None = None,
                 sizes: Mapping[str, Any] | None = None, layer: int | None = None) -> dict[str, Any]:
    """The canonical configuration of a run (what must match for a resume).

    ``traits``: built-in trait names or :class:`~steerscope.traitspec.TraitSpec` values; each is
    recorded by name and content digest (:meth:`TraitSpec.summary`), so changed data cannot resume a run.
    ``given``: trait → a vector made elsewhere, audited instead of extracting one (recorded by digest).
    ``sizes``: sizes that replace the profile's (:func:`~steerscope.audit.profiles.override_sizes`).
    ``layer``: audit every trait at this layer instead of selecting one (recorded only when given).
    """
    specs = check_specs(traits)
    if not (math.isfinite(target_g) and target_g > 0) or not (math.isfinite(max_ppl_ratio) and max_ppl_ratio >= 1):
        raise SteerscopeError(f"need a finite --target-effect > 0 and --max-ppl-ratio >= 1, got {target_g} and {max_ppl_ratio}")
    settings = override_sizes(get_profile(profile).settings(), sizes or {})
    for spec in specs:
        check_prompt_supply(spec, settings)
    unknown = sorted(set(given or {}) - {s.name for s in specs})
    if unknown:
        raise SteerscopeError(f"a vector is given for {', '.join(unknown)}, which is not among the audited traits")
    config = {"model": model, "traits": [s.name for s in specs], "trait_specs": {s.name: s.summary() for s in specs},
              "profile": profile, "seed": seed, "target_g": target_g, "max_ppl_ratio": max_ppl_ratio, "dtype": dtype,
              "settings": settings}
    if given:
        config["given_vectors"] = {trait: g.summary() for trait, g in given.items()}
    if layer is not None:
        config["layer"] = check_fixed_layer(layer, bool(given))
    return json.loads(json.dumps(config))  # the form it takes in the store (tuples become lists), so resumes compare equal


def check_fixed_layer(layer: Any, given: bool = False) -> int:
    """``layer`` as the fixed layer of a run: a whole number ≥ 0 (its range is checked against the model
    by :class:`Auditor`); a vector given for a trait brings its own layer, so the two do not go together."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise SteerscopeError(f"the audited layer must be a whole number >= 0, got {layer!r}")
    if given:
        raise SteerscopeError("a vector given for a trait is audited at its own layer; do not fix the layer as well")
    return layer


def prepare_audit(config: dict[str, Any]) -> dict[str, Any]:
    """Check what the audit needs before any work (matplotlib for the report); returns ``config``."""
    from steerscope.audit.plots import _pyplot

    _pyplot()
    return config


def tensors_to_bytes(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> bytes:
    """Arrays as safetensors bytes (the blob of a cell; never pickle)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()})


def bytes_to_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a cell's blob (see :func:`tensors_to_bytes`)."""
    from safetensors.numpy import load

    return load(blob)


def stored_direction(cell: Cell) -> torch.Tensor:
    """The ``[d]`` float32 direction held by a ``…/vector`` cell."""
    assert cell.blob is not None
    return torch.from_numpy(bytes_to_arrays(cell.blob)["direction"].copy())


def counts_towards_progress(key: str) -> bool:
    """Whether cell ``key`` is one of the trait cells counted by :func:`plan_cells` (shared cells are not)."""
    return "/" in key and not key.startswith(("grams/", "maps/")) and not key.endswith("/spec")


def plan_cells(config: Mapping[str, Any]) -> int:
    """Number of trait cells a run will have (shared cells not counted); for the progress bar."""
    return sum(stage.cells(config["settings"]) for stage in stages()) * len(config["traits"])


#: What a cell's computation returns: its JSON payload and its blob (or None).
Compute = Callable[[], tuple[Any, bytes | None]]


@dataclass(frozen=True)
class FanOut:
    """What an :class:`Auditor` does where work could run side by side: a group of consecutive
    independent stages (a part: ``{trait}/stage/{name}``) or a batch of cells (a part: the cell's key).

    ``split``: where two or more parts are missing, stop there (raise :class:`Split` naming them) so
    that they can be computed side by side. ``only``: compute this one part, every cell before it read
    from the store, and stop (raise :class:`Done`); a stage part may still split its batches, a cell
    part splits nothing. ``within``: the stage part that the cell part
    ``only`` belongs to (a batch that a stage computed alone split off), while the other stages of its
    group may still be missing. Neither: compute everything in order, as a local run does.
    """

    split: bool = False
    only: str | None = None
    within: str | None = None


class Split(Exception):
    """An :class:`Auditor` with ``FanOut(split=True)`` stopped; ``keys``: the missing parts, in order."""

    def __init__(self, keys: Sequence[str]):
        super().__init__(f"stopped at {len(keys)} parts that can run side by side")
        self.keys = tuple(keys)


class Done(Exception):
    """An :class:`Auditor` with ``FanOut(only=key)`` computed its part ``key``."""

    def __init__(self, key: str):
        super().__init__(f"computed {key}")
        self.key = key


class _Missing(Exception):
    """A probe of a stage (:meth:`Auditor.complete`) reached a cell that is not in the store."""


def stage_groups(registered: Sequence[Stage]) -> list[list[Stage]]:
    """``registered`` in order, as groups: each run of consecutive independent stages, every other stage alone."""
    groups: list[list[Stage]] = []
    for stage in registered:
        if stage.independent and groups and groups[-1][0].independent:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


class Auditor:
    """Runs the registered stages for one model against one run store (or a worker's replica of one).

    ``fan_out``: what to do where work could run side by side (default: everything in order, as a local run)."""

    def __init__(self, lm: LoadedModel, store: CellStore, config: Mapping[str, Any], specs: Sequence[TraitSpec] = (),
                 scorers: Mapping[str, Scorer] | None = None, on_cell: Callable[[str, bool], None] | None = None,
                 given: Mapping[str, GivenVector] | None = None, fan_out: FanOut = FanOut()):
        self.lm, self.store, self.config, self.fan_out = lm, store, config, fan_out
        self._probing = False
        self.p = Profile.from_settings(config["settings"])
        self.seed = int(config["seed"])
        self.specs = run_specs(config, specs)
        self.given = check_given(config, given or {}, lm)
        if config.get("layer") is not None:
            lm.check_layer(check_fixed_layer(config["layer"]))
        self._scorers: dict[str, Scorer | None] = dict(scorers or {})
        self._on_cell = on_cell or (lambda key, cached: None)

    def scorer(self, trait: str) -> Scorer | None:
        """The trait's scorer (built on first use); None when its spec has none."""
        if trait not in self._scorers:
            self._scorers[trait] = spec_scorer(self.specs[trait], self.lm)
        return self._scorers[trait]

    def readout_scorer(self, trait: str) -> Scorer | None:
        """The scorer of ``trait`` as an off-target readout: the audited trait's own, else the built-in
        trait's (given in ``scorers`` or built on first use); None when it has none."""
        if trait in self.specs:
            return self.scorer(trait)
        if trait not in self._scorers:
            from steerscope.traitspec import builtin_spec

            self._scorers[trait] = spec_scorer(builtin_spec(trait), self.lm)
        return self._scorers[trait]

    def cell(self, key: str, stage: str, compute: Compute, trait: str | None = None) -> Cell:
        """Cell ``key`` read back from the store, or computed (payload made JSON-safe) and committed."""
        cached = self.store.get(key) is not None
        if not cached and self._probing:
            raise _Missing(key)
        if not cached and self.fan_out.only is not None:
            raise SteerscopeError(f"cell {key!r}, which comes before the part {self.fan_out.only!r} this worker was given, is missing")
        result = self.store.cached(key, stage, lambda: _jsonable_pair(compute()), trait)
        if not self._probing:
            self._on_cell(key, cached)
        return result

    def batch(self, stage: str, computes: Mapping[str, Compute], trait: str | None = None) -> list[Cell]:
        """The cells ``computes`` (key → computation), none of which reads another: computed in order,
        or split off or computed alone as :attr:`fan_out` says."""
        only = self.fan_out.only
        if only is not None and only in computes:
            self.store.cached(only, stage, lambda: _jsonable_pair(computes[only]()), trait)
            raise Done(only)
        missing = [key for key in computes if self.store.get(key) is None]
        if missing and self._probing:
            raise _Missing(missing[0])
        if self.fan_out.split and only is None and len(missing) > 1:
            raise Split(missing)
        return [self.cell(key, stage, compute, trait) for key, compute in computes.items()]

    def complete(self, stage: Stage, state: TraitRun) -> bool:
        """Whether every cell of ``stage`` for ``state``'s trait is in the store (its code run without computing)."""
        self._probing = True
        try:
            stage.run(self, copy.copy(state))
            return True
        except _Missing:
            return False
        finally:
            self._probing = False

    def side_by_side(self, group: Sequence[Stage], state: TraitRun) -> None:
        """Run the independent stages ``group``: in order, or split off or one alone as :attr:`fan_out` says."""
        parts = {f"{state.trait}/stage/{stage.name}": stage for stage in group}
        fan_out = self.fan_out
        alone = fan_out.within or fan_out.only
        if alone is not None and alone in parts:
            # the stage alone: its batches split (as `split` says), or its one cell `only` is computed
            self.fan_out = FanOut(split=fan_out.split, only=fan_out.only if fan_out.within else None)
            parts[alone].run(self, state)
            if fan_out.within:
                raise SteerscopeError(f"stage part {alone!r} has no cell {fan_out.only!r} to compute")
            raise Done(alone)
        if fan_out.split and fan_out.only is None:
            missing = [key for key, stage in parts.items() if not self.complete(stage, state)]
            if len(missing) > 1:
                raise Split(missing)
        for stage in group:
            stage.run(self, state)

    def run(self) -> None:
        """Compute (or read back) every cell of every stage of every trait."""
        self.store.set_fingerprint(self.lm.fingerprint)
        self.cell("model", "model", lambda: (self.lm.info(), None))
        for trait in self.config["traits"]:
            self.cell(f"{trait}/spec", "spec", partial(_spec_cell, self.specs[trait]), trait)
            state = TraitRun(trait)
            for group in stage_groups(stages()):
                if len(group) > 1:
                    self.side_by_side(group, state)
                else:
                    group[0].run(self, state)


def _spec_cell(spec: TraitSpec) -> tuple[dict[str, Any], None]:
    return spec.content(), None


def _jsonable_pair(pair: tuple[Any, bytes | None]) -> tuple[Any, bytes | None]:
    return jsonable(pair[0]), pair[1]


class StoredRun:
    """Read access to a run's cells for assembling results (no model needed)."""

    def __init__(self, store: RunStore):
        self.store = store
        self.config: dict[str, Any] = store.run["config"]

    def spec(self, trait: str) -> TraitSpec:
        """The trait's specification as the run stored it."""
        return TraitSpec.from_content(self.payload(f"{trait}/spec"))

    def payload(self, key: str) -> Any:
        cell = self.store.get(key)
        if cell is None:
            raise RunStoreError(f"{self.store.folder} is incomplete (no cell {key!r}); run the same audit command again to finish it")
        return cell.payload


def trait_answers(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The first-screen answers of one trait's results, in stage order."""
    return {a.key: a.answer(result) for stage in stages() for a in stage.answers}


def assemble(store: RunStore) -> dict[str, Any]:
    """``results.json`` of a finished run, from the store alone (no model needed)."""
    stored = StoredRun(store)
    traits = {}
    for trait in stored.config["traits"]:
        result: dict[str, Any] = {}
        for stage in stages():
            result |= stage.assemble(stored, trait)
        traits[trait] = {"answers": trait_answers(result)} | result
    run = store.run
    return {"steerscope_version": run["version"], "config": stored.config, "model": stored.payload("model"),
            "model_fingerprint": run["model_fingerprint"], "traits": traits}


def run(lm: LoadedModel, trait: str | TraitSpec, out: str | Path, vector: Any = None, layer: int | None = None,
        profile: str = "quick", seed: int = 0, scorers: Mapping[str, Scorer] | None = None) -> dict[str, Any]:
    """The whole audit of one trait into the run folder ``out`` (resumed when it holds the same run);
    returns what ``results.json`` holds.

    ``trait``: a built-in trait's name or a :class:`~steerscope.traitspec.TraitSpec`. ``vector``: None
    (extract the mean difference at the selected layer), a vector file's path
    (:func:`~steerscope.vectors.load_vector_file`), a :class:`~steerscope.vectors.SteeringVector`, or
    ``{ℓ: [d_model]}`` directions (e.g. from :func:`~steerscope.vectors.from_steering_vectors` or
    :func:`~steerscope.vectors.from_repeng`); ``layer`` picks one layer of several.
    """
    from steerscope._version import __version__
    from steerscope.report import write_outputs
    from steerscope.runstore import open_run

    spec = as_spec(trait)
    given = {spec.name: vector_for_run(lm, vector, layer)} if vector is not None else {}
    config = prepare_audit(audit_config(lm.name, [spec], profile, seed, given=given))
    store, _ = open_run(out, config, __version__, "steerscope.audit.run")
    with store, store.recording_interruption():
        Auditor(lm, store, config, [spec], scorers=scorers, given=given).run()
        store.log("finished", f"{store.count()} cells")
        return json.loads(write_outputs(store)["results"].read_text())
