"""Whole-sequence discrete search for a prompt whose states match a target (GCG-style).

Conventions as in :mod:`steerscope.invert`: ``target`` ``[T, d]`` (states at layer ℓ), the tokens
``prefix`` (positions ``< start``) given, the span ``start..T-1`` searched. Unlike the sequential
search, which fixes each position before the next, all positions of the span change together:
each iteration takes the gradient of ``½·Σ_t ‖w_t ⊙ (h_ℓ(prefix ⊕ E)_t − target_t)‖²`` with respect to
the span's input embeddings ``E`` (``w_t``: :func:`~steerscope.invert.proposal_weights`), keeps per
position the ``top_k`` tokens of best first-order gain, scores ``batch`` sequences that each
replace one uniformly drawn position with one of its top tokens (full distance
``Σ_t ‖h_t − target_t‖²``), and moves to the best if it improves. The search starts from the best
of its starting spans (e.g. the prompt's own tokens and the sequential search's), so it never ends
farther than any of them; it stops when every position is within ``ε`` or after ``iterations``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerscope.errors import SteerscopeError
from steerscope.invert import EmbeddingSpace, PrefixCache, embedding_space, proposal_weights
from steerscope.models.loading import LoadedModel
from steerscope.relax import check_span, span_distances


@dataclass(frozen=True)
class SequenceConfig:
    """``iterations`` rounds of ``batch`` one-token replacements drawn (from ``seed``) among the
    ``top_k`` tokens per position; at most ``iterations × batch`` sequences scored."""

    iterations: int = 16
    batch: int = 64
    top_k: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.batch < 1 or self.top_k < 1:
            raise SteerscopeError(f"the sequence search needs iterations ≥ 0 and batch, top_k ≥ 1, got "
                                  f"{self.iterations}, {self.batch}, {self.top_k}")


@dataclass
class SequenceResult:
    """Result over the span ``start..T-1``: ``tokens`` and their ``distances`` (``[n]`` each), ``accepted``
    (every distance ≤ ``epsilon``), the ``initial_distances`` of the starting span it began from
    (``start_index`` into ``inits``), ``iterations`` run, ``scored`` sequences and ``moves`` (iterations that improved)."""

    start: int
    tokens: list[int]
    distances: list[float]
    initial_distances: list[float]
    start_index: int
    epsilon: float
    accepted: bool
    iterations: int
    scored: int
    moves: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _top_tokens(state: PrefixCache, tokens: torch.Tensor, target: torch.Tensor, embed: EmbeddingSpace, k: int) -> torch.Tensor:
    """``[n, k]`` token ids of best first-order gain per span position (the current token excluded)."""
    weight, scale = embed.weight, embed.scale
    e = (weight[tokens.to(weight.device)].float() * scale).requires_grad_(True)
    w = torch.stack([proposal_weights(row) for row in target]).to(e.device)
    with torch.enable_grad():
        h = state.span_embed_states(e[None])[0].float()
        (grad,) = torch.autograd.grad(0.5 * ((h - target.to(h.device)) * w).pow(2).sum(), e)
    gain = (grad @ weight.float().T) * scale
    gain[torch.arange(len(tokens)), tokens.to(gain.device)] = torch.inf
    return gain.topk(min(k, gain.shape[1] - 1), dim=1, largest=False).indices.cpu()


def _draw(tokens: torch.Tensor, top: torch.Tensor, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``[B', n]`` distinct sequences, each ``tokens`` with one position replaced by one of its ``top`` tokens."""
    n, k = top.shape
    pos = torch.randint(0, n, (batch,), generator=gen)
    cands = tokens.repeat(batch, 1)
    cands[torch.arange(batch), pos] = top[pos, torch.randint(0, k, (batch,), generator=gen)]
    return torch.unique(cands, dim=0)


def sequence_search(lm: LoadedModel, target: torch.Tensor, layer: int, epsilon: float, prefix: Sequence[int],
                    inits: Sequence[Sequence[int]], config: SequenceConfig | None = None) -> SequenceResult:
    """Search the span ``len(prefix)..T-1`` jointly for tokens whose states match ``target`` (``[T, d]``),
    from the best (least ``Σ_t d_t²``) of the starting spans ``inits``."""
    layer = lm.check_layer(layer)
    cfg = config or SequenceConfig()
    if not inits:
        raise SteerscopeError("the sequence search needs at least one starting span")
    for init in inits:
        check_span(lm, target, prefix, init)
    embed = embedding_space(lm)
    span = target[len(prefix):].detach().float().cpu()
    state = PrefixCache(lm, layer, list(prefix))
    gen = torch.Generator().manual_seed(cfg.seed)
    starts = torch.tensor([list(init) for init in inits])
    d0 = span_distances(state.span_states(starts), span)
    best = int(d0.pow(2).sum(-1).argmin())
    tokens, dist = starts[best], d0[best]
    first, scored, moves, it = dist.clone(), 0, 0, 0
    while it < cfg.iterations and bool((dist > epsilon).any()):
        it += 1
        cands = _draw(tokens, _top_tokens(state, tokens, span, embed, cfg.top_k), cfg.batch, gen)
        d = span_distances(state.span_states(cands), span)
        scored += len(cands)
        j = int(d.pow(2).sum(-1).argmin())
        if float(d[j].pow(2).sum()) < float(dist.pow(2).sum()):
            tokens, dist, moves = cands[j], d[j], moves + 1
    return SequenceResult(start=len(prefix), tokens=tokens.tolist(), distances=dist.tolist(), initial_distances=first.tolist(),
                          start_index=best,
                          epsilon=float(epsilon), accepted=bool((dist <= epsilon).all()), iterations=it, scored=scored,
                          moves=moves)
