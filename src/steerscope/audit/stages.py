"""The built-in stages of ``steerscope audit``, registered in the order they run for each trait.

1. ``layers``: layer selection by held-out separation (:mod:`steerscope.audit.calibrate`), unless the
   configuration fixes the layer (``layer``, e.g. in a sweep) or a given vector brings its own;
2. ``vector``: the mean-difference vector at the chosen layer (train pairs);
3. ``calibrate``: one cell per strength of the grid (α = 0 is the baseline), then the choice of α;
4. ``identifiability``: v against v + u (u ⊥ v) with controls (:mod:`steerscope.audit.identifiability`);
5. ``nullspace``: the logit-Jacobian spectrum at the layer and the gain of v, for δ at the last position
   and (on fewer prompts, it costs about 20× more) for δ at every position, as the audits steer
   (:mod:`steerscope.audit.nullspace`);
6. ``recover``: ica, sparse, multienv (from the trait's per-environment pairs) and crosslayer recovery,
   each with its assumption tested on the data and its direction compared with the audited vector
   (:mod:`steerscope.recover.assumptions`); Jacobian Gram matrices (``grams/L…``)
   and layer maps (``maps/L…``) are cells shared by traits at the same layer;
7. ``reachability``: prompt inversion of natural and steered states (:mod:`steerscope.audit.reachability`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from steerscope import report
from steerscope.audit import answers, plots
from steerscope.audit.calibrate import candidate_layers, choose_strength, layer_separation, strength_point
from steerscope.audit.pipeline import Auditor, StoredRun, bytes_to_arrays, stored_direction, tensors_to_bytes
from steerscope.audit.profiles import crosslayer_targets, threshold_prompts
from steerscope.audit.registry import Answer, Stage, TraitRun, register_stage
from steerscope.data.traits import ENVIRONMENTS, MIX_TRAITS, builtin_prompts
from steerscope.errors import SteerscopeError
from steerscope.jsonable import jsonable
from steerscope.traitspec import TraitSpec
from steerscope.vectors.file import SteeringVector

RECOVERY_METHODS = ("ica", "sparse", "multienv", "crosslayer")


def _one_cell(_settings: Mapping[str, Any]) -> int:
    return 1


def _single(key: str, suffix: str):
    """``assemble`` of a stage whose result is the payload of the trait's cell ``{trait}/{suffix}``."""
    return lambda stored, trait: {key: stored.payload(f"{trait}/{suffix}")}


def one_plot(name: str, draw, select=lambda res: res):
    """``plots`` of a stage that draws one PNG ``{trait}_{name}.png`` from (part of) the trait's results."""
    def write(trait: str, res: Mapping[str, Any], folder: Path) -> dict[str, Path]:
        path = folder / f"{trait}_{name}.png"
        draw(select(res), path, overwrite=True)
        return {name: path}
    return write


# --- 1. layer selection --------------------------------------------------------------------------

def _select_layer(a: Auditor, run: TraitRun) -> None:
    spec, given, fixed = a.specs[run.trait], a.given.get(run.trait), a.config.get("layer")
    if given is not None:
        def compute():
            rows = layer_separation(a.lm, spec.train, spec.test, [given.vector.layer])
            return rows | {"chosen": given.vector.layer, "rule": f"the layer of the vector given in {given.file} (no selection); "
                                                                   "the row is the held-out separation of the pairs' own direction there"}, None
    elif fixed is not None:
        def compute():
            rows = layer_separation(a.lm, spec.train, spec.test, [fixed])
            return rows | {"chosen": fixed, "rule": f"layer {fixed}, fixed by the run's configuration (no selection); "
                                                    "the row is the held-out separation there"}, None
    else:
        layers = candidate_layers(a.lm.n_layers, a.p.candidate_layers)

        def compute():
            return layer_separation(a.lm, spec.train, spec.test, layers), None
    cell = a.cell(f"{run.trait}/layers", "layers", compute, run.trait)
    run.layer = int(cell.payload["chosen"])


