"""The single-audit commands as library objects: what ``steerscope audit identifiability``,
``audit nullspace``, ``audit reachability`` and ``recover`` decide, run and write.

Each command is a settings object with two steps: :meth:`prepare` validates the request and
checks the output files before any model is loaded, :meth:`run` computes on a loaded model and
writes the output folder atomically, returning a :class:`Written` (the Markdown summary and the
files). Sizes and defaults come from :mod:`steerscope.audit.profiles`. The CLI only parses
options into these objects and prints what they return.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from steerscope.audit.blackbox import probe_pool
from steerscope.audit.identifiability import IdentifiabilitySettings
from steerscope.audit.paper import PaperSettings
from steerscope.audit.profiles import DEFAULT_ALPHA, crosslayer_targets, default_layer, threshold_prompts
from steerscope.audit.reachability import AuditSettings, parse_window
from steerscope.audit.inputs import AuditInputs, check_specs
from steerscope.data.traits import ENVIRONMENTS, TRAITS, builtin_prompts, check_traits
from steerscope.errors import SteerscopeError
from steerscope.fileio import atomic_write, check_output_path
from steerscope.models.loading import LoadedModel
from steerscope.monitor import MonitorSettings
from steerscope.score.base import Scorer, spec_scorer
from steerscope.traitspec import TraitSpec, builtin_spec
from steerscope.vectors.file import SteeringVector


@dataclass(frozen=True)
class Written:
    """What a command wrote: its Markdown summary and the files, by name."""

    markdown: str
    files: dict[str, Path]


def _check_outputs(paths: Mapping[str, Path], overwrite: bool) -> None:
    """Refuse existing outputs and a missing matplotlib before any work."""
    from steerscope.audit.plots import _pyplot

    for path in paths.values():
        check_output_path(path, overwrite)
    _pyplot()


def check_finite(value: float | None, option: str, nonzero: bool = False) -> None:
    """SteerscopeError unless ``value`` (an option's; None: not given) is finite (and non-zero when ``nonzero``)."""
    if value is not None and not math.isfinite(value):
        raise SteerscopeError(f"{option} must be a finite number, got {value:g}")
    if nonzero and value == 0:
        raise SteerscopeError(f"{option} must be non-zero")


def check_counts(**counts: int | None) -> None:
    """SteerscopeError unless each count (keyword: the option, ``_`` for ``-``; None: not given) is at least 1."""
    for name, count in counts.items():
        if count is not None and count < 1:
            raise SteerscopeError(f"--{name.replace('_', '-')} must be at least 1, got {count}")


def _write_json(path: Path, data: Any, overwrite: bool, indent: int = 2) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent, allow_nan=False)), overwrite)


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text), overwrite)


# --- identifiability -----------------------------------------------------------------------------

class _TraitCommand:
    """What the identifiability commands share: the trait specs (built-in or a user's), a vector
    given for one of them, their prompts counted and the outputs checked before the model loads;
    the layer (a given vector's, else ``layer``, else 40 % of the depth)."""

    inputs: AuditInputs
    settings: Any
    layer: int | None
    overwrite: bool

    @property
    def traits(self) -> tuple[str, ...]:
        """The traits' names, in order."""
        return tuple(s.name for s in self.inputs.specs)

    def paths(self) -> dict[str, Path]:
        raise NotImplementedError

    def prepare(self) -> None:
        from steerscope.audit.identifiability import evaluation_prompts

        check_finite(getattr(self, "alpha", None), "--alpha")
        check_specs(self.inputs.specs)
        for spec in self.inputs.specs:
            evaluation_prompts(spec, self.settings.env, self.settings.n_prompts)
        _check_outputs(self.paths(), self.overwrite)

    def chosen_layer(self, lm: LoadedModel) -> int:
        given = next(iter(self.inputs.given.values()), None)
        if given is not None:
            return lm.check_layer(given.vector.layer)
        return lm.check_layer(self.layer) if self.layer is not None else default_layer(lm.n_layers)

    def scorer(self, spec: TraitSpec, lm: LoadedModel) -> Scorer | None:
        """The scorer built ahead for ``spec``, or its spec's (None when it has none)."""
        return self.inputs.scorers.get(spec.name) or spec_scorer(spec, lm)

    def vector(self, spec: TraitSpec, lm: LoadedModel, layer: int) -> SteeringVector:
        """The vector given for ``spec``, or its train pairs' mean difference at ``layer``."""
        return trait_vector(self.inputs, spec, lm, layer)


