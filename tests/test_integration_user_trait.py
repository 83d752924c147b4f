"""A trait steerscope does not ship, from a pair file written here to report.html, on SmolLM2."""

import json
import sys
from pathlib import Path

import pytest

from steerscope.models.builtin import BUILTIN_MODELS, is_installed

pytestmark = pytest.mark.integration
sys.path.insert(0, str(Path(__file__).parent))
from _resume_worker import SMALL  # noqa: E402

QUESTIONS = [
    "How do I make a cup of tea?", "What should I pack for a weekend trip?", "How can I learn to swim?",
    "What is a good way to save money?", "How do I fix a flat bicycle tyre?", "What should I cook for dinner tonight?",
    "How can I sleep better?", "What is the best way to learn a language?", "How do I start a vegetable garden?",
    "How should I prepare for a job interview?", "What can I do on a rainy day?", "How do I clean a messy kitchen?",
    "How can I make new friends in a new city?", "What is a fun game for a family evening?", "How do I train a puppy?",
    "What should I read this summer?", "How do I keep my houseplants alive?", "How can I get better at drawing?",
    "What is a healthy breakfast?", "How do I write a thank-you letter?", "How can I stay focused while studying?",
    "What should I do if I get lost in a forest?", "How do I choose a good watermelon?", "How can I make my room tidier?",
]
PIRATE = ["Arr, matey! {a}, or ye'll walk the plank!", "Shiver me timbers, {a}, savvy?", "Yo ho ho, {a}, me hearty!",
          "Ahoy! {a}, by Davy Jones' locker!"]
PLAIN = ["{a}.", "A simple approach: {a}.", "{a}, and that should work well.", "Try this: {a}."]
ANSWERS = [
    "boil water and steep the leaves for three minutes", "pack light clothes, a toothbrush and a charger",
    "take lessons and practise in shallow water", "set aside a small sum every week", "patch the tube and pump it up again",
    "cook a pot of rice with vegetables", "keep a regular bedtime and a dark room", "speak it every day with others",
    "plant easy greens in a sunny spot", "research the company and rehearse answers", "bake bread or watch a film",
    "wash the dishes first, then wipe the counters", "join a club that meets every week", "play charades together",
    "reward good behaviour with treats", "pick an adventure novel", "water them when the soil is dry",
    "sketch something small every day", "eat oats with fruit", "say what the gift meant to you",
    "work in short blocks with breaks", "stay where you are and call for help", "knock on it and listen for a hollow sound",
    "put every item back in its place",
]


def write_pirate_pairs(path: Path) -> Path:
    rows = []
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        pos = PIRATE[i % len(PIRATE)].format(a=a[0].upper() + a[1:])
        neg = PLAIN[i % len(PLAIN)].format(a=a[0].upper() + a[1:])
        rows.append({"positive": [{"role": "user", "content": q}, {"role": "assistant", "content": pos}],
                     "negative": [{"role": "user", "content": q}, {"role": "assistant", "content": neg}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_user_trait_goes_from_pair_file_to_report(tmp_path):
    spec_ = BUILTIN_MODELS["smollm2-135m"]
    if not is_installed(spec_):
        pytest.skip(f"{spec_.name} is not installed: {spec_.install_hint}")
    import steerscope as ss
    from steerscope.audit.pipeline import Auditor, audit_config
    from steerscope.report import write_outputs
    from steerscope.runstore import open_run
    from steerscope.traitspec import spec_from_files

    spec = spec_from_files(write_pirate_pairs(tmp_path / "pirate.jsonl"), scorer="judge:written in pirate speech")
    config = audit_config("smollm2-135m", [spec], "quick")
    config["settings"] |= SMALL
    store, _ = open_run(tmp_path / "run", config, "test", "test")
    with store:
        Auditor(ss.load_model("smollm2-135m", device="cpu"), store, config, [spec]).run()
        store.log("finished")
        written = write_outputs(store)
    results = json.loads(written["results"].read_text())
    pirate = results["traits"]["pirate"]
    assert results["config"]["trait_specs"]["pirate"]["digest"] == spec.digest()
    assert {a["status"] for a in pirate["answers"].values()} <= {"yes", "no", "unknown", "mixed", "some", "none"}
    assert pirate["identifiability"]["scorer"]["name"] == "judge:smollm2-135m"
    # The judge model is the audited model: steering toward pirate speech should raise its own verdict.
    assert pirate["strength"]["rows"][-1]["mean_score"] > pirate["strength"]["baseline"]["mean_score"]
    html = written["report"].read_text()
    assert "pirate" in html and "Does the vector steer?" in html
    assert (tmp_path / "run" / "vector_pirate.safetensors").is_file()


def test_a_gguf_control_vector_is_audited_on_smollm2(tmp_path):
    """A vector written by the GGUF export path (as llama.cpp and repeng write them), audited without
    layer selection or extraction, to report.html."""
    spec_ = BUILTIN_MODELS["smollm2-135m"]
    if not is_installed(spec_):
        pytest.skip(f"{spec_.name} is not installed: {spec_.install_hint}")
    import steerscope as ss
    from steerscope.audit.inputs import given_vectors
    from steerscope.audit.pipeline import Auditor, audit_config
    from steerscope.report import write_outputs
    from steerscope.runstore import open_run
    from steerscope.traitspec import builtin_spec

    lm = ss.load_model("smollm2-135m", device="cpu")
    made = ss.extract(lm, ss.builtin_pairs("formality", "train"), [10, 12])
    gguf = ss.export_gguf(made, tmp_path / "formality.gguf")
    given = given_vectors([builtin_spec("formality")], gguf, 12)
    assert "no remapping" in given["formality"].vector.note
    config = audit_config("smollm2-135m", ["formality"], "quick", given=given)
    config["settings"] |= SMALL
    store, _ = open_run(tmp_path / "run", config, "test", "test")
    with store:
        Auditor(lm, store, config, given=given).run()
        store.log("finished")
        written = write_outputs(store)
    res = json.loads(written["results"].read_text())["traits"]["formality"]
    assert res["layer_selection"]["chosen"] == 12 and res["vector"]["metadata"]["method"] == "given (gguf)"
    assert res["vector"]["norm"] == pytest.approx(made.norm(12), rel=1e-6)
    assert {a["status"] for a in res["answers"].values()} <= {"yes", "no", "unknown", "mixed", "some", "none"}
    assert res["identifiability"]["vector"]["norm"] == pytest.approx(made.norm(12), rel=1e-6)
    assert "formality.gguf" in written["report"].read_text()