register_stage(Stage("layers", {"quick": {"candidate_layers": 4}, "full": {"candidate_layers": None}}, _select_layer, _one_cell,
                     _single("layer_selection", "layers"), section=report.layer_selection_section, heading=("steering", "does it steer?")))


# --- 2. the vector -------------------------------------------------------------------------------

def _vector(a: Auditor, run: TraitRun) -> None:
    def compute():
        vec = _given_vector(a, run) if run.trait in a.given else _extracted_vector(a, run)
        return {"layer": run.layer, "norm": vec.norm(run.layer), "metadata": vec.metadata}, tensors_to_bytes({"direction": vec.directions[run.layer]})

    cell = a.cell(f"{run.trait}/vector", "vector", compute, run.trait)
    run.vector = stored_direction(cell)
    meta = cell.payload["metadata"]
    run.h_norm = float({str(k): v for k, v in meta["h_norms"].items()}[str(run.layer)])
    run.method = str(meta["method"])


def _extracted_vector(a: Auditor, run: TraitRun) -> SteeringVector:
    from steerscope.extract import extract

    return extract(a.lm, list(a.specs[run.trait].train), [run.layer], method="mean_diff", trait=run.trait)


def _given_vector(a: Auditor, run: TraitRun) -> SteeringVector:
    """The vector given for the trait, with steerscope metadata."""
    from steerscope.audit.inputs import given_steering_vector

    return given_steering_vector(a.lm, a.specs[run.trait], a.given[run.trait])


register_stage(Stage("vector", {"quick": {}, "full": {}}, _vector, _one_cell, _single("vector", "vector")))


# --- 3. strength calibration ---------------------------------------------------------------------

def calibration_prompts(spec: TraitSpec, n: int) -> list[str]:
    """The last ``n`` in-distribution prompts of ``spec``: disjoint from the audit's (the first ones)."""
    pool = spec.env_prompts("in_distribution")
    return pool[len(pool) - n:]


def strength_summary(points: Sequence[Mapping[str, Any]], config: Mapping[str, Any], prompts: Sequence[str]) -> dict[str, Any]:
    """:func:`choose_strength` over the calibration points, with the prompts and example texts."""
    choice = choose_strength(points, config["target_g"], config["max_ppl_ratio"], seed=int(config["seed"]))
    settings = config["settings"]
    return jsonable(choice | {"prompts": list(prompts), "samples": settings["calib_samples"], "max_new_tokens": settings["calib_tokens"],
                              "examples": {f"{p['alpha']:g}": p["texts"] for p in points}})


def _strength_cell(a: Auditor, run: TraitRun, prompts: Sequence[str], alpha: float) -> tuple[dict[str, Any], None]:
    assert run.vector is not None  # set by the vector stage
    return strength_point(a.lm, run.layer, run.vector, alpha, prompts, a.scorer(run.trait), a.p.calib_samples, a.p.calib_tokens,
                          a.seed, pairs=a.specs[run.trait].test), None


def _calibrate(a: Auditor, run: TraitRun) -> None:
    prompts = calibration_prompts(a.specs[run.trait], a.p.calib_prompts)
    computes = {f"{run.trait}/calibrate/alpha={alpha:g}": partial(_strength_cell, a, run, prompts, alpha) for alpha in (0.0, *a.p.alphas)}
    points = [cell.payload for cell in a.batch("calibrate", computes, run.trait)]
    run.alpha = float(strength_summary(points, a.config, prompts)["alpha"])


def _assemble_strength(stored: StoredRun, trait: str) -> dict[str, Any]:
    settings = stored.config["settings"]
    points = [stored.payload(f"{trait}/calibrate/alpha={x:g}") for x in (0.0, *settings["alphas"])]
    return {"strength": strength_summary(points, stored.config, calibration_prompts(stored.spec(trait), settings["calib_prompts"]))}


