"""Sweeps without Ray: the plan (every field checked; errors name the line and the field), the grid,
a fixed layer, a local sweep of 2 traits × 2 layers on a tiny model and its report, a sweep whose
driver is killed and resumed, and the command line's errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steerscope.errors import SteerscopeError
from steerscope.runstore import RunStore, list_runs
from steerscope.sweep_plan import read_plan

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).parent))
from _resume_worker import SMALL, word_scorers  # noqa: E402
from _sweep_worker import LAYERS, TRAITS, local_sweep, make_plan, same_results  # noqa: E402

WORKER = Path(__file__).with_name("_sweep_worker.py")
EXAMPLES = Path(__file__).parents[1] / "docs" / "examples"


def _plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,fragments", [
    ('traits = ["formality"]\nlayers = [1, "two"]\n', ["line 2: layers[1]", "'two'"]),
    ('traits = ["formality"]\nlayers = [1, -1]\n', ["line 2: layers[1]", ">= 0"]),
    ('traits = ["formality"]\nmodle = ["x"]\n', ["line 2: modle", "unknown key"]),
    ('traits = ["formalty"]\n', ["line 1: traits[0]", "unknown trait 'formalty'"]),
    ('models = []\ntraits = ["formality"]\n', ["line 1: models", "non-empty list"]),
    ('models = ["./nowhere"]\ntraits = ["formality"]\n', ["line 1: models[0]", "'./nowhere'"]),
    ('traits = ["formality"]\nprofiles = ["fast"]\n', ["line 2: profiles[0]", "quick or full"]),
    ('traits = ["formality"]\nseeds = [0, 4294967296]\n', ["line 2: seeds[1]", "2**32"]),
    ('traits = ["formality"]\nseeds = [0, 0]\n', ["line 2: seeds[1]", "twice"]),
    ('traits = ["formality"]\n\n[sizes]\nid_draws = 2\nid_drawz = 3\n', ["line 5: sizes.id_drawz", "unknown size"]),
    ('traits = ["formality"]\n\n[sizes]\nid_draws = "many"\n', ["line 4: sizes.id_draws", "whole number"]),
    ('traits = ["formality"]\n\n[sizes]\nalphas = []\n', ["line 4: sizes.alphas", "non-empty list"]),
    ('traits = ["formality"]\n\n[sizes]\nrob_layers = "some"\n', ["line 4: sizes.rob_layers", "'candidates'"]),
    ('traits = ["formality"]\ndevice = "tpu"\n', ["line 2: device", "cuda:N"]),
    ('traits = ["formality"]\ndtype = "int8"\n', ["line 2: dtype", "float32"]),
    ('traits = ["formality"]\ntarget_effect = 0\n', ["line 2: target_effect", "> 0"]),
    ('traits = ["formality"]\ntarget_effect = inf\n', ["line 2: target_effect", "finite"]),
    ('traits = ["formality"]\nmax_ppl_ratio = nan\n', ["line 2: max_ppl_ratio", "finite"]),
    ('traits = ["formality", "formality"]\n', ["line 1: traits[1]", "twice"]),
    ('layers = [1]\n', ["traits", "[[datasets]]"]),
    ('traits = ["formality"]\nlayers = [1,, 2]\n', ["not valid TOML", "line 2"]),
    ('traits = ["formality"]\n\n[[datasets]]\nname = "x"\n', ["line 3: datasets[0].pairs", "pair file"]),
    (f'[[datasets]]\npairs = "{EXAMPLES / "pirate.jsonl"}"\n\n[[datasets]]\npairs = "b.jsonl"\nscorer = "nonsense"\n',
     ["line 6: datasets[1].scorer", "'nonsense'"]),
    ('[[datasets]]\npairs = "missing.jsonl"\n', ["line 2: datasets[0].pairs", "does not exist"]),
    (f'[[datasets]]\npairs = "{EXAMPLES / "pirate.jsonl"}"\ninstructions = ["only one"]\n', ["line 3: datasets[0].instructions", "two"]),
])
def test_plan_errors_name_the_line_and_the_field(tmp_path, text, fragments):
    with pytest.raises(SteerscopeError) as info:
        read_plan(_plan(tmp_path, text))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "plan.toml")), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_plan_of_built_in_traits_and_a_dataset_expands_to_its_grid(tmp_path):
    from steerscope.audit.pipeline import audit_config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pirate.jsonl").write_bytes((EXAMPLES / "pirate.jsonl").read_bytes())
    (tmp_path / "data" / "prompts.jsonl").write_bytes((EXAMPLES / "pirate_prompts.jsonl").read_bytes())
    plan = read_plan(_plan(tmp_path, 'models = ["smollm2-135m"]\ntraits = ["formality"]\nlayers = ["auto", 7]\nseeds = [0, 3]\n\n'
                                      '[[datasets]]\npairs = "data/pirate.jsonl"\nprompts = "data/prompts.jsonl"\nname = "pirate"\n'
                                      'scorer = "none"\n\n[sizes]\nid_draws = 2\n'))
    jobs = plan.audits()
    assert [j.name for j in jobs] == [f"smollm2-135m.{t}.{layer}.quick.s{seed}" for t in ("formality", "pirate")
                                      for layer in ("auto", "L7") for seed in (0, 3)]
    auto, fixed = jobs[0], jobs[2]
    assert "layer" not in auto.config and fixed.config["layer"] == 7  # an audit that selects its layer keeps the usual configuration
    assert auto.config == audit_config("smollm2-135m", ["formality"], "quick", 0, sizes={"id_draws": 2})
    assert fixed.config["settings"]["id_draws"] == 2 and jobs[4].spec.scorer is None and jobs[4].spec.provenance["dataset"] == "pirate.jsonl"
    config = plan.config()
    assert config["audits"] == [j.name for j in jobs] and config["layers"] == ["auto", 7]


def test_a_fixed_layer_is_checked():
    from steerscope.audit.pipeline import Auditor, audit_config
    from steerscope.testing import tiny_model

    with pytest.raises(SteerscopeError, match="whole number >= 0"):
        audit_config("m", ["formality"], "quick", layer=-1)
    with pytest.raises(SteerscopeError, match="unknown size 'id_drawz'"):
        audit_config("m", ["formality"], "quick", sizes={"id_drawz": 1})
    with pytest.raises(SteerscopeError, match="out of range"):
        Auditor(tiny_model("llama"), None, audit_config("m", ["formality"], "quick", layer=9))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    return make_plan(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def reference(plan) -> Path:
    return local_sweep(plan, plan.parent / "reference")


def test_a_local_sweep_audits_every_point_at_its_layer_and_compares_them(reference):
    results = json.loads((reference / "sweep.json").read_text())
    names = [f"tiny.{t}.L{layer}.quick.s0" for t in TRAITS for layer in LAYERS]
    assert [e["name"] for e in results["audits"]] == names
    for entry in results["audits"]:
        audit = json.loads((reference / entry["folder"] / "results.json").read_text())
        (trait, res), = audit["traits"].items()
        assert audit["config"]["layer"] == entry["layer"] == entry["audited_layer"] and audit["config"]["settings"]["id_draws"] == SMALL["id_draws"]
        assert [r["layer"] for r in res["layer_selection"]["rows"]] == [entry["layer"]] and "fixed" in res["layer_selection"]["rule"]
        share = entry["class_share"]["pair_margin"]
        assert 0 <= share["low"] <= share["fraction"] <= share["high"] <= 1 and share["n"] > 0
        assert entry["effect"]["low"] <= entry["effect"]["g"] <= entry["effect"]["high"]
        assert entry["reachability"]["best_over_displacement"] > 0 and set(entry["answers"]) >= {"steers", "identifiable", "reachable"}
    markdown = (reference / "sweep.md").read_text()
    assert all(f"## {Path(results['config']['models'][0])}: {t}" in markdown for t in TRAITS) and markdown.count("](audits/") == 4
    assert (reference / "sweep.png").stat().st_size > 0
    with RunStore.open(reference, readonly=True) as store:
        assert [c.key for c in store.cells()] == [f"audit/{n}" for n in names]
        assert [e["kind"] for e in store.events()] == ["created", "finished"]
    (row,) = list_runs(reference)
    assert (row["kind"], row["traits"], row["cells"], row["status"]) == ("sweep", list(TRAITS), 4, "finished")
    assert {r["kind"] for r in list_runs(reference / "audits")} == {"audit"}


def test_running_a_finished_sweep_again_recomputes_nothing(plan, reference, tmp_path):
    import shutil

    from steerscope.sweep import SweepSettings, run_sweep

    copy = tmp_path / "again"
    shutil.copytree(reference, copy)
    events = []
    run_sweep(read_plan(plan), copy, SweepSettings(scorers=word_scorers(), on_event=lambda audit, what: events.append(what)))
    assert events == [] and (copy / "sweep.json").read_bytes() == (reference / "sweep.json").read_bytes()


def _driver(plan: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(WORKER), str(plan), str(out), *options], capture_output=True, text=True, env=env, timeout=600)


def test_a_killed_sweep_resumes_with_the_same_command(plan, reference, tmp_path):
    """A sweep of one trait at the two layers, killed (SIGKILL) in its second audit: every committed cell
    is kept, and the same command finishes it with the results of the uninterrupted sweep."""
    one = make_plan(plan.parent, TRAITS[:1])
    out = tmp_path / "sweep"
    with RunStore.open(reference / "audits" / f"tiny.{TRAITS[0]}.L{LAYERS[0]}.quick.s0", readonly=True) as store:
        cells = store.count()  # of one audit
    killed = _driver(one, out, "--kill-after", str(cells + 1 + 6))
    assert killed.returncode == -9, killed.stderr
    first, second = (out / "audits" / f"tiny.{TRAITS[0]}.L{layer}.quick.s0" for layer in LAYERS)
    with RunStore.open(second, readonly=True) as store:
        assert store.count() == 6  # the first audit's cells and the sweep's cell of it, then 6 of the second
    resumed = _driver(one, out)
    assert resumed.returncode == 0, resumed.stderr
    same_results(out, reference)
    with RunStore.open(first, readonly=True) as a, RunStore.open(second, readonly=True) as b:
        assert [e["kind"] for e in a.events()] == ["created", "finished"]
        assert [e["kind"] for e in b.events()] == ["created", "resumed", "finished"]


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steerscope", "sweep", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_the_command_line_reports_a_bad_plan_or_option_in_one_line(tmp_path):
    bad = _cli(_plan(tmp_path, 'traits = ["formality"]\nlayers = [1, "two"]\n'), "--out", tmp_path / "out")
    worker = _cli(_plan(tmp_path, 'traits = ["formality"]\n'), "--out", tmp_path / "out", "--workers", "2")
    for proc, fragment in ((bad, "line 2: layers[1]"), (worker, "add --ray")):
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert fragment in proc.stderr
    assert not (tmp_path / "out").exists()
