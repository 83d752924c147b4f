"""The built-in stages of ``steerscope audit``, registered in the order they run for each trait.

1. ``layers``: layer selection by held-out separation (:mod:`steerscope.audit.calibrate`), unless the
   configuration fixes the layer (``layer``, e.g. in a sweep) or a given vector brings its own;
2. ``vector``: the mean-difference vector at the chosen layer (train pairs);
3. ``calibrate``: one cell per strength of the grid (α = 0 is the baseline), then the choice of α;
4. ``identifiability``: v against v + u (u ⊥ v) with controls (:mod:`steerscope.audit.identifiability`):
   the readouts, then one cell per chunk of class-size draws, then the report;
5. ``nullspace``: the logit-Jacobian spectrum at the layer and the gain of v, for δ at the last position
   and (on fewer prompts, it costs about 20× more) for δ at every position, as the audits steer
   (:mod:`steerscope.audit.nullspace`): one cell per chunk of prompts and the covariance, then the report;
6. ``recover``: ica, sparse, multienv (from the trait's per-environment pairs) and crosslayer recovery,
   each with its assumption tested on the data and its direction compared with the audited vector
   (:mod:`steerscope.recover.assumptions`); Jacobian Gram matrices (``grams/L…``)
   and layer maps (``maps/L…``) are cells shared by traits at the same layer;
7. ``reachability``: prompt inversion of natural and steered states (:mod:`steerscope.audit.reachability`):
   the threshold, one cell per prompt, per α of the sweep, the random control and the black-box probes,
   then Theorem 4.5 and the behaviour columns, then the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache, partial
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

def _identifiability_cells(settings: Mapping[str, Any]) -> int:
    """The readouts, one cell per range of class-size draws, and the report."""
    from steerscope.audit.identifiability import IdentifiabilitySettings, class_parts

    sizes = IdentifiabilitySettings(class_draws=settings["id_class_draws"], class_ratios=tuple(settings["id_class_ratios"]))
    return 2 + len(class_parts(sizes))


def _identifiability(a: Auditor, run: TraitRun) -> None:
    from steerscope.audit import identifiability as ident
    from steerscope.audit.readouts import DrawRange

    assert run.vector is not None  # set by the vector stage
    v, settings, key = run.vector, a.p.identifiability(a.seed), f"{run.trait}/identifiability"

    def readouts_cell():
        scorer = a.scorer(run.trait)
        vec = SteeringVector({run.layer: v}, {"h_norms": {str(run.layer): run.h_norm}, "method": run.method})
        payload = ident.identifiability_readouts(a.lm, a.specs[run.trait], run.layer, run.alpha, settings, scorer=scorer, vector=vec)
        return payload | {"scorer_accuracy": ident.scorer_accuracy(scorer) if scorer is not None else None}, None

    readouts = a.cell(f"{key}/readouts", "identifiability", readouts_cell, run.trait).payload

    def chunk_cell(part: DrawRange):
        return ident.identifiability_class_chunk(a.lm, a.specs[run.trait], run.layer, run.alpha, settings, v, readouts, part), None

    computes = {f"{key}/class/r={settings.class_ratios[p.k]:g}/{p.start}-{p.stop}": partial(chunk_cell, p)
                for p in ident.class_parts(settings)}
    chunks = [cell.payload for cell in a.batch("identifiability", computes, run.trait)]

    def report_cell():
        return ident.identifiability_report(settings, readouts, chunks) | {"scorer_accuracy": readouts["scorer_accuracy"]}, None

    a.cell(key, "identifiability", report_cell, run.trait)


register_stage(Stage(
    "identifiability",
    {"quick": {"id_draws": 3, "id_prompts": 12, "id_samples": 3, "id_tokens": 16, "id_pairs": 8, "id_class_draws": 12,
               "id_class_ratios": (1.0,)},
     "full": {"id_draws": 4, "id_prompts": 12, "id_samples": 3, "id_tokens": 24, "id_pairs": None, "id_class_draws": 200,
              "id_class_ratios": (0.25, 0.5, 1.0)}},
    _identifiability, _identifiability_cells, _single("identifiability", "identifiability"),
    plots=one_plot("effect_ratio", plots.plot_effect_ratio, lambda res: res["identifiability"]),
    section=report.identifiability_section, heading=("identifiability", "is it identifiable?"), independent=True))


# --- 5. null space -------------------------------------------------------------------------------

#: Prompts whose null spaces are compared by principal angles (the first ones; they share the first chunk).
ANGLE_PROMPTS = 8


def _nullspace_chunks(settings: Mapping[str, Any]) -> dict[str, tuple[int, int, bool]]:
    """The Jacobian cells of the null-space stage: key suffix → (first prompt, stop, δ at every position)."""
    from steerscope.audit.nullspace import PROMPT_CHUNK, prompt_chunks

    n_prompts = settings["ns_prompts"]
    return ({f"prompts={start}-{stop}": (start, stop, False) for start, stop in prompt_chunks(n_prompts, PROMPT_CHUNK, ANGLE_PROMPTS)}
            | {f"all_positions={start}-{stop}": (start, stop, True)
               for start, stop in prompt_chunks(min(settings["ns_all_positions"], n_prompts), PROMPT_CHUNK, ANGLE_PROMPTS)})


def _nullspace_covariance(a: Auditor, run: TraitRun, prompts: Sequence[str]) -> tuple[dict[str, Any], None]:
    from steerscope.audit.nullspace import covariance_spectra
    from steerscope.jacobian import TOLERANCES

    return covariance_spectra(a.lm, prompts, [run.layer], TOLERANCES)[run.layer], None


def _nullspace(a: Auditor, run: TraitRun) -> None:
    from steerscope.audit import nullspace as ns
    from steerscope.data.prompts import builtin_prompt_mix
    from steerscope.jacobian import TOLERANCES

    assert run.vector is not None  # set by the vector stage
    vector = run.vector.double().cpu()
    prompts = builtin_prompt_mix(a.p.ns_prompts)
    key, angle_prompts = f"{run.trait}/nullspace", min(ANGLE_PROMPTS, len(prompts))
    ranges = {f"{key}/{suffix}": r for suffix, r in _nullspace_chunks(a.config["settings"]).items()}
    computes = {k: partial(ns.gram_chunk, a.lm, prompts, run.layer, start, stop, ns.ChunkSettings(angle_prompts=angle_prompts, spread=spread))
                for k, (start, stop, spread) in ranges.items()} | {f"{key}/covariance": partial(_nullspace_covariance, a, run, prompts)}
    cells = dict(zip(computes, a.batch("nullspace", computes, run.trait)))

    def compute():
        chunks = [ns.cell_chunk(cells[k].payload, cells[k].blob) for k, (_, _, spread) in ranges.items() if not spread]
        spread_chunks = [ns.cell_chunk(cells[k].payload, cells[k].blob) for k, (_, _, spread) in ranges.items() if spread]
        result = ns.audit_header(a.lm, len(prompts), [run.layer], (-1,), TOLERANCES, angle_prompts, a.p.ns_all_positions)
        entry = ns.jacobian_entry(chunks, spread_chunks, TOLERANCES, vector)
        result["layers"][str(run.layer)] = entry | {"covariance": cells[f"{key}/covariance"].payload}
        return result, None

    a.cell(key, "nullspace", compute, run.trait)


register_stage(Stage("nullspace", {"quick": {"ns_prompts": 16, "ns_all_positions": 1}, "full": {"ns_prompts": 64, "ns_all_positions": 8}},
                     _nullspace, lambda settings: len(_nullspace_chunks(settings)) + 2,
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
    from steerscope.audit.reachability import ReachabilityAudit

    assert run.vector is not None  # set by the vector stage
    spec, given, t, vector = a.specs[run.trait], a.given.get(run.trait), run.trait, run.vector
    source = given.file if given else f"{'built-in ' if spec.builtin else ''}{spec.name} pairs (train split)"
    prompts = spec.env_prompts("in_distribution")[: a.p.reach_prompts]

    @cache
    def audit() -> ReachabilityAudit:  # built when a cell is computed (it builds the scorer)
        return ReachabilityAudit(a.lm, vector, run.layer, run.alpha, prompts, threshold_prompts(), trait=t, scorer=a.scorer(t),
                                 settings=a.p.reachability(a.seed), instructions=spec.instructions,
                                 vector_info={"source": source, "method": run.method}, probe_prompts=probe_pool(spec))

    key = f"{t}/reachability"
    threshold = a.cell(f"{key}/threshold", "reachability", lambda: (audit().threshold(), None), t).payload
    keys = {"prompts": [f"{key}/prompt={i}" for i in range(len(prompts))], "alpha_sweep": [f"{key}/alpha={x:g}" for x in a.p.reach_alphas]}
    first: dict[str, Any] = {k: partial(_pair, lambda i: audit().prompt(i, threshold), i) for i, k in enumerate(keys["prompts"])}
    # The sweep's entry at the audit's own α is read from the prompts' steered searches, after them.
    own = {k for x, k in zip(a.p.reach_alphas, keys["alpha_sweep"]) if x == run.alpha}
    first |= {k: partial(_pair, lambda x: audit().sweep(x, threshold), x) for x, k in zip(a.p.reach_alphas, keys["alpha_sweep"]) if k not in own}
    first[f"{key}/random_control"] = partial(_pair, lambda: audit().random_control(threshold))
    if a.p.reach_black_box:
        first[f"{key}/black_box_probes"] = partial(_pair, lambda: audit().black_box())
    done = {cell.key: cell.payload for cell in a.batch("reachability", first, t)}
    prompt_parts = [done[k] for k in keys["prompts"]]
    after = {f"{key}/adversarial": partial(_pair, lambda: audit().adversarial(prompt_parts[0], threshold)),
             f"{key}/behaviour": partial(_pair, lambda: audit().behaviour(prompt_parts))}
    after |= {k: partial(_pair, lambda: audit().sweep_of_prompts(prompt_parts)) for k in own}
    done |= {cell.key: cell.payload for cell in a.batch("reachability", after, t)}
    parts: dict[str, Any] = {name: [done[k] for k in ks] for name, ks in keys.items()}
    parts |= {name: done.get(f"{key}/{name}") for name in ("random_control", "black_box_probes", "adversarial", "behaviour")}
    a.cell(key, "reachability", lambda: (audit().report(threshold, parts), None), t)


def _pair(compute, *args) -> tuple[Any, None]:
    """``(compute(*args), None)``: a cell without a blob."""
    return compute(*args), None


def _reachability_cells(settings: Mapping[str, Any]) -> int:
    """Threshold, one per prompt and per α, the random control, black-box probes (when on), Theorem 4.5, behaviour and the report."""
    return settings["reach_prompts"] + len(settings["reach_alphas"]) + 5 + (settings["reach_black_box"] > 0)


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
    _reachability, _reachability_cells, _single("reachability", "reachability"),
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
