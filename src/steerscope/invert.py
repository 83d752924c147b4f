"""Recover the prompt behind a sequence of residual-stream states (SipIt-style sequential inversion).

Conventions: ``target`` is ``[T, d]``, the states of one token sequence at layer ℓ (the output of
decoder block ℓ, see :class:`steerscope.models.LoadedModel`). Causality makes position ``t``
depend on tokens ``≤ t`` only, so tokens are recovered one position at a time: with the KV cache
of the prefix already recovered, each candidate token ``c`` is scored as a one-token continuation,
``d(c) = ‖h_ℓ(prefix ⊕ c)_t − target_t‖₂`` (float32, a batch of candidates per forward pass), and
the first candidate with ``d ≤ ε`` is accepted. Without one, the best candidate found is kept (the
search continues) and the position is marked not accepted.

Candidate policies: ``"gradient"`` (first the model's own likeliest next tokens after the prefix found
so far; then a continuous proxy input embedding is moved by gradient steps on ``½·d²``, and the
unvisited tokens with the best first-order gain along the gradient and those whose input embeddings
are nearest to the proxy are scored in small batches; after a budget, the fallback scores the rest
down the model's next-token ranking) and ``"exhaustive"`` (the vocabulary in id order,
in chunks, until a token is accepted). The threshold ``ε`` is calibrated per model and layer on
natural states (:func:`calibrate_threshold`).

A failed search is an upper bound on the distance to the set of prompt-reachable states, not a
proof that no prompt reaches the target.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field

import torch

from steerscope.errors import SteerscopeError
from steerscope.hooks import StopForward, record
from steerscope.models.kvcache import with_cache
from steerscope.models.loading import LoadedModel, onloaded_weight

POLICIES = ("gradient", "exhaustive")


# --- model plumbing ---------------------------------------------------------------------------

def _run(lm: LoadedModel, layer: int, **kwargs) -> torch.Tensor:
    """Forward pass stopped after block ``layer``; returns its output ``[B, T, d]`` in float32 (not detached)."""
    with record(lm, [layer], stop_early=True, detach=False) as out, suppress(StopForward):
        lm.model(**kwargs)
    if layer not in out:
        raise SteerscopeError(f"block {layer} of {lm.name} did not run")
    return out[layer].float()


def hidden_states(lm: LoadedModel, ids: Sequence[int], layer: int) -> torch.Tensor:
    """``[T, d]`` float32 states of ``ids`` at layer ℓ from one unpadded full-sequence pass.

    Steering entered around the call applies (the states are then the steered ones).
    """
    layer = lm.check_layer(layer)
    if not ids:
        raise SteerscopeError("cannot compute states of an empty token sequence")
    lm.check_context(ids)
    x = torch.tensor([list(ids)], device=lm.device)
    with torch.inference_mode():
        return _run(lm, layer, input_ids=x, attention_mask=torch.ones_like(x), position_ids=torch.arange(len(ids), device=lm.device)[None],
                    use_cache=False)[0].cpu()


@dataclass(frozen=True, eq=False)
class EmbeddingSpace:
    """The model feeds ``scale·weight[v]`` (``weight``: ``[V, d]``) to block 0 for token ``v``.

    ``sq_norms`` (``[V]``, float32, on the weight's device): the rows' squared L2 norms, computed once,
    so that a nearest-row query is one matrix–vector product.
    """

    weight: torch.Tensor
    scale: float
    sq_norms: torch.Tensor

    @property
    def rms(self) -> float:
        """Root mean square norm of the scaled rows ``scale·W[v]``, the size of a typical input embedding."""
        return float(self.sq_norms.mean().sqrt()) * abs(self.scale)

    def nearest(self, e: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Ids (CPU) of the ``k`` rows of ``weight`` nearest to ``e`` (``[d]``, unscaled) in L2, skipping ``exclude`` (``[V]`` bool)."""
        d2 = self.sq_norms - 2 * (self.weight.float() @ e.float().to(self.weight.device))
        if exclude is not None:
            d2 = d2.masked_fill(exclude.to(d2.device), math.inf)
        k = min(k, int(torch.isfinite(d2).sum()))
        return d2.topk(k, largest=False).indices.cpu()


def embedding_space(lm: LoadedModel) -> EmbeddingSpace:
    """The :class:`EmbeddingSpace` of ``lm``'s input embedding.

    Some models (Gemma) multiply the looked-up row inside the embedding module; the scale is
    measured by comparing the module's output with the raw rows.
    """
    module = lm.model.get_input_embeddings()
    weight = onloaded_weight(module)
    ids = torch.arange(min(weight.shape[0], 256), device=weight.device)
    with torch.no_grad():
        out, rows = module(ids).float(), weight[ids].float()
        scale = float((out * rows).sum() / (rows * rows).sum())
        if not torch.allclose(out, scale * rows, rtol=1e-4, atol=1e-6):
            raise SteerscopeError(f"the input embedding of {lm.name} is not a (scaled) lookup table; inversion needs one")
        w = weight.detach().float()
        return EmbeddingSpace(weight.detach(), scale, (w * w).sum(-1))


class PrefixCache:
    """KV cache (blocks ``0..layer``) of a growing token prefix; continuations of it (token ids or input
    embeddings, one or several positions, a batch at a time) are run against copies of the cache."""

    def __init__(self, lm: LoadedModel, layer: int, ids: Sequence[int] = ()):
        from transformers import DynamicCache

        self.lm, self.layer = lm, layer
        self.cache = DynamicCache(config=lm.model.config)
        self.length = 0
        if ids:
            self.extend(ids)

    def extend(self, ids: Sequence[int]) -> None:
        x = torch.tensor([list(ids)], device=self.lm.device)
        pos = torch.arange(self.length, self.length + len(ids), device=self.lm.device)[None]
        mask = torch.ones((1, self.length + len(ids)), dtype=torch.long, device=self.lm.device)
        with torch.no_grad():  # not inference mode: the cache also feeds differentiable passes
            _run(self.lm, self.layer, input_ids=x, position_ids=pos, attention_mask=mask, **with_cache(self.lm.model, self.cache))
        self.length += len(ids)

    def expanded(self, batch: int):
        """A copy of the cache repeated ``batch`` times along the batch axis (views, not copies)."""
        cache = copy.deepcopy(self.cache)
        for layer in getattr(cache, "layers", []):
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
                layer.values = layer.values.expand(batch, *layer.values.shape[1:])
        return cache

    def _kwargs(self, batch: int, n: int = 1) -> dict:
        pos = torch.arange(self.length, self.length + n, device=self.lm.device).expand(batch, n)
        mask = torch.ones((batch, self.length + n), dtype=torch.long, device=self.lm.device)
        return {"position_ids": pos, "attention_mask": mask, **with_cache(self.lm.model, self.expanded(batch) if self.length else None)}

    def states(self, candidates: torch.Tensor) -> torch.Tensor:
        """``[B, d]``: state at the next position for each candidate token id (``[B]``)."""
        return self.span_states(candidates[:, None])[:, -1]

    def span_states(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, n, d]``: states at the next ``n`` positions for each continuation ``ids`` (``[B, n]``)."""
        with torch.no_grad():
            h = _run(self.lm, self.layer, input_ids=ids.to(self.lm.device), **self._kwargs(*ids.shape))
        return h.cpu()

    def embed_state(self, embeds: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` state for input embeddings ``[B, d]`` (differentiable)."""
        return self.span_embed_states(embeds[:, None])[:, -1]

    def span_embed_states(self, embeds: torch.Tensor) -> torch.Tensor:
        """``[B, n, d]`` states for continuations given as input embeddings ``[B, n, d]`` (differentiable)."""
        h = _run(self.lm, self.layer, inputs_embeds=embeds.to(self.lm.device, self.lm.dtype), **self._kwargs(*embeds.shape[:2]))
        return h.to(self.lm.device)  # the block may run on another device than the embedding


class NextTokenPrior:
    """The model's own ranking of the next token after a growing prefix (the whole model, with a KV cache):
    the likeliest continuations of the tokens found so far first. None before the first token."""

    def __init__(self, lm: LoadedModel, ids: Sequence[int] = ()):
        from transformers import DynamicCache

        self.lm = lm
        self.cache = DynamicCache(config=lm.model.config)
        self.length = 0
        self.logits: torch.Tensor | None = None
        if ids:
            self.extend(ids)

    def extend(self, ids: Sequence[int]) -> None:
        x = torch.tensor([list(ids)], device=self.lm.device)
        pos = torch.arange(self.length, self.length + len(ids), device=self.lm.device)[None]
        mask = torch.ones((1, self.length + len(ids)), dtype=torch.long, device=self.lm.device)
        with torch.no_grad():
            out = self.lm.model(input_ids=x, position_ids=pos, attention_mask=mask, logits_to_keep=1,
                                **with_cache(self.lm.model, self.cache))
        self.logits = out.logits[0, -1].float().cpu()
        self.length += len(ids)

    def order(self, vocab: int) -> torch.Tensor | None:
        """``[vocab]`` token ids, the likeliest next token first (ids the head has beyond ``vocab`` left out)."""
        if self.logits is None:
            return None
        return self.logits[:vocab].argsort(descending=True, stable=True)


def score_candidates(lm: LoadedModel, layer: int, prefix: Sequence[int], candidates: Sequence[int], target: torch.Tensor,
                     batch_size: int = 256) -> torch.Tensor:
    """``[B]`` distances ``‖h_ℓ(prefix ⊕ c)_t − target‖₂`` (``t = len(prefix)``, ``target`` ``[d]``), batched over a KV cache."""
    layer = lm.check_layer(layer)
    lm.check_context([*prefix, 0])
    state = PrefixCache(lm, layer, prefix)
    cand = torch.as_tensor(list(candidates), dtype=torch.long)
    return torch.cat([_distances(state.states(chunk), target) for chunk in cand.split(batch_size)])


def _distances(states: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (states.double() - target.double()).norm(dim=-1).float()


# --- threshold calibration ---------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """Acceptance threshold ``ε`` for one model and layer, with the calibration it came from.

    Rule: ``ε = sqrt(noise · Δ/2)``, the geometric midpoint between ``noise`` — the largest
    distance of the correct token to its own natural state over the calibration positions (float32
    difference between the full-sequence and the KV-cached pass; at least ``float32 eps · median
    ‖h‖``) — and ``Δ/2``, half the smallest distance of a competing token (an upper bound on the
    margin Δ, from the competitors scored). Exact recovery needs ``noise ≤ ε < Δ/2``.
    """

    epsilon: float
    noise: float
    margin: float
    noise_floor: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    n_competitors: int = 0
    rule: str = "epsilon = sqrt(noise * margin / 2)"

    def to_json(self) -> dict:
        return {
            "epsilon": self.epsilon, "noise": self.noise, "margin": self.margin, "rule": self.rule,
            "n_positions": len(self.noise_floor), "n_competitors": self.n_competitors,
            "noise_floor_median": _median(self.noise_floor), "margin_median": _median(self.margins),
        }


def _median(xs: Sequence[float]) -> float:
    return float(torch.tensor(xs).median()) if xs else math.nan


def calibrate_threshold(
    lm: LoadedModel, layer: int, sequences: Sequence[Sequence[int]], n_competitors: int = 64, seed: int = 0,
    last: int | None = None,
) -> Threshold:
    """Calibrate ``ε`` at ``layer`` on natural states of token ``sequences`` (see :class:`Threshold`).

    At every position (the ``last`` positions of each sequence when given) the correct token and
    ``n_competitors`` others (half the nearest in input embedding space to the correct token, half
    uniformly random from ``seed``) are scored.
    """
    layer = lm.check_layer(layer)
    space = embedding_space(lm)
    weight = space.weight
    gen = torch.Generator().manual_seed(seed)
    noise, margins, norms = [], [], []
    for ids in sequences:
        target = hidden_states(lm, ids, layer)
        start = 0 if last is None else max(0, len(ids) - last)
        state = PrefixCache(lm, layer, list(ids[:start]))
        for t, token in enumerate(ids[start:], start):
            near = space.nearest(weight[token], n_competitors // 2 + 1)
            rand = torch.randint(0, weight.shape[0], (n_competitors - n_competitors // 2,), generator=gen)
            others = torch.unique(torch.cat([near, rand]))
            others = others[others != token]
            d = _distances(state.states(torch.cat([torch.tensor([token]), others])), target[t])
            noise.append(float(d[0]))
            margins.append(float(d[1:].min()))
            norms.append(float(target[t].norm()))
            state.extend([token])
    if not noise:
        raise SteerscopeError("threshold calibration needs at least one non-empty sequence")
    floor = torch.finfo(torch.float32).eps * float(torch.tensor(norms).median())
    top, margin = max(max(noise), floor), min(margins)
    if not top < margin / 2:
        raise SteerscopeError(
            f"cannot calibrate a threshold at layer {layer} of {lm.name}: the natural noise floor {top:.3g} is not below "
            f"half the nearest competing distance {margin / 2:.3g} (the layer is not numerically injective here)"
        )
    return Threshold(math.sqrt(top * margin / 2), top, margin, noise, margins, n_competitors)


# --- the search --------------------------------------------------------------------------------

@dataclass
class Inversion:
    """Result of inverting ``[T, d]`` states; per-position lists cover the searched positions ``start..T-1``.

    ``tokens`` ``[T]``: the given prefix, then the accepted or best-found token at each searched
    position; ``distances``: best distance found; ``accepted``: best ≤ ``epsilon``; ``topk_tokens``
    / ``topk_distances``: the ``k`` best candidates scored (ascending); ``tried``: candidates scored;
    ``exhaustive``: every token of the vocabulary was scored (so no token, after the tokens chosen
    before it, comes closer than ``distances`` at that position).
    """

    tokens: list[int]
    start: int
    epsilon: float
    distances: list[float] = field(default_factory=list)
    accepted: list[bool] = field(default_factory=list)
    topk_tokens: list[list[int]] = field(default_factory=list)
    topk_distances: list[list[float]] = field(default_factory=list)
    tried: list[int] = field(default_factory=list)
    exhaustive: list[bool] = field(default_factory=list)

    @property
    def positions(self) -> list[int]:
        return list(range(self.start, len(self.tokens)))

    def second(self) -> list[float]:
        """Distance of the runner-up candidate per position (an upper bound on the margin Δ when the best is correct)."""
        return [d[1] if len(d) > 1 else math.nan for d in self.topk_distances]

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "start": self.start, "epsilon": self.epsilon, "distances": self.distances,
                "accepted": self.accepted, "second": self.second(), "topk_tokens": self.topk_tokens,
                "topk_distances": self.topk_distances, "tried": self.tried, "exhaustive": self.exhaustive}


@dataclass(frozen=True)
class SearchConfig:
    """Search settings.

    ``policy``: ``"gradient"`` or ``"exhaustive"``. Gradient policy: rounds of ``batch`` candidates
    (half ranked by the first-order gain along the gradient, half nearest to the proxy embedding),
    each followed by ``steps`` Adam steps (learning rate ``lr`` × the RMS norm of the input
    embeddings, per coordinate) on the proxy, starting from the mean input embedding, for at most
    ``budget`` candidates (the prior's batch not counted); then the rest of the vocabulary when ``fallback``, up to ``max_candidates``
    in all per position (None: the whole vocabulary, so an unmatched position is certified).
    ``chunk``: batch size of exhaustive scoring; ``k``: candidates kept. ``fixed_order``: the gain half
    of each round continues down the first-order order at the starting proxy instead of re-ranking at
    the moved proxy (the nearest half still follows the proxy). ``prior`` (default): the model's own most
    likely next tokens after the tokens found so far (:class:`NextTokenPrior`) are scored first, one batch
    of them before the gradient rounds, and the fallback goes down that order instead of id order (the
    first position of a sequence without a given prefix has no prior: id order).
    """

    policy: str = "gradient"
    batch: int = 32
    steps: int = 1
    lr: float = 1.0
    budget: int = 512
    fallback: bool = True
    chunk: int = 256
    k: int = 10
    max_candidates: int | None = None
    fixed_order: bool = False
    prior: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SteerscopeError(f"unknown search policy {self.policy!r}; use one of {', '.join(POLICIES)}")
        if min(self.batch, self.budget, self.chunk, self.k) < 1 or self.steps < 0:
            raise SteerscopeError("search batch, budget, chunk and k must be positive and steps non-negative")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise SteerscopeError(f"max_candidates must be positive or None, got {self.max_candidates}")

    def cap(self, vocab: int) -> int:
        """Candidates scored at most per position for a vocabulary of ``vocab`` tokens."""
        return min(vocab, self.max_candidates or vocab)


class _Position:
    """Book-keeping for one position: visited tokens, best candidates, count."""

    def __init__(self, vocab: int, k: int):
        self.visited = torch.zeros(vocab, dtype=torch.bool)
        self.ids = torch.empty(0, dtype=torch.long)
        self.dist = torch.empty(0)
        self.k = k

    def add(self, ids: torch.Tensor, dist: torch.Tensor) -> None:
        self.visited[ids] = True
        ids, dist = torch.cat([self.ids, ids]), torch.cat([self.dist, dist])
        order = dist.argsort()[: self.k]
        self.ids, self.dist = ids[order], dist[order]

    @property
    def best(self) -> float:
        return float(self.dist[0]) if len(self.dist) else math.inf

    @property
    def tried(self) -> int:
        return int(self.visited.sum())


#: Coordinates of a target state whose magnitude exceeds this multiple of the state's median
#: magnitude are "massive activations" (e.g. Gemma 3's residual stream: norm ~3,700 against ~26 for a
#: token embedding), left out of the proposal loss of the gradient policy.
MASSIVE_RATIO = 30.0


def proposal_weights(target: torch.Tensor) -> torch.Tensor:
    """``[d]`` 0/1 weights of the gradient policy's proposal loss: 0 on the massive coordinates of ``target``.

    The massive coordinates dominate the L2 gradient and barely depend on the token, so the first-order
    ranking follows them instead of the token. On Gemma 3 at layer 6, the rank of the true token by
    first-order gain from the mean embedding: inside prompts (12 positions of formality prompts)
    beyond 100,000 at 5 of 12 with them, at most 8 without; at the first token of a text (12 train
    replies) up to 29,067 with them, at most 47 without. Ratios 10 and 100 did worse (at most 66 and
    at most 3,884). Acceptance always uses the full L2 distance; the weights only order the candidates.
    """
    mag = target.abs()
    return (mag < MASSIVE_RATIO * mag.median()).to(target.dtype)


def _gradient_search(state: PrefixCache, target: torch.Tensor, eps: float, embed: EmbeddingSpace,
                     init: torch.Tensor, pos: _Position, cfg: SearchConfig, budget: int) -> None:
    """Rounds of: gradient ``g`` of the proposal loss ``½·‖w ⊙ (h(e) − target)‖²`` (``w``: :func:`proposal_weights`)
    at the proxy ``e``; score the unvisited tokens with the best first-order gain ``g·E_v`` (half the batch)
    and those nearest to ``e`` (the other half); Adam steps on ``e``; until ``budget`` candidates are scored."""
    weight, scale = embed.weight, embed.scale
    e = init.clone().float().requires_grad_(True)
    opt = torch.optim.Adam([e], lr=cfg.lr * embed.rms / math.sqrt(e.numel()))
    tgt = target.to(state.lm.device)
    w = proposal_weights(tgt)
    order: torch.Tensor | None = None
    while pos.tried < min(budget, cfg.cap(len(pos.visited))) and pos.best > eps:
        for step in range(max(cfg.steps, 1)):
            with torch.enable_grad():
                loss = 0.5 * ((state.embed_state(e[None])[0] - tgt) * w).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, e)
            if step == 0 and cfg.fixed_order:
                if order is None:
                    order = ((weight.float() @ grad.detach().to(weight.device)) * scale).argsort().cpu()
                first = order[~pos.visited[order]][: cfg.batch // 2 or 1]
            elif step == 0:
                gain = (weight.float() @ grad.detach().to(weight.device)) * scale
                linear = gain.masked_fill(pos.visited.to(gain.device), math.inf)
                first = linear.topk(min(cfg.batch // 2 or 1, int(torch.isfinite(linear).sum())), largest=False).indices.cpu()
            if cfg.steps:
                e.grad = grad
                opt.step()
        seen = pos.visited.clone()
        seen[first] = True
        second = embed.nearest(e.detach() / scale, cfg.batch - len(first), seen)
        batch = torch.cat([first, second])
        pos.add(batch, _distances(state.states(batch), target))


def _exhaustive_search(state: PrefixCache, target: torch.Tensor, eps: float, pos: _Position, cfg: SearchConfig,
                       order: torch.Tensor | None = None) -> None:
    """Score the unvisited tokens in ``order`` (default: id order) until one is within ``eps`` or
    ``cfg.max_candidates`` are spent."""
    left = cfg.cap(len(pos.visited)) - pos.tried
    if left <= 0:
        return
    ids = (~pos.visited).nonzero().squeeze(1) if order is None else order[~pos.visited[order]]
    for chunk in ids[:left].split(cfg.chunk):
        if pos.best <= eps:
            return
        pos.add(chunk, _distances(state.states(chunk), target))


def invert(
    lm: LoadedModel,
    target: torch.Tensor,
    layer: int,
    epsilon: float,
    prefix: Sequence[int] = (),
    config: SearchConfig | None = None,
    seeds: Sequence[int] = (),
) -> Inversion:
    """Recover tokens whose layer-``layer`` states match ``target`` (``[T, d]``), position by position.

    Positions ``< len(prefix)`` take the given ``prefix`` tokens (e.g. a known chat template) and
    are not searched. A candidate is accepted at distance ≤ ``epsilon`` (see
    :func:`calibrate_threshold`); without one the best found is kept and the search continues.
    ``seeds`` (token ids ``[T]``, e.g. the prompt whose steered states are the target): at each
    searched position ``t`` the token ``seeds[t]`` is scored first, so the best found is never
    farther than that token's state.
    """
    layer = lm.check_layer(layer)
    cfg = config or SearchConfig()
    if target.ndim != 2 or target.shape[1] != lm.d_model:
        raise SteerscopeError(f"target must have shape [T, {lm.d_model}], got {tuple(target.shape)}")
    if len(prefix) > target.shape[0]:
        raise SteerscopeError(f"the given prefix ({len(prefix)} tokens) is longer than the target ({target.shape[0]} positions)")
    if lm.context_length is not None and target.shape[0] > lm.context_length:
        raise SteerscopeError(f"the target has {target.shape[0]} positions but {lm.name} has a context of {lm.context_length} tokens")
    target = target.detach().float().cpu()
    embed = embedding_space(lm)
    weight, scale = embed.weight, embed.scale
    state = PrefixCache(lm, layer, list(prefix))
    prior = NextTokenPrior(lm, list(prefix)) if cfg.prior and cfg.policy == "gradient" else None
    result = Inversion(tokens=list(prefix), start=len(prefix), epsilon=float(epsilon))
    mean_embed = weight.float().mean(0) * scale
    if seeds and len(seeds) < target.shape[0]:
        raise SteerscopeError(f"seeds cover {len(seeds)} positions but the target has {target.shape[0]}")
    for t in range(len(prefix), target.shape[0]):
        pos = _Position(weight.shape[0], cfg.k)
        if seeds:
            seed = torch.tensor([int(seeds[t])])
            pos.add(seed, _distances(state.states(seed), target[t]))
        order = prior.order(weight.shape[0]) if prior is not None else None
        likely = torch.empty(0, dtype=torch.long)
        if order is not None and pos.best > epsilon:
            likely = order[~pos.visited[order]][: max(0, min(cfg.batch, cfg.cap(weight.shape[0]) - pos.tried))]
            if len(likely):
                pos.add(likely, _distances(state.states(likely), target[t]))
        if cfg.policy == "gradient":  # the prior's batch does not count against the gradient rounds' budget
            _gradient_search(state, target[t], epsilon, embed, mean_embed, pos, cfg, cfg.budget + len(likely))
        if cfg.policy == "exhaustive" or (cfg.fallback and pos.best > epsilon):
            _exhaustive_search(state, target[t], epsilon, pos, cfg, order)
        token = int(pos.ids[0])
        result.tokens.append(token)
        result.distances.append(pos.best)
        result.accepted.append(pos.best <= epsilon)
        result.topk_tokens.append(pos.ids.tolist())
        result.topk_distances.append(pos.dist.tolist())
        result.tried.append(pos.tried)
        result.exhaustive.append(pos.tried == weight.shape[0])
        state.extend([token])
        if prior is not None:
            prior.extend([token])
    return result
