"""Per-cell costs of a finished audit and the cost model behind them; the capacity projection of docs/scaling.md.

Reads a finished run folder (its run store: configuration, per-cell wall times and payloads) and
counts, for every cell, the work of the cost model from the run's sizes, the token lengths of the
texts it used (its own tokenizer on the stored trait specification and the built-in sets) and the
numbers its payloads record (inversion candidates tried, layer chosen, …):

- generated tokens (sampling and greedy decoding; rows × new tokens, an upper bound: a batch stops
  early only when every row has ended) and the batched decoding steps;
- forward tokens: token × decoder-block passes without a gradient (teacher-forced readouts,
  prompt prefill, captures that stop at a layer), given in full-depth token equivalents, and the
  positions whose logits over the vocabulary are computed;
- backward passes: vector–Jacobian products (one per row of a batched Jacobian, one per loss), with
  the token × block work each covers;
- candidates scored by the prompt inversion (one position through blocks 0..ℓ each), and the
  sequences of the whole-span search;
- float64 linear algebra on the host (d × d Gram matrices, eigendecompositions) and texts scored.

FLOPs: 2 × (parameters of the blocks run) per token forward, as much again backward (the products ask
for the gradients of inputs only: the weights are frozen or not asked for; the relaxation's backward also
fills the weights' gradients and counts twice), 2·d·V per position through the unembedding; attention over
the context and padding are left out. The cells' wall seconds are then fitted to their work
(non-negative least squares, relative errors): seconds per generated token, per forward token, per
backward pass, per candidate, per text scored, per host FLOP. tests/test_bench_cells.py checks the
counts against a tiny audit whose blocks and autograd calls count the work they do.

With ``--project`` the same counts are made for the current ``full`` profile: on the first run's model
with its fitted costs, and on models of other shapes (Llama-3.1-8B, Mistral-7B-v0.3) turned into GPU
hours under stated assumptions (ASSUMPTIONS below, docs/scaling.md): one audit, and a traits × layers ×
models sweep on N workers.
Prints tables and writes JSON to benchmarks/results/cells.json.
Usage: python benchmarks/bench_cells.py RUN_FOLDER [RUN_FOLDER …] [--project] [--json-out benchmarks/results/cells.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from steerscope.runstore import RunStore

#: Sizes of the code paths that the profiles do not carry (batch sizes and fixed counts in the stages).
GENERATE_BATCH = 16          # steerscope.generate.generate
BEHAVIOUR_BATCH = 64         # identifiability.behavioural_scores
GRADIENT_CHUNK = 8           # readouts.margin_gradient: items per backward pass
DIVERGENCE_CHUNK = 16        # readouts.DIVERGENCE_CHUNK: class draws per divergence pass
THRESHOLD_COMPETITORS = 64   # invert.calibrate_threshold
SEQUENCE_INITS = 2           # reachability.continuous_and_joint: the prompt's tokens and the sequential search's
SHOTS = (1, 2, 4, 8, 16, 32)  # blackbox.BlackBoxSettings.shots
TUNE = {"tokens": 10, "steps": 200, "batch": 8, "prefill": 4}  # blackbox.BlackBoxSettings prompt tuning and prefill
SOLVE_EVALUATIONS = 12       # edits.solve: doublings and bisection to 2 % (assumed; the payload does not record it)
FAILED_SOLVE = 10            # edits.solve that finds no parameter: f(0), f(scale) and 8 doublings
#: LAPACK-style float64 flop counts per d³ (eigvalsh, eigh, full SVD with vectors, matrix product, singular values only).
EIGVALSH, EIGH, SVD_FULL, MATMUL, SVDVALS = 4 / 3, 4.0, 21.0, 2.0, 8 / 3

# --- model shapes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """What the cost model needs of a model: depth, width, vocabulary, parameters per decoder block."""

    name: str
    n_layers: int
    d_model: int
    vocab: int
    block_params: float   # mean parameters of one decoder block
    total_params: float

    @property
    def head_flops(self) -> float:
        """FLOPs of one position through the unembedding (``V × d``)."""
        return 2.0 * self.vocab * self.d_model

    @property
    def token_flops(self) -> float:
        """FLOPs of one token through every block and the unembedding."""
        return 2.0 * self.block_params * self.n_layers + self.head_flops


def shape_of_config(name: str, config: Any) -> Shape:
    """The shape of a transformers config, parameters counted on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    from steerscope.models.layers import find_decoder_layers

    blocks, _ = find_decoder_layers(model)
    per_block = sum(p.numel() for p in blocks.parameters()) / len(blocks)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return Shape(name, len(blocks), int(text.hidden_size), int(text.vocab_size), float(per_block),
                 float(sum(p.numel() for p in model.parameters())))


#: Model shapes of the projection (configurations as published on the Hugging Face hub).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
    "mistral-7b-v0.3": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768, "tie_word_embeddings": False},
}


def preset_shape(name: str) -> Shape:
    from transformers import AutoConfig

    values = dict(PRESETS[name])
    return shape_of_config(name, AutoConfig.for_model(values.pop("model_type"), **values))


# --- token lengths --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lengths:
    """Mean token counts of what the stages read (one tokenizer and chat template), and set sizes."""

    pair: float               # one side of a trait's contrastive pair, chat-rendered
    span: float               # its completion span (the positions a pair margin reads)
    prompt: float             # an in-distribution generation prompt
    user_end: float           # where the user's words end in it (the searched window ends there)
    user: float               # the user's words
    mix: float                # a prompt of the built-in mix (null space)
    env_prompt: float         # the prompts of the Jacobian Gram matrices (three environments)
    neutral: float            # a neutral generation prompt
    response: float           # a neutral reference response
    choice: float             # a capability question with one choice
    choice_span: float
    instruction: float        # tokens a system instruction adds (negative: it replaces a longer default system prompt)
    threshold: float          # a threshold-calibration prompt of the reachability audit
    copy: float               # the copy instruction of the black-box probes
    n_train: int
    n_test: int
    env_pairs: dict[str, int]
    env_prompt_counts: dict[str, int]
    readouts: dict[str, tuple[int, float, float]]  # off-target trait -> (held-out pairs, pair tokens, span tokens)
    capability_rows: list[int]   # choices per capability item, in the order the check takes them
    paraphrases: int
    instructions: bool
    scored: tuple[str, ...]      # off-target readouts that have a scorer


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


