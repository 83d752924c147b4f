"""Trait specifications: built-in and user traits as one value, through the whole audit."""

import json
import sys
from pathlib import Path

import pytest

from steerscope.audit.inputs import run_specs
from steerscope.audit.pipeline import Auditor, StoredRun, audit_config
from steerscope.data.pairs import ContrastivePair
from steerscope.errors import SteerscopeError
from steerscope.runstore import RunStore, open_run
from steerscope.score.base import check_scorer_spec, scorer_from_spec
from steerscope.traitspec import TraitSpec, audit_specs, builtin_spec, pair_questions, spec_from_files, split_pairs

sys.path.insert(0, str(Path(__file__).parent))
from _resume_worker import SMALL, word_scorers  # noqa: E402


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write_pirate_pairs(path: Path, n: int = 24, **extra) -> Path:
    """A trait the project does not ship: answers in pirate speech against plain ones."""
    lines = []
    for i in range(n):
        q = f"Question number {i}: how should I spend a free afternoon?"
        lines.append(json.dumps({"positive": _chat(q, f"Arr, matey, hoist the sails and plunder idea {i}, yo ho!"),
                                 "negative": _chat(q, f"You could spend it reading, walking or trying idea {i}.")} | extra))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_builtin_spec_holds_the_builtin_data():
    spec = builtin_spec("formality")
    assert spec.builtin and spec.scorer == "default" and spec.instructions is not None
    assert (len(spec.train), len(spec.test)) == (48, 16)
    assert set(spec.prompts) == {"in_distribution", "topic_shift", "genre_shift"}
    assert spec.digest() == builtin_spec("formality").digest() != builtin_spec("sentiment").digest()
    assert TraitSpec.from_content(json.loads(json.dumps(spec.content()))).digest() == spec.digest()
    with pytest.raises(SteerscopeError, match="unknown built-in trait 'pirate'"):
        builtin_spec("pirate")


def test_builtin_environment_pairs_are_new_and_balanced():
    from steerscope.data.traits import ENVIRONMENTS, TRAITS, builtin_prompts

    def questions(pairs):
        return [p.positive[0]["content"].lower() for p in pairs]

    for trait in TRAITS:
        spec = builtin_spec(trait)
        assert {e: len(p) for e, p in spec.environment_pairs.items()} == {e: 24 for e in ENVIRONMENTS}
        mine = [q for pairs in spec.environment_pairs.values() for q in questions(pairs)]
        assert len(set(mine)) == len(mine)
        assert not set(mine) & (set(questions(spec.train + spec.test)) | {p.lower() for p in builtin_prompts(trait)})
        assert all(p.environment == e and p.trait == trait for e, pairs in spec.environment_pairs.items() for p in pairs)


def test_split_is_deterministic_keeps_given_splits_and_refuses_too_few():
    pairs = [ContrastivePair(f"yes {i} indeed", f"no {i} never") for i in range(12)]
    train, test = split_pairs(pairs)
    assert (len(train), len(test)) == (9, 3)
    assert split_pairs(list(reversed(pairs))) == (train, test)  # order of the file does not matter
    given = [ContrastivePair("a b", "c d", split="test"), ContrastivePair("e f", "g h", split="test")] + pairs[:4]
    train, test = split_pairs(given)
    assert given[0] in test and given[1] in test and (len(train), len(test)) == (2, 4)
    with pytest.raises(SteerscopeError, match="3 pair\\(s\\) give 1 train and 2 test"):
        split_pairs(pairs[:3])


