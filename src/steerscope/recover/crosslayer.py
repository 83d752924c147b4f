"""Cross-layer recovery: directions at several layers must agree through the layer-to-layer maps.

At the base layer ℓ₀ the behavioural class of ``v`` is ``v + ker J`` (``J``: stacked output
Jacobian, Gram ``G``). Requiring in addition that the direction, carried forward by the maps
``Φ_i = ∂h_{ℓ_i}/∂h_{ℓ₀}``, equals the direction ``v_i`` extracted at layer ℓ_i leaves the class
``v + (ker J ∩ ⋂_i ker Φ_i)``. (Requiring only *behavioural* equivalence at the later layers adds
nothing: by the chain rule ``J = J_i Φ_i``, so ``ker J`` is mapped into ``ker J_i``.)

The recovered direction solves the normal equations of ``‖J (w − v)‖² + Σ_i ‖Φ_i w − v_i‖²``, each
term scaled by the largest eigenvalue of its Gram matrix so that no layer dominates by units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from steerscope.errors import SteerscopeError
from steerscope.recover.assumptions import crosslayer_carry
from steerscope.recover.registry import TraitInputs, register_recovery
from steerscope.recover.result import Recovery, cosine, null_dim, unit
from steerscope.recover.stability import bootstrap_stability


class _NormalEquations:
    """The left side of the normal equations, factorised once: it depends on ``G`` and the maps only,
    so bootstrap refits (new ``v`` and targets) cost two matrix-vector products."""

    def __init__(self, gram: np.ndarray, maps: Sequence[np.ndarray], tol: float):
        self.g = np.asarray(gram, dtype=np.float64)
        d = self.g.shape[0]
        self.g_scale = np.linalg.eigvalsh(self.g).max()
        lhs = self.g / self.g_scale
        self.stacks, self.scales = [], []
        for phi in maps:
            flat = np.asarray(phi, dtype=np.float64).reshape(-1, d, d).reshape(-1, d)  # [P·d, d]
            normal = flat.T @ flat  # Σ_p Φ_pᵀ Φ_p
            scale = np.linalg.eigvalsh(normal).max()
            lhs = lhs + normal / scale
            self.stacks.append(flat)
            self.scales.append(scale)
        self.k, self.lam, self.vecs = null_dim(lhs, tol)

    def solve(self, v: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
        """The unit least-squares direction for base vector ``v`` ``[d]`` and one target ``[d]`` per map."""
        rhs = self.g @ v / self.g_scale
        for flat, scale, target in zip(self.stacks, self.scales, targets):
            rhs = rhs + flat.T @ np.tile(np.asarray(target, dtype=np.float64), flat.shape[0] // len(v)) / scale
        keep = self.vecs[:, self.k:]
        return unit(keep @ ((keep.T @ rhs) / self.lam[self.k:]))


def recover_crosslayer(
    gram: np.ndarray, vector: np.ndarray, maps: Sequence[np.ndarray], targets: Sequence[np.ndarray], tol: float = 1e-3,
) -> Recovery:
    """Recover the base-layer direction from ``G`` (``[d, d]``), ``v`` (``[d]``), maps and target vectors.

    ``maps[i]``: ``Φ_i`` as ``[d, d]`` or a stack ``[P, d, d]`` over prompts (each prompt's map must
    carry ``w`` to ``targets[i]``).
    """
    if len(maps) != len(targets):
        raise SteerscopeError(f"got {len(maps)} layer maps but {len(targets)} target vectors")
    return _recovery(_NormalEquations(gram, maps, tol), np.asarray(vector, dtype=np.float64), maps, targets, tol)


def _recovery(system: _NormalEquations, v: np.ndarray, maps: Sequence[np.ndarray], targets: Sequence[np.ndarray], tol: float) -> Recovery:
    direction = system.solve(v, targets)
    k = system.k
    base_k = null_dim(system.g, tol)[0]
    identifiable = k == 0
    reason = (f"kernel of the output Jacobian ({base_k} dims at tolerance {tol:g}) meets the kernels of the "
              f"{len(maps)} layer map(s) only in 0: unique" if identifiable else
              f"{k} direction(s) are invisible to the output and to every layer map: not identifiable")
    return Recovery("crosslayer", direction, identifiable, k, reason,
                    details={"tol": tol, "n_maps": len(maps), "class_dim_output_only": base_k,
                             "cos_with_base_vector": cosine(direction, v),
                             "cos_with_targets_after_map": [cosine(np.asarray(p, dtype=np.float64).reshape(-1, len(v), len(v)).mean(axis=0) @ direction, t) for p, t in zip(maps, targets)]})


@register_recovery("crosslayer")
def crosslayer_from_pairs(inputs: TraitInputs) -> Recovery:
    """:func:`recover_crosslayer` with all Gram matrices as the output Gram and the mean differences
    at the later layers as targets; stability resamples pairs."""
    if not inputs.grams or not inputs.maps:
        raise SteerscopeError("cross-layer recovery needs Gram matrices at the base layer and layer maps")
    acts, maps, tol = inputs.acts, inputs.maps, inputs.tol
    gram = inputs.total_gram()
    contrasts = inputs.contrasts
    targets = {t: acts[t][0].mean(axis=0) - acts[t][1].mean(axis=0) for t in maps}

    system = _NormalEquations(gram, [np.asarray(maps[t]) for t in maps], tol)

    def solve(idx: np.ndarray) -> np.ndarray:
        return system.solve(contrasts[idx].mean(axis=0), [(acts[t][0][idx] - acts[t][1][idx]).mean(axis=0) for t in maps])

    result = _recovery(system, np.asarray(inputs.mean_diff, dtype=np.float64), [np.asarray(maps[t]) for t in maps], list(targets.values()), tol)
    result.details["layers"] = [inputs.layer] + sorted(maps)
    first = min(maps)
    mean_map = np.asarray(maps[first], dtype=np.float64).reshape(-1, len(contrasts[0]), len(contrasts[0])).mean(axis=0)
    result.assumption = crosslayer_carry(mean_map, contrasts, acts[first][0] - acts[first][1], seed=inputs.seed).to_dict()
    result.assumption["extra"]["later_layer"] = first
    if inputs.n_boot:
        result.stability = bootstrap_stability(solve, len(contrasts), result.direction, inputs.n_boot, inputs.seed, audited=inputs.reference)
    return result
