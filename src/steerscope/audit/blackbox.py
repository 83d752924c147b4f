"""Black-box probes of steered behaviour: how near does a prompt alone get to what steering does?

The target, per audited prompt ``p_i``: the steered model's greedy completion ``c_i`` (``α·v`` added at
layer ℓ at every position). Each probe is a prompt given to the *unsteered* model (the probes of
arXiv 2604.09839 §2.6; many-shot is its Figure 4):

* ``unsteered``: ``p_i`` itself (the reference every probe should beat);
* ``instruction``: the trait's instruction for α's pole, then ``p_i``;
* ``N-shot``: ``N`` demonstrations (other prompts with their *steered* completions) as earlier chat
  turns, then ``p_i`` (``N`` = 1 … 32);
* ``copy``: the model asked to repeat ``c_i`` word for word;
* ``prefill``: ``p_i`` with the first ``k`` tokens of ``c_i`` already in the reply (compared on the rest);
* ``prompt tuning``: ``m`` soft input embeddings inserted before the user's words, trained by Adam on
  the cross-entropy of the demonstrations' steered completions, then projected to the nearest tokens
  (``tuned prompt``, a real prompt); the soft version (``tuned soft``, not a prompt) is reported
  beside it, teacher-forced only.

Readouts, teacher-forced on ``c_i``: the mean per-token ``KL(p_steered ‖ p_probe)``; the fraction of
tokens where the probe's most likely next token is ``c_i``'s (top-1 agreement); the mean distance
and cosine of its states at the capture layer over ``c_i`` to the steered model's states there. And
the trait score of the probe's own greedy completion. These are black-box results: they are kept
apart from the white-box ones (steering itself, the inversion's nearest prompt), so "the behaviour is
reachable by a prompt, the state is not" is visible.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerscope.encoding import Message, encode_prompt, prompt_user_span
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate_from_ids
from steerscope.hooks import record
from steerscope.intervene import Steering, steer
from steerscope.invert import embedding_space
from steerscope.models.loading import LoadedModel
from steerscope.score.base import Scorer
from steerscope.traitspec import TraitSpec

COPY_INSTRUCTION = "Repeat the following text exactly, word for word, and write nothing else:\n\n"


@dataclass(frozen=True)
class BlackBoxSettings:
    """``prompts`` audited prompts (0: no black-box probes); ``shots``: the demonstration counts,
    drawn from ``max(shots)`` other prompts, which also train the tuned prompt; ``max_new_tokens`` of
    every greedy completion; ``prefill_tokens`` ``k``; prompt tuning: ``tune_tokens`` ``m`` soft
    embeddings, ``tune_steps`` Adam steps of ``tune_batch`` demonstrations at learning rate ``tune_lr``
    × the RMS norm of the input embeddings per coordinate, initialised from random tokens (``seed``)."""

    prompts: int = 0
    shots: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    max_new_tokens: int = 24
    prefill_tokens: int = 4
    tune_tokens: int = 10
    tune_steps: int = 200
    tune_batch: int = 8
    tune_lr: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prompts < 0 or not self.shots or min(self.shots) < 1:
            raise SteerscopeError("black-box probes need prompts ≥ 0 and shot counts ≥ 1")
        if self.prompts and not 0 < self.prefill_tokens < self.max_new_tokens:
            raise SteerscopeError(f"the prefill probe needs 1 ≤ prefill_tokens < max_new_tokens, got {self.prefill_tokens} "
                                  f"and {self.max_new_tokens}")
        if min(self.tune_tokens, self.tune_steps, self.tune_batch) < 1 or not (self.tune_lr > 0 and math.isfinite(self.tune_lr)):
            raise SteerscopeError("prompt tuning needs tune_tokens, tune_steps, tune_batch ≥ 1 and a finite tune_lr > 0")

    @property
    def demos(self) -> int:
        return max(self.shots)

    def split(self, pool: Sequence[str]) -> tuple[list[str], list[str]]:
        """``(audited, demonstrations)``: the first ``prompts`` of ``pool`` and the next ``demos``."""
        need = self.prompts + self.demos
        if len(pool) < need:
            raise SteerscopeError(f"the black-box probes need {need} prompts ({self.prompts} audited + {self.demos} demonstrations), "
                                  f"got {len(pool)}; lower the prompt or shot counts")
        return list(pool[: self.prompts]), list(pool[self.prompts: need])


def probe_pool(spec: TraitSpec) -> list[str]:
    """The prompts the probes draw from: the trait's in-distribution prompts first (the audited ones), then
    those of its other environments (demonstrations), each once."""
    envs = ["in_distribution", *(env for env in spec.prompts if env != "in_distribution")]
    return list(dict.fromkeys(p for env in envs for p in spec.env_prompts(env)))


# --- teacher-forced readouts -------------------------------------------------------------------

def _embed(lm: LoadedModel, ids: Sequence[int]) -> torch.Tensor:
    """``[T, d]`` inputs fed to block 0 for ``ids`` (the embedding module's output, scaling included)."""
    with torch.no_grad():
        return lm.model.get_input_embeddings()(torch.tensor([list(ids)], device=lm.device))[0].float()


def _tail_logits(lm: LoadedModel, embeds: torch.Tensor, n: int) -> torch.Tensor:
    """``[n, V]`` logits predicting the last ``n`` inputs of ``embeds`` (``[T, d]``)."""
    t = embeds.shape[0]
    out = lm.model(inputs_embeds=embeds[None].to(lm.device, lm.dtype), attention_mask=torch.ones((1, t), dtype=torch.long, device=lm.device),
                   position_ids=torch.arange(t, device=lm.device)[None], use_cache=False, logits_to_keep=n + 1)
    return out.logits[0, -(n + 1):-1].float()


def forced(lm: LoadedModel, embeds: torch.Tensor, n: int, layer: int, steering: Steering | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log-probs [n, V], states [n, d])`` over the last ``n`` inputs of ``embeds`` (``[T, d]``):
    the next-token distributions that predict them and their states at ``layer``."""
    lm.check_context(range(embeds.shape[0]))
    with torch.no_grad(), steering if steering is not None else nullcontext(), record(lm, [layer]) as out:
        logp = _tail_logits(lm, embeds, n).log_softmax(-1)
    return logp.cpu(), out[layer][0, -n:].float().cpu()


def readouts(ref: tuple[torch.Tensor, torch.Tensor], probe: tuple[torch.Tensor, torch.Tensor], cont: Sequence[int]) -> dict[str, float]:
    """KL(ref ‖ probe) per token, top-1 agreement with ``cont``, state distance and cosine (means over tokens)."""
    (ref_logp, ref_h), (logp, h) = ref, probe
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    agree = (logp.argmax(-1) == torch.tensor(list(cont))).float()
    dist = (h - ref_h).norm(dim=-1)
    return {"kl": float(kl.mean()), "top1_agreement": float(agree.mean()), "state_distance": float(dist.mean()),
            "state_cosine": float(torch.nn.functional.cosine_similarity(h, ref_h, dim=-1).mean()), "token_distances": dist.tolist()}


# --- probes ------------------------------------------------------------------------------------

@dataclass
class Probe:
    """One probe for one prompt: the prompt ``ids`` for the unsteered model (or ``embeds`` ``[T, d]`` for
    a soft one) and ``skip``, the tokens of ``c_i`` already given in the prompt (prefill)."""

    ids: list[int] | None
    skip: int = 0
    embeds: torch.Tensor | None = None

    def inputs(self, lm: LoadedModel, cont: Sequence[int]) -> torch.Tensor:
        """``[T, d]`` inputs of the probe followed by the tokens ``cont``."""
        if self.embeds is not None:
            return torch.cat([self.embeds, _embed(lm, cont)])
        assert self.ids is not None
        return _embed(lm, [*self.ids, *cont])


def _tokens(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def few_shot(lm: LoadedModel, demos: Sequence[tuple[str, str]], prompt: str) -> list[int]:
    """Generation prompt of ``demos`` (``(prompt, completion)`` pairs) as earlier chat turns, then ``prompt``."""
    messages: list[Message] = []
    for q, a in demos:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return encode_prompt(lm.tokenizer, [*messages, {"role": "user", "content": prompt}])


@dataclass
class TunedPrompt:
    """Soft embeddings ``[m, d]``, their nearest tokens, and the training loss (mean cross-entropy per token) per step."""

    soft: torch.Tensor
    tokens: list[int]
    losses: list[float]

    def insert(self, lm: LoadedModel, prompt: str, soft: bool) -> Probe:
        """The probe of ``prompt`` with the tuned embeddings (``soft``) or tokens before its user words."""
        ids = encode_prompt(lm.tokenizer, prompt)
        at = prompt_user_span(lm.tokenizer, prompt, ids)[0]
        if not soft:
            return Probe(ids[:at] + self.tokens + ids[at:])
        return Probe(None, embeds=torch.cat([_embed(lm, ids[:at]), self.soft.to(lm.device), _embed(lm, ids[at:])]))


def tune_prompt(lm: LoadedModel, train: Sequence[tuple[str, list[int]]], settings: BlackBoxSettings) -> TunedPrompt:
    """Prompt tuning: soft embeddings before the user's words of each training prompt, trained on the
    cross-entropy of its completion tokens (``train``: ``(prompt, completion ids)``), then projected."""
    space = embedding_space(lm)
    weight, scale = space.weight, space.scale
    gen = torch.Generator().manual_seed(settings.seed)
    rms = space.rms
    start = torch.randint(0, weight.shape[0], (settings.tune_tokens,), generator=gen)
    e = (weight[start.to(weight.device)].float() * scale).clone().requires_grad_(True)
    opt = torch.optim.Adam([e], lr=settings.tune_lr * rms / math.sqrt(lm.d_model))
    rows = []
    for prompt, cont in train:
        ids = encode_prompt(lm.tokenizer, prompt)
        at = prompt_user_span(lm.tokenizer, prompt, ids)[0]
        lm.check_context([*ids, *cont, *start.tolist()])
        rows.append((_embed(lm, ids[:at]), _embed(lm, ids[at:] + cont), torch.tensor(cont, device=lm.device)))
    losses = []
    for _ in range(settings.tune_steps):
        pick = torch.randperm(len(rows), generator=gen)[: settings.tune_batch].tolist()
        grad, total = torch.zeros_like(e), 0.0
        for j in pick:
            head, tail, cont = rows[j]
            with torch.enable_grad():
                logits = _tail_logits(lm, torch.cat([head, e, tail]), len(cont))
                loss = torch.nn.functional.cross_entropy(logits, cont) / len(pick)
                grad += torch.autograd.grad(loss, e)[0]
            total += float(loss.detach())
        e.grad = grad
        opt.step()
        losses.append(total)
    soft = e.detach()
    tokens = [int(space.nearest(row / scale, 1)[0]) for row in soft]
    return TunedPrompt(soft.cpu(), tokens, losses)


def _probes(lm: LoadedModel, prompts: Sequence[str], conts: Sequence[list[int]], texts: Sequence[str], demos: Sequence[tuple[str, str]],
            instruction: str | None, tuned: TunedPrompt, settings: BlackBoxSettings) -> dict[str, list[Probe]]:
    """Every probe of every audited prompt, by column name."""
    base = [encode_prompt(lm.tokenizer, p) for p in prompts]
    columns: dict[str, list[Probe]] = {"unsteered": [Probe(ids) for ids in base]}
    if instruction is not None:
        columns["instruction"] = [Probe(encode_prompt(lm.tokenizer, f"{instruction}\n\n{p}")) for p in prompts]
    for n in settings.shots:
        columns[f"{n}-shot"] = [Probe(few_shot(lm, demos[:n], p)) for p in prompts]
    columns["copy"] = [Probe(encode_prompt(lm.tokenizer, COPY_INSTRUCTION + t)) for t in texts]
    k = settings.prefill_tokens
    columns["prefill"] = [Probe(ids + c[:k], skip=k) for ids, c in zip(base, conts)]
    columns["tuned prompt"] = [tuned.insert(lm, p, soft=False) for p in prompts]
    columns["tuned soft"] = [tuned.insert(lm, p, soft=True) for p in prompts]
    return columns


def _column(lm: LoadedModel, probes: Sequence[Probe], refs, conts: Sequence[list[int]], layer: int, scorer: Scorer | None,
            config: GenerationConfig) -> dict[str, Any]:
    """Readouts of one column: means over prompts (state distance: median; per prompt, None where the prefill
    left no token to compare), and its greedy completions' trait score."""
    rows: list[dict[str, float] | None] = []
    for probe, ref, cont in zip(probes, refs, conts):
        rest = cont[probe.skip:]
        got = forced(lm, probe.inputs(lm, rest), len(rest), layer) if rest else None
        rows.append(readouts((ref[0][probe.skip:], ref[1][probe.skip:]), got, rest) if got is not None else None)
    done = [r for r in rows if r is not None]
    out: dict[str, Any] = {"n": len(done), "skip": probes[0].skip if probes else 0,
                           "token_distances": [r["token_distances"] if r else None for r in rows]}
    if done:
        out |= {"kl_from_steered": float(np.mean([r["kl"] for r in done])), "top1_agreement": float(np.mean([r["top1_agreement"] for r in done])),
                "state_distance": statistics.median(r["state_distance"] for r in done),
                "state_cosine": float(np.mean([r["state_cosine"] for r in done]))}
    soft = any(p.embeds is not None for p in probes)
    out["texts"] = None if soft else generate_from_ids(lm, [p.ids for p in probes], config)  # type: ignore[misc]
    out["trait_score"] = float(np.mean(scorer(out["texts"]))) if scorer is not None and out["texts"] else None
    return out


def _over(mine: Sequence[list[float] | None], base: Sequence[list[float] | None], skip: int) -> float | None:
    """Median over prompts of the probe's mean state distance over the unsteered prompt's, on the same tokens
    (those after the first ``skip``); None when no prompt has both."""
    ratios = [float(np.mean(a) / np.mean(b[skip:])) for a, b in zip(mine, base) if a and b and np.mean(b[skip:]) > 0]
    return statistics.median(ratios) if ratios else None


def black_box_probes(lm: LoadedModel, vector: torch.Tensor, layer: int, alpha: float, prompts: Sequence[str], demo_prompts: Sequence[str],
                     capture_layer: int, instructions: tuple[str, str] | None, scorer: Scorer | None,
                     settings: BlackBoxSettings) -> dict[str, Any]:
    """Every probe's readouts against the steered completions of ``prompts`` (``vector`` ``[d]`` at ``layer``,
    strength ``alpha``); ``demo_prompts`` (at least ``max(shots)``) give the demonstrations and train the tuned prompt."""
    if len(demo_prompts) < settings.demos or not prompts:
        raise SteerscopeError(f"the black-box probes need ≥ 1 prompt and {settings.demos} demonstration prompts, got "
                              f"{len(prompts)} and {len(demo_prompts)}")
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, min_new_tokens=1)
    steering = steer(lm, {layer: vector.float()}, alpha)
    every = list(prompts) + list(demo_prompts[: settings.demos])
    texts = generate_from_ids(lm, [encode_prompt(lm.tokenizer, p) for p in every], config, steering)
    conts = [_tokens(lm, t) for t in texts]
    n = len(prompts)
    refs = [forced(lm, _embed(lm, encode_prompt(lm.tokenizer, p) + c), len(c), capture_layer, steering) if c else None
            for p, c in zip(prompts, conts[:n])]
    demos = list(zip(every[n:], texts[n:]))
    tuned = tune_prompt(lm, [(p, c) for p, c in zip(every[n:], conts[n:]) if c], settings)
    instruction = instructions[0 if alpha >= 0 else 1] if instructions else None
    columns = _probes(lm, prompts, conts[:n], texts[:n], demos, instruction, tuned, settings)
    keep = [i for i, r in enumerate(refs) if r is not None]
    results = {name: _column(lm, [probes[i] for i in keep], [refs[i] for i in keep], [conts[i] for i in keep], capture_layer, scorer, config)
               for name, probes in columns.items()}
    base = results["unsteered"].pop("token_distances")
    results["unsteered"]["state_distance_over_unsteered"] = _over(base, base, 0)
    for name, col in results.items():
        if name != "unsteered":
            col["state_distance_over_unsteered"] = _over(col.pop("token_distances"), base, col["skip"])
    return {
        "settings": settings.__dict__ | {"shots": list(settings.shots)}, "n_prompts": n, "n_compared": len(keep),
        "steered_texts": texts[:n], "target_trait_score": float(np.mean(scorer(texts[:n]))) if scorer is not None else None,
        "instruction": instruction, "copy_instruction": COPY_INSTRUCTION, "capture_layer": capture_layer,
        "tuned_prompt": {"tokens": tuned.tokens, "text": lm.tokenizer.decode(tuned.tokens), "losses": tuned.losses},
        "columns": results, "order": list(results),
    }