def test_user_spec_from_files(tmp_path):
    spec = spec_from_files(write_pirate_pairs(tmp_path / "pirate speech.jsonl"), scorer="vader")
    assert spec.name == "pirate_speech" and not spec.builtin and spec.instructions is None
    assert (len(spec.train), len(spec.test)) == (18, 6)
    assert spec.env_prompts("in_distribution")[0] == "Question number 0: how should I spend a free afternoon?"
    assert spec.provenance["prompts_from"] == "the pairs' questions"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Tell me about ships."}\n{"prompt": "A poem?", "env": "genre_shift"}\n', encoding="utf-8")
    spec = spec_from_files(tmp_path / "pirate speech.jsonl", prompts, name="pirate", scorer="vader")
    assert spec.name == "pirate" and dict(spec.prompts) == {"in_distribution": ("Tell me about ships.",), "genre_shift": ("A poem?",)}
    with pytest.raises(SteerscopeError, match="no prompts in environment 'topic_shift'; it has in_distribution, genre_shift"):
        spec.env_prompts("topic_shift")
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"positive": f"arr {i} matey", "negative": f"hello {i} friend"}) for i in range(8)), encoding="utf-8")
    with pytest.raises(SteerscopeError, match="plain strings.*give --prompts FILE"):
        spec_from_files(plain)
    with pytest.raises(SteerscopeError, match="trait name 'a b'"):
        spec_from_files(plain, prompts, name="a b")
    assert spec.environment_pairs == {} and "environment_pairs" not in spec.content()
    envs = spec_from_files(write_pirate_pairs(tmp_path / "envs.jsonl", environment="port"), scorer="vader")
    assert {e: len(p) for e, p in envs.environment_pairs.items()} == {"port": 24}
    assert TraitSpec.from_content(envs.content()).digest() == envs.digest()


def test_pair_questions_are_the_last_user_turns_without_repeats():
    pairs = [ContrastivePair(_chat("q1", "a"), _chat("q1", "b")), ContrastivePair(_chat("q2", "a"), _chat("q2", "b")),
             ContrastivePair(_chat("q1", "c"), _chat("q1", "d")), ContrastivePair("plain", "string")]
    assert pair_questions(pairs) == ["q1", "q2"]


def test_command_line_traits_and_scorer_specs(tmp_path):
    assert [s.name for s in audit_specs(["formality"], write_pirate_pairs(tmp_path / "p.jsonl"), scorer="vader")] == ["formality", "p"]
    assert audit_specs(["formality"], scorer="builtin:politeness")[0].scorer == "builtin:politeness"
    assert [s.scorer for s in audit_specs(["formality"], write_pirate_pairs(tmp_path / "q.jsonl"), scorer="none")] == [None, None]
    assert audit_specs([], write_pirate_pairs(tmp_path / "r.jsonl"))[0].scorer is None
    with pytest.raises(SteerscopeError, match="names no scorer"):
        scorer_from_spec("none", "formality")
    with pytest.raises(SteerscopeError, match="give its pairs with --dataset"):
        audit_specs(["formality"], prompts=tmp_path / "p.jsonl")
    assert check_scorer_spec("judge:written like a pirate") == ("judge", "written like a pirate")
    assert check_scorer_spec("hf:/models/clf:POSITIVE") == ("hf", "/models/clf:POSITIVE")
    for bad in ("vader:x", "builtin:pirate", "judge:", "hf", "probe"):
        with pytest.raises(SteerscopeError, match="unknown or malformed scorer"):
            check_scorer_spec(bad)


def test_audit_config_checks_scorer_names_and_prompt_supply(tmp_path):
    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    scorerless = audit_config("m", [spec_from_files(pairs)], "quick")  # audited on the pair margin and the distribution
    assert scorerless["trait_specs"]["pirate"]["scorer"] is None
    with pytest.raises(SteerscopeError, match="given more than once"):
        audit_config("m", ["formality", "formality"], "quick")
    few = write_pirate_pairs(tmp_path / "few.jsonl", n=12)
    with pytest.raises(SteerscopeError, match="'few' has 12 in_distribution prompts; this profile needs 20"):
        audit_config("m", [spec_from_files(few, scorer="vader")], "quick")
    config = audit_config("m", ["formality", spec_from_files(pairs, scorer="vader")], "quick")
    assert config["traits"] == ["formality", "pirate"]
    assert config["trait_specs"]["pirate"]["digest"] == spec_from_files(pairs, scorer="vader").digest()
    assert config["trait_specs"]["pirate"]["dataset"] == "pirate.jsonl"  # the file's name, never its path


