"""What an audit is asked to audit: trait specifications, vectors made elsewhere, scorers built
ahead, and the checks that run before the model loads (or, for what needs the model, before the
first cell)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer, scorer_from_spec
from steerscope.traitspec import TraitSpec, as_spec
from steerscope.vectors.file import SteeringVector
from steerscope.vectors.foreign import ForeignVector


@dataclass(frozen=True)
class GivenVector:
    """A vector made elsewhere (:func:`steerscope.vectors.load_vector_file`) and the file's name."""

    vector: ForeignVector
    file: str

    def digest(self) -> str:
        """SHA-256 of the ``[d]`` float32 direction's bytes and its layer."""
        data = self.vector.vector.detach().float().cpu().contiguous().numpy().tobytes()
        return hashlib.sha256(data + str(self.vector.layer).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {"file": self.file, "layer": self.vector.layer, "source": self.vector.source, "note": self.vector.note,
                "layers_in_file": self.vector.layers_in_file, "digest": self.digest()}


@dataclass(frozen=True)
class AuditInputs:
    """What a command line asks to audit: the traits, vectors given for them, and scorers built ahead."""

    specs: list[TraitSpec]
    given: dict[str, GivenVector]
    scorers: dict[str, Scorer]


def audit_inputs(traits: Sequence[str] = (), dataset: str | Path | None = None, prompts: str | Path | None = None,
                 name: str | None = None, scorer: str | None = None, vector: str | Path | None = None,
                 layer: int | None = None, instructions: Sequence[str] | None = None) -> AuditInputs:
    """Read and check everything a command line names before the model loads: the trait specs
    (:func:`~steerscope.traitspec.audit_specs`), a ``--vector`` file (:func:`given_vectors`), and the
    scorers that need no model (``probe:`` and ``hf:``), so that a bad corpus or classifier fails
    before the run starts."""
    from steerscope.traitspec import audit_specs

    specs = audit_specs(traits, dataset, prompts, name, scorer, instructions)
    given = given_vectors(specs, vector, layer)
    ahead = {s.name: scorer_from_spec(s.scorer, s.name) for s in specs if s.scorer and s.scorer.partition(":")[0] in ("probe", "hf")}
    return AuditInputs(specs, given, ahead)


def given_vectors(specs: Sequence[TraitSpec], path: str | Path | None, layer: int | None) -> dict[str, GivenVector]:
    """``{trait: GivenVector}`` for a vector file given on the command line (empty without one); it
    needs exactly one trait. The file is read and checked here, before the model loads; ``d_model``
    and the layer's range are checked against the model by :class:`Auditor`."""
    from steerscope.vectors.foreign import load_vector_file

    if path is None:
        if layer is not None:
            raise SteerscopeError("--layer chooses the layer of a --vector file; give the file")
        return {}
    if len(specs) != 1:
        raise SteerscopeError(f"--vector audits one trait's vector; {len(specs)} traits were given")
    return {specs[0].name: GivenVector(load_vector_file(path, None, layer), Path(path).name)}


def check_specs(traits: Sequence[str | TraitSpec]) -> list[TraitSpec]:
    """The specs of ``traits`` (names of built-in traits become their specs); SteerscopeError for none or a
    repeated name. A spec without a scorer is audited on the pair margin and the next-token distribution."""
    specs = [as_spec(t) for t in traits]
    if not specs:
        raise SteerscopeError("at least one trait is needed (--trait or --dataset)")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SteerscopeError(f"trait name(s) {', '.join(repeated)} given more than once; name user traits apart with --name")
    return specs


def check_prompt_supply(spec: TraitSpec, settings: Mapping[str, Any]) -> None:
    """SteerscopeError unless ``spec`` has enough in-distribution prompts for the profile: the audit's
    first ones for identifiability and reachability, and as many others, the last ones, for calibration."""
    have = len(spec.env_prompts("in_distribution"))
    need = settings["id_prompts"] + settings["calib_prompts"]
    if have < need:
        raise SteerscopeError(f"trait {spec.name!r} has {have} in_distribution prompts; this profile needs {need} "
                              f"({settings['id_prompts']} for identifiability and {settings['calib_prompts']} others for calibration)")
    probes = settings.get("reach_black_box", 0)
    if probes:
        from steerscope.audit.blackbox import BlackBoxSettings, probe_pool

        BlackBoxSettings(prompts=probes).split(probe_pool(spec))


def command_inputs(traits: Sequence[str] = (), dataset: str | Path | None = None, prompts: str | Path | None = None,
                   name: str | None = None, scorer: str | None = None, vector: str | Path | None = None,
                   layer: int | None = None, instructions: Sequence[str] | None = None) -> AuditInputs:
    """:func:`audit_inputs` of a single-audit command, where ``layer`` picks the layer of a ``vector``
    file and, without one, is the command's own layer (checked against the model later)."""
    return audit_inputs(traits, dataset, prompts, name, scorer, vector, layer if vector is not None else None, instructions)


def _check_fits(given: GivenVector, lm: LoadedModel) -> None:
    """SteerscopeError unless the given vector's ``d_model`` and layer fit ``lm``."""
    if given.vector.vector.shape[0] != lm.d_model:
        raise SteerscopeError(f"{given.file}: vector has d_model {given.vector.vector.shape[0]} but {lm.name} has d_model {lm.d_model}")
    lm.check_layer(given.vector.layer)


def check_given(config: Mapping[str, Any], given: Mapping[str, GivenVector], lm: LoadedModel) -> dict[str, GivenVector]:
    """``given`` checked against ``config`` (the same vectors by digest) and against the model (``d_model``, layer range)."""
    recorded = config.get("given_vectors", {})
    if set(recorded) != set(given) or any(g.digest() != recorded[t]["digest"] for t, g in given.items()):
        raise SteerscopeError(f"the run audits given vectors for {sorted(recorded) or 'no trait'}; give the same --vector file "
                              "(unchanged) to run or resume it")
    for g in given.values():
        _check_fits(g, lm)
    return dict(given)


def given_steering_vector(lm: LoadedModel, spec: TraitSpec, given: GivenVector) -> SteeringVector:
    """The given vector, checked against ``lm``, as a one-layer SteeringVector with steerscope
    metadata; the residual norm behind its relative doses is the mean over ``spec``'s train pairs."""
    from steerscope.capture import mean_norms
    from steerscope.vectors.file import vector_metadata

    _check_fits(given, lm)
    layer = given.vector.layer
    items = [p.positive for p in spec.train] + [p.negative for p in spec.train]
    meta = vector_metadata(lm, method=f"given ({given.vector.source})", layers=[layer], dataset_hash=given.digest(),
                           trait=spec.name, h_norms=mean_norms(lm, items, [layer]), source_file=given.file,
                           layer_note=given.vector.note)
    return SteeringVector({layer: given.vector.vector}, meta)


def run_specs(config: Mapping[str, Any], given: Sequence[TraitSpec]) -> dict[str, TraitSpec]:
    """Each trait of ``config`` → its spec: one of ``given``, or the built-in trait of that name; the
    content digest must be the one ``config`` recorded."""
    by_name = {s.name: s for s in given}
    recorded = config.get("trait_specs", {})
    specs = {}
    for name in config["traits"]:
        spec = by_name.get(name) or (as_spec(name) if not recorded.get(name) or recorded[name].get("builtin") else None)
        if spec is None:
            raise SteerscopeError(f"trait {name!r} is not built in; give its data again (--dataset) to run or resume it")
        want = recorded.get(name, {}).get("digest")
        if want is not None and spec.digest() != want:
            raise SteerscopeError(f"the data of trait {name!r} differ from the ones this run was started with "
                                  f"(digest {spec.digest()[:12]} ≠ {want[:12]}); use a new --out folder")
        specs[name] = spec
    return specs


def vector_for_run(lm: LoadedModel, vector: Any, layer: int | None) -> GivenVector:
    """A :class:`GivenVector` from a path, a SteeringVector or ``{ℓ: tensor}`` directions."""
    from steerscope.vectors.foreign import from_directions, load_vector_file

    if isinstance(vector, (str, Path)):
        return GivenVector(load_vector_file(vector, lm.d_model, layer, lm.n_layers), Path(vector).name)
    if isinstance(vector, SteeringVector):
        return GivenVector(from_directions(vector.directions, lm.d_model, layer, lm.n_layers, "steerscope"), "<SteeringVector>")
    if isinstance(vector, Mapping):
        return GivenVector(from_directions(vector, lm.d_model, layer, lm.n_layers), "<directions>")
    raise SteerscopeError(f"vector must be a file path, a SteeringVector or a dict {{layer: tensor}}, not {type(vector).__name__}")