register_stage(Stage(
    "calibrate",
    {"quick": {"alphas": (1.0, 2.0, 4.0, 8.0), "calib_prompts": 8, "calib_samples": 2, "calib_tokens": 16},
     "full": {"alphas": (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0), "calib_prompts": 12, "calib_samples": 3, "calib_tokens": 24}},
    _calibrate, lambda settings: 1 + len(settings["alphas"]), _assemble_strength,
    answers=(Answer("steers", "Does the vector steer?", answers.steers),),
    plots=one_plot("calibration", plots.plot_calibration), section=report.strength_section))


# --- 4. identifiability --------------------------------------------------------------------------

def _identifiability(a: Auditor, run: TraitRun) -> None:
    from steerscope.audit.identifiability import run_identifiability, scorer_accuracy

    def compute():
        scorer = a.scorer(run.trait)
        assert run.vector is not None  # set by the vector stage
        vec = SteeringVector({run.layer: run.vector}, {"h_norms": {str(run.layer): run.h_norm}, "method": run.method})
        report_ = run_identifiability(a.lm, a.specs[run.trait], run.layer, run.alpha, a.p.identifiability(a.seed), scorer=scorer,
                                      vector=vec)
        return report_ | {"scorer_accuracy": scorer_accuracy(scorer) if scorer is not None else None}, None

    a.cell(f"{run.trait}/identifiability", "identifiability", compute, run.trait)


register_stage(Stage(
    "identifiability",
    {"quick": {"id_draws": 3, "id_prompts": 12, "id_samples": 3, "id_tokens": 16, "id_pairs": 8, "id_class_draws": 12,
               "id_class_ratios": (1.0,)},
     "full": {"id_draws": 4, "id_prompts": 12, "id_samples": 3, "id_tokens": 24, "id_pairs": None, "id_class_draws": 200,
              "id_class_ratios": (0.25, 0.5, 1.0)}},
    _identifiability, _one_cell, _single("identifiability", "identifiability"),
    plots=one_plot("effect_ratio", plots.plot_effect_ratio, lambda res: res["identifiability"]),
    section=report.identifiability_section, heading=("identifiability", "is it identifiable?"), independent=True))


# --- 5. null space -------------------------------------------------------------------------------

def _nullspace(a: Auditor, run: TraitRun) -> None:
    from steerscope.audit.nullspace import nullspace_audit
    from steerscope.data.prompts import builtin_prompt_mix

    def compute():
        assert run.vector is not None  # set by the vector stage
        prompts = builtin_prompt_mix(a.p.ns_prompts)
        result = nullspace_audit(a.lm, prompts, [run.layer], vectors={run.layer: run.vector}, angle_prompts=min(8, len(prompts)),
                                 all_positions=a.p.ns_all_positions)
        result["layers"][str(run.layer)].pop("seconds", None)  # wall time belongs to the store, not to the results
        return result, None

    a.cell(f"{run.trait}/nullspace", "nullspace", compute, run.trait)


register_stage(Stage("nullspace", {"quick": {"ns_prompts": 16, "ns_all_positions": 1}, "full": {"ns_prompts": 64, "ns_all_positions": 8}},
                     _nullspace, _one_cell,
                     _single("nullspace", "nullspace"), plots=one_plot("spectra", plots.plot_spectra, lambda res: res["nullspace"]),
                     section=report.nullspace_section, independent=True))


# --- 6. recovery ---------------------------------------------------------------------------------

