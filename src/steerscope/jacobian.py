"""Exact Jacobians of a model's output with respect to the residual stream, and their spectra.

Convention: ``δ ∈ R^d`` is added to the output of decoder block ℓ (layer ℓ, see
:class:`steerscope.models.LoadedModel`) at one token position ``t`` of a prompt; the readout is
read at the last position (next-token prediction) or at ``t`` itself. Every Jacobian is taken at
``δ = 0`` by autograd, never by finite differences.

How it is computed. Write the output as ``logits = c(W z)`` with ``z ∈ R^d`` the input of the
output embedding (after the final norm), ``W`` the ``V × d`` unembedding and ``c`` the optional
logit soft-cap. Then ``J_logits = D W J_z`` with ``J_z = ∂z/∂δ`` (``d × d``) and ``D`` the
diagonal derivative of ``c`` (identity without a cap). ``J_z`` is computed in reverse mode: one
forward pass and ``d`` backward passes batched with ``is_grads_batched`` (vmap), through the part
of the network that depends on ``δ`` only (the weights are frozen, so nothing before layer ℓ is
recorded). The ``V × d`` Jacobian is never formed: its Gram matrix is
``J^T J = J_z^T (W^T D² W) J_z`` and ``W^T W`` is computed once per model. For log-probabilities
``J_logp = (I − 1 pᵀ) J_logits`` and the Gram matrix follows in closed form (:func:`head_gram`).
Reverse mode beats forward mode here because ``d`` backward passes over one token cost about the
same as ``d`` tangents, while the head factorisation keeps the vocabulary out of the loop.

Spectra: the squared singular values of a stack of Jacobians ``[J_1; …; J_n]`` are the
eigenvalues of ``Σ_i J_iᵀ J_i`` (accumulated in float64), so the *common* kernel over a prompt
distribution is the null space of the summed Gram matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from steerscope import hooks
from steerscope.errors import SteerscopeError
from steerscope.models.kvcache import output_cache, with_cache
from steerscope.models.loading import LoadedModel, onloaded_weight

Readout = Literal["logits", "logprobs"]
TOLERANCES = (1e-2, 1e-3, 1e-4)
#: Backward rows × positions in the autograd graph per batched backward pass. The memory of one
#: batched pass grows with both (on SmolLM2, 128 positions at 576 rows: +2.4 GiB; at 64 rows:
#: +1.0 GiB); longer graphs get fewer rows per pass, so memory stays near that of a short prompt.
ROW_TOKENS = 576 * 32


@dataclass
class HeadJacobian:
    """``J_z = ∂z/∂δ`` (``[d, d]``) at one prompt and position, with what the head needs.

    ``z`` is the output-embedding input at the readout position; ``probs`` the next-token
    distribution there (``[V]``, float64); ``cap_grad`` the soft-cap derivative ``[V]`` or None.
    """

    jz: torch.Tensor
    probs: torch.Tensor
    cap_grad: torch.Tensor | None


@contextmanager
def _frozen(lm: LoadedModel) -> Iterator[None]:
    """Weights without gradients for the duration (restored afterwards).

    Parameters are looked up by name again on exit: accelerate's hooks replace offloaded (meta)
    parameters on every call, carrying their flag over, and one replaced under inference mode is
    an inference tensor, whose flag can only be set back inside inference mode.
    """
    flags = {name: p.requires_grad for name, p in lm.model.named_parameters()}
    lm.model.requires_grad_(False)
    try:
        yield
    finally:
        for name, p in lm.model.named_parameters():
            with torch.inference_mode(p.is_inference()):
                p.requires_grad_(flags[name])


def _check_precision(lm: LoadedModel) -> None:
    if lm.dtype not in (torch.float32, torch.float64):
        raise SteerscopeError(f"Jacobians are computed in float32 or float64; the model is in {lm.dtype} (load it with --dtype float32)")


def _softcap(lm: LoadedModel) -> float | None:
    cap = getattr(getattr(lm.model, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None


def unembedding(lm: LoadedModel) -> torch.Tensor:
    """The output-embedding matrix ``W`` (``[V, d]``), read back from accelerate's offload store if offloaded."""
    head = lm.model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise SteerscopeError(f"{lm.name} has no linear output embedding; its logit Jacobian is not supported")
    return onloaded_weight(head)


def _positions(n_tokens: int, positions: Sequence[int]) -> list[int]:
    out = []
    for p in positions:
        idx = p + n_tokens if p < 0 else p
        if not 0 <= idx < n_tokens:
            raise SteerscopeError(f"position {p} is outside a prompt of {n_tokens} tokens")
        out.append(idx)
    return out