def trait_vector(inputs: AuditInputs, spec: TraitSpec, lm: LoadedModel, layer: int) -> SteeringVector:
    """The vector ``inputs`` give for ``spec``, or its train pairs' mean difference at ``layer``."""
    from steerscope.audit.identifiability import audit_vector
    from steerscope.audit.inputs import given_steering_vector

    given = inputs.given.get(spec.name)
    return given_steering_vector(lm, spec, given) if given is not None else audit_vector(lm, spec, layer)


@dataclass(frozen=True)
class IdentifiabilityCommand(_TraitCommand):
    """``v`` against ``v + u`` (u ⊥ v) for one or more traits at one layer.

    ``alpha`` None: :data:`~steerscope.audit.profiles.DEFAULT_ALPHA`; ``layer`` None:
    :func:`~steerscope.audit.profiles.default_layer`. ``sweep_alphas``: also the α
    sweep; ``all_envs``: also every environment (both read the trait score, so they need a
    scorer). Several traits share one Holm family.
    """

    inputs: AuditInputs
    out_dir: Path
    settings: IdentifiabilitySettings
    alpha: float | None = None
    layer: int | None = None
    sweep_alphas: tuple[float, ...] = ()
    all_envs: bool = False
    overwrite: bool = False

    def paths(self) -> dict[str, Path]:
        """results.json, summary.md and the plots (named per trait when several traits)."""
        out = {"results": self.out_dir / "results.json", "summary": self.out_dir / "summary.md"}
        for t in self.traits:
            for plot in ("effect_ratio", *(("alpha_sweep",) if self.sweep_alphas else ())):
                out[plot + self._suffix(t)] = self.out_dir / f"{plot}{self._suffix(t)}.png"
        if self.all_envs:
            out["environments"] = self.out_dir / "environments.png"
        return out

    def prepare(self) -> None:
        from steerscope.audit.identifiability import evaluation_prompts

        super().prepare()
        if not (self.sweep_alphas or self.all_envs):
            return
        for spec in self.inputs.specs:
            if spec.scorer is None:
                raise SteerscopeError(f"--alphas and --all-envs read the trait score, and trait {spec.name!r} has no scorer; "
                                      "give one with --scorer")
            for env in ENVIRONMENTS if self.all_envs else ():
                evaluation_prompts(spec, env, self.settings.n_prompts)

    def _suffix(self, trait: str) -> str:
        return f"_{trait}" if len(self.traits) > 1 else ""

    def reports(self, lm: LoadedModel) -> dict[str, dict[str, Any]]:
        """Every trait's report (with the α sweep / environments when asked), Holm across traits."""
        from steerscope.audit.identifiability import holm_across_traits, run_identifiability
        from steerscope.audit.sweep import run_extensions

        layer, alpha, reports = self.chosen_layer(lm), self.alpha if self.alpha is not None else DEFAULT_ALPHA, {}
        for spec in self.inputs.specs:
            scorer, vector = self.scorer(spec, lm), self.vector(spec, lm, layer)
            reports[spec.name] = run_identifiability(lm, spec, layer, alpha, self.settings, scorer=scorer, vector=vector)
            reports[spec.name] |= run_extensions(lm, spec, layer, alpha, self.settings, alphas=self.sweep_alphas or None,
                                                 all_envs=self.all_envs, scorer=scorer, vector=vector)
        return holm_across_traits(reports) if len(self.traits) > 1 else reports

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.markdown import identifiability_markdown, traits_overview_markdown
        from steerscope.audit.plots import plot_alpha_sweep, plot_effect_ratio, plot_environment_heatmap

        reports, paths = self.reports(lm), self.paths()
        if len(self.traits) > 1:
            result = {"traits": reports, "verdict": {t: r["verdict"] for t, r in reports.items()}}
            markdown = "\n".join([traits_overview_markdown(reports)] + [identifiability_markdown(r) for r in reports.values()])
        else:
            result = reports[self.traits[0]]
            markdown = identifiability_markdown(result)
        _write_json(paths["results"], result, self.overwrite)
        _write_text(paths["summary"], markdown, self.overwrite)
        for t, report in reports.items():
            plot_effect_ratio(report, paths["effect_ratio" + self._suffix(t)], self.overwrite)
            if self.sweep_alphas:
                plot_alpha_sweep(report["alpha_sweep"], paths["alpha_sweep" + self._suffix(t)], self.overwrite)
        if self.all_envs:
            plot_environment_heatmap([r["environments"] for r in reports.values()], paths["environments"], self.overwrite)
        return Written(markdown, paths)


