"""Batched, seeded generation, optionally steered; returns completions without the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from steerscope.encoding import ChatMode, Item, encode_prompt, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.intervene import Steering
from steerscope.models.loading import LoadedModel
from steerscope.progress import track

if TYPE_CHECKING:
    from steerscope.vectors import SteeringVector


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. Greedy unless ``do_sample``; ``seed`` fixes sampling (recorded in outputs)."""

    max_new_tokens: int = 40
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    chat: ChatMode = "auto"

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise SteerscopeError("max_new_tokens must be at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SteerscopeError("min_new_tokens must be between 0 and max_new_tokens")
        if self.do_sample and self.temperature <= 0:
            raise SteerscopeError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise SteerscopeError("top_p must be in (0, 1]")


def _generate_batch(lm: LoadedModel, rows: Sequence[list[int]], config: GenerationConfig, steering: Steering | None) -> list[str]:
    tok = lm.tokenizer
    lm.check_context(max(rows, key=len), extra=config.max_new_tokens)
    batch = pad_batch(rows, tok.pad_token_id, "left").to(lm.device)
    kwargs = dict(max_new_tokens=config.max_new_tokens, min_new_tokens=config.min_new_tokens or None, do_sample=config.do_sample, pad_token_id=tok.pad_token_id)
    if config.do_sample:
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    with steering if steering is not None else nullcontext(), torch.inference_mode():
        out = lm.model.generate(  # type: ignore[operator]
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
    new = out[:, batch.input_ids.shape[1]:]
    return tok.batch_decode(new, skip_special_tokens=True)


def generate(
    lm: LoadedModel,
    prompts: Sequence[Item],
    config: GenerationConfig | None = None,
    steering: Steering | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Complete each prompt; ``steering`` may be shared or per-row (one row per prompt).

    Prompts are rendered with the chat template (``config.chat``), left-padded and generated in
    batches of ``batch_size``. Sampling is seeded once per call from ``config.seed`` inside a
    forked RNG, so the global RNG is untouched and equal calls give equal outputs.
    """
    config = config or GenerationConfig()
    config.validate()
    if not prompts:
        raise SteerscopeError("no prompts to generate from")
    if steering is not None and steering.batch_size not in (None, len(prompts)):
        raise SteerscopeError(f"per-row steering has {steering.batch_size} rows but there are {len(prompts)} prompts")
    encoded = [encode_prompt(lm.tokenizer, p, config.chat) for p in prompts]
    starts = list(range(0, len(encoded), batch_size))
    outputs: list[str] = []
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        for start in track(starts, "generate", enabled=progress):
            stop = start + batch_size
            rows_steering = steering.rows(slice(start, stop)) if steering is not None and steering.batch_size else steering
            outputs += _generate_batch(lm, encoded[start:stop], config, rows_steering)
    return outputs


def generate_paired(lm: LoadedModel, prompts: Sequence[Item], config: GenerationConfig, conditions: Sequence[Steering | None],
                    batch_size: int = 16) -> list[list[str]]:
    """The completions of ``prompts`` under each of ``conditions`` (shared steering or None), each
    condition generated from the same seed: common random numbers, so that two conditions that act
    alike give the same text and differences between them come from the steering, not from sampling."""
    return [generate(lm, prompts, config, steering=c, batch_size=batch_size) for c in conditions]


def generate_from_ids(
    lm: LoadedModel,
    rows: Sequence[Sequence[int]],
    config: GenerationConfig | None = None,
    steering: Steering | None = None,
    batch_size: int = 16,
) -> list[str]:
    """Like :func:`generate` for prompts that are already token ids (no chat template is applied)."""
    config = config or GenerationConfig()
    config.validate()
    if not rows or any(len(r) == 0 for r in rows):
        raise SteerscopeError("no prompts (or an empty prompt) to generate from")
    outputs: list[str] = []
    devices = [lm.device] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        for start in range(0, len(rows), batch_size):
            sub = steering.rows(slice(start, start + batch_size)) if steering is not None and steering.batch_size else steering
            outputs += _generate_batch(lm, [list(r) for r in rows[start:start + batch_size]], config, sub)
    return outputs


@dataclass(frozen=True)
class SteerRequest:
    """A vector applied at strength ``alpha`` (optionally only at ``layers`` and ``positions``);
    ``compare`` also generates every prompt unsteered, in the same batch; ``allow_model_mismatch``
    accepts a vector made for another model of the same ``d_model``."""

    vector: SteeringVector
    alpha: float = 1.0
    layers: Sequence[int] | None = None
    positions: str = "all"
    compare: bool = False
    allow_model_mismatch: bool = False

    def __post_init__(self) -> None:
        from steerscope.intervene import parse_positions

        parse_positions(self.positions)


@dataclass(frozen=True)
class SteeredRun:
    """Completions of ``prompts`` (steered when a request was given), the unsteered ones with
    ``compare``, and the relative dose ``|α|·‖v_ℓ‖ / mean‖h_ℓ‖`` per steered layer (None if unknown)."""

    prompts: list[str]
    completions: list[str]
    config: GenerationConfig
    request: SteerRequest | None = None
    unsteered: list[str] | None = None
    doses: dict[int, float | None] = field(default_factory=dict)

    def to_json(self, model: dict, vector: str | None) -> dict:
        """The run as JSON: model info, vector source, strength, doses, positions, decoding settings, outputs."""
        r = self.request
        return {"model": model, "vector": vector, "alpha": r.alpha if r else 0.0, "relative_dose": {str(k): v for k, v in self.doses.items()},
                "positions": r.positions if r else "all", "config": self.config.__dict__, "outputs": self.outputs()}

    def outputs(self) -> list[dict[str, str]]:
        """One ``{"prompt", "completion"[, "unsteered"]}`` per prompt."""
        return [{"prompt": p, "completion": c, **({"unsteered": self.unsteered[i]} if self.unsteered is not None else {})}
                for i, (p, c) in enumerate(zip(self.prompts, self.completions))]


def generate_steered(lm: LoadedModel, prompts: Sequence[str], config: GenerationConfig, request: SteerRequest | None = None,
                     batch_size: int = 16, progress: bool = False) -> SteeredRun:
    """Generate ``prompts`` under ``request`` (unsteered when None); with ``compare``, steered and
    unsteered rows share one batched call."""
    from steerscope.intervene import steer, steer_rows

    prompts = list(prompts)
    if request is None:
        return SteeredRun(prompts, generate(lm, prompts, config, batch_size=batch_size, progress=progress), config)
    request.vector.check_model(lm, request.allow_model_mismatch)
    steering = steer(lm, request.vector, request.alpha, layers=request.layers, positions=request.positions)
    doses = {layer: request.vector.dose(request.alpha, layer) for layer in steering.edits}
    if not request.compare:
        return SteeredRun(prompts, generate(lm, prompts, config, steering, batch_size, progress), config, request, None, doses)
    sub = {layer: request.vector.directions[layer] for layer in steering.edits}
    n = len(prompts)
    rows = steer_rows(lm, [sub] * n + [None] * n, [request.alpha] * n + [0.0] * n, request.positions)
    texts = generate(lm, prompts * 2, config, rows, batch_size, progress)
    return SteeredRun(prompts, texts[:n], config, request, texts[n:], doses)
