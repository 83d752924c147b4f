"""Distributional readout: how far apart are the next-token distributions of two conditions?

Both conditions are teacher-forced on the same continuation after the same prompt, so the
comparison sees every direction that changes any next-token probability, not just the ones a
scalar trait score can register. A *condition* is a steering vector and a strength (``None`` or
α = 0: unsteered); all conditions of a prompt run as the rows of one batched forward pass.

Divergences are in nats, per continuation token, from the reference condition ``r`` to each
condition ``c``: ``KL(p_r ‖ p_c)`` and the Jensen–Shannon divergence (symmetric, ≤ ln 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steerscope.capture import forward
from steerscope.encoding import ChatMode, Item, encode_prompt, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.intervene import steer_rows
from steerscope.models.loading import LoadedModel

# Upper bound on logits held at once (rows × positions × vocabulary), about 0.8 GB in float32.
MAX_LOGIT_ELEMENTS = 200_000_000


@dataclass
class Divergences:
    """Per-token divergences from the reference condition.

    ``kl[c][p]`` and ``js[c][p]`` are ``[L_p]`` tensors (one value per continuation token of
    prompt ``p``) for condition ``c``; :meth:`mean` averages over tokens per prompt.
    """

    kl: list[list[torch.Tensor]]
    js: list[list[torch.Tensor]]
    reference: int

    def mean(self, which: str = "kl") -> torch.Tensor:
        """``[C, P]``: mean per-token divergence of each condition on each prompt."""
        values = self.kl if which == "kl" else self.js
        return torch.stack([torch.stack([t.mean() for t in row]) for row in values])


def kl_js(ref_logp: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``KL(p_ref ‖ p)`` and ``JS(p_ref, p)`` over the last axis of log-probability tensors."""
    p_ref = ref_logp.exp()
    kl = (p_ref * (ref_logp - logp)).sum(-1)
    log_m = torch.logaddexp(ref_logp, logp) - torch.log(torch.tensor(2.0, dtype=logp.dtype))
    js = 0.5 * (p_ref * (ref_logp - log_m)).sum(-1) + 0.5 * (logp.exp() * (logp - log_m)).sum(-1)
    return kl.clamp(min=0), js.clamp(min=0)


def _encode(lm: LoadedModel, prompt: Item, continuation: str, chat: ChatMode) -> tuple[list[int], int]:
    ids = encode_prompt(lm.tokenizer, prompt, chat)
    cont = list(lm.tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not cont:
        raise SteerscopeError(f"empty continuation for prompt {str(prompt)[:40]!r}")
    return ids + cont, len(cont)


def condition_divergences(
    lm: LoadedModel,
    prompts: Sequence[Item],
    continuations: Sequence[str],
    vectors: Sequence[object | None],
    alphas: Sequence[float],
    reference: int = 0,
    positions: str = "all",
    chat: ChatMode = "auto",
) -> Divergences:
    """Teacher-forced divergences of every condition ``(vectors[c], alphas[c])`` from condition
    ``reference``, on each prompt followed by its continuation (float32 logits, float64 maths)."""
    if len(prompts) != len(continuations):
        raise SteerscopeError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
    if len(vectors) != len(alphas) or not vectors:
        raise SteerscopeError("give one strength per condition and at least one condition")
    if not 0 <= reference < len(vectors):
        raise SteerscopeError(f"reference condition {reference} out of range 0..{len(vectors) - 1}")
    encoded = [_encode(lm, p, c, chat) for p, c in zip(prompts, continuations)]
    n_cond = len(vectors)
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    kl = [[None] * len(prompts) for _ in range(n_cond)]
    js = [[None] * len(prompts) for _ in range(n_cond)]
    start = 0
    while start < len(encoded):
        longest = max(n for _, n in encoded[start:])
        per_prompt = max(1, MAX_LOGIT_ELEMENTS // (n_cond * (longest + 1) * vocab))
        chunk = list(range(start, min(start + per_prompt, len(encoded))))
        _chunk_divergences(lm, encoded, chunk, vectors, alphas, reference, positions, kl, js)
        start = chunk[-1] + 1
    return Divergences(kl, js, reference)  # type: ignore[arg-type]


def _chunk_divergences(lm, encoded, chunk, vectors, alphas, reference, positions, kl, js) -> None:
    """One batched pass over ``chunk`` prompts × all conditions (row = condition-major)."""
    n_cond = len(vectors)
    rows = [encoded[i][0] for _ in range(n_cond) for i in chunk]
    steering = steer_rows(lm, [v for v in vectors for _ in chunk], [a for a in alphas for _ in chunk], positions)
    batch = pad_batch(rows, lm.tokenizer.pad_token_id, "left")
    keep = max(encoded[i][1] for i in chunk) + 1
    with steering, torch.inference_mode():
        try:
            logits = forward(lm, batch, logits_to_keep=keep).logits
        except TypeError:
            logits = forward(lm, batch).logits
    logits = logits[:, -keep:]
    for j, i in enumerate(chunk):
        n = encoded[i][1]
        # Positions predicting the continuation's tokens: the last n + 1 except the final one.
        rows_logp = torch.log_softmax(logits[j::len(chunk), keep - n - 1:keep - 1].double(), dim=-1)  # [C, n, V]
        for c in range(n_cond):
            k, s = kl_js(rows_logp[reference], rows_logp[c])
            kl[c][i], js[c][i] = k.cpu(), s.cpu()