def test_user_trait_runs_end_to_end_and_resumes_only_with_the_same_data(tmp_path):
    from steerscope.report import write_outputs
    from steerscope.testing import tiny_model

    pairs = write_pirate_pairs(tmp_path / "pirate.jsonl")
    spec = spec_from_files(pairs, scorer="vader")
    config = audit_config("tiny-llama", [spec], "quick")
    config["settings"] |= SMALL
    folder = tmp_path / "run"
    store, _ = open_run(folder, config, "test", "cmd")
    with store:
        Auditor(tiny_model("llama", n_layers=6), store, config, [spec], scorers=word_scorers("pirate")).run()
        store.log("finished")
        written = write_outputs(store)
    results = json.loads(written["results"].read_text())
    assert list(results["traits"]) == ["pirate"]
    assert set(results["traits"]["pirate"]["answers"]) == {"steers", "identifiable", "reachable", "side_effects"}
    assert results["traits"]["pirate"]["identifiability"]["config"]["n_pairs"] <= len(spec.test)
    html = written["report"].read_text()
    assert "pairs from pirate.jsonl (18 train / 6 held-out" in html and f"content SHA-256 {spec.digest()[:16]}" in html
    with RunStore.open(folder, readonly=True) as stored:
        assert StoredRun(stored).spec("pirate").digest() == spec.digest()
    changed = spec_from_files(write_pirate_pairs(tmp_path / "pirate.jsonl", n=25), scorer="vader")
    with pytest.raises(SteerscopeError, match="data of trait 'pirate' differ"):
        run_specs(config, [changed])
    with pytest.raises(SteerscopeError, match="'pirate' is not built in; give its data again"):
        run_specs(config, [])


def test_a_recovery_method_that_cannot_fit_the_data_becomes_a_row_saying_why(monkeypatch):
    from types import SimpleNamespace

    import steerscope.recover.trait as trait_module
    from steerscope.audit.registry import TraitRun
    from steerscope.audit.stages import _recover_row

    def fail(*_args, **_kwargs):
        raise SteerscopeError("FastICA failed on these activations (A has a NaN entry)")

    monkeypatch.setattr(trait_module, "recover_trait", fail)
    import torch

    auditor = SimpleNamespace(lm=None, specs={"formality": builtin_spec("formality")}, p=SimpleNamespace(rec_boot=2), seed=0, given={})
    row, blob = _recover_row(auditor, TraitRun("formality", layer=1, vector=torch.ones(4)), "ica", {}, {})
    assert blob is None and row["identifiable"] is None and row["reason"].startswith("FastICA failed")
    assert row["identifies"] is None and row["why"].startswith("not run: FastICA failed")


def test_a_given_vector_is_audited_instead_of_an_extracted_one(tmp_path):
    import numpy as np
    import torch

    from steerscope.audit.inputs import given_vectors
    from steerscope.report import write_outputs
    from steerscope.testing import tiny_model

    lm = tiny_model("llama", n_layers=6)
    rows = np.zeros((6, lm.d_model), dtype=np.float32)
    rows[2] = np.random.default_rng(0).standard_normal(lm.d_model)
    npy = tmp_path / "mine.npy"
    np.save(npy, rows)
    with pytest.raises(SteerscopeError, match="holds layers \\[0, 1, 2, 3, 4, 5\\]; pass --layer"):
        given_vectors([builtin_spec("formality")], npy, None)
    with pytest.raises(SteerscopeError, match="one trait's vector; 2 traits"):
        given_vectors([builtin_spec("formality"), builtin_spec("sentiment")], npy, 2)
    with pytest.raises(SteerscopeError, match="layer 0 is all zeros"):
        given_vectors([builtin_spec("formality")], npy, 0)
    given = given_vectors([builtin_spec("formality")], npy, 2)
    config = audit_config("tiny-llama", ["formality"], "quick", given=given)
    config["settings"] |= SMALL
    assert config["given_vectors"]["formality"]["file"] == "mine.npy" and config["given_vectors"]["formality"]["layer"] == 2
    store, _ = open_run(tmp_path / "run", config, "test", "cmd")
    with store:
        with pytest.raises(SteerscopeError, match="give the same --vector file"):
            Auditor(lm, store, config, scorers=word_scorers())
        Auditor(lm, store, config, scorers=word_scorers(), given=given).run()
        store.log("finished")
        written = write_outputs(store)
    res = json.loads(written["results"].read_text())["traits"]["formality"]
    assert res["layer_selection"]["chosen"] == 2 and "given in mine.npy" in res["layer_selection"]["rule"]
    assert res["vector"]["metadata"]["method"] == "given (numpy)" and res["vector"]["norm"] == pytest.approx(float(np.linalg.norm(rows[2])), rel=1e-6)
    assert res["identifiability"]["config"]["extraction"]["method"] == "given (numpy)"
    assert res["reachability"]["vector"]["source"] == "mine.npy"
    assert "Vector: given in mine.npy (numpy), layer 2, not extracted" in written["report"].read_text()
    assert all(r["agreement"]["audited"] == "the vector given in mine.npy" for r in res["recovery"] if r.get("agreement"))
    saved = ss_load(tmp_path / "run" / "vector_formality.safetensors")
    assert torch.equal(saved.directions[2], torch.from_numpy(rows[2]))
    wide = given_vectors([builtin_spec("formality")], _npy(tmp_path / "wide.npy", lm.d_model + 1), 2)
    with pytest.raises(SteerscopeError, match=f"d_model {lm.d_model + 1} but"):
        Auditor(lm, store, audit_config("tiny-llama", ["formality"], "quick", given=wide), given=wide)