@dataclass(frozen=True)
class PaperCommand(_TraitCommand):
    """The seed paper's protocol (:mod:`steerscope.audit.paper`) for one or more traits at one layer.

    The protocol extracts its own mean-difference and PCA vectors and reads the trait score, so
    it takes no given vector and needs a scorer.
    """

    inputs: AuditInputs
    out_dir: Path
    settings: PaperSettings
    layer: int | None = None
    overwrite: bool = False

    def paths(self) -> dict[str, Path]:
        """results.json, summary.md and one paper_<trait>.png per trait."""
        return {"results": self.out_dir / "results.json", "summary": self.out_dir / "summary.md",
                **{f"paper_{t}": self.out_dir / f"paper_{t}.png" for t in self.traits}}

    def prepare(self) -> None:
        if self.inputs.given:
            raise SteerscopeError("--protocol paper extracts its own mean-difference and PCA vectors; drop --vector")
        for spec in self.inputs.specs:
            if spec.scorer is None:
                raise SteerscopeError(f"--protocol paper reads the trait score, and trait {spec.name!r} has no scorer; give one with --scorer")
        super().prepare()

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.paper import paper_markdown, run_paper_protocol
        from steerscope.audit.plots import plot_paper

        layer, paths = self.chosen_layer(lm), self.paths()
        reports = {}
        for spec in self.inputs.specs:
            scorer = self.scorer(spec, lm)
            assert scorer is not None  # prepare() refuses a trait without a scorer
            reports[spec.name] = run_paper_protocol(lm, spec, layer, scorer, self.settings)
        markdown = "\n".join(paper_markdown(r) for r in reports.values())
        _write_json(paths["results"], {"protocol": "paper", "traits": reports}, self.overwrite)
        _write_text(paths["summary"], markdown, self.overwrite)
        for t, report in reports.items():
            plot_paper(report, paths[f"paper_{t}"], self.overwrite)
        return Written(markdown, paths)


@dataclass(frozen=True)
class IdentifiabilityRequest:
    """What ``audit identifiability`` asks besides the traits and the settings: the strength, the
    layer, the α sweep, every environment, and whether outputs may be replaced."""

    alpha: float | None = None
    layer: int | None = None
    sweep_alphas: tuple[float, ...] = ()
    all_envs: bool = False
    overwrite: bool = False


