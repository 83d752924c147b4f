"""The SQLite run store: cells, resume rules, and refusal of foreign or corrupted files."""

import hashlib
import sqlite3

import pytest

from steerscope.runstore import STORE_NAME, RunStore, RunStoreError, list_runs, open_run

CONFIG = {"model": "m", "traits": ["formality"], "profile": "quick", "seed": 0}


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cells_round_trip_and_are_computed_once(tmp_path):
    store = RunStore.create(tmp_path / "run", CONFIG, "1.0", "steerscope audit ...")
    calls = []

    def compute():
        calls.append(1)
        return {"x": [1.5, 2.0], "nested": {"a": None}}, b"\x00\x01binary"

    first = store.cached("t/stage", "stage", compute, trait="t")
    second = store.cached("t/stage", "stage", compute, trait="t")
    assert calls == [1]
    assert first.payload == second.payload == {"x": [1.5, 2.0], "nested": {"a": None}}
    assert first.blob == b"\x00\x01binary" and first.trait == "t"
    assert store.count() == 1 and list(store.timings()) == ["stage"]
    with pytest.raises(sqlite3.IntegrityError):
        store.put("t/stage", "stage", {}, 0.0)
    store.close()
    with RunStore.open(tmp_path / "run", readonly=True) as again:
        assert again.get("t/stage").payload == first.payload
        assert again.run["config"] == CONFIG and again.run["version"] == "1.0"


def test_nan_payloads_are_refused(tmp_path):
    store = RunStore.create(tmp_path / "run", CONFIG, "1.0", "cmd")
    with pytest.raises(ValueError):
        store.put("k", "s", {"x": float("nan")}, 0.0)
    assert store.count() == 0


def test_open_run_resumes_only_the_same_configuration(tmp_path):
    folder = tmp_path / "run"
    store, resumed = open_run(folder, CONFIG, "1.0", "cmd")
    assert not resumed
    store.put("a", "s", 1, 0.1)
    store.close()
    store, resumed = open_run(folder, dict(CONFIG), "1.0", "cmd")
    assert resumed and store.count() == 1
    assert [e["kind"] for e in store.events()] == ["created", "resumed"]
    store.close()
    with pytest.raises(RunStoreError, match=r"another configuration \(differs in: seed, traits\)"):
        open_run(folder, CONFIG | {"seed": 1, "traits": ["sentiment"]}, "1.0", "cmd")


def test_a_folder_with_other_files_is_not_taken_over(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(RunStoreError, match="not a steerscope run folder"):
        open_run(tmp_path, CONFIG, "1.0", "cmd")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_model_fingerprint_is_pinned(tmp_path):
    store = RunStore.create(tmp_path / "run", CONFIG, "1.0", "cmd")
    store.set_fingerprint("abc")
    store.set_fingerprint("abc")
    with pytest.raises(RunStoreError, match="fingerprint abc"):
        store.set_fingerprint("def")


@pytest.mark.parametrize("kind", ["garbage", "foreign", "truncated", "wrong-schema"])
def test_foreign_or_corrupted_files_are_refused_and_left_untouched(tmp_path, kind):
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / STORE_NAME
    if kind == "garbage":
        path.write_bytes(b"this is not a database\n" * 10)
        expected = "not a SQLite database"
    elif kind == "foreign":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE cells (key TEXT)")
        conn.commit()
        conn.close()
        expected = "another application"
    else:
        store = RunStore.create(folder, CONFIG, "1.0", "cmd")
        for i in range(200):
            store.put(f"k{i}", "s", {"i": i, "pad": "x" * 500}, 0.0)
        store.close()
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            expected = "corrupted"
        else:
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA user_version=99")
            conn.commit()
            conn.close()
            expected = "schema 99"
    before = _digest(path)
    with pytest.raises(RunStoreError, match=expected):
        open_run(folder, CONFIG, "1.0", "cmd")
    with pytest.raises(RunStoreError, match=expected):
        RunStore.open(folder, readonly=True)
    assert _digest(path) == before
    assert sorted(p.name for p in folder.iterdir()) == [STORE_NAME]


def test_list_runs(tmp_path):
    done, _ = open_run(tmp_path / "a", CONFIG, "1.0", "cmd")
    done.log("finished")
    done.close()
    open_run(tmp_path / "b", CONFIG, "1.0", "cmd")[0].close()
    (tmp_path / "not-a-run").mkdir()
    rows = {r["folder"].rsplit("/", 1)[-1]: r for r in list_runs(tmp_path)}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["status"] == "finished" and rows["b"]["status"] == "incomplete"
    assert [r["folder"] for r in list_runs(tmp_path / "a")] == [str(tmp_path / "a")]


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    first, _ = open_run(tmp_path / "run", CONFIG, "1.0", "cmd")
    with pytest.raises(RunStoreError, match="another steerscope process"):
        open_run(tmp_path / "run", CONFIG, "1.0", "cmd")
    with RunStore.open(tmp_path / "run", readonly=True) as reader:  # readers are not blocked
        assert reader.count() == 0
    first.close()
    second, resumed = open_run(tmp_path / "run", CONFIG, "1.0", "cmd")
    assert resumed
    second.close()
