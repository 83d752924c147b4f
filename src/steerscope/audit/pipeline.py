"""The whole audit of a trait, from contrastive pairs to the three answers, as resumable cells.

Stages per trait, each a cell (or several) of the run store (:mod:`steerscope.runstore`):

1. ``layers``: layer selection by held-out separation (:mod:`steerscope.audit.calibrate`);
2. ``vector``: the mean-difference vector at the chosen layer (train pairs);
3. ``calibrate/alpha=…``: one cell per strength of the grid (α = 0 is the baseline);
4. ``identifiability``: v against v + u (u ⊥ v) with controls (:mod:`steerscope.audit.identifiability`);
5. ``nullspace``: the logit-Jacobian spectrum at the layer and the gain of v (:mod:`steerscope.audit.nullspace`);
6. ``recover/<method>``: ica, sparse, multienv and crosslayer recovery; Jacobian Gram matrices
   (``grams/L…``) and layer maps (``maps/L…``) are cells shared by traits at the same layer;
7. ``reachability``: prompt inversion of natural and steered states (:mod:`steerscope.audit.reachability`).

Every cell is a pure function of the configuration and of earlier cells as stored, so a run that
was killed and resumed gives the same results as one that was not. Wall times live in the store,
never in ``results.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from steerscope.audit.calibrate import candidate_layers, choose_strength, layer_separation, strength_point
from steerscope.audit.identifiability import audit_vectors, jsonable, run_identifiability, scorer_accuracy
from steerscope.audit.nullspace import builtin_prompt_mix, nullspace_audit
from steerscope.audit.reachability import AuditSettings, run_reachability
from steerscope.data.traits import ENVIRONMENTS, TRAITS, builtin_pairs, builtin_prompts
from steerscope.errors import SteerscopeError
from steerscope.invert import SearchConfig
from steerscope.models.loading import LoadedModel
from steerscope.runstore import Cell, RunStore, RunStoreError

RECOVERY_METHODS = ("ica", "sparse", "multienv", "crosslayer")


@dataclass(frozen=True)
class Profile:
    """Sizes of every stage. ``quick`` is the ≤ 10-minute CPU demo; ``full`` the paper-scale run."""

    name: str
    candidate_layers: int | None
    alphas: tuple[float, ...]
    calib_prompts: int
    calib_samples: int
    calib_tokens: int
    id_draws: int
    id_prompts: int
    id_samples: int
    id_tokens: int
    ns_prompts: int
    rec_env_prompts: int
    rec_map_prompts: int
    rec_boot: int
    reach_prompts: int
    reach_positions: int
    reach_alphas: tuple[float, ...]
    reach_sweep_prompts: int
    reach_tokens: int
    reach_budget: int


PROFILES = {
    "quick": Profile("quick", candidate_layers=4, alphas=(1.0, 2.0, 4.0, 8.0), calib_prompts=8, calib_samples=2, calib_tokens=16,
                     id_draws=3, id_prompts=12, id_samples=3, id_tokens=16, ns_prompts=16, rec_env_prompts=2, rec_map_prompts=1,
                     rec_boot=10, reach_prompts=3, reach_positions=6, reach_alphas=(1.0, 4.0), reach_sweep_prompts=1, reach_tokens=12,
                     reach_budget=128),
    "full": Profile("full", candidate_layers=None, alphas=(0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0), calib_prompts=12, calib_samples=3,
                    calib_tokens=24, id_draws=4, id_prompts=12, id_samples=3, id_tokens=24, ns_prompts=64, rec_env_prompts=6,
                    rec_map_prompts=4, rec_boot=20, reach_prompts=8, reach_positions=12, reach_alphas=(0.5, 1.0, 2.0, 4.0, 8.0),
                    reach_sweep_prompts=3, reach_tokens=24, reach_budget=128),
}


def audit_config(model: str, traits: Sequence[str], profile: str, seed: int = 0, target_g: float = 0.8,
                 max_ppl_ratio: float = 2.0, dtype: str = "float32") -> dict[str, Any]:
    """The canonical configuration of a run (what must match for a resume)."""
    if profile not in PROFILES:
        raise SteerscopeError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    for trait in traits:
        if trait not in TRAITS:
            raise SteerscopeError(f"unknown trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    if not traits:
        raise SteerscopeError("the audit needs at least one trait")
    if not target_g > 0 or not max_ppl_ratio >= 1:
        raise SteerscopeError(f"need --target-effect > 0 and --max-ppl-ratio >= 1, got {target_g} and {max_ppl_ratio}")
    config = {"model": model, "traits": list(traits), "profile": profile, "seed": seed, "target_g": target_g,
              "max_ppl_ratio": max_ppl_ratio, "dtype": dtype, "settings": asdict(PROFILES[profile])}
    return json.loads(json.dumps(config))  # the form it takes in the store (tuples become lists), so resumes compare equal


def _tensors_to_bytes(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()})


def _bytes_to_arrays(blob: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(blob)


def stored_direction(cell: Cell) -> torch.Tensor:
    """The ``[d]`` float32 direction held by a ``…/vector`` cell."""
    return torch.from_numpy(_bytes_to_arrays(cell.blob)["direction"].copy())


def _grouped(arrays: Mapping[str, np.ndarray], groups: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """``{"group/i": a}`` → ``{group: [a_0, a_1, …]}`` in the order of ``groups`` (safetensors
    does not keep the order of its keys)."""
    out: dict[str, list[tuple[int, np.ndarray]]] = {g: [] for g in groups}
    for key, value in arrays.items():
        group, index = key.rsplit("/", 1)
        out[group].append((int(index), value))
    return {g: [a for _, a in sorted(items, key=lambda t: t[0])] for g, items in out.items()}


def plan_cells(config: Mapping[str, Any]) -> int:
    """Number of trait cells a run will have (shared gram/map cells not counted); for the progress bar."""
    p = config["settings"]
    per_trait = 2 + len(p["alphas"]) + 1 + 1 + 1 + len(RECOVERY_METHODS) + 1
    return per_trait * len(config["traits"])


class Auditor:
    """Runs the stages of :mod:`steerscope.audit.pipeline` for one model against one run store."""

    def __init__(self, lm: LoadedModel, store: RunStore, config: Mapping[str, Any],
                 scorers: Mapping[str, Callable[[Sequence[str]], np.ndarray]] | None = None,
                 on_cell: Callable[[str, bool], None] | None = None):
        self.lm, self.store, self.config = lm, store, config
        self.p = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["settings"].items()})
        self.seed = int(config["seed"])
        self._scorers = dict(scorers or {})
        self._on_cell = on_cell or (lambda key, cached: None)

    def scorer(self, trait: str):
        if trait not in self._scorers:
            from steerscope.score.base import get_scorer

            self._scorers[trait] = get_scorer(trait)
        return self._scorers[trait]

    def cell(self, key: str, stage: str, compute: Callable[[], tuple[Any, bytes | None]], trait: str | None = None) -> Cell:
        cached = self.store.get(key) is not None
        result = self.store.cached(key, stage, lambda: _jsonable_pair(compute()), trait)
        self._on_cell(key, cached)
        return result

    # --- stages ----------------------------------------------------------------------------------

    def select_layer(self, trait: str) -> int:
        layers = candidate_layers(self.lm.n_layers, self.p.candidate_layers)
        cell = self.cell(f"{trait}/layers", "layers", lambda: (layer_separation(
            self.lm, builtin_pairs(trait, "train"), builtin_pairs(trait, "test"), layers), None), trait)
        return int(cell.payload["chosen"])

    def vector(self, trait: str, layer: int) -> torch.Tensor:
        from steerscope.extract import extract

        def compute():
            vec = extract(self.lm, builtin_pairs(trait, "train"), [layer], method="mean_diff", trait=trait)
            return {"layer": layer, "norm": vec.norm(layer), "metadata": vec.metadata}, _tensors_to_bytes({"direction": vec.directions[layer]})

        return stored_direction(self.cell(f"{trait}/vector", "vector", compute, trait))

    def calibrate(self, trait: str, layer: int, v: torch.Tensor) -> dict[str, Any]:
        prompts = calibration_prompts(trait, self.p.calib_prompts)
        points = []
        for alpha in (0.0, *self.p.alphas):
            cell = self.cell(f"{trait}/calibrate/alpha={alpha:g}", "calibrate", lambda a=alpha: (strength_point(
                self.lm, layer, v, a, prompts, self.scorer(trait), self.p.calib_samples, self.p.calib_tokens, self.seed), None), trait)
            points.append(cell.payload)
        return strength_summary(points, self.config, prompts)

    def identifiability(self, trait: str, layer: int, alpha: float) -> dict[str, Any]:
        def compute():
            return run_identifiability(self.lm, trait, layer, alpha, n_draws=self.p.id_draws, n_prompts=self.p.id_prompts,
                                       samples_per_prompt=self.p.id_samples, max_new_tokens=self.p.id_tokens, seed=self.seed,
                                       scorer=self.scorer(trait), vectors=audit_vectors(self.lm, trait, layer)) | {
                "scorer_accuracy": scorer_accuracy(self.scorer(trait))}, None

        return self.cell(f"{trait}/identifiability", "identifiability", compute, trait).payload

    def nullspace(self, trait: str, layer: int, v: torch.Tensor) -> dict[str, Any]:
        def compute():
            prompts = builtin_prompt_mix(self.p.ns_prompts)
            result = nullspace_audit(self.lm, prompts, [layer], vectors={layer: v}, angle_prompts=min(8, len(prompts)))
            result["layers"][str(layer)].pop("seconds", None)  # wall time belongs to the store, not to the results
            return result, None

        return self.cell(f"{trait}/nullspace", "nullspace", compute, trait).payload

    def _grams(self, layer: int) -> dict[str, list[np.ndarray]]:
        from steerscope.recover.trait import prompt_grams

        def compute():
            arrays = {}
            for env in ENVIRONMENTS:
                prompts = [builtin_prompts(t, env)[i] for i in range(self.p.rec_env_prompts) for t in TRAITS][: self.p.rec_env_prompts]
                for i, g in enumerate(prompt_grams(self.lm, prompts, layer)):
                    arrays[f"{env}/{i}"] = g
            return {"layer": layer, "environments": list(ENVIRONMENTS), "prompts_per_env": self.p.rec_env_prompts}, _tensors_to_bytes(arrays)

        cell = self.cell(f"grams/L{layer}", "recover", compute)
        return _grouped(_bytes_to_arrays(cell.blob), cell.payload["environments"])

    def _maps(self, layer: int) -> dict[int, list[np.ndarray]]:
        from steerscope.recover.trait import layer_maps

        target = min(layer + max(1, round(0.1 * self.lm.n_layers)), self.lm.n_layers - 1)
        if target <= layer:
            return {}

        def compute():
            prompts = [builtin_prompts(t, "in_distribution")[0] for t in TRAITS][: self.p.rec_map_prompts]
            maps = layer_maps(self.lm, prompts, layer, [target])
            return {"layer": layer, "target": target}, _tensors_to_bytes({f"{target}/{i}": m for i, m in enumerate(maps[target])})

        cell = self.cell(f"maps/L{layer}", "recover", compute)
        return {int(k): v for k, v in _grouped(_bytes_to_arrays(cell.blob), [str(target)]).items()}

    def recovery(self, trait: str, layer: int) -> list[dict[str, Any]]:
        from steerscope.recover.trait import recover_trait

        grams, maps = self._grams(layer), self._maps(layer)
        rows = []
        for method in RECOVERY_METHODS:
            def compute(method=method):
                if method == "crosslayer" and not maps:
                    return {"method": method, "identifiable": None, "class_dim": None, "stability": None, "details": {},
                            "reason": "no later layer to constrain the direction (the chosen layer is the last one)"}, None
                kwargs = {"observe": "jacobian", "k": 8} if method == "sparse" else {}
                r = recover_trait(self.lm, method, builtin_pairs(trait, "train"), layer, grams=grams, maps=maps,
                                  n_boot=self.p.rec_boot, seed=self.seed, **kwargs)
                row = r.to_dict()
                row.pop("direction")
                return row, None

            rows.append(self.cell(f"{trait}/recover/{method}", "recover", compute, trait).payload | {"trait": trait})
        return rows

    def reachability(self, trait: str, layer: int, alpha: float, v: torch.Tensor) -> dict[str, Any]:
        def compute():
            settings = AuditSettings(positions=self.p.reach_positions, alphas=self.p.reach_alphas,
                                     sweep_prompts=self.p.reach_sweep_prompts, steered_search=SearchConfig(budget=self.p.reach_budget, fallback=False),
                                     max_new_tokens=self.p.reach_tokens, seed=self.seed)
            prompts = builtin_prompts(trait, "in_distribution")[: self.p.reach_prompts]
            calibration = builtin_prompts(TRAITS[0], "topic_shift")[:2]
            return run_reachability(self.lm, v, layer, alpha, prompts, calibration, trait=trait, scorer=self.scorer(trait),
                                    settings=settings, vector_info={"source": f"built-in {trait} pairs (train split)", "method": "mean_diff"}), None

        return self.cell(f"{trait}/reachability", "reachability", compute, trait).payload

    # --- the whole thing -------------------------------------------------------------------------

    def run_trait(self, trait: str) -> None:
        layer = self.select_layer(trait)
        v = self.vector(trait, layer)
        alpha = self.calibrate(trait, layer, v)["alpha"]
        self.identifiability(trait, layer, alpha)
        self.nullspace(trait, layer, v)
        self.recovery(trait, layer)
        self.reachability(trait, layer, alpha, v)

    def run(self) -> None:
        """Compute (or read back) every cell of every trait."""
        self.store.set_fingerprint(self.lm.fingerprint)
        self.cell("model", "model", lambda: (self.lm.info(), None))
        for trait in self.config["traits"]:
            self.run_trait(trait)


def _jsonable_pair(pair: tuple[Any, bytes | None]) -> tuple[Any, bytes | None]:
    return jsonable(pair[0]), pair[1]


def calibration_prompts(trait: str, n: int) -> list[str]:
    """The last ``n`` in-distribution prompts of ``trait``: disjoint from the audit's (the first ones)."""
    pool = builtin_prompts(trait, "in_distribution")
    return pool[len(pool) - n:]


