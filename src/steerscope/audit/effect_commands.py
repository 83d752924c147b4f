"""``steerscope audit side-effects`` and ``steerscope audit robustness``: the two stages of the
one-command audit as commands of their own, for one trait (built-in or a user's) at a given strength."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.audit.commands import Written, _check_outputs, _write_json, _write_text, check_finite, trait_vector
from steerscope.audit.inputs import AuditInputs, check_specs
from steerscope.audit.profiles import Profile, default_layer
from steerscope.errors import SteerscopeError
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer, spec_scorer
from steerscope.side_effects import Readout
from steerscope.traitspec import TraitSpec


@dataclass(frozen=True)
class _EffectCommand:
    """One trait (and optionally a vector given for it) steered with ``alpha`` at ``layer`` (the given
    vector's layer, else ``layer``, else 40 % of the depth), at the sizes of ``profile``."""

    inputs: AuditInputs
    out_dir: Path
    profile: Profile
    alpha: float
    layer: int | None = None
    seed: int = 0
    overwrite: bool = False

    name = ""

    def paths(self) -> dict[str, Path]:
        return {n: self.out_dir / n for n in (f"{self.name}.json", "summary.md", f"{self.name}.png")}

    def prepare(self) -> None:
        specs = check_specs(self.inputs.specs)
        if len(specs) != 1:
            raise SteerscopeError(f"this audit takes one trait; {len(specs)} were given")
        check_finite(self.alpha, "--alpha", nonzero=True)
        _check_outputs(self.paths(), self.overwrite)

    @property
    def spec(self) -> TraitSpec:
        return self.inputs.specs[0]

    def scorer(self, spec: TraitSpec, lm: LoadedModel) -> Scorer | None:
        return self.inputs.scorers.get(spec.name) or spec_scorer(spec, lm)

    def steered(self, lm: LoadedModel) -> tuple[int, Any, float]:
        """The layer, the vector ``[d]`` and the mean residual norm at the layer."""
        given = self.inputs.given.get(self.spec.name)
        layer = lm.check_layer(given.vector.layer if given else self.layer if self.layer is not None else default_layer(lm.n_layers))
        vec = trait_vector(self.inputs, self.spec, lm, layer)
        return layer, vec.directions[layer], float({str(k): v for k, v in vec.metadata["h_norms"].items()}[str(layer)])

    def header(self, lm: LoadedModel, layer: int, vector: Any, h_norm: float) -> dict[str, Any]:
        given = self.inputs.given.get(self.spec.name)
        return {"model": lm.info(), "trait": self.spec.name, "trait_spec": self.spec.summary(), "layer": layer, "alpha": self.alpha,
                "profile": self.profile.name, "seed": self.seed,
                "vector": {"source": f"given in {given.file}" if given else "mean difference of the train pairs", "norm": float(vector.norm()),
                           "relative_dose": abs(self.alpha) * float(vector.norm()) / h_norm}}

    def write(self, report: dict[str, Any], markdown: str, plot) -> Written:
        paths = self.paths()
        _write_json(paths[f"{self.name}.json"], report, self.overwrite, indent=1)
        _write_text(paths["summary.md"], markdown, self.overwrite)
        plot(paths[f"{self.name}.png"])
        return Written(markdown, paths)


@dataclass(frozen=True)
class SideEffectsCommand(_EffectCommand):
    """The off-target matrix over every built-in trait and this one, fluency, drift, capability, the
    dose curve, and add / clamp / ablate at equal on-target effect."""

    name = "side_effects"

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.effect_stages import side_effect_settings
        from steerscope.audit.markdown import side_effects_markdown
        from steerscope.audit.plots import plot_dose_curve
        from steerscope.data.evalsets import capability_set, interleaved, neutral_set
        from steerscope.edits import edit_report
        from steerscope.side_effects import readout_specs, side_effects

        layer, vector, h_norm = self.steered(lm)
        s = side_effect_settings(self.profile, self.alpha, self.seed)
        readouts = [Readout(n, spec.test, self.scorer(spec, lm)) for n, spec in readout_specs({self.spec.name: self.spec}).items()]
        result = side_effects(lm, layer, vector, self.spec.name, readouts, neutral_set(), interleaved(capability_set(), s.n_capability), s,
                              h_norm=h_norm)
        target = next(r for r in readouts if r.trait == self.spec.name)
        result["edits"] = edit_report(lm, layer, vector, self.alpha, target, readouts, self.seed, compare=self.profile.se_edits)
        report = self.header(lm, layer, vector, h_norm) | {"side_effects": result}
        return self.write(report, side_effects_markdown(report), lambda path: plot_dose_curve(result, path, self.overwrite))


@dataclass(frozen=True)
class RobustnessCommand(_EffectCommand):
    """Supporting and opposing instructions, environments and paraphrases, the layer profile and the
    stability of the vector."""

    name = "robustness"

    def run(self, lm: LoadedModel) -> Written:
        from steerscope.audit.effect_stages import profiled_layers, robustness_settings
        from steerscope.audit.markdown import robustness_markdown
        from steerscope.audit.plots import plot_layer_profile
        from steerscope.robustness import PARTS, robustness_part

        layer, vector, h_norm = self.steered(lm)
        s, layers = robustness_settings(self.profile, self.alpha, self.seed), profiled_layers(self.profile, lm.n_layers, layer)
        scorer = self.scorer(self.spec, lm)
        out = {part: robustness_part(part, lm, self.spec, layer, vector, h_norm, layers, scorer, s) for part in PARTS}
        report = self.header(lm, layer, vector, h_norm) | {"robustness": out}
        return self.write(report, robustness_markdown(report), lambda path: plot_layer_profile(out["layers"], path, self.overwrite))
