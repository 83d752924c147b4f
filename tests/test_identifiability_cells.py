"""The identifiability audit as cells: the class-size Monte Carlo in independent chunks of draws, and the
report rebuilt from stored payloads equal to the one-call audit."""

import json
import math

import numpy as np
import pytest
import torch

from steerscope.audit import readouts
from steerscope.audit.equivalence import Margin
from steerscope.audit.identifiability import (
    IdentifiabilitySettings,
    audit_vector,
    class_parts,
    identifiability_class_chunk,
    identifiability_readouts,
    identifiability_report,
    orthogonal_draw,
    run_identifiability,
)
from steerscope.audit.readouts import (
    ClassSample,
    DrawRange,
    class_chunk,
    class_fraction,
    class_ranges,
    class_reference,
    class_summary,
    join_chunks,
    predicted_fractions,
)
from steerscope.data.traits import builtin_pairs
from steerscope.runstore import stored_payload

LAYER, ALPHA, DELTA = 1, 4.0, 0.1
PROMPTS = ["tell me about your weekend", "write a short poem about the moon"]
CONTINUATIONS = ["It was quiet and good.", "The moon is bright tonight."]


class WordScorer:
    """Deterministic stand-in for a trait scorer: the share of a few words."""

    name = "words"
    validity = None

    def __call__(self, texts):
        return np.array([sum(w in {"the", "a", "."} for w in t.split()) / max(1, len(t.split())) for t in texts], dtype=float)


@pytest.fixture(scope="module")
def setup(tiny_models):
    lm = tiny_models["llama"]
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    pairs = builtin_pairs("formality", "test")[:2]
    return lm, v, pairs


def _reference(setup):
    lm, v, pairs = setup
    return class_reference(lm, LAYER, v, ALPHA, pairs, (PROMPTS, CONTINUATIONS), DELTA)


def _chunk(setup, reference, sample, k, start, stop, batch_size=32):
    lm, v, pairs = setup
    return class_chunk(lm, LAYER, v, ALPHA, pairs, (PROMPTS, CONTINUATIONS), reference, sample, DrawRange(k, start, stop), batch_size)


def test_class_ranges_cover_every_draw_once_in_chunks(monkeypatch):
    monkeypatch.setattr(readouts, "CLASS_CHUNK", 3)
    parts = class_ranges(ClassSample(7, (0.5, 1.0)))
    assert [(p.k, p.start, p.stop) for p in parts] == [(0, 0, 3), (0, 3, 6), (0, 6, 7), (1, 0, 3), (1, 3, 6), (1, 6, 7)]
    assert class_parts(IdentifiabilitySettings(class_draws=0)) == []
    monkeypatch.undo()
    full = IdentifiabilitySettings(class_draws=200, class_ratios=(0.25, 0.5, 1.0))
    assert len(class_parts(full)) == 3 * math.ceil(200 / readouts.CLASS_CHUNK)
    for k in range(3):
        assert [i for p in class_parts(full) if p.k == k for i in range(p.start, p.stop)] == list(range(200))


def test_class_fraction_in_chunks_is_its_chunks_computed_alone(setup, monkeypatch):
    lm, v, pairs = setup
    monkeypatch.setattr(readouts, "CLASS_CHUNK", 3)
    sample = ClassSample(7, (0.5, 1.0), seed=11)
    gradient = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    mc = class_fraction(lm, LAYER, v, ALPHA, pairs, (PROMPTS, CONTINUATIONS), Margin(DELTA), sample, gradient)
    reference = _reference(setup)
    alone = [_chunk(setup, reference, sample, k, start, stop) for k in (0, 1) for start, stop in ((0, 3), (3, 6), (6, 7))]
    assert all(set(c) == {"efficacy", "js"} and c["efficacy"].shape == c["js"].shape == (stop - start,)
               for c, (start, stop) in zip(alone, [(0, 3), (3, 6), (6, 7)] * 2))
    values = join_chunks(sample, alone)
    assert [x["efficacy"].shape for x in values] == [(7,), (7,)]
    assert mc == class_summary(reference, sample, DELTA, values, predicted_fractions(gradient, v, sample, DELTA))
    assert [row["n"] for row in mc["pair_margin"].values()] == [row["n"] for row in mc["distribution"].values()] == [7, 7]
    # one draw at a time: the same values up to the rounding of other batch shapes
    for k in (0, 1):
        for i in range(7):
            one = _chunk(setup, reference, sample, k, i, i + 1)
            assert one["efficacy"][0] == pytest.approx(values[k]["efficacy"][i], rel=1e-5, abs=1e-7)
            assert one["js"][0] == pytest.approx(values[k]["js"][i], rel=1e-4, abs=1e-9)