def identifiability_command(protocol: str, quick: bool, inputs: AuditInputs, out_dir: Path, settings: IdentifiabilitySettings,
                            request: IdentifiabilityRequest) -> IdentifiabilityCommand | PaperCommand:
    """``audit identifiability``'s command: this project's audit, or (``protocol="paper"``) the paper's
    protocol at its sizes (:meth:`PaperSettings.quick_sizes` with ``quick``), with the settings' seed and environment."""
    r = request
    if protocol == "audit":
        return IdentifiabilityCommand(inputs, out_dir, settings, r.alpha, r.layer, r.sweep_alphas, r.all_envs, r.overwrite)
    if protocol != "paper":
        raise SteerscopeError(f"unknown --protocol {protocol!r}; use audit or paper")
    if r.alpha is not None or r.sweep_alphas or r.all_envs or settings.max_prompts:
        raise SteerscopeError("--protocol paper fixes its own strengths and prompts: drop --alpha, --alphas, --all-envs and --until-conclusive")
    sizes = PaperSettings.quick_sizes() if quick else PaperSettings()
    return PaperCommand(inputs, out_dir, replace(sizes, seed=settings.seed, env=settings.env), r.layer, r.overwrite)


# --- null space ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NullspaceCommand:
    """Exact Jacobian spectra at ``layers`` over ``prompts``; the gain of a trait's mean-difference
    vector (``specs``: at most one, built-in or a user's pairs) or of a vector file's directions."""

    out_dir: Path
    layers: tuple[int, ...]
    prompts: tuple[str, ...]
    positions: tuple[int, ...] = (-1,)
    tolerances: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    specs: tuple[TraitSpec, ...] = ()
    vector: Path | None = None
    chunk: int = 144
    overwrite: bool = False
    all_positions: int = 0

    def paths(self) -> dict[str, Path]:
        return {name: self.out_dir / f"{name}.{ext}" for name, ext in (("results", "json"), ("summary", "md"), ("spectra", "png"))}

    def prepare(self) -> None:
        if len(self.specs) + (self.vector is not None) > 1:
            raise SteerscopeError("give at most one of --trait, --dataset or --vector")
        if not self.prompts or not self.layers or not self.positions:
            raise SteerscopeError("the null-space audit needs at least one prompt, one layer and one position")
        if not self.tolerances or not all(0 < t < 1 for t in self.tolerances):
            raise SteerscopeError(f"--tolerances must be relative tolerances in (0, 1), got {list(self.tolerances)}")
        check_counts(chunk=self.chunk)
        if self.all_positions < 0:
            raise SteerscopeError(f"--all-positions must be 0 (off) or a number of prompts, got {self.all_positions}")
        _check_outputs(self.paths(), self.overwrite)

    def _vectors(self, lm: LoadedModel, layers: Sequence[int]) -> Mapping[int, torch.Tensor] | None:
        if self.vector is not None:
            from steerscope.vectors.foreign import load_vector_layers

            return load_vector_layers(self.vector, lm.d_model, layers)
        if self.specs:
            from steerscope.extract import extract

            return extract(lm, list(self.specs[0].train), layers).directions
        return None

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.markdown import nullspace_markdown
        from steerscope.audit.nullspace import nullspace_audit
        from steerscope.audit.plots import plot_spectra

        layers = [lm.check_layer(x) for x in self.layers]
        results = nullspace_audit(lm, list(self.prompts), layers, list(self.positions), list(self.tolerances),
                                  self._vectors(lm, layers), progress=True, chunk=self.chunk, all_positions=self.all_positions)
        paths, markdown = self.paths(), nullspace_markdown(results)
        _write_json(paths["results"], results, self.overwrite, indent=1)
        _write_text(paths["summary"], markdown, self.overwrite)
        plot_spectra(results, paths["spectra"], self.overwrite)
        return Written(markdown, paths)


