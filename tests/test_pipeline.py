"""The one-command audit on a tiny model: stages, resume after kills, rebuild from the store."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steerscope.runstore import STORE_NAME, RunStore

pytest.importorskip("matplotlib")
WORKER = Path(__file__).with_name("_resume_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _resume_worker import small_config, word_scorers  # noqa: E402


def _default_sigint() -> None:
    """Children of a shell's background job start with SIGINT ignored; restore the default so that
    Python installs its KeyboardInterrupt handler in the child."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _worker(folder: Path, *args: str, traits: str = "formality") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WORKER_TRAITS=traits)
    return subprocess.run([sys.executable, str(WORKER), str(folder), *args], capture_output=True, text=True, env=env, timeout=600,
                          preexec_fn=_default_sigint)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the small audit (two traits)."""
    folder = tmp_path_factory.mktemp("runs") / "reference"
    proc = _worker(folder, traits="formality,sentiment")
    assert proc.returncode == 0, proc.stderr
    return folder


def test_reference_run_has_every_stage_and_answer(reference):
    results = json.loads((reference / "results.json").read_text())
    assert results["config"]["traits"] == ["formality", "sentiment"]
    for trait, res in results["traits"].items():
        assert set(res["answers"]) == {"steers", "identifiable", "reachable", "side_effects"}
        assert all(a["status"] in ("yes", "no", "unknown", "mixed") and a["headline"] for a in res["answers"].values())
        assert res["strength"]["alpha"] in (1.0, 4.0)
        assert [r["method"] for r in res["recovery"]] == ["ica", "sparse", "multienv", "crosslayer"]
        assert res["layer_selection"]["chosen"] in [r["layer"] for r in res["layer_selection"]["rows"]]
        assert res["reachability"]["summary"]["natural_exact_recovery"] == 1.0
        assert (reference / f"vector_{trait}.safetensors").is_file()
    html = (reference / "report.html").read_text()
    assert "Does the vector steer?" in html and "data:image/png;base64," in html and "<script" not in html
    with RunStore.open(reference, readonly=True) as store:
        keys = [c.key for c in store.cells()]
        assert "formality/calibrate/alpha=0" in keys and "sentiment/reachability" in keys
        assert len(keys) == len(set(keys))
        assert [e["kind"] for e in store.events()] == ["created", "finished"]


@pytest.fixture(scope="module")
def reference_one(tmp_path_factory) -> Path:
    """An uninterrupted run of the small audit (one trait)."""
    folder = tmp_path_factory.mktemp("runs") / "reference_one"
    proc = _worker(folder)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.mark.parametrize("kill_at,when,sig", [(1, "after", "KILL"), (5, "before", "KILL"), (9, "before", "INT")])
def test_resume_after_interruption_gives_identical_results(reference_one, tmp_path, kill_at, when, sig):
    """Killed after the 1st cell, during the 5th (SIGKILL) and during the 9th (SIGINT); resumed."""
    folder = tmp_path / "run"
    killed = _worker(folder, str(kill_at), when, sig)
    assert killed.returncode != 0
    done = kill_at if when == "after" else kill_at - 1
    with RunStore.open(folder) as store:  # intact: the integrity check passes, every committed cell is there
        assert store.count() == done
    assert not (folder / "results.json").exists()
    resumed = _worker(folder)
    assert resumed.returncode == 0, resumed.stderr
    assert (folder / "results.json").read_bytes() == (reference_one / "results.json").read_bytes()
    with RunStore.open(folder, readonly=True) as store:
        assert [e["kind"] for e in store.events()] == ["created", "resumed", "finished"]


def test_two_uninterrupted_runs_write_byte_identical_results(reference_one, tmp_path):
    """Determinism: a second run from scratch, in a fresh process, writes the same bytes."""
    again = _worker(tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "results.json").read_bytes() == (reference_one / "results.json").read_bytes()


def test_auditor_reads_every_cell_back_without_recomputing(reference, tmp_path):
    from steerscope.audit.pipeline import Auditor
    from steerscope.testing import tiny_model

    seen = []
    config = small_config(["formality", "sentiment"])
    with RunStore.open(reference) as store:
        before = store.count()
        Auditor(tiny_model("llama", n_layers=6), store, config, scorers=word_scorers(),
                on_cell=lambda key, cached: seen.append(cached)).run()
        assert store.count() == before
    assert seen and all(seen)


def test_report_rebuilds_identical_results_from_the_store_alone(reference, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    (copy / "results.json").unlink()
    (copy / "report.html").unlink()
    proc = subprocess.run([sys.executable, "-m", "steerscope", "report", str(copy), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)
    assert Path(files["report"]).is_file()
    assert (copy / "results.json").read_bytes() == (reference / "results.json").read_bytes()


def test_runs_lists_finished_incomplete_and_unreadable(reference, tmp_path):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(reference, root / "done")
    partial = root / "partial"
    assert _worker(partial, "3", "after", "KILL").returncode != 0
    (root / "broken").mkdir()
    (root / "broken" / STORE_NAME).write_bytes(b"not a database at all")
    proc = subprocess.run([sys.executable, "-m", "steerscope", "runs", str(root), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r["folder"]).name: r for r in json.loads(proc.stdout)}
    assert rows["done"]["status"] == "finished" and rows["done"]["traits"] == ["formality", "sentiment"]
    assert rows["partial"]["status"] == "incomplete" and rows["partial"]["cells"] == 3
    assert rows["broken"]["status"] == "unreadable" and "not a SQLite database" in rows["broken"]["error"]


def test_report_of_an_incomplete_run_says_how_to_finish_it(tmp_path):
    folder = tmp_path / "partial"
    assert _worker(folder, "2", "after", "KILL").returncode != 0
    proc = subprocess.run([sys.executable, "-m", "steerscope", "report", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "incomplete" in proc.stderr and "run the same audit command again" in proc.stderr


def test_cli_audit_refuses_a_corrupted_store_and_leaves_it_untouched(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    db = folder / STORE_NAME
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    cmd = [sys.executable, "-m", "steerscope", "audit", "--model", "smollm2-135m", "--trait", "formality", "--out", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "another application" in proc.stderr
    assert db.read_bytes() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = subprocess.run(cmd[:-1] + [str(other)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a steerscope run folder" in proc.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_cli_audit_bad_input(tmp_path):
    base = [sys.executable, "-m", "steerscope", "audit", "--out", str(tmp_path / "r")]
    pairs = tmp_path / "mine.jsonl"
    pairs.write_text("".join(json.dumps({"positive": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "yes"}],
                                         "negative": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "no"}]}) + "\n"
                             for i in range(8)))
    bad_pairs = tmp_path / "bad.jsonl"
    bad_pairs.write_text('{"positive": "a"}\n')
    one_label = tmp_path / "one_label.jsonl"
    one_label.write_text("".join(json.dumps({"text": f"text {i}", "label": 1}) + "\n" for i in range(12)))
    layers = tmp_path / "layers.npy"
    np.save(layers, np.ones((3, 8), dtype=np.float32))
    for extra, message in ((["--trait", "wit"], "unknown trait"), (["--trait", "formality", "--quick", "--full"], "choose one"),
                           (["--trait", "formality", "--max-ppl-ratio", "0.5"], "max-ppl-ratio"), ([], "needs --trait or --dataset, and --out"),
                           (["--dataset", str(pairs)], "'mine' has 8 in_distribution prompts; this profile needs 20"),
                           (["--trait", "formality", "--scorer", "none:x"], "unknown or malformed scorer 'none:x'"),
                           (["--dataset", str(pairs), "--scorer", "vader"], "'mine' has 8 in_distribution prompts; this profile needs 20"),
                           (["--dataset", str(bad_pairs), "--scorer", "vader"], "bad.jsonl:1"),
                           (["--trait", "formality", "--prompts", str(pairs)], "give its pairs with --dataset"),
                           (["--trait", "formality", "--scorer", "probe"], "unknown or malformed scorer 'probe'"),
                           (["--trait", "formality", "--layer", "3"], "--layer chooses the layer of a --vector file"),
                           (["--trait", "formality,sentiment", "--vector", str(layers)], "one trait's vector; 2 traits"),
                           (["--trait", "formality", "--vector", str(layers)], "holds layers [0, 1, 2]; pass --layer"),
                           (["--dataset", str(pairs), "--scorer", f"probe:{one_label}"], "0 text(s) of label 0 and 9 of label 1")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
    assert not (tmp_path / "r").exists()


def _browser():
    """Headless Chromium through Playwright; skipped when absent unless STEERSCOPE_REQUIRE_BROWSER=1 (CI)."""
    import shutil

    required = os.environ.get("STEERSCOPE_REQUIRE_BROWSER") == "1"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        if required:
            pytest.fail("the browser test needs Debian's chromium and the playwright package (see the README's set-up)")
        pytest.skip("chromium or playwright not installed")
    return chromium, sync_playwright


def test_report_renders_in_a_real_browser_without_errors_and_opens_on_the_answers(reference, tmp_path):
    from PIL import Image

    chromium, sync_playwright = _browser()
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run"]
    problems, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((reference / "report.html").as_uri())
        shot = tmp_path / "first-screen.png"
        page.screenshot(path=str(shot))
        cards = page.locator("#summary .card")
        assert cards.count() == 8  # two traits × four questions
        for i in range(4):
            box = cards.nth(i).bounding_box()
            assert box is not None and box["y"] + 40 < 900, "the answers must be on the first screen"
        text = page.locator("#summary").inner_text()
        assert "Does the vector steer?" in text and "Is it identifiable?" in text and "reachable by a prompt" in text
        assert "What else does it change?" in text
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0 and page.evaluate("document.images.length") == 16
        browser.close()
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests), "the report must not reach the network"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (900, 1280) and pixels.std() > 10  # a rendered page, not a blank one


def test_cli_audit_ctrl_c_then_the_same_command_resumes(tmp_path):
    """`steerscope audit` on a tiny model folder: SIGINT mid-run exits 130 and keeps the store; rerun finishes."""
    import signal
    import time

    pytest.importorskip("vaderSentiment")
    from steerscope.testing import tiny_model

    lm = tiny_model("llama", n_layers=6)
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    folder = tmp_path / "run"
    cmd = [sys.executable, "-m", "steerscope", "audit", "--model", str(model_dir), "--trait", "sentiment", "--quick", "--out", str(folder), "--json"]
    env = dict(os.environ, STEERSCOPE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (folder / STORE_NAME).exists():
            with RunStore.open(folder, readonly=True) as store:
                if store.count() >= 4:
                    break
        time.sleep(0.2)
    assert proc.poll() is None, "the audit finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    with RunStore.open(folder, readonly=True) as store:
        done = store.count()
        assert done >= 4 and [e["kind"] for e in store.events()] == ["created", "interrupted"]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed"] and "resuming" in again.stderr and f"{done} cells already done" in again.stderr
    assert set(summary["answers"]["sentiment"]) == {"steers", "identifiable", "reachable", "side_effects"}
    with RunStore.open(folder, readonly=True) as store:
        assert [e["kind"] for e in store.events()] == ["created", "interrupted", "resumed", "finished"]


def test_a_registered_stage_reaches_the_plan_the_results_and_the_report(reference, tmp_path, monkeypatch):
    """A new audit is one Stage and one registration: its cells are planned and run, its results
    assembled, its answer shown on the first screen and its section in the report."""
    import shutil

    from steerscope.audit import registry
    from steerscope.audit.pipeline import Auditor, plan_cells
    from steerscope.report import write_outputs
    from steerscope.testing import tiny_model

    def run(a, state):
        a.cell(f"{state.trait}/norm", "norm", lambda: ({"layer": state.layer, "norm": float(state.vector.norm())}, None), state.trait)

    def answer(res):
        return {"status": "yes", "headline": f"‖v‖ = {res['norm']['norm']:.3f}", "facts": []}

    toy = registry.Stage("norm", {"quick": {}, "full": {}}, run, lambda settings: 1, lambda stored, t: {"norm": stored.payload(f"{t}/norm")},
                         answers=(registry.Answer("long", "How long is the vector?", answer),),
                         section=lambda res, plots: f"<h3>Vector norm</h3><p>{res['norm']['norm']:.3f}</p>",
                         heading=("norm", "how long is it?"))
    config = small_config(["formality", "sentiment"])
    planned = plan_cells(config)
    registry.stages()  # the built-in stages first
    monkeypatch.setitem(registry._STAGES, "norm", toy)
    assert plan_cells(config) == planned + 2
    with pytest.raises(Exception, match="already registered"):
        registry.register_stage(toy)
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    with RunStore.open(copy) as store:
        before = store.count()
        Auditor(tiny_model("llama", n_layers=6), store, config, scorers=word_scorers()).run()
        assert store.count() == before + 2
        write_outputs(store)
    results = json.loads((copy / "results.json").read_text())
    reference_results = json.loads((reference / "results.json").read_text())
    for trait, res in results["traits"].items():
        assert res["norm"]["layer"] == res["vector"]["layer"] and res["norm"]["norm"] == pytest.approx(res["vector"]["norm"], rel=1e-6)
        assert res["answers"]["long"]["headline"].startswith("‖v‖ = ")
        assert {k: v for k, v in res.items() if k != "norm"} | {"answers": reference_results["traits"][trait]["answers"]} == reference_results["traits"][trait]
    html = (copy / "report.html").read_text()
    assert "How long is the vector?" in html and "sentiment: how long is it?" in html and "<h3>Vector norm</h3>" in html