def _body(lm: LoadedModel) -> torch.nn.Module:
    """The model without its output head; its ``last_hidden_state`` is the head's input ``z``."""
    return lm.model.base_model


def _jacobian(
    lm: LoadedModel, ids: Sequence[int], layer: int, pos: int, read: Callable[[Any], torch.Tensor], chunk: int,
    spread: bool = False,
) -> torch.Tensor:
    """``∂ read(output) / ∂δ`` (``[d, d]``, model dtype) for δ added to layer ``layer`` at ``pos``
    (``spread``: at ``pos`` and every later position, the same δ, so the result is ``Σ_t J_t``).

    ``read`` maps the output of the model body (without the head) on the tokens ``ids[pos:]`` to
    ``[d]``. Tokens before ``pos`` go into a no-grad KV cache first, so only the positions that can
    depend on δ enter the autograd graph. One forward pass, then ``d`` backward passes, ``chunk``
    at a time (fewer when the graph is long, see :data:`ROW_TOKENS`), batched with
    ``is_grads_batched`` (vmap over the backward graph).
    """
    lm.check_context(ids)
    input_ids = torch.tensor([list(ids)], device=lm.device)
    chunk = max(1, min(chunk, ROW_TOKENS // (len(ids) - pos)))
    body = _body(lm)
    delta = torch.zeros(lm.d_model, dtype=lm.dtype, device=lm.device, requires_grad=True)

    def add_delta(h: torch.Tensor) -> torch.Tensor:
        d = delta.to(h.device)  # the block may run on another device than the embedding
        return h + d if spread else torch.cat([h[:, :1] + d, h[:, 1:]], dim=1)

    with _frozen(lm):
        with torch.no_grad():
            past = output_cache(body(input_ids=input_ids[:, :pos], use_cache=True)) if pos > 0 else None
        with hooks.edit(lm, {layer: add_delta}), torch.enable_grad():
            out = read(body(input_ids=input_ids[:, pos:], **with_cache(body, past)))
        eye = torch.eye(out.shape[0], dtype=out.dtype, device=out.device)
        rows = [
            torch.autograd.grad(out, delta, grad_outputs=eye[s:s + chunk], retain_graph=True, is_grads_batched=True)[0]
            for s in range(0, out.shape[0], chunk)
        ]
    return torch.cat(rows).detach()


def head_jacobian(
    lm: LoadedModel,
    ids: Sequence[int],
    layer: int,
    position: int = -1,
    readout_position: Literal["last", "same"] = "last",
    chunk: int = 576,
    spread: bool = False,
) -> HeadJacobian:
    """``J_z`` for δ added to layer ``layer`` at token ``position`` (negative counts from the end);
    with ``spread``, the same δ at ``position`` and every later one (``position=0``: the Jacobian of
    steering every position, ``Σ_t J_t``).

    The readout is at the last position (next token) or at ``position`` itself (``"same"``).
    """
    _check_precision(lm)
    layer = lm.check_layer(layer)
    (pos,) = _positions(len(ids), [position])
    rel = len(ids) - 1 if readout_position == "last" else pos
    jz = _jacobian(lm, ids, layer, pos, lambda out: out.last_hidden_state[0, rel - pos], chunk, spread)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([list(ids)], device=lm.device)).logits[0, rel].double().cpu()
    cap = _softcap(lm)
    cap_grad = 1 - (logits / cap).tanh() ** 2 if cap else None  # logits are already capped: c·tanh(x/c)
    return HeadJacobian(jz=jz, probs=torch.softmax(logits, dim=-1), cap_grad=cap_grad)


def logit_jacobian(lm: LoadedModel, ids: Sequence[int], layer: int, position: int = -1, readout: Readout = "logits") -> torch.Tensor:
    """The explicit ``V × d`` Jacobian of logits (or log-probabilities) w.r.t. δ (model dtype).

    Materialises the vocabulary; meant for checks and small models. Use :func:`prompt_gram` for spectra.
    """
    hj = head_jacobian(lm, ids, layer, position)
    w = unembedding(lm).to(hj.jz.dtype)
    j = w @ hj.jz
    if hj.cap_grad is not None:
        j = hj.cap_grad.to(j.dtype).unsqueeze(1) * j
    if readout == "logprobs":
        j = j - hj.probs.to(j.dtype) @ j
    return j


class HeadGram:
    """``Wᵀ W`` and ``Wᵀ 1`` of the unembedding in float64, computed once per model."""

    def __init__(self, lm: LoadedModel, chunk: int = 16384):
        self.w = unembedding(lm)
        d = self.w.shape[1]
        self.k = torch.zeros(d, d, dtype=torch.float64)
        self.s = torch.zeros(d, dtype=torch.float64)
        for start in range(0, self.w.shape[0], chunk):
            block = self.w[start:start + chunk].double().cpu()
            self.k += block.T @ block
            self.s += block.sum(dim=0)


def head_gram(hg: HeadGram, hj: HeadJacobian, readout: Readout = "logits") -> torch.Tensor:
    """``Mᵀ M`` (``[d, d]`` float64) for the head ``M = ∂(readout)/∂z`` at one prompt.

    Logits: ``M = D W``. Log-probabilities: ``M = (I − 1 pᵀ) D W``, so with ``μ = (DW)ᵀ p`` and
    ``s = (DW)ᵀ 1``: ``MᵀM = (DW)ᵀ(DW) − μ sᵀ − s μᵀ + V μ μᵀ``.
    """
    if hj.cap_grad is None:
        k, s = hg.k, hg.s
        mu = hg.w.double().cpu().T @ hj.probs.cpu() if readout == "logprobs" else None
    else:
        dw = hj.cap_grad.cpu().unsqueeze(1) * hg.w.double().cpu()
        k, s = dw.T @ dw, dw.sum(dim=0)
        mu = dw.T @ hj.probs.cpu() if readout == "logprobs" else None
    if mu is None:
        return k
    vocab = hg.w.shape[0]
    return k - torch.outer(mu, s) - torch.outer(s, mu) + vocab * torch.outer(mu, mu)


def prompt_gram(hg: HeadGram, hj: HeadJacobian, readout: Readout = "logits") -> torch.Tensor:
    """``Jᵀ J`` (``[d, d]`` float64) of one prompt's logit or log-prob Jacobian."""
    jz = hj.jz.double().cpu()
    return jz.T @ head_gram(hg, hj, readout) @ jz


def layer_map(lm: LoadedModel, ids: Sequence[int], layer: int, target: int, chunk: int = 576) -> torch.Tensor:
    """``Φ = ∂h_target/∂h_layer`` at the last position (``[d, d]``, model dtype), ``target > layer``.

    δ is added at the last position of layer ``layer``; the output of block ``target`` is read at
    the same position (earlier positions do not depend on δ).
    """
    _check_precision(lm)
    layer, target = lm.check_layer(layer), lm.check_layer(target)
    if target <= layer:
        raise SteerscopeError(f"target layer {target} must come after layer {layer}")
    with hooks.record(lm, [target], detach=False) as seen:
        return _jacobian(lm, ids, layer, len(ids) - 1, lambda _out: seen[target][0, -1], chunk)


# --- spectra -----------------------------------------------------------------------------------

def singular_values(gram: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values (descending, float64) of any ``J`` with ``Jᵀ J = gram``."""
    lam = np.linalg.eigvalsh(np.asarray(gram, dtype=np.float64))[::-1]
    return np.sqrt(np.clip(lam, 0.0, None))


def effective_rank(sigma: np.ndarray, tol: float) -> int:
    """Number of singular values above ``tol`` × the largest."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return int((sigma > tol * sigma.max()).sum()) if sigma.size and sigma.max() > 0 else 0


def inert_fraction(sigma: np.ndarray, tol: float) -> float:
    """Fraction of directions whose gain is at most ``tol`` × the largest gain."""
    return 1.0 - effective_rank(sigma, tol) / len(sigma)


def null_space(gram: torch.Tensor | np.ndarray, tol: float) -> np.ndarray:
    """Orthonormal basis ``[d, k]`` of directions with gain ≤ ``tol`` × the largest gain."""
    return _null_bases(gram, [tol])[0]


def _null_bases(gram: torch.Tensor | np.ndarray, tolerances: Sequence[float]) -> list[np.ndarray]:
    """:func:`null_space` at each of ``tolerances`` from one eigendecomposition."""
    lam, vecs = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    sigma = np.sqrt(np.clip(lam, 0.0, None))
    return [vecs[:, sigma <= tol * sigma.max()] if sigma.max() > 0 else vecs for tol in tolerances]


def largest_angle_cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the largest principal angle between the spans of orthonormal ``a`` ``[d, k]`` and
    ``b`` ``[d, m]``: the smallest singular value of ``aᵀ b`` (1 = the smaller space lies in the other)."""
    return float(np.clip(np.linalg.svd(a.T @ b, compute_uv=False).min(), 0.0, 1.0))


def spectrum_summary(sigma: np.ndarray, tolerances: Sequence[float] = TOLERANCES) -> dict:
    """Effective ranks and inert fractions at ``tolerances``, stable rank, extreme gains."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return {
        "d": int(len(sigma)),
        "sigma_max": float(sigma.max()),
        "sigma_min": float(sigma.min()),
        "condition": float(sigma.max() / sigma.min()) if sigma.min() > 0 else None,
        "stable_rank": float((sigma ** 2).sum() / sigma.max() ** 2) if sigma.max() > 0 else 0.0,
        "effective_rank": {str(t): effective_rank(sigma, t) for t in tolerances},
        "inert_fraction": {str(t): inert_fraction(sigma, t) for t in tolerances},
    }


def null_space_angles(grams: Sequence[torch.Tensor | np.ndarray], tolerances: Sequence[float]) -> list[dict]:
    """Principal angles between per-prompt null spaces at each of ``tolerances``, over consecutive
    prompt pairs (one eigendecomposition per prompt).

    Returns, per tolerance, per-prompt null dimensions and, for pairs where both are non-empty, the
    cosine of the largest principal angle (1 = one null space contains the other's directions).
    """
    bases = [_null_bases(g, tolerances) for g in grams]
    out = []
    for i, tol in enumerate(tolerances):
        spaces = [b[i] for b in bases]
        cosines = [largest_angle_cos(a, b) for a, b in zip(spaces, spaces[1:]) if a.shape[1] and b.shape[1]]
        out.append({"tol": tol, "null_dims": [int(b.shape[1]) for b in spaces], "pairs": len(cosines),
                    "min_cos_largest_angle": min(cosines) if cosines else None,
                    "mean_cos_largest_angle": float(np.mean(cosines)) if cosines else None})
    return out


def covariance_spectrum(acts: torch.Tensor, tolerances: Sequence[float] = TOLERANCES) -> dict:
    """Eigenvalues of the activation covariance (``acts``: ``[N, d]``), descending, float64.

    This is where activations *vary*, not which directions the output ignores; it has rank at
    most ``N − 1``. Ranks count eigenvalues above ``tol`` × the largest, on standard deviations.
    """
    x = acts.double().cpu().numpy()
    x = x - x.mean(axis=0)
    lam = np.clip(np.linalg.eigvalsh(x.T @ x / max(1, len(x) - 1))[::-1], 0.0, None)
    sd = np.sqrt(lam)
    total = lam.sum()
    return {
        "n_samples": int(len(x)), "eigenvalues": lam.tolist(),
        "effective_rank": {str(t): effective_rank(sd, t) for t in tolerances},
        "low_variance_fraction": {str(t): inert_fraction(sd, t) for t in tolerances},
        "variance_top10": float(lam[:10].sum() / total) if total > 0 else None,
    }


def vector_gain(gram: torch.Tensor | np.ndarray, v: torch.Tensor | np.ndarray, n_prompts: int) -> dict:
    """RMS gain per prompt of ``v`` and of its orthogonal complement through the stacked Jacobian.

    ``gain(u) = sqrt(uᵀ G u / n)`` for unit ``u``; the complement's gains are the singular values of
    ``G`` restricted to ``v^⊥``. ``random_mean`` is the gain of an average direction
    (``sqrt(tr G / (d n))``), the natural yardstick. ``complement_inert_fraction`` counts
    complement directions with gain ≤ t × the largest; ``complement_below_v`` those ≤ t × v's own gain.
    """
    g = np.asarray(gram, dtype=np.float64)
    u = np.asarray(v, dtype=np.float64)
    u = u / np.linalg.norm(u)
    d = len(u)
    basis = np.linalg.svd(np.eye(d) - np.outer(u, u))[0][:, : d - 1]  # orthonormal basis of v^⊥
    comp = np.sqrt(np.clip(np.linalg.eigvalsh(basis.T @ g @ basis), 0.0, None))[::-1] / np.sqrt(n_prompts)
    gain_v = float(np.sqrt(max(u @ g @ u, 0.0) / n_prompts))
    return {
        "gain_v": gain_v,
        "random_mean": float(np.sqrt(np.trace(g) / (d * n_prompts))),
        "complement_max": float(comp.max()), "complement_min": float(comp.min()),
        "complement_rms": float(np.sqrt((comp ** 2).mean())),
        "complement_inert_fraction": {str(t): inert_fraction(comp, t) for t in TOLERANCES},
        "complement_below_v": {str(t): float(np.mean(comp <= t * gain_v)) for t in TOLERANCES},
    }