# --- recovery ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecoverCommand:
    """A trait direction recovered under a structural assumption, with its identifiability report.

    ``environments``: prompts per environment for the Jacobian Gram matrices (default: the
    built-in environments of the trait, or of formality for a pair file); ``later_layers``: the
    cross-layer targets (default :func:`~steerscope.audit.profiles.crosslayer_targets`);
    ``options``: method-specific keywords of :func:`steerscope.recover.trait.recover_trait`.
    multienv extracts one vector per environment from the pairs written in it (a built-in trait's
    ``env_pairs``; a pair file's ``environment`` field).
    """

    method: str
    out_dir: Path
    layer: int
    trait: str | None = None
    dataset: Path | None = None
    env_prompts: int = 6
    environments: Mapping[str, Sequence[str]] | None = None
    later_layers: tuple[int, ...] = ()
    boot: int = 20
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    overwrite: bool = False

    def paths(self) -> dict[str, Path]:
        return {name: self.out_dir / name for name in ("recovery.json", "summary.md", "vector.safetensors")}

    def prepare(self) -> None:
        from steerscope.recover import METHODS

        if self.method not in METHODS:
            raise SteerscopeError(f"unknown recovery method {self.method!r}; use {', '.join(METHODS)}")
        if (self.trait is None) == (self.dataset is None):
            raise SteerscopeError("give exactly one of --trait or --dataset")
        if self.trait is not None:
            check_traits([self.trait])
        check_counts(env_prompts=self.env_prompts, boot=self.boot, k=self.options.get("k"), components=self.options.get("n_components"))
        tol = self.options.get("tol")
        if tol is not None and not (math.isfinite(tol) and tol > 0):
            raise SteerscopeError(f"--tol must be a positive number, got {tol:g}")
        for path in self.paths().values():
            check_output_path(path, self.overwrite)

    def _prompts_by_env(self) -> Mapping[str, Sequence[str]]:
        if self.environments is not None:
            return self.environments
        return {e: builtin_prompts(self.trait or "formality", e) for e in ENVIRONMENTS}

    def _inputs(self, lm: LoadedModel, layer: int) -> tuple[dict | None, dict | None]:
        """The Jacobian Gram matrices per environment and the layer maps the method needs (or None)."""
        from steerscope.recover.trait import layer_maps, prompt_grams

        needs_grams = self.method in ("multienv", "crosslayer") or (self.method == "sparse" and self.options.get("observe") == "jacobian")
        if not needs_grams:
            return None, None
        by_env = self._prompts_by_env()
        grams = {e: prompt_grams(lm, list(p[: self.env_prompts]), layer) for e, p in by_env.items()}
        if self.method != "crosslayer":
            return grams, None
        targets = [lm.check_layer(t) for t in self.later_layers] or crosslayer_targets(layer, lm.n_layers)
        if not targets:
            raise SteerscopeError(f"layer {layer} is the last one: cross-layer recovery needs a later layer")
        return grams, layer_maps(lm, list(next(iter(by_env.values()))[: self.env_prompts]), layer, targets)

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.markdown import recovery_markdown
        from steerscope.data import load_pairs
        from steerscope.data.pairs import dataset_hash
        from steerscope.data.traits import builtin_env_pairs, group_by_environment
        from steerscope.recover.trait import recover_trait
        from steerscope.vectors.file import SteeringVector, vector_metadata

        source = self.trait if self.trait is not None else self.dataset
        assert source is not None  # prepare() requires exactly one of trait and dataset
        pairs = load_pairs(source, "train" if self.trait is not None else None)
        env_pairs = builtin_env_pairs(self.trait) if self.trait is not None else group_by_environment(load_pairs(source))
        layer = lm.check_layer(self.layer)
        grams, maps = self._inputs(lm, layer)
        result = recover_trait(lm, self.method, pairs, layer, grams=grams, maps=maps, n_boot=self.boot, seed=self.seed,
                               env_pairs=env_pairs, **self.options)
        report = result.to_dict() | {"model": lm.name, "trait": self.trait or str(self.dataset)}
        paths, markdown = self.paths(), recovery_markdown(report)
        _write_json(paths["recovery.json"], report, self.overwrite, indent=1)
        _write_text(paths["summary.md"], markdown, self.overwrite)
        meta = vector_metadata(lm, method=f"recover-{self.method}", layers=[layer], dataset_hash=dataset_hash(pairs),
                               trait=self.trait or "", n_pairs=len(pairs))
        SteeringVector({layer: torch.as_tensor(result.direction, dtype=torch.float32)}, meta).save(paths["vector.safetensors"],
                                                                                              overwrite=self.overwrite)
        return Written(markdown, paths)