def _grouped(arrays: Mapping[str, np.ndarray], groups: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """``{"group/i": a}`` → ``{group: [a_0, a_1, …]}`` in the order of ``groups`` (safetensors
    does not keep the order of its keys)."""
    out: dict[str, list[tuple[int, np.ndarray]]] = {g: [] for g in groups}
    for key, value in arrays.items():
        group, index = key.rsplit("/", 1)
        out[group].append((int(index), value))
    return {g: [x for _, x in sorted(items, key=lambda t: t[0])] for g, items in out.items()}


def _grams(a: Auditor, layer: int) -> dict[str, list[np.ndarray]]:
    """Per-environment Jacobian Gram matrices at ``layer`` (a cell shared by every trait at that layer)."""
    from steerscope.recover.trait import prompt_grams

    def compute():
        arrays = {}
        for env in ENVIRONMENTS:
            prompts = [builtin_prompts(t, env)[i] for i in range(a.p.rec_env_prompts) for t in MIX_TRAITS][: a.p.rec_env_prompts]
            for i, g in enumerate(prompt_grams(a.lm, prompts, layer)):
                arrays[f"{env}/{i}"] = g
        return {"layer": layer, "environments": list(ENVIRONMENTS), "prompts_per_env": a.p.rec_env_prompts}, tensors_to_bytes(arrays)

    cell = a.cell(f"grams/L{layer}", "recover", compute)
    assert cell.blob is not None
    return _grouped(bytes_to_arrays(cell.blob), cell.payload["environments"])


def _maps(a: Auditor, layer: int) -> dict[int, list[np.ndarray]]:
    """Layer maps from ``layer`` to its cross-layer target (a shared cell); empty at the last layer."""
    from steerscope.recover.trait import layer_maps

    targets = crosslayer_targets(layer, a.lm.n_layers)
    if not targets:
        return {}
    target = targets[0]

    def compute():
        prompts = [builtin_prompts(t, "in_distribution")[0] for t in MIX_TRAITS][: a.p.rec_map_prompts]
        maps = layer_maps(a.lm, prompts, layer, [target])
        return {"layer": layer, "target": target}, tensors_to_bytes({f"{target}/{i}": m for i, m in enumerate(maps[target])})

    cell = a.cell(f"maps/L{layer}", "recover", compute)
    assert cell.blob is not None
    return {int(k): v for k, v in _grouped(bytes_to_arrays(cell.blob), [str(target)]).items()}


def _recover_row(a: Auditor, run: TraitRun, method: str, grams: Mapping, maps: Mapping) -> tuple[dict[str, Any], None]:
    from steerscope.recover.trait import recover_trait

    if method == "crosslayer" and not maps:
        return {"method": method, "identifiable": None, "class_dim": None, "stability": None, "details": {},
                "reason": "no later layer to constrain the direction (the chosen layer is the last one)"}, None
    kwargs: dict[str, Any] = {"observe": "jacobian", "k": 8} if method == "sparse" else {}
    spec, given = a.specs[run.trait], a.given.get(run.trait)
    audited = f"the vector given in {given.file}" if given else "the audited vector (the mean difference of the train pairs)"
    assert run.vector is not None  # set by the vector stage
    try:
        r = recover_trait(a.lm, method, list(spec.train), run.layer, grams=grams, maps=maps, n_boot=a.p.rec_boot, seed=a.seed,
                          env_pairs=spec.environment_pairs, audited=run.vector.double().numpy(), audited_name=audited, **kwargs)
    except SteerscopeError as exc:  # the method cannot be fitted on this trait's data: a row that says why
        return {"method": method, "identifiable": None, "class_dim": None, "stability": None, "details": {}, "reason": str(exc),
                "identifies": None, "why": f"not run: {exc}"}, None
    row = r.to_dict()
    row.pop("direction")
    return row, None


def _recovery(a: Auditor, run: TraitRun) -> None:
    grams, maps = _grams(a, run.layer), _maps(a, run.layer)
    a.batch("recover", {f"{run.trait}/recover/{m}": partial(_recover_row, a, run, m, grams, maps) for m in RECOVERY_METHODS}, run.trait)


def _assemble_recovery(stored: StoredRun, trait: str) -> dict[str, Any]:
    return {"recovery": [stored.payload(f"{trait}/recover/{m}") | {"trait": trait} for m in RECOVERY_METHODS]}


register_stage(Stage(
    "recover",
    {"quick": {"rec_env_prompts": 2, "rec_map_prompts": 1, "rec_boot": 10}, "full": {"rec_env_prompts": 6, "rec_map_prompts": 4, "rec_boot": 20}},
    _recovery, lambda settings: len(RECOVERY_METHODS), _assemble_recovery,
    answers=(Answer("identifiable", "Is it identifiable?", answers.identifiable),),
    plots=one_plot("stability", plots.plot_stability, lambda res: res["recovery"]), section=report.recovery_section, independent=True))


# --- 7. reachability -----------------------------------------------------------------------------

def _reachability(a: Auditor, run: TraitRun) -> None:
    from steerscope.audit.blackbox import probe_pool
    from steerscope.audit.reachability import run_reachability

    def compute():
        assert run.vector is not None  # set by the vector stage
        spec = a.specs[run.trait]
        pool = spec.env_prompts("in_distribution")
        given = a.given.get(run.trait)
        source = given.file if given else f"{'built-in ' if spec.builtin else ''}{spec.name} pairs (train split)"
        return run_reachability(a.lm, run.vector, run.layer, run.alpha, pool[: a.p.reach_prompts], threshold_prompts(), trait=run.trait,
                                scorer=a.scorer(run.trait), settings=a.p.reachability(a.seed), instructions=spec.instructions,
                                vector_info={"source": source, "method": run.method}, probe_prompts=probe_pool(spec)), None

    a.cell(f"{run.trait}/reachability", "reachability", compute, run.trait)


def _reachability_plots(trait: str, res: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    return (one_plot("positions", plots.plot_reachability_positions, lambda r: r["reachability"])(trait, res, folder)
            | one_plot("alpha_sweep", plots.plot_reachability_sweep, lambda r: r["reachability"])(trait, res, folder))


register_stage(Stage(
    "reachability",
    {"quick": {"reach_prompts": 3, "reach_positions": 6, "reach_alphas": (1.0, 4.0), "reach_sweep_prompts": 1, "reach_tokens": 12,
               "reach_budget": 256, "reach_max_candidates": 1024, "reach_relax_steps": 100, "reach_span_iterations": 8,
               "reach_span_batch": 32, "reach_black_box": 0},
     "full": {"reach_prompts": 8, "reach_positions": 12, "reach_alphas": (0.5, 1.0, 2.0, 4.0, 8.0), "reach_sweep_prompts": 3,
              "reach_tokens": 24, "reach_budget": 512, "reach_max_candidates": None, "reach_relax_steps": 300,
              "reach_span_iterations": 32, "reach_span_batch": 64, "reach_black_box": 20}},
    _reachability, _one_cell, _single("reachability", "reachability"),
    answers=(Answer("reachable", "Is the steered state reachable by a prompt?", answers.reachable),),
    plots=_reachability_plots, section=report.reachability_section,
    heading=("reachability", "is the steered state reachable?"), independent=True))


# --- 8. monitoring -------------------------------------------------------------------------------

def _monitor(a: Auditor, run: TraitRun) -> None:
    from steerscope.monitor import MonitorSettings, completion_monitoring, pair_detection

    def compute():
        assert run.vector is not None  # set by the vector stage
        spec = a.specs[run.trait]
        settings = MonitorSettings(alpha=run.alpha, n_prompts=a.p.mon_prompts, samples=a.p.mon_samples, max_new_tokens=a.p.mon_tokens,
                                   seed=a.seed, examples=3)
        pairs = pair_detection(a.lm, spec.train, spec.test, run.layer, run.vector, settings.n_boot, a.seed)
        completions = completion_monitoring(a.lm, spec.env_prompts("in_distribution"), run.layer, run.vector, settings, a.scorer(run.trait))
        return {"pairs": pairs, "completions": completions}, None

    a.cell(f"{run.trait}/monitor", "monitor", compute, run.trait)


register_stage(Stage("monitor", {"quick": {"mon_prompts": 6, "mon_samples": 1, "mon_tokens": 16},
                                 "full": {"mon_prompts": 12, "mon_samples": 2, "mon_tokens": 24}},
                     _monitor, _one_cell, _single("monitoring", "monitor"), section=report.monitoring_section,
                     heading=("monitoring", "can the vector read the trait?"), independent=True))