def lengths_of(tokenizer: Any, spec: Any) -> Lengths:
    """:class:`Lengths` of a trait specification under ``tokenizer`` (with the built-in sets)."""
    from steerscope.audit.blackbox import COPY_INSTRUCTION
    from steerscope.audit.profiles import threshold_prompts
    from steerscope.data.evalsets import builtin_paraphrases, capability_set, interleaved, neutral_set
    from steerscope.data.prompts import builtin_prompt_mix
    from steerscope.data.traits import ENVIRONMENTS, MIX_TRAITS, builtin_prompts
    from steerscope.encoding import encode_item, encode_prompt, prompt_user_span
    from steerscope.score.base import SCORER_TRAITS
    from steerscope.side_effects import readout_specs

    def items(pairs):
        return [encode_item(tokenizer, side) for p in pairs for side in (p.positive, p.negative)]

    def prompt_len(prompts):
        return _mean(len(encode_prompt(tokenizer, p)) for p in prompts)

    pairs = items([*spec.train, *spec.test])
    ids = {p: encode_prompt(tokenizer, p) for p in spec.env_prompts("in_distribution")}
    spans = [prompt_user_span(tokenizer, p, i) for p, i in ids.items()]
    neutral = neutral_set()
    choices = [encode_item(tokenizer, [{"role": "user", "content": it.question}, {"role": "assistant", "content": c}])
               for it in capability_set() for c in it.choices]
    readouts = {}
    for name, rspec in readout_specs({spec.name: spec}).items():
        enc = items(rspec.test)
        readouts[name] = (len(rspec.test), _mean(len(e.ids) for e in enc), _mean(e.span[1] - e.span[0] for e in enc))
    plain = encode_prompt(tokenizer, "Hello?")
    instructed = encode_prompt(tokenizer, [{"role": "system", "content": spec.instructions[0]}, {"role": "user", "content": "Hello?"}]) \
        if spec.instructions else plain
    env_prompts = [builtin_prompts(t, env)[0] for env in ENVIRONMENTS for t in MIX_TRAITS]
    return Lengths(
        pair=_mean(len(e.ids) for e in pairs), span=_mean(e.span[1] - e.span[0] for e in pairs),
        prompt=_mean(len(i) for i in ids.values()), user_end=_mean(e for _, e in spans), user=_mean(e - s for s, e in spans),
        mix=prompt_len(builtin_prompt_mix(64)), env_prompt=prompt_len(env_prompts),
        neutral=prompt_len([n.prompt for n in neutral]), response=_mean(len(tokenizer(n.response, add_special_tokens=False)["input_ids"])
                                                                        for n in neutral),
        choice=_mean(len(e.ids) for e in choices), choice_span=_mean(e.span[1] - e.span[0] for e in choices),
        instruction=float(len(instructed) - len(plain)), threshold=prompt_len(threshold_prompts()),
        copy=float(len(tokenizer(COPY_INSTRUCTION, add_special_tokens=False)["input_ids"])),
        n_train=len(spec.train), n_test=len(spec.test), env_pairs={e: len(ps) for e, ps in spec.environment_pairs.items()},
        env_prompt_counts={e: len(ps) for e, ps in spec.prompts.items()}, readouts=readouts,
        capability_rows=[len(it.choices) for it in interleaved(capability_set(), None)],
        paraphrases=len(builtin_paraphrases(spec.name)) if spec.builtin else 0, instructions=spec.instructions is not None,
        scored=tuple(t for t in readouts if t in SCORER_TRAITS or t == spec.name and spec.scorer is not None))


# --- work -----------------------------------------------------------------------------------------

