"""Reachability audit: is a steered residual-stream state produced by any prompt?

For each prompt (chat-templated), the states at the capture layer are inverted with
:func:`steerscope.invert.invert`: the natural (unsteered) states as a positive control, then the
states steered with ``α·v`` added at layer ℓ at every position. Per searched position the audit
reports the best-found distance to a natural state, the natural noise floor, the margin Δ (runner-up
distance of the natural search) and the steering displacement ``‖steered − natural‖``. Controls:
an α sweep, a matched-norm random vector, and the adversarial construction of Theorem 4.5 of
arXiv 2604.09839 (a vector that makes the steered state collide with another prompt's state at
position i; applied also at i+1 the state there diverges). Behaviour: greedy generations from the
nearest-found prompt, the steered model (white-box) and an instruction prompt (black-box), with
trait scores and teacher-forced KL from the steered model, in separate columns.

Both sides are searched with one :class:`~steerscope.invert.SearchConfig` (policy, budget and
fallback); the steered search is also seeded with the prompt's own tokens, so its best-found
distance never exceeds the unsteered prompt's own (``‖αv‖`` at layer ℓ). The searched positions
are the user's words by default (``positions="user"``; the chat template's tokens are given), or
``last:N``, ``A:B`` or ``all``. The verdict is ``reachable`` (a prompt matches every searched
position within ε), ``unreachable-within-search`` (no match, and every unmatched position was
scanned over the whole vocabulary) or ``not-found-within-budget``. A failed search is an upper
bound on the distance to the prompt-reachable set, not a proof that no prompt reaches the state.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerscope.audit.assumptions import check_assumptions
from steerscope.audit.blackbox import BlackBoxSettings, black_box_probes
from steerscope.audit.identifiability import random_draw
from steerscope.divergence import kl_js
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate_from_ids
from steerscope.intervene import Add, Steering, steer
from steerscope.likelihood import continuation_logprobs
from steerscope.invert import Inversion, SearchConfig, Threshold, calibrate_threshold, hidden_states, invert
from steerscope.jsonable import jsonable
from steerscope.models.loading import LoadedModel
from steerscope.relax import Relaxation, RelaxConfig, relax
from steerscope.runstore import stored_payload
from steerscope.score.base import Scorer
from steerscope.sequence_search import SequenceConfig, SequenceResult, sequence_search

STATEMENT = ("a failed search is an upper bound on the distance to the set of prompt-reachable states, not a proof "
             "that no prompt reaches the steered state")
RANDOM_SEED_OFFSET = 20_000


@dataclass(frozen=True)
class AuditSettings:
    """Sizes of the audit. ``positions``: which tokens are searched (see :func:`search_window`),
    at most the last ``max_positions`` of them; ``steer_at``: ``"all"`` positions (as the paper) or
    only the ``"searched"`` ones; ``search``: the search of both natural and steered states, position
    by position; ``relax``: the continuous relaxation and ``sequence``: the whole-span search of the
    steered states; ``sweep_prompts``: prompts used by the α sweep, the random control and the behaviour readout;
    ``black_box``: the black-box probes (off when its ``prompts`` is 0)."""

    positions: str = "user"
    max_positions: int = 12
    steer_at: str = "all"
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    sweep_prompts: int = 3
    search: SearchConfig = SearchConfig()
    relax: RelaxConfig = RelaxConfig()
    sequence: SequenceConfig = SequenceConfig()
    black_box: BlackBoxSettings = BlackBoxSettings()
    adversarial_exhaustive: bool = False
    max_new_tokens: int = 24
    seed: int = 0


STEER_AT = ("all", "searched")


# --- targets -----------------------------------------------------------------------------------

_COUNT = re.compile(r"(?:last:)?0*([1-9][0-9]{0,8})")
_SLICE = re.compile(r"(-?[0-9]{1,9})?:(-?[0-9]{1,9})?")


def parse_window(spec: str) -> tuple[str, int | None, int | None]:
    """``(kind, a, b)`` of a ``positions`` spec: ``("user"|"all", None, None)``, ``("last", N, None)`` or ``("slice", A, B)``."""
    text = spec.strip()
    if text in ("user", "all"):
        return text, None, None
    if count := _COUNT.fullmatch(text):
        return "last", int(count.group(1)), None
    if (part := _SLICE.fullmatch(text)) and text != ":":
        a, b = (int(g) if g is not None else None for g in part.groups())
        return "slice", a, b
    raise SteerscopeError(f"--positions must be user, all, last:N (N ≥ 1) or A:B (token indices of the templated prompt), "
                          f"got {spec[:40]!r}")


def search_window(lm: LoadedModel, prompt: str, ids: Sequence[int], spec: str, max_positions: int) -> tuple[int, int]:
    """``[start, end)``: the searched token positions of a prompt's generation prompt ``ids``.

    ``spec`` (:func:`parse_window`): ``user`` (the user's words, not the chat template around them),
    ``all``, ``last:N`` (or a bare ``N``), or ``A:B`` (a Python slice of the templated prompt); then
    at most the last ``max_positions`` of them.
    """
    from steerscope.encoding import prompt_user_span

    kind, a, b = parse_window(spec)
    n = len(ids)
    if kind == "user":
        start, end = prompt_user_span(lm.tokenizer, prompt, ids)
    elif kind == "last":
        assert a is not None
        start, end = max(0, n - a), n
    elif kind == "slice":
        start, end, _ = slice(a, b).indices(n)
    else:
        start, end = 0, n
    if end <= start:
        raise SteerscopeError(f"--positions {spec!r} selects no token of a {n}-token prompt ({prompt[:40]!r})")
    return max(start, end - max_positions), end


def steered_states(lm: LoadedModel, ids: Sequence[int], vector: torch.Tensor, alpha: float, layer: int, capture_layer: int,
                   at: Sequence[int] | None = None) -> torch.Tensor:
    """``[T, d]`` states at ``capture_layer`` with ``alpha·vector`` added at layer ``layer``, at every
    position or at the positions ``at``."""
    if at is None:
        with steer(lm, {layer: vector.float()}, alpha):
            return hidden_states(lm, ids, capture_layer)
    with Steering(lm, {layer: Add(alpha * vector.float())}, positions=list(at)):
        return hidden_states(lm, ids, capture_layer)


@dataclass(frozen=True)
class Window:
    """One audited prompt: its generation-prompt token ids and the searched span ``[start, end)``."""

    prompt: str
    ids: list[int]
    start: int
    end: int

    def steered_at(self, settings: AuditSettings) -> list[int] | None:
        return None if settings.steer_at == "all" else list(range(self.start, self.end))


def windows(lm: LoadedModel, prompts: Sequence[str], settings: AuditSettings) -> list[Window]:
    out = []
    for prompt in prompts:
        ids = encode_prompt(lm.tokenizer, prompt)
        lm.check_context(ids)
        out.append(Window(prompt, ids, *search_window(lm, prompt, ids, settings.positions, settings.max_positions)))
    return out


# --- per-prompt rows ---------------------------------------------------------------------------

def _decode(lm: LoadedModel, ids: Sequence[int]) -> list[str]:
    return [lm.tokenizer.decode([i]) for i in ids]  # type: ignore[misc]


def _status(inv: Inversion, j: int) -> str:
    """``found`` (within ε), ``exhaustive`` (the whole vocabulary scored, none within ε) or ``budget``."""
    return "found" if inv.accepted[j] else "exhaustive" if inv.exhaustive[j] else "budget"


def position_rows(lm: LoadedModel, ids: Sequence[int], natural: Inversion, steered: Inversion,
                  displacement: torch.Tensor, noise: float) -> list[dict]:
    """Per searched position: natural / steered best distances, margin, displacement, tokens (``displacement`` ``[T]``).

    ``steered_distance`` is the best found over the search and the unsteered prompt itself (whose
    state is ``displacement`` away), so it is never above ``displacement``; ``certified_radius``: no
    token after the search's prefix comes closer, when that position was scanned exhaustively.
    """
    rows = []
    for j, t in enumerate(natural.positions):
        searched = steered.distances[j]
        best = min(searched, float(displacement[t]))
        rows.append({
            "position": t, "token": int(ids[t]), "text": _decode(lm, [ids[t]])[0],
            "natural_distance": natural.distances[j], "natural_recovered": natural.tokens[t] == ids[t],
            "margin": natural.second()[j], "natural_tried": natural.tried[j],
            "natural_runner_up": natural.topk_tokens[j][1] if len(natural.topk_tokens[j]) > 1 else None,
            "steered_distance": best, "steered_search_distance": searched, "original_distance": float(displacement[t]),
            "steered_accepted": steered.accepted[j], "steered_status": _status(steered, j),
            "certified_radius": searched if steered.exhaustive[j] and not steered.accepted[j] else None,
            "natural_status": _status(natural, j),
            "steered_token": steered.tokens[t], "steered_token_is_original": steered.tokens[t] == ids[t],
            "steered_tried": steered.tried[j], "displacement": float(displacement[t]),
            "steered_over_noise": best / noise,
            "steered_topk": {"tokens": steered.topk_tokens[j][:5], "distances": steered.topk_distances[j][:5]},
        })
    return rows


def _joint_columns(rows: list[dict], relaxed: Relaxation, joint: SequenceResult) -> list[dict]:
    """Add per position the relaxation's distance, its projection's and the whole-span search's (``rows`` in span order)."""
    for row, r, proj, tok, seq in zip(rows, relaxed.distances, relaxed.projected_distances, relaxed.projected_tokens, joint.distances):
        row |= {"relaxed_distance": r, "projected_distance": proj, "projected_token": tok, "sequence_distance": seq}
    return rows


def continuous_and_joint(lm: LoadedModel, target: torch.Tensor, layer: int, threshold: Threshold, w: Window,
                         sequential: Inversion, settings: AuditSettings) -> tuple[Relaxation, SequenceResult]:
    """The relaxation (from the prompt's own tokens) and the whole-span search (from the better of the prompt's
    tokens and the sequential search's) of the window's span of ``target`` (``[T, d]``)."""
    target, prefix, own = target[:w.end], w.ids[:w.start], w.ids[w.start:w.end]
    relaxed = relax(lm, target, layer, prefix, own, settings.relax)
    joint = sequence_search(lm, target, layer, threshold.epsilon, prefix, [own, sequential.tokens[w.start:]], settings.sequence)
    return relaxed, joint


def _search(lm: LoadedModel, target: torch.Tensor, layer: int, threshold: Threshold, w: Window, settings: AuditSettings,
            seeded: bool) -> Inversion:
    """Invert ``target`` over the window's span (the tokens before it given), seeded with the prompt's tokens when ``seeded``."""
    return invert(lm, target[:w.end], layer, threshold.epsilon, prefix=w.ids[:w.start], config=settings.search,
                  seeds=w.ids[:w.end] if seeded else ())


def steered_summary(lm, wins: Sequence[Window], vector, alpha, layer, capture_layer, threshold, settings) -> dict:
    """Median best-found distance, displacement and token agreement of steered states over ``wins``."""
    best, disp, same, accepted = [], [], [], []
    for w in wins:
        nat = hidden_states(lm, w.ids, capture_layer)
        tgt = steered_states(lm, w.ids, vector, alpha, layer, capture_layer, w.steered_at(settings))
        inv = _search(lm, tgt, capture_layer, threshold, w, settings, seeded=True)
        shift = (tgt - nat).norm(dim=-1)[w.start:w.end].tolist()
        best += [min(a, b) for a, b in zip(inv.distances, shift)]
        accepted += inv.accepted
        disp += shift
        same += [a == b for a, b in zip(inv.tokens[w.start:], w.ids[w.start:w.end])]
    return _sweep_entry(alpha, best, disp, accepted, same)


def _sweep_entry(alpha: float, best: list[float], disp: list[float], accepted: list[bool], same: list[bool]) -> dict:
    """One α of the sweep from per-position best-found distances, displacements, acceptances and token agreements."""
    return {"alpha": alpha, "median_steered_distance": statistics.median(best), "median_displacement": statistics.median(disp),
            "accepted_rate": float(np.mean(accepted)), "tokens_equal_original": float(np.mean(same)), "n_positions": len(best)}


# --- Theorem 4.5 ---------------------------------------------------------------------------------

def adversarial_collision(lm: LoadedModel, ids: Sequence[int], layer: int, i: int, replacement: int,
                          threshold: Threshold, settings: AuditSettings) -> dict:
    """Theorem 4.5: ``v* = h_ℓ(q)_i − h_ℓ(p)_i`` with ``q`` = ``p`` with token ``replacement`` at ``i``.

    Added at positions ``i`` and ``i+1`` of ``p`` (layer ℓ, captured at ℓ), the steered state at
    ``i`` collides with ``q``'s (the search recovers ``replacement`` within ε); at ``i+1`` the best
    natural state found with the prefix ``q_{1:i}`` stays far (divergence). The ``i+1`` search is
    exhaustive when ``settings.adversarial_exhaustive``, else the audit's search.
    """
    if not 0 < i < len(ids) - 1:
        raise SteerscopeError(f"the collision position must leave a next position: 0 < i < {len(ids) - 1}, got {i}")
    q = list(ids[:i]) + [replacement] + list(ids[i + 1:])
    h_p, h_q = hidden_states(lm, ids, layer), hidden_states(lm, q, layer)
    v_star = h_q[i] - h_p[i]
    with Steering(lm, {layer: Add(v_star)}, positions=[i, i + 1]):
        target = hidden_states(lm, ids[: i + 2], layer)
    first = invert(lm, target[: i + 1], layer, threshold.epsilon, prefix=ids[:i], config=settings.search)
    nxt = SearchConfig(policy="exhaustive", chunk=settings.search.chunk) if settings.adversarial_exhaustive else settings.search
    second = invert(lm, target, layer, threshold.epsilon, prefix=q[: i + 1], config=nxt)
    continuation = hidden_states(lm, q[: i + 1] + [ids[i + 1]], layer)[i + 1]
    return {
        "i": i, "original_token": int(ids[i]), "replacement_token": int(replacement),
        "original_text": _decode(lm, [ids[i]])[0], "replacement_text": _decode(lm, [replacement])[0],
        "vector_norm": float(v_star.norm()),
        "collision": {"distance": first.distances[0], "token": first.tokens[i], "accepted": first.accepted[0],
                      "recovered_replacement": first.tokens[i] == replacement, "tried": first.tried[0]},
        "next": {"distance": second.distances[0], "token": second.tokens[i + 1], "accepted": second.accepted[0],
                 "tried": second.tried[0], "exhaustive": settings.adversarial_exhaustive,
                 "distance_to_q_with_original_next_token": float((target[i + 1] - continuation).norm()),
                 "distance_to_p": float((target[i + 1] - h_p[i + 1]).norm())},
        "epsilon": threshold.epsilon,
    }


# --- behaviour -----------------------------------------------------------------------------------

def behaviour_comparison(lm: LoadedModel, prompts: Sequence[str], seqs: Sequence[Sequence[int]], nearest: Sequence[Sequence[int]],
                         vector: torch.Tensor, alpha: float, layer: int, instructions: tuple[str, str] | None,
                         scorer: Scorer | None, max_new_tokens: int) -> dict:
    """Greedy generations and readouts for four columns: ``unsteered``, ``steered`` (white-box),
    ``nearest_prompt`` (the search's tokens for the steered states) and ``instruction`` (black-box
    prompt baseline: ``instructions`` = (positive pole, negative pole), the one of α's sign). KL: mean per-token ``KL(p_steered ‖ p_column)``
    teacher-forced on the steered completion."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=1)
    columns: dict[str, list[Sequence[int]]] = {"unsteered": list(seqs), "nearest_prompt": list(nearest)}
    if instructions is not None:
        instruction = instructions[0 if alpha >= 0 else 1]
        columns["instruction"] = [encode_prompt(lm.tokenizer, f"{instruction}\n\n{p}") for p in prompts]
    steering = steer(lm, {layer: vector.float()}, alpha)
    texts = {"steered": generate_from_ids(lm, seqs, config, steering)}
    texts |= {name: generate_from_ids(lm, rows, config) for name, rows in columns.items()}
    out: dict[str, Any] = {"white_box": {}, "black_box": {}, "texts": texts, "max_new_tokens": max_new_tokens}
    if instructions is not None:
        out["instruction"] = instruction
    kls: dict[str, list[float]] = {name: [] for name in columns}
    for b, ids in enumerate(seqs):
        cont = list(lm.tokenizer(texts["steered"][b], add_special_tokens=False)["input_ids"])
        if not cont:
            continue
        ref = continuation_logprobs(lm, ids, cont, steer(lm, {layer: vector.float()}, alpha))
        for name, rows in columns.items():
            kls[name].append(float(kl_js(ref, continuation_logprobs(lm, rows[b], cont))[0].mean()))
    scores = {name: float(np.mean(scorer(t))) for name, t in texts.items()} if scorer is not None else {}
    for name in ("steered", "unsteered", "nearest_prompt", "instruction"):
        if name not in texts:
            continue
        side = "black_box" if name == "instruction" else "white_box"
        out[side][name] = {"trait_score": scores.get(name), "kl_from_steered": float(np.mean(kls[name])) if kls.get(name) else (0.0 if name == "steered" else None)}
    return out


# --- end to end ----------------------------------------------------------------------------------

def _window_summary(rows: Sequence[dict], noise: float) -> dict:
    nat = [r["natural_recovered"] for r in rows]
    ratio = [r["steered_distance"] / noise for r in rows]
    disp_ratio = [r["steered_distance"] / r["displacement"] for r in rows if r["displacement"] > 0]
    status = [r["steered_status"] for r in rows]
    margins = [r["margin"] for r in rows if r["margin"] is not None and not math.isnan(r["margin"])]
    return {
        "n_positions": len(rows), "natural_exact_recovery": float(np.mean(nat)),
        "median_natural_distance": statistics.median(r["natural_distance"] for r in rows),
        "median_margin": statistics.median(margins) if margins else None,  # none when no runner-up was scored
        "median_steered_distance": statistics.median(r["steered_distance"] for r in rows),
        "median_displacement": statistics.median(r["displacement"] for r in rows),
        "median_steered_over_noise": statistics.median(ratio),
        "median_steered_over_displacement": statistics.median(disp_ratio) if disp_ratio else None,
        "steered_accepted_rate": float(np.mean([r["steered_accepted"] for r in rows])),
        "steered_exhaustive_rate": status.count("exhaustive") / len(rows),
        "steered_budget_rate": status.count("budget") / len(rows),
        "steered_tokens_equal_original": float(np.mean([r["steered_token_is_original"] for r in rows])),
        "median_relaxed_distance": statistics.median(r["relaxed_distance"] for r in rows),
        "median_projected_distance": statistics.median(r["projected_distance"] for r in rows),
        "median_sequence_distance": statistics.median(r["sequence_distance"] for r in rows),
        "median_relaxed_over_displacement": statistics.median(
            [r["relaxed_distance"] / r["displacement"] for r in rows if r["displacement"] > 0] or [math.nan]),
    }


def verdict(per_prompt: Sequence[dict]) -> str:
    """``reachable`` when some prompt's every searched position was matched (by the sequential or the
    whole-span search); ``unreachable-within-search``
    when no prompt was and every unmatched position was scanned exhaustively; else ``not-found-within-budget``."""
    if any(p["steered_trajectory_found"] for p in per_prompt):
        return "reachable"
    if all(r["steered_status"] != "budget" for p in per_prompt for r in p["positions"]):
        return "unreachable-within-search"
    return "not-found-within-budget"


def threshold_of(payload: Mapping[str, Any]) -> Threshold:
    """The ε and noise floor of a stored :meth:`Threshold.to_json` (what every part of the audit reads)."""
    return Threshold(float(payload["epsilon"]), float(payload["noise"]), float(payload["margin"]))


class ReachabilityAudit:
    """The reachability audit of ``alpha·vector`` (``[d]``) added at ``layer``, in parts that a run store
    keeps as cells: the threshold, then one part per prompt, per α of the sweep, the random vector and
    the black-box probes (none reading another), then Theorem 4.5 and the behaviour (reading the first
    prompts' parts), then the report. Each part returns a JSON-safe payload; the parts after the
    threshold read the payloads before them as a store gives them back.

    States are compared at ``capture_layer`` (default: ``layer``, i.e. right after the addition).
    ``trait`` names the trait in the report; ``instructions`` (positive pole, negative pole) give the
    black-box instruction baseline; ``scorer`` (texts → scores) the trait scores; ``probe_prompts``
    (default: ``prompts``) the audited and demonstration prompts of the black-box probes
    (:meth:`~steerscope.audit.blackbox.BlackBoxSettings.split`), run when ``settings.black_box.prompts`` > 0.
    """

    def __init__(self, lm: LoadedModel, vector: torch.Tensor, layer: int, alpha: float, prompts: Sequence[str],
                 calibration_prompts: Sequence[str], capture_layer: int | None = None, trait: str | None = None,
                 scorer: Scorer | None = None, settings: AuditSettings | None = None, vector_info: dict | None = None,
                 instructions: tuple[str, str] | None = None, probe_prompts: Sequence[str] = ()):
        self.settings = settings = settings or AuditSettings()
        self.lm, self.alpha, self.trait, self.scorer, self.instructions = lm, alpha, trait, scorer, instructions
        self.layer = lm.check_layer(layer)
        self.capture_layer = self.layer if capture_layer is None else lm.check_layer(capture_layer)
        if self.capture_layer < self.layer:
            raise SteerscopeError(f"the capture layer ({self.capture_layer}) must not precede the steering layer ({self.layer})")
        if vector.ndim != 1 or vector.shape[0] != lm.d_model or not torch.isfinite(vector).all():
            raise SteerscopeError(f"the steering vector must be a finite [{lm.d_model}] tensor, got shape {tuple(vector.shape)}")
        if not prompts or not calibration_prompts:
            raise SteerscopeError("the audit needs at least one prompt and one calibration prompt")
        if settings.steer_at not in STEER_AT:
            raise SteerscopeError(f"steer_at must be one of {', '.join(STEER_AT)}, got {settings.steer_at!r}")
        self.probes = settings.black_box.split(probe_prompts or prompts) if settings.black_box.prompts else None
        self.vector = vector.detach().float().cpu()
        self.vector_info = vector_info or {}
        self.prompts, self.calibration_prompts = list(prompts), list(calibration_prompts)
        self.wins = windows(lm, prompts, settings)
        self.calibration = [encode_prompt(lm.tokenizer, p) for p in calibration_prompts]
        for ids in self.calibration:
            lm.check_context(ids)
        self.k = min(settings.sweep_prompts, len(self.wins))

    def threshold(self) -> dict[str, Any]:
        """The calibrated ε (:func:`~steerscope.invert.calibrate_threshold`), as :meth:`Threshold.to_json`."""
        s = self.settings
        return jsonable(calibrate_threshold(self.lm, self.capture_layer, self.calibration, seed=s.seed, last=s.max_positions).to_json())

    def prompt(self, index: int, threshold: Mapping[str, Any]) -> dict[str, Any]:
        """The natural and steered searches, relaxation and whole-span search of prompt ``index``: its report
        entry, and under ``nearest_ids`` the tokens of the nearest prompt found."""
        lm, s, w, th = self.lm, self.settings, self.wins[index], threshold_of(threshold)
        nat_states = hidden_states(lm, w.ids, self.capture_layer)
        st_states = steered_states(lm, w.ids, self.vector, self.alpha, self.layer, self.capture_layer, w.steered_at(s))
        natural = _search(lm, nat_states, self.capture_layer, th, w, s, seeded=False)
        steered = _search(lm, st_states, self.capture_layer, th, w, s, seeded=True)
        relaxed, joint = continuous_and_joint(lm, st_states, self.capture_layer, th, w, steered, s)
        rows = position_rows(lm, w.ids, natural, steered, (st_states - nat_states).norm(dim=-1), th.noise)
        nearest = w.ids[:w.start] + joint.tokens + w.ids[w.end:]
        return jsonable({"prompt": w.prompt, "n_tokens": len(w.ids), "start": w.start, "end": w.end,
                         "positions": _joint_columns(rows, relaxed, joint),
                         "searched_text": lm.tokenizer.decode(w.ids[w.start:w.end]),
                         "steered_trajectory_found": all(steered.accepted) or joint.accepted,
                         "found_by": "sequential" if all(steered.accepted) else "whole-span" if joint.accepted else None,
                         "relaxation": relaxed.to_json(), "sequence_search": joint.to_json(),
                         "nearest_prompt": lm.tokenizer.decode(nearest), "nearest_ids": nearest})

    def sweep(self, alpha: float, threshold: Mapping[str, Any]) -> dict[str, Any]:
        """One entry of the α sweep: the steered search at strength ``alpha`` on the first ``sweep_prompts`` prompts."""
        th = threshold_of(threshold)
        return jsonable(steered_summary(self.lm, self.wins[:self.k], self.vector, alpha, self.layer, self.capture_layer, th, self.settings))

    def searched_alphas(self) -> list[float]:
        """The α of the sweep that :meth:`sweep` searches; the audit's own α is :meth:`sweep_of_prompts`."""
        return [a for a in self.settings.alphas if a != self.alpha]

    def sweep_of_prompts(self, prompts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The α sweep's entry at the audit's own α, read from the first ``sweep_prompts`` prompts' parts (``prompts``):
        their steered searches are the ones :meth:`sweep` would run at that α, so it is not searched twice."""
        rows = [r for p in prompts[:self.k] for r in p["positions"]]
        return jsonable(_sweep_entry(self.alpha, [r["steered_distance"] for r in rows], [r["displacement"] for r in rows],
                                     [r["steered_accepted"] for r in rows], [r["steered_token_is_original"] for r in rows]))

    def random_control(self, threshold: Mapping[str, Any]) -> dict[str, Any]:
        """The steered search with a random vector of the same norm at α, on the first ``sweep_prompts`` prompts."""
        s, th = self.settings, threshold_of(threshold)
        rand = random_draw(self.vector, s.seed + RANDOM_SEED_OFFSET)
        control = steered_summary(self.lm, self.wins[:self.k], rand, self.alpha, self.layer, self.capture_layer, th, s)
        return jsonable(control | {"seed": s.seed + RANDOM_SEED_OFFSET, "norm": float(rand.norm())})

    def black_box(self) -> dict[str, Any] | None:
        """The black-box probes (:func:`~steerscope.audit.blackbox.black_box_probes`); None when they are off."""
        if self.probes is None:
            return None
        return jsonable(black_box_probes(self.lm, self.vector, self.layer, self.alpha, *self.probes, self.capture_layer,
                                         self.instructions, self.scorer, self.settings.black_box))

    def adversarial(self, first: Mapping[str, Any], threshold: Mapping[str, Any]) -> dict[str, Any]:
        """Theorem 4.5 on the first prompt (``first``: its part), at the middle of its searched span; the
        replacement token is the natural search's runner-up there."""
        ids = self.wins[0].ids
        i = max(1, min(first["start"] + max(0, (first["end"] - first["start"]) // 2 - 1), len(ids) - 2))
        runner_up = next((r["natural_runner_up"] for r in first["positions"] if r["position"] == i), None)
        vocab = self.lm.model.get_input_embeddings().weight.shape[0]  # type: ignore[index]
        replacement = runner_up if runner_up is not None else (ids[i] + 1) % vocab
        return jsonable(adversarial_collision(self.lm, ids, self.layer, i, replacement, threshold_of(threshold), self.settings))

    def behaviour(self, parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """:func:`behaviour_comparison` on the first ``sweep_prompts`` prompts (``parts``: their parts, for the nearest prompts)."""
        k = self.k
        return jsonable(behaviour_comparison(self.lm, self.prompts[:k], [w.ids for w in self.wins[:k]],
                                             [p["nearest_ids"] for p in parts[:k]], self.vector, self.alpha, self.layer,
                                             self.instructions, self.scorer, self.settings.max_new_tokens))

    def report(self, threshold: Mapping[str, Any], parts: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON-serialisable report from the threshold and the other parts' payloads: ``parts`` holds
        ``prompts`` (:meth:`prompt` of each, in order), ``alpha_sweep`` (:meth:`sweep` of each α, in
        order), ``random_control``, ``adversarial``, ``behaviour`` and ``black_box_probes`` (None when off)."""
        s, lm = self.settings, self.lm
        per_prompt = [{k: v for k, v in p.items() if k != "nearest_ids"} for p in parts["prompts"]]
        found = [p for p in per_prompt if p["steered_trajectory_found"]]
        summary = _window_summary([r for p in per_prompt for r in p["positions"]], float(threshold["noise"]))
        summary |= {
            "verdict": verdict(per_prompt),
            "reachable_prompt": found[0]["nearest_prompt"] if found else None,
            "vector_norm": float(self.vector.norm()), "steering_norm": abs(self.alpha) * float(self.vector.norm()),
            "noise_floor": threshold["noise"], "epsilon": threshold["epsilon"],
        }
        report = {
            "config": {"layer": self.layer, "capture_layer": self.capture_layer, "alpha": self.alpha, "trait": self.trait,
                       "positions": s.positions, "max_positions": s.max_positions, "alphas": list(s.alphas), "sweep_prompts": self.k,
                       "seed": s.seed, "search": s.search.__dict__, "relax": s.relax.__dict__, "sequence": s.sequence.__dict__,
                       "steered_search_seeded": True, "vocab": int(lm.model.get_input_embeddings().weight.shape[0]),  # type: ignore[index]
                       "adversarial_exhaustive": s.adversarial_exhaustive, "max_new_tokens": s.max_new_tokens,
                       "steered_positions": s.steer_at, "n_prompts": len(self.prompts), "calibration_prompts": self.calibration_prompts},
            "model": lm.info(), "vector": self.vector_info, "assumptions": check_assumptions(lm),
            "threshold": dict(threshold), "summary": summary, "prompts": per_prompt, "alpha_sweep": parts["alpha_sweep"],
            "random_control": parts["random_control"], "adversarial": parts["adversarial"], "behaviour": parts["behaviour"],
            "statement": STATEMENT,
        }
        if parts["black_box_probes"] is not None:
            report["black_box_probes"] = parts["black_box_probes"]
        return jsonable(report)

    def run(self) -> dict[str, Any]:
        """Every part in order, each payload read back as a run store gives it (what the audit's cells hold), then the report."""
        threshold = stored_payload(self.threshold())
        prompts = [stored_payload(self.prompt(i, threshold)) for i in range(len(self.wins))]
        searched = {a: stored_payload(self.sweep(a, threshold)) for a in self.searched_alphas()}
        sweep = [searched[a] if a in searched else stored_payload(self.sweep_of_prompts(prompts)) for a in self.settings.alphas]
        parts = {"prompts": prompts, "alpha_sweep": sweep,
                 "random_control": stored_payload(self.random_control(threshold)), "black_box_probes": stored_payload(self.black_box()),
                 "adversarial": stored_payload(self.adversarial(prompts[0], threshold)), "behaviour": stored_payload(self.behaviour(prompts))}
        return self.report(threshold, parts)


def run_reachability(lm: LoadedModel, vector: torch.Tensor, layer: int, alpha: float, prompts: Sequence[str],
                     calibration_prompts: Sequence[str], **options: Any) -> dict[str, Any]:
    """Full reachability audit of ``alpha·vector`` (``[d]``) added at ``layer``; returns a JSON-serialisable
    report. ``options``: those of :class:`ReachabilityAudit` (``capture_layer``, ``trait``, ``scorer``,
    ``settings``, ``vector_info``, ``instructions``, ``probe_prompts``)."""
    return ReachabilityAudit(lm, vector, layer, alpha, prompts, calibration_prompts, **options).run()