def strength_summary(points: Sequence[Mapping[str, Any]], config: Mapping[str, Any], prompts: Sequence[str]) -> dict[str, Any]:
    """:func:`choose_strength` over the calibration points, with the prompts and example texts."""
    choice = choose_strength(points, config["target_g"], config["max_ppl_ratio"], seed=int(config["seed"]))
    settings = config["settings"]
    return jsonable(choice | {"prompts": list(prompts), "samples": settings["calib_samples"], "max_new_tokens": settings["calib_tokens"],
                              "examples": {f"{p['alpha']:g}": p["texts"] for p in points}})


def _payload(store: RunStore, key: str) -> Any:
    cell = store.get(key)
    if cell is None:
        raise RunStoreError(f"{store.folder} is incomplete (no cell {key!r}); run the same audit command again to finish it")
    return cell.payload


def assemble(store: RunStore) -> dict[str, Any]:
    """``results.json`` of a finished run, from the store alone (no model needed)."""
    from steerscope.audit.answers import answers

    run = store.run
    config = run["config"]
    traits = {}
    for trait in config["traits"]:
        points = [_payload(store, f"{trait}/calibrate/alpha={a:g}") for a in (0.0, *config["settings"]["alphas"])]
        result = {
            "layer_selection": _payload(store, f"{trait}/layers"),
            "vector": _payload(store, f"{trait}/vector"),
            "strength": strength_summary(points, config, calibration_prompts(trait, config["settings"]["calib_prompts"])),
            "identifiability": _payload(store, f"{trait}/identifiability"),
            "nullspace": _payload(store, f"{trait}/nullspace"),
            "recovery": [_payload(store, f"{trait}/recover/{m}") | {"trait": trait} for m in RECOVERY_METHODS],
            "reachability": _payload(store, f"{trait}/reachability"),
        }
        traits[trait] = {"answers": answers(result)} | result
    return {"steerscope_version": run["version"], "config": config, "model": _payload(store, "model"),
            "model_fingerprint": run["model_fingerprint"], "traits": traits}
