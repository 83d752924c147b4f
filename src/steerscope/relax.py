"""Continuous relaxation of prompt inversion: soft input embeddings that reproduce target states.

Conventions as in :mod:`steerscope.invert`: ``target`` is ``[T, d]`` (states at layer ℓ, the output
of block ℓ); the tokens ``prefix`` (positions ``< start``) are given and their KV cache is kept; the
searched span ``start..T-1`` takes free input embeddings ``E`` (``[n, d]``, in the space the model
feeds to block 0, i.e. ``scale·W[v]`` for a token ``v``) instead of tokens. Adam minimises
``Σ_t ‖h_ℓ(prefix ⊕ E)_t − target_t‖²`` from the embeddings of ``init`` tokens; the best iterate is
kept. Each soft embedding is then projected to the token whose input embedding is nearest (L2),
and the projected tokens' own states are scored.

Reading: where even the relaxation stays far from the target, no input embedding of that span
(let alone a token) reaches it near the start point; where it comes near and the projection does
not, the gap is the discreteness of the vocabulary. The relaxation is a local optimiser, so its
distance is an upper bound on the distance to continuously reachable states, not a proof.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerscope.errors import SteerscopeError
from steerscope.invert import PrefixCache, embedding_space
from steerscope.models.loading import LoadedModel


@dataclass(frozen=True)
class RelaxConfig:
    """``steps`` Adam steps with learning rate ``lr`` × the RMS norm of the input embeddings per
    coordinate (``lr·rms/√d``)."""

    steps: int = 200
    lr: float = 0.05

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.lr > 0 or not math.isfinite(self.lr):
            raise SteerscopeError(f"the relaxation needs steps ≥ 1 and a finite lr > 0, got {self.steps} and {self.lr}")


@dataclass
class Relaxation:
    """Result over the span ``start..T-1`` (lists of length ``n``).

    ``distances``: ``‖h(prefix ⊕ E)_t − target_t‖`` at the best iterate; ``initial_distances``: the
    same for the ``init`` tokens; ``norm_ratio``: ``‖E_t‖`` over the RMS norm of the vocabulary's
    input embeddings; ``projected_tokens`` / ``projected_distances``: the nearest tokens to ``E``
    and their states' distances to the target; ``best_step``: the kept iterate (0 = ``init``).
    """

    start: int
    distances: list[float]
    initial_distances: list[float]
    norm_ratio: list[float]
    projected_tokens: list[int]
    projected_distances: list[float]
    best_step: int
    steps: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


def span_distances(states: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B, n]`` float64-accumulated L2 distances of states ``[B, n, d]`` to ``target`` ``[n, d]``."""
    return (states.double() - target.double()).norm(dim=-1).float()


def check_span(lm: LoadedModel, target: torch.Tensor, prefix: Sequence[int], init: Sequence[int]) -> None:
    """SteerscopeError unless ``prefix`` ⊕ ``init`` (a non-empty span) covers the ``[T, d_model]`` ``target`` within the context."""
    if target.ndim != 2 or target.shape[1] != lm.d_model:
        raise SteerscopeError(f"target must have shape [T, {lm.d_model}], got {tuple(target.shape)}")
    if len(prefix) + len(init) != target.shape[0] or not init:
        raise SteerscopeError(f"the prefix ({len(prefix)} tokens) and the initial span ({len(init)} tokens) must cover the "
                              f"target's {target.shape[0]} positions, with a non-empty span")
    lm.check_context([*prefix, *init])


def relax(lm: LoadedModel, target: torch.Tensor, layer: int, prefix: Sequence[int], init: Sequence[int],
          config: RelaxConfig | None = None) -> Relaxation:
    """Soft embeddings for positions ``len(prefix)..T-1`` whose states match ``target`` (``[T, d]``), from ``init`` tokens."""
    layer = lm.check_layer(layer)
    cfg = config or RelaxConfig()
    check_span(lm, target, prefix, init)
    space = embedding_space(lm)
    weight, scale = space.weight, space.scale
    span = target[len(prefix):].detach().float()
    state = PrefixCache(lm, layer, list(prefix))
    rms = space.rms
    init_ids = torch.tensor(list(init))
    e = (weight[init_ids.to(weight.device)].float() * scale).clone().requires_grad_(True)
    opt = torch.optim.Adam([e], lr=cfg.lr * rms / math.sqrt(lm.d_model))
    tgt = span.to(e.device)
    kept: tuple[float, torch.Tensor, int, torch.Tensor] | None = None
    initial = None
    for step in range(cfg.steps + 1):
        with torch.enable_grad():
            dist = (state.span_embed_states(e[None])[0].float() - tgt).norm(dim=-1)
            loss = dist.pow(2).sum()
        if not torch.isfinite(loss):
            raise SteerscopeError(f"the relaxation diverged at step {step} (non-finite distance); lower its learning rate")
        initial = dist.detach().cpu() if initial is None else initial
        if kept is None or float(loss.detach()) < kept[0]:
            kept = (float(loss.detach()), e.detach().clone(), step, dist.detach().cpu())
        if step < cfg.steps:
            (e.grad,) = torch.autograd.grad(loss, e)  # the gradient of e only, none left on the model's weights
            opt.step()
    assert kept is not None and initial is not None
    _, best_e, best_step, best_dist = kept
    projected = torch.stack([space.nearest(row / scale, 1)[0] for row in best_e])
    proj_dist = span_distances(state.span_states(projected[None]), span)[0]
    return Relaxation(
        start=len(prefix), distances=best_dist.tolist(), initial_distances=initial.tolist(),
        norm_ratio=(best_e.norm(dim=-1) / rms).cpu().tolist(), projected_tokens=projected.tolist(),
        projected_distances=proj_dist.tolist(), best_step=best_step, steps=cfg.steps,
    )