def test_chunks_aligned_with_the_batches_reproduce_one_whole_pass_exactly(setup, monkeypatch):
    """Chunks whose rows fill whole batches run the batched passes of one unchunked pass: identical values."""
    assert readouts.CLASS_CHUNK % readouts.DIVERGENCE_CHUNK == 0 and 2 * readouts.CLASS_CHUNK % 32 == 0
    monkeypatch.setattr(readouts, "DIVERGENCE_CHUNK", 2)
    sample = ClassSample(10, (1.0,), seed=4)
    reference = _reference(setup)
    whole = _chunk(setup, reference, sample, 0, 0, 10, batch_size=16)  # 2 pairs × 2 sides per draw: 4 draws per batch
    parts = [_chunk(setup, reference, sample, 0, start, stop, batch_size=16) for start, stop in ((0, 4), (4, 8), (8, 10))]
    for name in ("efficacy", "js"):
        assert np.array_equal(np.concatenate([p[name] for p in parts]), whole[name])
    assert len(set(whole["efficacy"].tolist())) == 10  # distinct draws, not one repeated


def test_chunk_draws_have_the_unchunked_seeds(setup, monkeypatch):
    lm, v, pairs = setup
    steered, perturbations = [], []
    margins, mean_js = readouts.pair_margins_by_condition, readouts._mean_js

    def spy_margins(lm_, layer, directions, *args, **kwargs):
        steered.extend(d for name, d in directions.items() if name.startswith("u"))
        return margins(lm_, layer, directions, *args, **kwargs)

    def spy_js(lm_, layer, v_, us, *args):
        perturbations.extend(us)
        return mean_js(lm_, layer, v_, us, *args)

    monkeypatch.setattr(readouts, "pair_margins_by_condition", spy_margins)
    monkeypatch.setattr(readouts, "_mean_js", spy_js)
    monkeypatch.setattr(readouts, "CLASS_CHUNK", 3)
    sample = ClassSample(7, (0.5, 1.0), seed=21)
    class_fraction(lm, LAYER, v, ALPHA, pairs, (PROMPTS, CONTINUATIONS), Margin(DELTA), sample)
    expected = [ratio * orthogonal_draw(v, 21 + 1000 * k + i) for k, ratio in enumerate(sample.ratios) for i in range(7)]
    assert len(steered) == len(perturbations) == 14
    assert all(torch.equal(u, e) for u, e in zip(perturbations, expected))
    assert all(torch.equal(w, v + e) for w, e in zip(steered, expected))


def test_report_from_stored_parts_equals_the_one_call_audit(tiny_models, monkeypatch):
    lm = tiny_models["llama"]
    monkeypatch.setattr(readouts, "CLASS_CHUNK", 2)
    settings = IdentifiabilitySettings(n_draws=2, n_prompts=4, samples_per_prompt=2, max_new_tokens=6, n_boot=50, class_draws=5,
                                       class_ratios=(0.5, 1.0))
    report = run_identifiability(lm, "formality", 2, 8.0, settings, scorer=WordScorer())
    vec = audit_vector(lm, "formality", 2)
    stored = stored_payload(identifiability_readouts(lm, "formality", 2, 8.0, settings, scorer=WordScorer(), vector=vec))
    assert set(stored["report"]["class_size"]) == {"trait_score"} and len(stored["monte_carlo"]["predicted"]) == 2
    parts = class_parts(settings)
    assert len(parts) == 6
    # as independent workers would: each chunk alone, from the stored readouts, in any order
    chunks = {p: stored_payload(identifiability_class_chunk(lm, "formality", 2, 8.0, settings, vec.directions[2], stored, p))
              for p in reversed(parts)}
    assert all(isinstance(c["efficacy"], list) and len(c["efficacy"]) == p.stop - p.start for p, c in chunks.items())
    rebuilt = identifiability_report(settings, stored, [chunks[p] for p in parts])
    assert rebuilt == report
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    for readout in ("pair_margin", "distribution"):
        assert {r: row["n"] for r, row in report["class_size"][readout].items()} == {"0.5": 5, "1": 5}
    assert set(report["class_size"]["pair_margin"]["1"]) >= {"fraction", "low", "high", "efficacy_quantiles", "predicted"}