# --- reachability --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReachabilityCommand:
    """Can a prompt produce the state steered by a vector file's direction or a trait's mean-difference vector?

    ``inputs``: at most one trait (built-in or a user's pairs); it gives the mean-difference vector
    when no ``vector`` file is given, and the prompts, scorer and instruction baseline. ``layer`` None: the
    vector's only layer, or the default layer for a trait's vector. ``prompts`` None: the trait's
    in-distribution prompts (formality's for a file without a built-in trait).
    """

    out_dir: Path
    alpha: float
    settings: AuditSettings
    n_prompts: int
    vector: Path | None = None
    inputs: AuditInputs = field(default_factory=lambda: AuditInputs([], {}, {}))
    layer: int | None = None
    capture_layer: int | None = None
    prompts: tuple[str, ...] | None = None
    allow_model_mismatch: bool = False
    overwrite: bool = False

    @property
    def spec(self) -> TraitSpec | None:
        """The trait of the command line (at most one), if any."""
        return self.inputs.specs[0] if self.inputs.specs else None

    def paths(self) -> dict[str, Path]:
        return {name: self.out_dir / name for name in ("results.json", "summary.md", "positions.png", "alpha_sweep.png")}

    def prepare(self) -> None:
        if len(self.inputs.specs) > 1:
            raise SteerscopeError("the reachability audit takes one trait: give --trait or --dataset, not both")
        if self.vector is None and self.spec is None:
            raise SteerscopeError("give --vector, --trait or --dataset")
        check_finite(self.alpha, "--alpha")
        s = self.settings
        check_counts(n_prompts=self.n_prompts, max_positions=s.max_positions, sweep_prompts=s.sweep_prompts, max_new_tokens=s.max_new_tokens)
        parse_window(s.positions)
        if s.black_box.prompts and (self.prompts or self.spec):
            s.black_box.split(self.prompts or probe_pool(self.spec))  # type: ignore[arg-type]
        _check_outputs(self.paths(), self.overwrite)

    def direction(self, lm: LoadedModel) -> tuple[torch.Tensor, int, dict[str, Any], TraitSpec | None]:
        """``(direction [d], layer, vector_info, trait spec or None)`` of the audited vector."""
        if self.vector is None:
            from steerscope.audit.identifiability import audit_vector

            assert self.spec is not None  # prepare() requires a vector or a trait
            layer = lm.check_layer(self.layer) if self.layer is not None else default_layer(lm.n_layers)
            origin = "built-in " if self.spec.builtin else ""
            info: dict[str, Any] = {"source": f"{origin}{self.spec.name} pairs (train split), mean_diff", "method": "mean_diff"}
            return audit_vector(lm, self.spec, layer).directions[layer], layer, info, self.spec
        from steerscope.vectors.foreign import check_made_for, load_vector_file

        check_made_for(self.vector, lm, self.allow_model_mismatch)
        given = load_vector_file(self.vector, lm.d_model, self.layer, lm.n_layers)
        spec = self.spec or _builtin_of_file(self.vector)
        info = {"source": str(self.vector), "method": f"given ({given.source})", "layers_in_file": given.layers_in_file}
        return given.vector, given.layer, info, spec

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.markdown import reachability_markdown
        from steerscope.audit.plots import plot_reachability_positions, plot_reachability_sweep
        from steerscope.audit.reachability import run_reachability

        direction, layer, info, spec = self.direction(lm)
        pool = list(self.prompts) if self.prompts else probe_pool(spec or builtin_spec(TRAITS[0]))
        scorer = (self.inputs.scorers.get(spec.name) or spec_scorer(spec, lm)) if spec is not None else None
        report = run_reachability(lm, direction, layer, self.alpha, pool[: self.n_prompts], threshold_prompts(), capture_layer=self.capture_layer,
                                  trait=spec.name if spec else None, scorer=scorer, settings=self.settings, vector_info=info,
                                  instructions=spec.instructions if spec else None, probe_prompts=pool)
        paths, markdown = self.paths(), reachability_markdown(report)
        _write_json(paths["results.json"], report, self.overwrite)
        _write_text(paths["summary.md"], markdown, self.overwrite)
        plot_reachability_positions(report, paths["positions.png"], self.overwrite)
        plot_reachability_sweep(report, paths["alpha_sweep.png"], self.overwrite)
        return Written(markdown, paths)