def _npy(path: Path, d: int) -> Path:
    import numpy as np

    np.save(path, np.ones(d, dtype=np.float32))
    return path


def ss_load(path: Path):
    from steerscope.vectors import SteeringVector

    return SteeringVector.load(path)


def test_python_api_runs_an_audit_of_an_adapter_style_vector(tmp_path):
    import torch

    import steerscope.audit
    from steerscope.testing import tiny_model

    lm = tiny_model("llama", n_layers=6)
    directions = {1: torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)), 3: torch.ones(lm.d_model)}
    with pytest.raises(SteerscopeError, match="holds layers \\[1, 3\\]; pass --layer"):
        steerscope.audit.run(lm, "formality", tmp_path / "x", vector=directions)
    assert not (tmp_path / "x").exists()
    results = steerscope.audit.run(lm, "formality", tmp_path / "run", vector=directions, layer=1, scorers=word_scorers())
    res = results["traits"]["formality"]
    assert res["layer_selection"]["chosen"] == 1 and res["vector"]["metadata"]["method"] == "given (python)"
    assert res["vector"]["norm"] == pytest.approx(float(directions[1].norm()), rel=1e-6)
    assert (tmp_path / "run" / "report.html").is_file()
    again = steerscope.audit.run(lm, "formality", tmp_path / "run", vector=directions, layer=1, scorers=word_scorers())
    assert again == results  # resumed from the store: nothing recomputed differs


def test_a_trait_without_a_scorer_is_audited_on_the_pair_margin_and_the_distribution(tmp_path):
    import numpy as np

    from steerscope.audit.readouts import pair_margins_by_condition
    from steerscope.report import write_outputs
    from steerscope.testing import tiny_model

    lm = tiny_model("llama", n_layers=6)
    words = ("arr", "matey", "ahoy", "plunder", "sails", "rum", "parrot")
    lines = [json.dumps({"positive": _chat(f"What should I do on day {i}?", " ".join(words[: 2 + i % 5]) + " yo ho!"),
                         "negative": _chat(f"What should I do on day {i}?", "Perhaps read a book" + " or walk" * (i % 4) + ".")})
             for i in range(24)]
    (tmp_path / "pirate.jsonl").write_text("\n".join(lines) + "\n")
    spec = spec_from_files(tmp_path / "pirate.jsonl")
    assert spec.scorer is None
    config = audit_config("tiny-llama", [spec], "quick")
    config["settings"] |= SMALL
    store, _ = open_run(tmp_path / "run", config, "test", "cmd")
    with store:
        Auditor(lm, store, config, [spec]).run()
        store.log("finished")
        unsteered = store.get("pirate/calibrate/alpha=0")
        written = write_outputs(store)
    res = json.loads(written["results"].read_text())["traits"]["pirate"]
    # calibration reads every held-out pair's teacher-forced margin; at α = 0 it is the unsteered margin
    assert res["strength"]["readout"] == "pair_margin" and unsteered is not None
    expected = pair_margins_by_condition(lm, 0, {"none": None}, 0.0, spec.test)["none"]
    np.testing.assert_allclose(np.asarray(unsteered.payload["scores"])[:, 0], expected, rtol=1e-5, atol=1e-5)
    ident = res["identifiability"]
    assert set(ident["readouts"]) == {"pair_margin", "distribution"} and ident["scorer"] is None
    assert ident["v_vs_none"]["readout"] == "pair_margin" and "trait_score" not in ident["class_size"]
    assert "pair margin" in res["answers"]["steers"]["headline"]
    assert [h.split(":")[0] for h in res["answers"]["identifiable"]["facts"][:2]] == ["Pair margin", "Next-token distribution"]
    html = written["report"].read_text()
    assert "None was given: there is no trait-score readout" in html and "mean pair margin" in html