@dataclass
class Work:
    """The work of one cell (or a sum of cells); token counts are token × block passes unless named otherwise."""

    generated: float = 0.0      # new tokens decoded (each through every block and the unembedding)
    steps: float = 0.0          # batched decoding steps (each reads every weight once)
    forward: float = 0.0        # token × block passes without a gradient, and the forward half of backward passes
    head: float = 0.0           # positions through the unembedding (V × d), or a V × d product on the device
    backward: float = 0.0       # vector–Jacobian products
    backward_blocks: float = 0.0  # token × block work of those products (each ≈ 1 forward: gradients of the inputs)
    backward_head: float = 0.0  # positions the products carry back through the unembedding
    candidates: float = 0.0     # inversion candidates and whole-span search sequences scored
    candidate_blocks: float = 0.0  # their token × block passes
    host: float = 0.0           # float64 linear-algebra FLOPs on the host (CPU)
    texts: float = 0.0          # texts given to a scorer

    def __add__(self, other: Work) -> Work:
        return Work(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __mul__(self, k: float) -> Work:
        return Work(**{f.name: getattr(self, f.name) * k for f in fields(self)})

    __rmul__ = __mul__

    def flops(self, s: Shape) -> dict[str, float]:
        """Device FLOPs by kind: sampling (decoding), forward passes, inversion candidates, backward passes."""
        return {"sampling": self.generated * s.token_flops, "forward": 2.0 * s.block_params * self.forward + s.head_flops * self.head,
                "candidates": 2.0 * s.block_params * self.candidate_blocks,
                "backward": 2.0 * s.block_params * self.backward_blocks + s.head_flops * self.backward_head}

    def forward_tokens(self, s: Shape) -> float:
        """Forward work (no gradient and the forward half of backward passes) in full-depth token equivalents."""
        return self.forward / s.n_layers


def total(works: Iterable[Work]) -> Work:
    out = Work()
    for w in works:
        out = out + w
    return out


def gen(rows: float, prompt: float, tokens: float, L: int, batch: int = GENERATE_BATCH) -> Work:
    """Sampling or greedy decoding of ``rows`` prompts of ``prompt`` tokens, ``tokens`` new tokens each."""
    return Work(generated=rows * tokens, steps=math.ceil(rows / batch) * tokens, forward=rows * prompt * L, head=rows)


def tf(rows: float, length: float, keep: float, L: int) -> Work:
    """A teacher-forced pass over ``rows`` sequences of ``length`` tokens, logits kept at ``keep`` positions each."""
    return Work(forward=rows * length * L, head=rows * keep)


def cap(rows: float, length: float, upto: int) -> Work:
    """A capture pass that stops after block ``upto`` (no logits)."""
    return Work(forward=rows * length * (upto + 1))


def vjps(rows: float, graph_tokens: float, blocks: int, forward_tokens: float, L: int) -> Work:
    """``rows`` vector–Jacobian products over a graph of ``graph_tokens`` tokens × ``blocks`` blocks, after
    a forward pass of ``forward_tokens`` tokens through the whole body."""
    return Work(forward=forward_tokens * L, backward=rows, backward_blocks=rows * graph_tokens * blocks)


def head_gram_host(s: Shape) -> float:
    """``Wᵀ W`` of the unembedding in float64 (jacobian.HeadGram)."""
    return 2.0 * s.vocab * s.d_model ** 2


# --- the stages -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    """What every counter reads: the run's sizes, the model's shape, the audited layer and lengths, a scorer
    flag, the layers of the selection, and the run's payloads (in a projection: only the measured null-space
    share and natural-search candidates)."""

    sizes: Mapping[str, Any]
    shape: Shape
    layer: int
    lengths: Lengths
    scorer: bool
    selection: Sequence[int]
    payloads: Mapping[str, Any] = field(default_factory=dict)


def c_layers(c: Context) -> Work:
    n = c.lengths
    return cap(2 * (n.n_train + n.n_test), n.pair, max(c.selection))


def c_vector(c: Context) -> Work:
    return cap(2 * c.lengths.n_train, c.lengths.pair, c.layer)


def c_calibrate(c: Context) -> Work:
    n, L = c.lengths, c.shape.n_layers
    rows, tokens = c.sizes["calib_prompts"] * c.sizes["calib_samples"], c.sizes["calib_tokens"]
    work = gen(rows, n.prompt, tokens, L) + tf(rows, n.prompt + tokens, tokens + 1, L)
    return work + (Work(texts=rows) if c.scorer else tf(2 * n.n_test, n.pair, n.span + 1, L))


def c_identifiability(c: Context) -> Work:
    n, L, s = c.lengths, c.shape.n_layers, c.sizes
    pairs = min(s["id_pairs"] or n.n_test, n.n_test)
    items, prompts, tokens = 2 * pairs, s["id_prompts"], s["id_tokens"]
    conditions = s["id_draws"] + 6  # none, v, the draws, three dose conditions, v+grad
    seq = n.prompt + tokens
    work = tf(items, n.pair, n.span + 1, L) + Work(backward=math.ceil(items / GRADIENT_CHUNK),
                                                   backward_blocks=items * n.pair * (L - c.layer - 1), backward_head=items * (n.span + 1))
    work += tf(conditions * items, n.pair, n.span + 1, L)
    if c.scorer:
        rows = (conditions - 1) * prompts * s["id_samples"]
        work += gen(rows, n.prompt, tokens, L, BEHAVIOUR_BATCH) + Work(texts=rows)
    work += gen(prompts, n.prompt, tokens, L) + tf(conditions * prompts, seq, tokens + 1, L)
    if s["id_class_draws"]:
        draws = s["id_class_draws"]
        work += tf(2 * prompts, seq, tokens + 1, L)
        per_ratio = tf(draws * items, n.pair, n.span + 1, L) + tf((draws + math.ceil(draws / DIVERGENCE_CHUNK)) * prompts, seq, tokens + 1, L)
        work += per_ratio * len(s["id_class_ratios"])
    return work


def _jacobian_last(c: Context, length: float, blocks: int, readouts: int) -> Work:
    """One prompt's ``J_z`` at its last position (jacobian.head_jacobian): a no-grad prefix, a one-token graph,
    d products through ``blocks`` blocks, a full pass for the logits, and its Gram matrices on the host."""
    s, L = c.shape, c.shape.n_layers
    work = vjps(s.d_model, 1, blocks, length, L) + tf(1, length, length, L)
    return work + Work(host=readouts * 2 * MATMUL * s.d_model ** 3)


def _spectra(c: Context, n: int, null_fraction: float, gain: bool) -> float:
    """Host FLOPs of nullspace.readout_report over ``n`` Gram matrices (one readout)."""
    d = c.shape.d_model
    angles = min(8, n)
    k = null_fraction * d
    work = (EIGVALSH * (1 + n) + EIGH * angles) * d ** 3 + max(angles - 1, 0) * 3 * (MATMUL * k * k * d + SVDVALS * k ** 3)
    return work + ((SVD_FULL + 2 * MATMUL + EIGVALSH) * d ** 3 if gain else 0.0)


def _null_fraction(c: Context) -> float:
    """Mean null-space share per prompt of the stored null-space audit (its angle statistics), else 0.9."""
    payload = c.payloads.get("nullspace")
    if not payload:
        return 0.9
    dims = [x for layer in payload["layers"].values() for r in ("logits", "logprobs")
            for row in layer[r]["null_space_angles"] for x in row["null_dims"]]
    return float(np.mean(dims)) / c.shape.d_model if dims else 0.9


def c_nullspace(c: Context) -> Work:
    s, n, L, d = c.shape, c.lengths, c.shape.n_layers, c.shape.d_model
    prompts, spread = c.sizes["ns_prompts"], min(c.sizes["ns_all_positions"], c.sizes["ns_prompts"])
    blocks = L - c.layer - 1
    frac = _null_fraction(c)
    work = cap(prompts, n.mix, c.layer) + Work(host=head_gram_host(s)) + _jacobian_last(c, n.mix, blocks, 2) * prompts
    work += Work(host=2 * _spectra(c, prompts, frac, True) + 2 * (2 * prompts * n.mix * d ** 2 + EIGVALSH * d ** 3))
    if spread:
        per = vjps(d, n.mix, blocks, n.mix, L) + tf(1, n.mix, n.mix, L) + Work(host=2 * 2 * MATMUL * d ** 3)
        work += per * spread + Work(host=head_gram_host(s) + 2 * _spectra(c, spread, frac, True))
    return work


def _crosslayer_target(c: Context) -> int | None:
    from steerscope.audit.profiles import crosslayer_targets

    targets = crosslayer_targets(c.layer, c.shape.n_layers)
    return targets[0] if targets else None


def c_grams(c: Context) -> Work:
    prompts = 3 * c.sizes["rec_env_prompts"]
    work = _jacobian_last(c, c.lengths.env_prompt, c.shape.n_layers - c.layer - 1, 1) * prompts
    return work + Work(host=head_gram_host(c.shape))


def c_maps(c: Context) -> Work:
    target = _crosslayer_target(c)
    if target is None:
        return Work()
    return vjps(c.shape.d_model, 1, target - c.layer, c.lengths.prompt, c.shape.n_layers) * c.sizes["rec_map_prompts"]


def c_recover(c: Context, method: str) -> Work:
    n, d = c.lengths, c.shape.d_model
    target = _crosslayer_target(c)
    work = cap(2 * n.n_train, n.pair, max(c.layer, target or 0))
    boot = c.sizes["rec_boot"]
    if method == "multienv":
        work += total(cap(2 * k, n.pair, c.layer) for k in n.env_pairs.values())
        work += Work(host=(1 + boot + len(n.env_pairs)) * EIGH * d ** 3)
    elif method == "sparse":
        work += Work(host=(EIGH + MATMUL) * d ** 3)
    elif method == "crosslayer" and target is not None:
        work += Work(host=(2 * EIGVALSH + EIGH + MATMUL * c.sizes["rec_map_prompts"]) * d ** 3)
    return work  # ica: iterative on [2N, d] activations; no d³ term


def _search(B: int, prefix: float, tried: Sequence[float], budget: int, batch: int, seeded: bool, prior: int = 0) -> Work:
    """One sequential inversion (invert.invert): the prefix's KV cache, then per position the candidates tried,
    gradient rounds (one product through blocks 0..ℓ and two V × d products each) and the extension of the cache.
    ``prior``: the blocks of the whole model, when the search scores the model's likeliest next tokens first
    (``SearchConfig.prior``): its own KV cache of the prefix, then per position one token through every block and
    the head, and a batch of candidates before the gradient rounds (none at a first position without a prefix)."""
    work = Work(forward=prefix * B + prefix * prior)
    for j, t in enumerate(tried):
        left = t - (1 if seeded else 0)
        likely = min(batch, left) if prior and (prefix or j) and left > 0 else 0
        rounds = math.ceil(min(left - likely, budget) / batch) if t > 1 or not seeded else 0
        work += Work(candidates=t, candidate_blocks=t * B, forward=(1 + rounds) * B + prior, backward=rounds, backward_blocks=rounds * B,
                     head=2 * rounds + (1 if prior else 0))
    return work


def reachability_parts(c: Context) -> dict[str, Work]:
    """The work of each cell of the reachability stage that computes (key suffix after ``{trait}/reachability/``):
    the threshold; per prompt, per α of the sweep, the random control and the black-box probes (side by side);
    then Theorem 4.5 and the behaviour columns. The report cell does no work, nor does the sweep's entry at the
    audit's own α, read from the prompts' searches (a projection, without a measured α, searches every α; a run
    folder written before the audit read that entry searched it, which this model does not count)."""
    from steerscope.invert import SearchConfig

    s, n, L, B = c.sizes, c.lengths, c.shape.n_layers, c.layer + 1
    V = c.shape.vocab
    budget, batch = s["reach_budget"], 32
    limit = min(V, s["reach_max_candidates"] or V)
    positions, tokens = s["reach_positions"], s["reach_tokens"]
    payload = c.payloads.get("reachability")
    # the model's likeliest next tokens first: in the measured run's search settings, else the default
    prior = L if (payload["config"]["search"].get("prior", False) if payload else SearchConfig().prior) else 0
    # threshold calibration: 2 prompts, their last `positions` positions, the token and ~64 competitors each
    last = min(positions, n.threshold)
    parts = {"threshold": Work(forward=2 * n.threshold * B + 2 * n.threshold * B, head=2 * last,
                               candidates=2 * last * (1 + THRESHOLD_COMPETITORS),
                               candidate_blocks=2 * last * (1 + THRESHOLD_COMPETITORS) * B)}
    if payload:
        windows = [(p["n_tokens"], p["start"], p["end"], [r["natural_tried"] for r in p["positions"]],
                    [r["steered_tried"] for r in p["positions"]], p.get("relaxation"), p.get("sequence_search")) for p in payload["prompts"]]
    else:  # a projection: the user's words of the prompt, every steered position scanned up to the cap (not reached)
        width, end = round(min(positions, n.user)), round(n.user_end)
        natural = _natural_tried(c)
        windows = [(n.prompt, end - width, end, [natural] * width, [limit] * width, None, None) for _ in range(s["reach_prompts"])]
    for i, (n_tok, start, end, nat, st, relaxed, joint) in enumerate(windows):
        m = end - start
        work = Work(forward=2 * n_tok * B) + _search(B, start, nat, budget, batch, False, prior) + _search(B, start, st, budget, batch, True, prior)
        steps = relaxed["steps"] if relaxed else (s.get("reach_relax_steps") if payload is None else 0) or 0
        if steps:
            # loss.backward() with the weights requiring gradients: their gradients are computed too (twice the work)
            work += Work(forward=start * B + (steps + 1) * m * B + m * B, backward=steps, backward_blocks=2 * steps * m * B, head=m)
        scored = joint["scored"] if joint else ((s.get("reach_span_iterations") or 0) * (s.get("reach_span_batch") or 0)
                                                if payload is None else 0)
        iterations = joint["iterations"] if joint else (s.get("reach_span_iterations") or 0 if payload is None else 0)
        if scored or iterations:
            work += Work(forward=start * B + SEQUENCE_INITS * m * B + iterations * m * B, backward=iterations,
                         backward_blocks=iterations * m * B, head=iterations * m, candidates=scored, candidate_blocks=scored * m * B)
        parts[f"prompt={i}"] = work
    k = min(s["reach_sweep_prompts"], s["reach_prompts"])
    sweeps = payload["alpha_sweep"] + [payload["random_control"]] if payload else [None] * (len(s["reach_alphas"]) + 1)
    window = windows[0]
    own = payload["config"]["alpha"] if payload else None
    for name, sweep in zip([f"alpha={a:g}" for a in s["reach_alphas"]] + ["random_control"], sweeps):
        if name != "random_control" and sweep is not None and sweep["alpha"] == own:
            parts[name] = Work()
            continue
        n_pos = sweep["n_positions"] if sweep else k * (window[2] - window[1])
        accepted = sweep["accepted_rate"] if sweep else 0.0
        tried = [1.0] * round(n_pos * accepted) + [1.0 + limit - 1] * round(n_pos * (1 - accepted))
        parts[name] = Work(forward=k * 2 * window[0] * B) + _search(B, k * window[1], tried, budget, batch, True, prior)
    adv = payload["adversarial"] if payload else None
    i = adv["i"] if adv else window[1] + max(0, (window[2] - window[1]) // 2 - 1)
    first, second = (adv["collision"]["tried"], adv["next"]["tried"]) if adv else (batch, limit)
    parts["adversarial"] = (Work(forward=(2 * window[0] + 2 * (i + 2)) * B) + _search(B, i, [first], budget, batch, False, prior)
                            + _search(B, i + 1, [second], budget, batch, False, prior))
    columns = 4 if n.instructions else 3
    parts["behaviour"] = gen(columns * k, window[0], tokens, L) + tf(k * columns, window[0] + tokens, window[0] + tokens, L) + Work(texts=columns * k)
    probes = (payload or {}).get("black_box_probes")
    bb = probes["n_prompts"] if probes else (s.get("reach_black_box") or 0 if payload is None else 0)
    if bb:
        parts["black_box_probes"] = _black_box(c, bb, tokens)
    return parts


def c_reachability(c: Context) -> Work:
    """The work of the whole reachability stage (its cells' added up)."""
    total = Work()
    for work in reachability_parts(c).values():
        total += work
    return total


#: The phases of the reachability stage's cells (key suffixes): the cells of a phase run side by side, the phases in order.
REACHABILITY_PHASES = (("threshold",), ("prompt=", "alpha=", "random_control", "black_box_probes"), ("adversarial", "behaviour"))
# The sweep's entry at the audit's own α is a cell of the last phase, but it takes no time: counted in the second, it changes no maximum.


def _natural_tried(c: Context) -> float:
    """Candidates the natural (unsteered) search tries per position: the mean of the measured run when given, else the budget."""
    return float(c.payloads.get("natural_tried") or c.sizes["reach_budget"])


def _black_box(c: Context, prompts: int, tokens: int) -> Work:
    """The black-box probes (audit.blackbox) of ``prompts`` audited prompts and max(SHOTS) demonstrations."""
    n, L = c.lengths, c.shape.n_layers
    demos = max(SHOTS)
    work = gen(prompts + demos, n.prompt, tokens, L) + tf(prompts, n.prompt + tokens, tokens, L)
    tune_len = n.prompt + TUNE["tokens"] + tokens
    rows = TUNE["steps"] * TUNE["batch"]
    work += Work(forward=rows * tune_len * L, head=rows * tokens, backward=rows, backward_blocks=rows * tune_len * L,
                 backward_head=rows * tokens)
    demo = n.prompt + tokens  # one demonstration turn: a prompt and its steered completion
    probes = [n.prompt, n.prompt + n.instruction] + [n.prompt + k * demo for k in SHOTS]
    probes += [n.copy + n.prompt + tokens, n.prompt + TUNE["prefill"], n.prompt + TUNE["tokens"]]
    for length in probes:
        work += tf(prompts, length + tokens, tokens, L) + gen(prompts, length, tokens, L) + Work(texts=prompts)
    return work + tf(prompts, n.prompt + TUNE["tokens"] + tokens, tokens, L) + Work(texts=prompts)  # the soft prompt: forced only


def c_monitor(c: Context) -> Work:
    n, L, s = c.lengths, c.shape.n_layers, c.sizes
    rows = 3 * s["mon_prompts"] * s["mon_samples"]
    work = cap(2 * (n.n_train + n.n_test), n.pair, c.layer) + gen(rows, n.prompt, s["mon_tokens"], L)
    return work + cap(rows, n.prompt + s["mon_tokens"], c.layer) + Work(texts=rows if c.scorer else 0)


def c_side_effects(c: Context) -> Work:
    n, L, s = c.lengths, c.shape.n_layers, c.sizes
    doses = 1 + len({*s["se_doses"], 1.0})
    rows, tokens = s["se_prompts"] * s["se_samples"], s["se_tokens"]
    work = gen(rows, n.neutral, tokens, L) * doses
    for trait, (pairs, length, span) in n.readouts.items():
        work += tf(doses * 2 * min(s["se_pairs"] or pairs, pairs), length, span + 1, L)
        if trait in n.scored:
            work += Work(texts=doses * rows)
    work += tf(doses * rows, n.neutral + tokens, tokens + 1, L) + tf(doses * s["se_prompts"], n.neutral + n.response, n.response + 1, L)
    items = n.capability_rows[: s["se_capability"]] if s["se_capability"] else n.capability_rows
    return work + tf(doses * sum(items), n.choice, n.choice_span + 1, L)


def c_edits(c: Context) -> Work:
    """edits.edit_specificity: every readout's margins unedited and under four edits, and the target's margins at
    each evaluation of the two tunings (a stored error: the first tuning failed after its doublings)."""
    if not c.sizes.get("se_edits"):
        return Work()
    n, L = c.lengths, c.shape.n_layers
    every = sum(2 * pairs * length for pairs, length, _ in n.readouts.values())
    heads = sum(2 * pairs * (span + 1) for pairs, _, span in n.readouts.values())
    target = 2 * n.n_test
    failed = "error" in (c.payloads.get("edits") or {})
    readouts, evaluations = (1, 1 + FAILED_SOLVE) if failed else (5, 2 * (1 + SOLVE_EVALUATIONS))
    return Work(forward=(readouts * every + evaluations * target * n.pair) * L, head=readouts * heads + evaluations * target * (n.span + 1))


def c_robustness(c: Context, part: str) -> Work:
    from steerscope.audit.calibrate import candidate_layers

    n, L, s = c.lengths, c.shape.n_layers, c.sizes
    pairs = min(s["rob_pairs"] or n.n_test, n.n_test)
    rows, tokens = s["rob_prompts"] * s["rob_samples"], s["rob_tokens"]
    score = c.scorer
    if part == "instructions":
        if not n.instructions:
            return Work()
        work = tf(3 * 2 * 2 * pairs, n.pair + n.instruction, n.span + 1, L)
        return work + (gen(rows, n.prompt + n.instruction, tokens, L) * 6 + Work(texts=6 * rows) if score else Work())
    if part == "environments":
        work = total(tf(2 * 2 * min(s["rob_pairs"] or k, k), n.pair, n.span + 1, L) for k in n.env_pairs.values())
        if score:
            envs = len(n.env_prompt_counts)
            para = min(s["rob_prompts"], n.paraphrases)
            work += gen(rows, n.prompt, tokens, L) * (2 * envs) + gen(para * s["rob_samples"], n.prompt, tokens, L) * 4
            work += Work(texts=2 * envs * rows + 4 * para * s["rob_samples"])
        return work
    if part == "layers":
        layers = list(range(L)) if s["rob_layers"] == "all" else sorted({*candidate_layers(L, s["candidate_layers"]), c.layer})
        work = cap(2 * n.n_train, n.pair, max(layers))
        per = tf(2 * 2 * pairs, n.pair, n.span + 1, L) + tf(2 * s["rob_prompts"], n.neutral + n.response, n.response + 1, L)
        return work + per * len(layers)
    if part == "stability":
        sizes = sorted({k for k in s["rob_curve"] if k < n.n_train} | {n.n_train})
        directions = 1 + sum(s["rob_draws"] if k < n.n_train else 1 for k in sizes)
        return cap(2 * n.n_train, n.pair, c.layer) + tf(directions * 2 * pairs, n.pair, n.span + 1, L)
    raise ValueError(part)


def cell_work(key: str, c: Context) -> Work:
    """The work of the cell ``key`` (``{trait}/…``, ``grams/L…``, ``maps/L…``, ``model``)."""
    parts = key.split("/")
    if parts[0] == "grams":
        return c_grams(c)
    if parts[0] == "maps":
        return c_maps(c)
    if len(parts) < 2 or parts[1] == "spec":
        return Work()
    kind = parts[1]
    if kind == "reachability" and len(parts) > 2:
        return reachability_parts(c).get(parts[2], Work())
    simple = {"layers": c_layers, "vector": c_vector, "identifiability": c_identifiability, "nullspace": c_nullspace,
              "reachability": c_reachability, "monitor": c_monitor, "side_effects": c_side_effects, "edits": c_edits}
    if kind in simple:
        return simple[kind](c)
    if kind == "calibrate":
        return c_calibrate(c)
    if kind == "recover":
        return c_recover(c, parts[2])
    if kind == "robustness":
        return c_robustness(c, parts[2])
    raise ValueError(f"no cost model for cell {key!r}")


# --- a finished run -------------------------------------------------------------------------------

def model_files(name: str) -> tuple[Any, Any]:
    """``(tokenizer, config)`` of the run's model, read without loading weights (built-in: the converted folder)."""
    from transformers import AutoConfig, AutoTokenizer

    from steerscope.models.builtin import BUILTIN_MODELS, converted_dir
    from steerscope.models.loading import prepare_tokenizer

    source = str(converted_dir(name)) if name in BUILTIN_MODELS else name
    return prepare_tokenizer(AutoTokenizer.from_pretrained(source)), AutoConfig.from_pretrained(source)


def contexts(store: RunStore, tokenizer: Any, shape: Shape) -> dict[str, Context]:
    """One :class:`Context` per audited trait of a finished run, from its configuration and payloads."""
    from steerscope.traitspec import TraitSpec

    config = store.run["config"]
    out = {}
    for trait in config["traits"]:
        def payload(key: str) -> Any:
            cell = store.get(f"{trait}/{key}")
            return cell.payload if cell is not None else None

        spec = TraitSpec.from_content(payload("spec"))
        reach = payload("reachability")
        natural = [r["natural_tried"] for p in reach["prompts"] for r in p["positions"]] if reach else []
        out[trait] = Context(config["settings"], shape, int(payload("vector")["layer"]), lengths_of(tokenizer, spec), spec.scorer is not None,
                             [int(r["layer"]) for r in payload("layers")["rows"]],
                             {"nullspace": payload("nullspace"), "reachability": reach, "edits": payload("edits"),
                              "natural_tried": _mean(natural) if natural else None})
    return out


@dataclass
class CellCost:
    key: str
    stage: str
    seconds: float
    work: Work


#: Stages whose cells (``{trait}/{stage}/…``, then ``{trait}/{stage}``) the cost model takes as one: their work is modelled per stage.
WHOLE_STAGES = ("identifiability", "nullspace", "reachability")


def modelled_key(key: str) -> str:
    """The key whose work the cost model gives for cell ``key``: the stage's for a cell of :data:`WHOLE_STAGES`."""
    parts = key.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 and parts[1] in WHOLE_STAGES else key


def measured_cells(folder: str | Path) -> tuple[dict[str, Any], Shape, dict[str, Context], list[CellCost]]:
    """The run's configuration, model shape, per-trait contexts and every cell with its wall time and work
    (the cells of a stage in :data:`WHOLE_STAGES` as one, their seconds added)."""
    with RunStore.open(folder, readonly=True) as store:
        config = store.run["config"]
        tokenizer, model_config = model_files(config["model"])
        shape = shape_of_config(config["model"], model_config)
        ctx = contexts(store, tokenizer, shape)
        cells: dict[str, CellCost] = {}
        for cell in store.cells():
            key = modelled_key(cell.key)
            if key in cells:
                cells[key].seconds += cell.seconds
                continue
            trait = cell.trait or next((t for t, c in ctx.items() if key.split("/")[0] in ("grams", "maps")
                                        and key.endswith(f"/L{c.layer}")), next(iter(ctx)))
            work = Work() if key == "model" else cell_work(key, ctx[trait])
            cells[key] = CellCost(key, cell.stage, cell.seconds, work)
    return config, shape, ctx, list(cells.values())


#: The per-unit costs fitted to the cells' wall times, in the order of :func:`features`.
UNITS = ("generated token", "forward GFLOP", "backward GFLOP", "candidate", "text scored", "host GFLOP")
#: Time categories of a timed audit.
CATEGORIES = ("sampling", "forward", "candidates", "backward", "host", "scorer")


def features(w: Work, s: Shape) -> list[float]:
    f = w.flops(s)
    return [w.generated, f["forward"] / 1e9, f["backward"] / 1e9, w.candidates, w.texts, w.host / 1e9]


def fit_units(cells: Sequence[CellCost], shape: Shape) -> dict[str, float]:
    """Seconds per unit by non-negative least squares over the cells, each weighted by 1 / its seconds (relative errors)."""
    from scipy.optimize import nnls

    rows = [(features(c.work, shape), c.seconds) for c in cells if c.seconds > 0.05]
    a = np.array([[x / t for x in f] for f, t in rows])
    coef, _ = nnls(a, np.ones(len(rows)))
    return dict(zip(UNITS, coef.tolist()))


Timer = Any  # Callable[[Work], dict[str, float]]: seconds per category of CATEGORIES


def cpu_timer(units: Mapping[str, float], shape: Shape) -> Timer:
    """Seconds from the fitted per-unit costs of a measured run (its machine and model)."""
    def time(w: Work) -> dict[str, float]:
        gen_s, fwd, bwd, cand, text, host = (u * x for u, x in zip(units.values(), features(w, shape)))
        return {"sampling": gen_s, "forward": fwd, "candidates": cand, "backward": bwd, "host": host, "scorer": text}
    return time


def stage_rows(cells: Sequence[CellCost], shape: Shape, units: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per stage: wall seconds, the work units and FLOPs, and the seconds the fitted unit costs give."""
    time = cpu_timer(units, shape)
    rows = []
    for stage in dict.fromkeys(c.stage for c in cells):
        mine = [c for c in cells if c.stage == stage]
        w = total(c.work for c in mine)
        rows.append({"stage": stage, "cells": len(mine), "seconds": sum(c.seconds for c in mine), "predicted_s": sum(time(w).values()),
                     "generated_tokens": w.generated, "decode_steps": w.steps, "forward_tokens": w.forward_tokens(shape),
                     "logit_positions": w.head, "backward_passes": w.backward, "candidates": w.candidates, "texts": w.texts,
                     "gflop": {k: v / 1e9 for k, v in w.flops(shape).items()}, "host_gflop": w.host / 1e9, "work": asdict(w)})
    return rows


def per_unit(units: Mapping[str, float], shape: Shape, ctx: Context) -> dict[str, float]:
    """The fitted costs in the units of the cost model: seconds per generated token, per full-depth forward
    token, per Jacobian row (one token back through the blocks after ℓ), per candidate, per text."""
    blocks_after = shape.n_layers - ctx.layer - 1
    rate = {k: 1 / units[k] if units[k] else math.inf for k in ("forward GFLOP", "backward GFLOP", "host GFLOP")}
    return {"s_per_generated_token": units["generated token"], "s_per_forward_token": units["forward GFLOP"] * shape.token_flops / 1e9,
            "s_per_jacobian_row": units["backward GFLOP"] * 2.0 * shape.block_params * blocks_after / 1e9,
            "s_per_candidate": units["candidate"], "s_per_text": units["text scored"],
            "candidate_gflop": 2.0 * shape.block_params * (ctx.layer + 1) / 1e9, "forward_gflops_per_s": rate["forward GFLOP"],
            "backward_gflops_per_s": rate["backward GFLOP"], "host_gflops_per_s": rate["host GFLOP"]}


# --- the projection -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gpu:
    """Dense peak rates (no sparsity) and memory bandwidth of one GPU (vendor data sheets)."""

    name: str
    fp32: float
    tf32: float
    bf16: float
    hbm: float
    memory: float


GPUS = {"h100": Gpu("H100 SXM 80 GB", 67e12, 494.7e12, 989.4e12, 3.35e12, 80e9),
        "h200": Gpu("H200 SXM 141 GB", 67e12, 494.7e12, 989.4e12, 4.8e12, 141e9)}

#: Assumptions of the projection (docs/scaling.md states each).
ASSUMPTIONS: dict[str, Any] = {
    "dtype": "float32 weights and matmuls (the audit loads float32, its Jacobians refuse less; PyTorch leaves TF32 off for matmuls)",
    "utilisation": 0.5,            # share of the dense peak reached by batched forward and backward passes and candidate batches
    "bandwidth_share": 0.7,        # share of HBM bandwidth reached when a decoding step reads the weights
    "step_overhead_s": 0.015,      # Python and kernel-launch time per decoding step of transformers' generate (eager mode)
    "host_flops": 2e11,            # float64 LAPACK rate of the GPU machine's CPU (16 cores)
    "load_s": 120.0,               # loading a model in float32 and hashing its weights, once per worker and model
    "engine_batch": 256,           # rows a serving engine decodes together (continuous batching)
    "engine_bytes_per_param": 2,   # bf16 weights in the serving engine
}


def gpu_timer(shape: Shape, gpu: Gpu, text_s: float, engine: bool = False, tf32: bool = False, derate: Mapping[str, float] | None = None,
              a: Mapping[str, Any] = ASSUMPTIONS) -> Timer:
    """Seconds on ``gpu``: forward, backward and candidate passes compute-bound at ``utilisation`` of the float32 peak
    (``tf32``: of the TF32 peak); each decoding step bound by reading the float32 weights or by its FLOPs, plus the
    per-step overhead (``engine``: a bf16 serving engine decoding ``engine_batch`` rows per step, no overhead); host
    linear algebra at ``host_flops``; the scorer at the measured seconds per text. ``derate``: categories whose time
    is multiplied (e.g. by how much slower per FLOP they ran than forward passes on the measured machine)."""
    dense = (gpu.tf32 if tf32 else gpu.fp32) * a["utilisation"]

    def time(w: Work) -> dict[str, float]:
        f = w.flops(shape)
        if engine:
            read = shape.total_params * a["engine_bytes_per_param"] / (gpu.hbm * a["bandwidth_share"])
            sampling = max(f["sampling"] / (gpu.bf16 * a["utilisation"]), w.generated / a["engine_batch"] * read)
        else:
            read = shape.total_params * 4 / (gpu.hbm * a["bandwidth_share"])
            sampling = max(f["sampling"] / dense, w.steps * read) + w.steps * a["step_overhead_s"]
        out = {"sampling": sampling, "forward": f["forward"] / dense, "candidates": f["candidates"] / dense,
               "backward": f["backward"] / dense, "host": w.host / a["host_flops"], "scorer": w.texts * text_s}
        return {k: v * (derate or {}).get(k, 1.0) for k, v in out.items()}
    return time


def measured_derating(per: Mapping[str, float]) -> dict[str, float]:
    """How much slower per FLOP than forward passes the backward passes and the candidates ran on the measured
    machine (the candidates' cell also holds the gradient rounds of the search)."""
    candidate_rate = per["candidate_gflop"] / per["s_per_candidate"] if per["s_per_candidate"] else math.inf
    return {"backward": per["forward_gflops_per_s"] / per["backward_gflops_per_s"], "candidates": per["forward_gflops_per_s"] / candidate_rate}


def profile_sizes(name: str = "full") -> dict[str, Any]:
    from steerscope.audit.profiles import profile

    return {k: list(v) if isinstance(v, tuple) else v for k, v in profile(name).sizes.items()}


def audit_works(shape: Shape, trait: str, layer: int, fixed: bool, tokenizer: Any, sizes: Mapping[str, Any],
                measured: Context) -> dict[str, Work]:
    """The cells the current stages write for one audit of the built-in ``trait`` at ``layer`` on a model of ``shape``
    (``fixed``: the layer is given, as in a sweep), with their work. From the measured run: the null-space share per
    prompt and the candidates the natural search tries per position."""
    from steerscope.audit.calibrate import candidate_layers
    from steerscope.audit.stages import RECOVERY_METHODS
    from steerscope.robustness import PARTS
    from steerscope.traitspec import builtin_spec

    selection = [layer] if fixed else candidate_layers(shape.n_layers, sizes["candidate_layers"])
    payloads = {"nullspace": measured.payloads.get("nullspace"), "natural_tried": measured.payloads.get("natural_tried")}
    c = Context(sizes, shape, layer, lengths_of(tokenizer, builtin_spec(trait)), True, selection, payloads)
    keys = [f"{trait}/layers", f"{trait}/vector"] + [f"{trait}/calibrate/alpha={a:g}" for a in (0.0, *sizes["alphas"])]
    keys += [f"{trait}/identifiability", f"{trait}/nullspace", f"grams/L{layer}", f"maps/L{layer}"]
    keys += [f"{trait}/recover/{m}" for m in RECOVERY_METHODS]
    keys += [f"{trait}/reachability/{part}" for part in reachability_parts(c)]
    keys += [f"{trait}/{k}" for k in ("monitor", "side_effects", "edits")] + [f"{trait}/robustness/{p}" for p in PARTS]
    return {k: cell_work(k, c) for k in keys}


def stage_of(key: str) -> str:
    parts = key.split("/")
    return "recover" if parts[0] in ("grams", "maps") else "side_effects" if parts[1] == "edits" else parts[1]


def timed(cells: Mapping[str, Work], time: Timer) -> dict[str, Any]:
    """Seconds per stage and category, the total, and the critical path if the cells of the audit were fanned out:
    layer and vector, then the calibration cells side by side, then every later stage side by side (the Gram and
    map cells before the recovery methods; the reachability stage's cells, when given one by one, in its
    :data:`REACHABILITY_PHASES`)."""
    seconds = {k: time(w) for k, w in cells.items()}
    stages: dict[str, dict[str, float]] = {}
    for key, s in seconds.items():
        row = stages.setdefault(stage_of(key), dict.fromkeys(CATEGORIES, 0.0))
        for k, v in s.items():
            row[k] += v
    cell_s = {k: sum(v.values()) for k, v in seconds.items()}
    first = [k for k in cells if stage_of(k) in ("layers", "vector")]
    calib = [k for k in cells if stage_of(k) == "calibrate"]
    chains: dict[str, float] = {}
    reach: dict[str, float] = {}
    for key in cells:
        if key in first or key in calib:
            continue
        if stage_of(key) == "reachability" and key.count("/") > 1:
            reach[key.split("/", 2)[2]] = cell_s[key]
            continue
        chain = "recover" if stage_of(key) == "recover" else key
        chains[chain] = chains.get(chain, 0.0) + cell_s[key]
    if reach:
        chains["reachability"] = sum(max((t for k, t in reach.items() if k.startswith(phase)), default=0.0) for phase in REACHABILITY_PHASES)
    critical = sum(cell_s[k] for k in first) + max(cell_s[k] for k in calib) + max(chains.values())
    return {"stages": stages, "total_s": sum(cell_s.values()), "critical_path_s": critical}


def stage_work(cells: Mapping[str, Work], shape: Shape) -> dict[str, dict[str, Any]]:
    out: dict[str, Work] = {}
    for key, w in cells.items():
        out[stage_of(key)] = out.get(stage_of(key), Work()) + w
    return {stage: {"generated_tokens": w.generated, "decode_steps": w.steps, "forward_tokens": w.forward_tokens(shape),
                    "backward_passes": w.backward, "candidates": w.candidates, "host_gflop": w.host / 1e9, "texts": w.texts,
                    "pflop": {k: v / 1e15 for k, v in w.flops(shape).items()}} for stage, w in out.items()}


def makespan(durations: Sequence[float], workers: int) -> float:
    """Longest-processing-time-first schedule of independent jobs on ``workers`` identical workers."""
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def project(run: Mapping[str, Any], models: Sequence[str], traits: Sequence[str], fractions: Sequence[float], workers: Sequence[int],
            gpu: Gpu) -> dict[str, Any]:
    """The full profile from the measured run ``run``: on its own model and machine (the fitted per-unit costs), and
    on 7–8B models on ``gpu`` (one audit that selects its layer, and the traits × layers × models sweep on N workers).
    Token lengths come from the run's tokenizer and chat template."""
    from steerscope.audit.profiles import default_layer

    tokenizer, _ = model_files(run["config"]["model"])
    measured: Context = next(iter(run["contexts"].values()))
    own: Shape = run["shape"]
    text_s = run["per_unit"]["s_per_text"]
    sizes = profile_sizes("full")
    out: dict[str, Any] = {"gpu": asdict(gpu), "assumptions": ASSUMPTIONS, "profile": sizes, "from_run": run["folder"], "models": {}}
    cells = audit_works(own, traits[0], measured.layer, False, tokenizer, sizes, measured)
    out["measured_model_full"] = {"model": own.name, "layer": measured.layer, "work": stage_work(cells, own)} | timed(
        cells, cpu_timer(run["units"], own))
    derate = measured_derating(run["per_unit"])
    out["derating"] = derate
    plans: dict[str, dict[str, Any]] = {"fp32": {}, "derated": {"derate": derate}, "engine": {"engine": True}, "tf32": {"tf32": True}}
    grids: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in models:
        shape = preset_shape(name)
        layer = default_layer(shape.n_layers)
        cells = audit_works(shape, traits[0], layer, False, tokenizer, sizes, measured)
        entry: dict[str, Any] = {"shape": asdict(shape), "trait": traits[0], "layer": layer, "work": stage_work(cells, shape)}
        entry |= {plan: timed(cells, gpu_timer(shape, gpu, text_s, **kw)) for plan, kw in plans.items()}
        layers = sorted({round(f * shape.n_layers) for f in fractions})
        grid = [audit_works(shape, t, ell, True, tokenizer, sizes, measured) for t in traits for ell in layers]
        grids[name] = {plan: [timed(g, gpu_timer(shape, gpu, text_s, **kw)) for g in grid] for plan, kw in plans.items()}
        entry["sweep_layers"] = layers
        entry["sweep_audit_hours"] = {plan: [a["total_s"] / 3600 for a in timings] for plan, timings in grids[name].items()}
        out["models"][name] = entry
    load = ASSUMPTIONS["load_s"]
    rows = {}
    for n in workers:  # models one after another, each worker loading each model once (steerscope sweep --ray)
        row = {}
        for plan in plans:
            audits = {m: [a["total_s"] for a in g[plan]] for m, g in grids.items()}
            row[f"{plan}_hours"] = sum(load + makespan(v, n) for v in audits.values()) / 3600
            fanned = sum(load + max(sum(v) / n, max(a["critical_path_s"] for a in grids[m][plan])) for m, v in audits.items())
            row[f"{plan}_cells_fanned_out_hours"] = fanned / 3600  # a lower bound: cells of an audit on several workers
            every = [d for v in audits.values() for d in v]
            row[f"{plan}_models_interleaved_hours"] = (makespan(every, n) + len(audits) * load) / 3600  # each worker loads each model
        row["gpu_hours"] = n * row["fp32_hours"]
        rows[str(n)] = row
    out["sweep"] = {"audits": sum(len(g["fp32"]) for g in grids.values()), "traits": list(traits), "layer_fractions": list(fractions),
                    "workers": rows}
    return out


# --- output ---------------------------------------------------------------------------------------

def _count(x: float) -> str:
    return "" if not x else f"{x / 1e9:.2f} G" if x >= 1e9 else f"{x / 1e6:.1f} M" if x >= 1e6 else f"{x / 1e3:.1f} k" if x >= 1e4 else f"{x:,.0f}"


def print_run(run: Mapping[str, Any], console: Console) -> None:
    shape: Shape = run["shape"]
    table = Table(title=f"{run['folder']}: {shape.name} ({shape.total_params / 1e6:.0f} M parameters), {run['config']['profile']} profile, "
                        f"layer {run['layers']}")
    for col in ("stage", "cells", "wall s", "fit s", "generated tok", "forward tok", "backward passes", "candidates", "host GFLOP", "texts"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in run["stages"]:
        table.add_row(r["stage"], str(r["cells"]), f"{r['seconds']:.1f}", f"{r['predicted_s']:.1f}", _count(r["generated_tokens"]),
                      _count(r["forward_tokens"]), _count(r["backward_passes"]), _count(r["candidates"]),
                      f"{r['host_gflop']:.1f}" if r["host_gflop"] else "", _count(r["texts"]))
    console.print(table)
    u = run["per_unit"]
    console.print(f"fitted per unit: {1e3 * u['s_per_generated_token']:.2f} ms per generated token, {1e3 * u['s_per_forward_token']:.2f} ms "
                  f"per forward token ({u['forward_gflops_per_s']:.0f} GFLOP/s), {1e3 * u['s_per_jacobian_row']:.2f} ms per Jacobian row "
                  f"({u['backward_gflops_per_s']:.0f} GFLOP/s backward), {1e3 * u['s_per_candidate']:.2f} ms per candidate "
                  f"({u['candidate_gflop']:.2f} GFLOP each), {1e3 * u['s_per_text']:.1f} ms per text scored, host float64 "
                  f"{u['host_gflops_per_s']:.0f} GFLOP/s")


def _timed_table(title: str, t: Mapping[str, Any], work: Mapping[str, Mapping[str, Any]], unit: float, label: str) -> Table:
    table = Table(title=title)
    for col in ("stage", *CATEGORIES, "total", "generated tok", "backward passes", "candidates"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, s in t["stages"].items():
        w = work[stage]
        table.add_row(stage, *(f"{s[k] / unit:.2f}" for k in CATEGORIES), f"{sum(s.values()) / unit:.2f}", _count(w["generated_tokens"]),
                      _count(w["backward_passes"]), _count(w["candidates"]))
    table.add_row("total", *[""] * len(CATEGORIES), f"{t['total_s'] / unit:.2f}", f"critical path {t['critical_path_s'] / unit:.2f} {label}")
    return table


def print_projection(p: Mapping[str, Any], console: Console) -> None:
    m = p["measured_model_full"]
    console.print(_timed_table(f"full profile, {m['model']}, layer {m['layer']}, this machine (fitted per-unit costs; hours)", m, m["work"],
                               3600, "h"))
    for name, e in p["models"].items():
        console.print(_timed_table(f"projection: full-profile audit of {e['trait']}, {name}, layer {e['layer']}, one {p['gpu']['name']}, "
                                   "float32 (hours)", e["fp32"], e["work"], 3600, "h"))
        console.print(f"{name}: {e['fp32']['total_s'] / 3600:.2f} h; backward passes and candidates derated as measured here "
                      f"({', '.join(f'{k} ×{v:.1f}' for k, v in p['derating'].items())}): {e['derated']['total_s'] / 3600:.2f} h; "
                      f"sampling in a bf16 serving engine: {e['engine']['total_s'] / 3600:.2f} h; TF32 matmuls: {e['tf32']['total_s'] / 3600:.2f} h")
    sweep = p["sweep"]
    table = Table(title=f"projection: sweep of {sweep['audits']} full-profile audits ({len(sweep['traits'])} traits × "
                        f"{len(sweep['layer_fractions'])} layers × {len(p['models'])} models), wall hours")
    for col in ("workers (1 GPU each)", "float32", "GPU hours", "models interleaved", "cells fanned out (bound)", "derated",
                "sampling in an engine", "TF32"):
        table.add_column(col, justify="right")
    for n, r in sweep["workers"].items():
        table.add_row(n, f"{r['fp32_hours']:.1f}", f"{r['gpu_hours']:.0f}", f"{r['fp32_models_interleaved_hours']:.1f}",
                      f"{r['fp32_cells_fanned_out_hours']:.1f}", f"{r['derated_hours']:.1f}", f"{r['engine_hours']:.1f}", f"{r['tf32_hours']:.1f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="Finished audit run folders (the first one feeds the projection).")
    parser.add_argument("--project", action="store_true", help="Also project the full profile (this machine, and 7–8B models on a GPU).")
    parser.add_argument("--models", default="llama-3.1-8b,mistral-7b-v0.3", help=f"Model shapes of the projection: {', '.join(PRESETS)}.")
    parser.add_argument("--traits", default="formality,sentiment,politeness,truthfulness,agreeableness")
    parser.add_argument("--layer-fractions", default="0.25,0.4,0.6", help="Sweep layers as fractions of the depth.")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" / "cells.json"))
    args = parser.parse_args()
    console = Console(width=180)
    runs: list[dict[str, Any]] = []
    for folder in args.runs:
        config, shape, ctx, cells = measured_cells(folder)
        units = fit_units(cells, shape)
        run: dict[str, Any] = {"folder": str(folder), "config": config, "shape": shape, "contexts": ctx, "layers": ", ".join(str(c.layer) for c in ctx.values()),
               "units": units, "per_unit": per_unit(units, shape, next(iter(ctx.values()))), "stages": stage_rows(cells, shape, units),
               "cells": [{"key": c.key, "stage": c.stage, "seconds": c.seconds, "work": asdict(c.work)} for c in cells]}
        print_run(run, console)
        runs.append(run)
    out: dict[str, Any] = {"runs": [{k: v for k, v in r.items() if k not in ("contexts", "config")}
                                    | {"shape": asdict(r["shape"]), "model": r["config"]["model"], "profile": r["config"]["profile"],
                                       "settings": r["config"]["settings"]} for r in runs],
                           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if args.project:
        projection = project(runs[0], args.models.split(","), args.traits.split(","), [float(x) for x in args.layer_fractions.split(",")],
                             [int(x) for x in args.workers.split(",")], GPUS[args.gpu])
        print_projection(projection, console)
        out["projection"] = projection
    path = Path(args.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
