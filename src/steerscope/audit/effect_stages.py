"""The stages of ``steerscope audit`` that ask what else the vector does and whether it holds up,
registered after the built-in stages of :mod:`steerscope.audit.stages`.

9. ``side_effects``: the off-target matrix over every built-in trait and every audited trait,
   fluency and drift on neutral prompts, the capability check and the dose curve
   (:mod:`steerscope.side_effects`), then add / clamp / ablate compared at equal on-target effect
   (:mod:`steerscope.edits`);
10. ``robustness``: supporting and opposing instructions, environments and paraphrases, the layer
    profile and the stability of the vector (:mod:`steerscope.robustness`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from steerscope.audit import answers, effects_report, plots
from steerscope.audit.calibrate import candidate_layers
from steerscope.audit.pipeline import Auditor, StoredRun
from steerscope.audit.profiles import Profile
from steerscope.audit.registry import Answer, Stage, TraitRun, register_stage
from steerscope.audit.stages import one_plot
from steerscope.robustness import PARTS, RobustnessSettings
from steerscope.side_effects import Readout, SideEffectSettings, readout_specs


def readouts(a: Auditor) -> list[Readout]:
    """Every built-in trait and every audited trait as an off-target readout (an audited trait
    replaces a built-in one of the same name): held-out pairs and scorer."""
    return [Readout(name, spec.test, a.readout_scorer(name)) for name, spec in readout_specs(a.specs).items()]


# --- 9. side effects -----------------------------------------------------------------------------

def side_effect_settings(p: Profile, alpha: float, seed: int) -> SideEffectSettings:
    """The side-effect settings of profile ``p`` at strength ``alpha``."""
    return SideEffectSettings(alpha=alpha, doses=tuple(p.se_doses), n_prompts=p.se_prompts, samples=p.se_samples,
                              max_new_tokens=p.se_tokens, n_capability=p.se_capability, n_pairs=p.se_pairs, seed=seed)


def _side_effects(a: Auditor, run: TraitRun) -> None:
    from steerscope.data.evalsets import capability_set, interleaved, neutral_set
    from steerscope.edits import edit_report
    from steerscope.side_effects import side_effects

    assert run.vector is not None  # set by the vector stage
    vector = run.vector

    def effects():
        s = side_effect_settings(a.p, run.alpha, a.seed)
        return side_effects(a.lm, run.layer, vector, run.trait, readouts(a), neutral_set(), interleaved(capability_set(), s.n_capability), s,
                            h_norm=run.h_norm), None

    def edits():
        everything = readouts(a)
        target = next(r for r in everything if r.trait == run.trait)
        return edit_report(a.lm, run.layer, vector, run.alpha, target, everything, a.seed, compare=a.p.se_edits), None

    a.batch("side_effects", {f"{run.trait}/side_effects": effects, f"{run.trait}/edits": edits}, run.trait)


def _assemble_side_effects(stored: StoredRun, trait: str) -> dict[str, Any]:
    return {"side_effects": stored.payload(f"{trait}/side_effects") | {"edits": stored.payload(f"{trait}/edits")}}


register_stage(Stage(
    "side_effects",
    {"quick": {"se_doses": (2.0,), "se_prompts": 6, "se_samples": 1, "se_tokens": 16, "se_capability": 24, "se_pairs": 8,
               "se_edits": False},
     "full": {"se_doses": (0.25, 0.5, 2.0, 4.0), "se_prompts": 16, "se_samples": 2, "se_tokens": 24, "se_capability": None,
              "se_pairs": None, "se_edits": True}},
    _side_effects, lambda settings: 2, _assemble_side_effects,
    answers=(Answer("side_effects", "What else does it change?", answers.side_effects),),
    plots=one_plot("dose", plots.plot_dose_curve, lambda res: res["side_effects"]), section=effects_report.side_effects_section,
    heading=("side-effects", "what else does it change?"), independent=True))


# --- 10. robustness ------------------------------------------------------------------------------

def robustness_settings(p: Profile, alpha: float, seed: int) -> RobustnessSettings:
    """The robustness settings of profile ``p`` at strength ``alpha``."""
    return RobustnessSettings(alpha=alpha, n_prompts=p.rob_prompts, samples=p.rob_samples, max_new_tokens=p.rob_tokens,
                              stability_boot=p.rob_boot, halves=p.rob_halves, curve_sizes=tuple(p.rob_curve), curve_draws=p.rob_draws,
                              n_pairs=p.rob_pairs, seed=seed)


def profiled_layers(p: Profile, n_layers: int, layer: int) -> list[int]:
    """The layers of the layer profile: every layer (``rob_layers = "all"``) or the candidate layers of the
    layer selection, with the audited ``layer`` among them."""
    if p.rob_layers == "all":
        return list(range(n_layers))
    return sorted({*candidate_layers(n_layers, p.candidate_layers), layer})


def _robustness_part(a: Auditor, run: TraitRun, part: str) -> tuple[dict[str, Any], None]:
    from steerscope.robustness import robustness_part

    assert run.vector is not None  # set by the vector stage
    return robustness_part(part, a.lm, a.specs[run.trait], run.layer, run.vector, run.h_norm, profiled_layers(a.p, a.lm.n_layers, run.layer),
                           a.scorer(run.trait), robustness_settings(a.p, run.alpha, a.seed)), None


def _robustness(a: Auditor, run: TraitRun) -> None:
    a.batch("robustness", {f"{run.trait}/robustness/{part}": partial(_robustness_part, a, run, part) for part in PARTS}, run.trait)


def _assemble_robustness(stored: StoredRun, trait: str) -> dict[str, Any]:
    return {"robustness": {part: stored.payload(f"{trait}/robustness/{part}") for part in PARTS}}


register_stage(Stage(
    "robustness",
    {"quick": {"rob_prompts": 6, "rob_samples": 1, "rob_tokens": 16, "rob_layers": "candidates", "rob_boot": 20, "rob_halves": 5,
               "rob_curve": (8, 24), "rob_draws": 2, "rob_pairs": 8},
     "full": {"rob_prompts": 12, "rob_samples": 2, "rob_tokens": 24, "rob_layers": "all", "rob_boot": 100, "rob_halves": 20,
              "rob_curve": (4, 8, 16, 32), "rob_draws": 5, "rob_pairs": None}},
    _robustness, lambda settings: len(PARTS), _assemble_robustness,
    plots=one_plot("layer_profile", plots.plot_layer_profile, lambda r: r["robustness"]["layers"]), section=effects_report.robustness_section, heading=("robustness", "does it hold up?"),
    independent=True))