def _builtin_of_file(path: Path) -> TraitSpec | None:
    """The built-in trait a steerscope vector file was extracted for (None for other files and traits)."""
    from steerscope.vectors.file import SteeringVector

    try:
        trait = SteeringVector.load(path).metadata.get("trait")
    except SteerscopeError:  # not a steerscope file: it names no trait
        return None
    return builtin_spec(trait) if trait in TRAITS else None


# --- monitoring ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MonitorCommand:
    """Monitoring with a trait's vector (:mod:`steerscope.monitor`): detection on held-out pairs and on
    steered completions, tracking of the trait score, drift, and per-token projections of ``texts``.

    ``inputs``: one trait (built-in or a user's) and, optionally, a vector given for it; ``layer``:
    the given vector's layer, else ``layer``, else 40 % of the depth (the mean difference of the
    train pairs is extracted there).
    """

    inputs: AuditInputs
    out_dir: Path
    settings: MonitorSettings
    layer: int | None = None
    texts: tuple[str, ...] = ()
    overwrite: bool = False

    def paths(self) -> dict[str, Path]:
        return {name: self.out_dir / name for name in ("monitor.json", "summary.md", "monitor.html")}

    def prepare(self) -> None:
        specs = check_specs(self.inputs.specs)
        if len(specs) != 1:
            raise SteerscopeError(f"monitoring takes one trait; {len(specs)} were given")
        specs[0].env_prompts("in_distribution")
        check_finite(self.settings.alpha, "--alpha")
        for path in self.paths().values():
            check_output_path(path, self.overwrite)

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.markdown import monitor_markdown
        from steerscope.monitor import completion_monitoring, pair_detection, token_projections, tokens_html

        spec, s = self.inputs.specs[0], self.settings
        given = self.inputs.given.get(spec.name)
        layer = lm.check_layer(given.vector.layer if given else self.layer if self.layer is not None else default_layer(lm.n_layers))
        vector = trait_vector(self.inputs, spec, lm, layer).directions[layer]
        pairs = pair_detection(lm, spec.train, spec.test, layer, vector, s.n_boot, s.seed)
        scorer = self.inputs.scorers.get(spec.name) or spec_scorer(spec, lm)
        completions = completion_monitoring(lm, spec.env_prompts("in_distribution"), layer, vector, s, scorer)
        texts = [{"text": t, "tokens": p.tokens, "values": p.values, "sinks": p.sinks, "mean": p.mean, "above_threshold": p.mean > pairs["threshold"]}
                 for t, p in zip(self.texts, token_projections(lm, list(self.texts), layer, vector) if self.texts else [])]
        report = {"model": lm.info(), "trait": spec.name, "trait_spec": spec.summary(), "layer": layer,
                  "vector": {"source": f"given in {given.file}" if given else "mean difference of the train pairs",
                             "norm": float(vector.norm())},
                  "pairs": pairs, "completions": completions, "texts": texts, "settings": asdict(s)}
        paths, markdown = self.paths(), monitor_markdown(report)
        _write_json(paths["monitor.json"], report, self.overwrite, indent=1)
        _write_text(paths["summary.md"], markdown, self.overwrite)
        page = tokens_html(completions["examples"] + [t | {"condition": "your text", "prompt": ""} for t in texts], pairs["threshold"],
                           f"{spec.name}: projection onto v at layer {layer} of {lm.name}")
        _write_text(paths["monitor.html"], page, self.overwrite)
        return Written(markdown, paths)

