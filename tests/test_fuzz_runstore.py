"""Property-based fuzzing of run-store files (surface "run-store files").

Generated ``run.sqlite`` files: real stores truncated at any offset, with flipped bits or overwritten
bytes; random bytes, with or without the SQLite header; empty files; valid SQLite files of another
application, another schema version, with missing or other tables, values of the wrong type or
garbage JSON in the configuration and the cells; directories named run.sqlite; a stray journal.

Each case goes through ``RunStore.open`` (read-only and not) with every read, ``list_runs``,
``open_run`` (on a copy), and in process through the CLI's ``steerscope runs`` and ``steerscope
report``. Each must succeed or end in one line (RunStoreError; ``error: ...`` and exit code 2 from
the CLI), never a traceback; the file is never modified, and a failed report leaves no
results.json or report.html.
"""

import functools
import gzip
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing, redirect_stderr, redirect_stdout, suppress
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzzing import count_case
from steerscope.errors import SteerscopeError
from steerscope.runstore import APPLICATION_ID, SCHEMA_VERSION, STORE_NAME, RunStore, RunStoreError, list_runs, open_run

pytest.importorskip("matplotlib")
WORKER = Path(__file__).with_name("_resume_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _resume_worker import small_config  # noqa: E402

SURFACE = "run-store files"
CONFIG = small_config()
OUTPUTS = ("results.json", "report.html")
TABLES = ("run", "cells", "events")


@dataclass(frozen=True)
class Case:
    """A generated run.sqlite: ``data`` (its bytes; the real store ``base`` when None), or ``spec`` (a
    SQLite file to build), or a directory; ``journal``: the bytes of a run.sqlite-journal beside it."""

    kind: str
    data: bytes | None = b""
    spec: tuple = ()
    journal: bytes | None = None
    base: str = "incomplete"


# --- the real stores that are damaged ---------------------------------------------------------------

@functools.cache
def _base(name: str) -> bytes:
    """The real store ``finished`` (of a finished run of the small audit, by the worker of
    tests/test_pipeline.py) or ``incomplete`` (its first 6 cells), built on first use."""
    return _finished_store() if name == "finished" else _incomplete(_base("finished"))


def _finished_store() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, str(WORKER), f"{tmp}/run"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return (Path(tmp) / "run" / STORE_NAME).read_bytes()


def _incomplete(store: bytes, keep: int = 6) -> bytes:
    """``store`` with only its first ``keep`` cells and its 'created' event, compacted."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / STORE_NAME
        path.write_bytes(store)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("DELETE FROM cells WHERE rowid > ?", (keep,))
            conn.execute("DELETE FROM events WHERE kind != 'created'")
            conn.execute("VACUUM")
        return path.read_bytes()


# --- strategies ------------------------------------------------------------------------------------

CONFIG_TEXTS = [json.dumps(CONFIG, sort_keys=True), "{not json", "[1, 2]", "5", "null", '{"traits": 5}', '{"traits": [1]}',
                '{"traits": ["formality"]}', "[" * 100_000, '{"x": NaN}', ""]
PAYLOADS = ['{"a": 1}', "garbage {", "NaN", "[" * 100_000, "", '"text"', "[]", "{}", b"\x00\x01", 7, 2.5]
KEYS = ["model", "formality/spec", "formality/layers", "formality/vector", "grams/L1"]
text_or_blob = st.text(max_size=12) | st.binary(max_size=12)


@st.composite
def sqlite_specs(draw) -> tuple:
    """A valid SQLite file's recipe: header fields, table layouts, and rows of any types."""
    app = draw(st.sampled_from([APPLICATION_ID, 0]) | st.integers(-(2**31), 2**31 - 1))
    version = draw(st.sampled_from([SCHEMA_VERSION, 0, 2, 99, -1]))
    tables = tuple(draw(st.sampled_from(["ours", "ours", "missing", "extra column", "fewer columns", "other types"])) for _ in TABLES)
    run = (1, draw(st.sampled_from(["2024-01-01T00:00:00+00:00", b"\x01", 3])), draw(st.sampled_from(CONFIG_TEXTS) | text_or_blob),
           draw(st.sampled_from(["0123456789abcdef", b"x"])), draw(st.sampled_from([None, "fp", b"\x02"])),
           draw(st.sampled_from(["test", 1.5])), draw(st.sampled_from(["worker", b""])))
    runs = draw(st.integers(0, 1))
    cells = draw(st.lists(st.tuples(st.sampled_from(KEYS) | text_or_blob, st.sampled_from(["model", "spec"]) | text_or_blob,
                                    st.sampled_from([None, "formality"]), st.sampled_from(PAYLOADS), st.sampled_from([None, b"\x00", "t", 1]),
                                    st.sampled_from([0.5, "slow", 2]), st.sampled_from(["2024", b"\x03"])), max_size=4))
    events = draw(st.lists(st.tuples(st.just(None), st.sampled_from(["2024", 4]), st.sampled_from(["created", "finished"]) | text_or_blob,
                                     st.sampled_from([None, "d", b"\x04"])), max_size=3))
    return app, version, tables, (run,) * runs, tuple(cells), tuple(events)


def _damaged(base: bytes, draw) -> tuple[str, bytes]:
    """``base`` truncated, with flipped bits, or with a run of random bytes written into it."""
    how = draw(st.sampled_from(["truncated", "flipped", "overwritten"]))
    if how == "truncated":
        return how, base[: draw(st.integers(0, len(base) - 1))]
    data = bytearray(base)
    if how == "flipped":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    else:
        start = draw(st.integers(0, len(data) - 1))
        patch = draw(st.binary(min_size=1, max_size=64))
        data[start: start + len(patch)] = patch[: len(data) - start]
    return how, bytes(data)


@st.composite
def cases(draw, bases=("incomplete",)) -> Case:
    kind = draw(st.sampled_from(["damaged", "damaged", "damaged", "random", "header", "empty", "sqlite", "sqlite", "directory", "journal"]))
    if kind == "damaged":
        base = draw(st.sampled_from(bases))
        how, data = _damaged(_base(base), draw)
        return Case(f"{base} store {how}", data)
    if kind == "random":
        return Case(kind, draw(st.binary(max_size=4096)))
    if kind == "header":
        return Case("SQLite header + random bytes", b"SQLite format 3\x00" + draw(st.binary(max_size=4096)))
    if kind == "empty":
        return Case(kind)
    if kind == "sqlite":
        return Case("valid SQLite file", spec=draw(sqlite_specs()))
    if kind == "directory":
        return Case("directory named run.sqlite")
    return Case("incomplete store + stray journal", None, journal=draw(st.binary(min_size=1, max_size=2048)))


# --- building a case ---------------------------------------------------------------------------------

def _table_sql(table: str, layout: str) -> str | None:
    """CREATE TABLE for one table of a spec: ours, or changed."""
    ours = next(s for s in _schema_statements() if s.split("(")[0].split()[-1] == table)
    if layout == "missing":
        return None
    head, body = ours.split("(", 1)
    columns = [c.strip() for c in body.rsplit(")", 1)[0].split(",\n")]
    if layout == "extra column":
        columns.append("extra TEXT")
    elif layout == "fewer columns":
        columns = columns[:-1]
    elif layout == "other types":
        columns = [c.split()[0] + " BLOB" for c in columns]
    return f"{head}({', '.join(columns)})"


def _schema_statements() -> list[str]:
    from steerscope.runstore import _SCHEMA

    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


def _build(path: Path, spec: tuple) -> None:
    """Write the SQLite file of ``spec`` (rows that a changed table refuses are left out)."""
    app, version, layouts, runs, cells, events = spec
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA application_id={app}")
        conn.execute(f"PRAGMA user_version={version}")
        for table, layout, rows in zip(TABLES, layouts, (runs, cells, events)):
            sql = _table_sql(table, layout)
            if sql is None:
                continue
            conn.execute(sql)
            width = len(conn.execute(f"PRAGMA table_info({table})").fetchall())
            for row in rows:
                values = (*row, *[None] * width)[:width]
                with suppress(sqlite3.Error):
                    conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * width)})", values)


def _materialize(case: Case, folder: Path) -> Path:
    """The run folder of ``case``; returns its run.sqlite path."""
    folder.mkdir()
    path = folder / STORE_NAME
    if case.kind.startswith("directory"):
        path.mkdir()
        (path / "inside").write_text("x")
    elif case.spec:
        _build(path, case.spec)
    else:
        path.write_bytes(_base(case.base) if case.data is None else case.data)
    if case.journal is not None:
        (folder / f"{STORE_NAME}-journal").write_bytes(case.journal)
    return path


# --- the surfaces --------------------------------------------------------------------------------

def _one_line(exc: Exception) -> None:
    assert isinstance(exc, SteerscopeError), repr(exc)
    assert str(exc) and "\n" not in str(exc), repr(exc)


def _read_all(folder: Path, readonly: bool) -> str:
    """Open the store and read everything: success ("") or a one-line RunStoreError (its message)."""
    try:
        with RunStore.open(folder, readonly=readonly) as store:
            store.run, store.events(), store.count(), list(store.cells()), store.timings()
            store.get("model")
    except RunStoreError as exc:
        _one_line(exc)
        return str(exc)
    return ""


def _cli(*args: str) -> tuple[int, str, str]:
    """``steerscope ARGS`` in this process (steerscope.cli.main): exit code, stdout, stderr."""
    from steerscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["steerscope", *args]), redirect_stdout(out), redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _check_report(folder: Path) -> str:
    """`steerscope report FOLDER`: its files complete on success, else one error line and no output file."""
    code, out, err = _cli("report", str(folder), "--json")
    if code == 0:
        files = json.loads(out)
        assert json.loads((folder / "results.json").read_text())["traits"]
        assert Path(files["report"]).read_text().endswith("</html>")
        return "report written"
    assert code == 2, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert not any((folder / name).exists() for name in OUTPUTS)
    assert not [p for p in folder.rglob("*.tmp")]
    return lines[0]


def _check_runs(root: Path, folder: Path) -> None:
    """`steerscope runs` (JSON and table) and list_runs: exit code 0, one row for the folder."""
    rows = list_runs(root)
    assert [r["folder"] for r in rows] == [str(folder)]
    assert rows[0]["status"] in ("finished", "incomplete", "unreadable")
    code, out, err = _cli("runs", str(root), "--json")
    assert code == 0 and json.loads(out) == rows, err[-2000:]
    code, _, err = _cli("runs", str(root))
    assert code == 0, err[-2000:]


def _check_open_run(folder: Path, tmp: Path) -> None:
    """open_run on a copy: resumed (a sound store of this configuration) or refused with the copy unchanged."""
    copy = tmp / "copy"
    shutil.copytree(folder, copy)
    before = _files(copy)
    try:
        store, resumed = open_run(copy, CONFIG, "test", "worker")
    except RunStoreError as exc:
        _one_line(exc)
        assert _files(copy) == before
        return
    with store:
        assert resumed and store.events()[-1]["kind"] == "resumed"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_case(case: Case, generated: bool = True) -> None:
    """Every surface on the run folder of ``case`` (a ``generated`` one counts towards the surface's cases)."""
    if generated:
        count_case(SURFACE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        folder = root / "run"
        path = _materialize(case, folder)
        before = _files(folder)
        _read_all(folder, readonly=True)
        assert _files(folder) == before
        _check_runs(root, folder)
        _check_report(folder)
        assert {k: v for k, v in _files(folder).items() if k in before} == before  # nothing that was there changed
        _check_open_run(folder, Path(tmp))
        _read_all(folder, readonly=False)
        if path.is_file():
            assert path.read_bytes() == before[STORE_NAME]  # a writable open rolls back a hot journal, never changes the file


# --- the tests -----------------------------------------------------------------------------------

@given(cases())
@example(Case("empty"))
@example(Case("directory named run.sqlite"))
@example(Case("incomplete store + stray journal", None, journal=b"\x01" * 512))
def test_fuzzed_store_files_end_in_success_or_one_line(case):
    """Any run.sqlite: every surface succeeds or ends in one line; the file is never modified."""
    _check_case(case)


@settings(max_examples=max(5, settings().max_examples // 10))  # a report that succeeds takes seconds
@given(cases(bases=("finished",)))
def test_damaged_finished_store_reports_or_refuses(case):
    """A finished run's store, damaged: `steerscope report` writes whole files or refuses in one line."""
    _check_case(case)


def test_intact_stores_are_read():
    """The undamaged stores pass every surface: the finished one reports, the incomplete one says how to finish."""
    for base, expected, cells in (("finished", "report written", 35), ("incomplete", "is incomplete", 6)):  # every cell of the small audit
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "run"
            _materialize(Case("intact", None, base=base), folder)
            assert expected in _check_report(folder)
            with RunStore.open(folder, readonly=True) as store:
                assert store.count() == cells


# --- failing examples found by the fuzzing, kept as regular tests --------------------------------

def _changed_store(folder: Path, base: str, sql: str, *params) -> Path:
    """A run folder with the real store ``base`` changed by one SQL statement."""
    folder.mkdir()
    path = folder / STORE_NAME
    path.write_bytes(_base(base))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(sql, params)
    return path


def _with_unused_pages(folder: Path) -> Path:
    """A run folder whose store has two unused pages at its end (the integrity check reports one line per page)."""
    folder.mkdir()
    path = folder / STORE_NAME
    data = bytearray(_base("incomplete"))
    page = int.from_bytes(data[16:18], "big")
    pages = int.from_bytes(data[28:32], "big") + 2
    data[28:32] = pages.to_bytes(4, "big")  # the header's page count stays valid: its change counter is unchanged
    path.write_bytes(bytes(data) + bytes(2 * page))
    return path


def _nan_payload() -> str:
    """The payload of formality/layers with a NaN accuracy (the store refuses NaN on writing)."""
    payload = json.loads(_payload("finished", "formality/layers"))
    payload["rows"][0]["accuracy"] = float("nan")
    return json.dumps(payload)


def _payload(base: str, key: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / STORE_NAME
        path.write_bytes(_base(base))
        with closing(sqlite3.connect(path)) as conn:
            return conn.execute("SELECT payload FROM cells WHERE key = ?", (key,)).fetchone()[0]


def _from_fixture(folder: Path, name: str) -> None:
    """``folder``'s store: the gzipped bytes of ``tests/data/NAME`` (a case kept as the fuzzer found it)."""
    folder.mkdir(parents=True)
    (folder / STORE_NAME).write_bytes(gzip.decompress(Path(__file__).with_name("data").joinpath(name).read_bytes()))


REGRESSIONS = {
    # before: TypeError (cannot unpack None) from RunStore.run
    "no run record": (lambda f: _changed_store(f, "incomplete", "DELETE FROM run"), "holds 0 run records"),
    # before: sqlite3.OperationalError (Could not decode to UTF-8) from RunStore.cells
    "key not UTF-8": (lambda f: _changed_store(f, "incomplete", "UPDATE cells SET key = CAST(X'ff6d6f64656c' AS TEXT) WHERE key = 'model'"),
                      "Could not decode to UTF-8"),
    # before: a RunStoreError of 18 lines (every line of the integrity check)
    "integrity check of several lines": (_with_unused_pages, "is never used"),
    # before: json.JSONDecodeError from RunStore.get and RunStore.cells
    "payload not JSON": (lambda f: _changed_store(f, "incomplete", "UPDATE cells SET payload = 'garbage {' WHERE key = 'model'"),
                         "cell 'model' is not valid JSON"),
    # before: AttributeError ('list' object has no attribute 'get') from list_runs, a traceback from `steerscope runs`
    "configuration not an object": (lambda f: _changed_store(f, "incomplete", "UPDATE run SET config = '[1, 2]'"), "not a JSON object"),
    # before: TypeError from `steerscope runs` (joining the traits 5)
    "traits not a list": (lambda f: _changed_store(f, "incomplete", "UPDATE run SET config = '{\"traits\": 5}'"), "no list of traits"),
    # before: RecursionError from RunStore.run
    "configuration nested too deep": (lambda f: _changed_store(f, "incomplete", "UPDATE run SET config = ?", "[" * 100_000),
                                      "maximum recursion depth"),
    # before: sqlite3.OperationalError (no such column: finished) from RunStore.cells
    "cells table of another layout": (lambda f: _changed_store(f, "incomplete", "ALTER TABLE cells DROP COLUMN finished"),
                                      "table cells differs"),
    # before: KeyError from `steerscope report` (assembling the results)
    "a result without its fields": (lambda f: _changed_store(f, "finished", "UPDATE cells SET payload = '{}' WHERE key = 'formality/layers'"),
                                    "cannot be read back (KeyError"),
    # before: ValueError (out of range float values) from `steerscope report` writing results.json
    "NaN in a result": (lambda f: _changed_store(f, "finished", "UPDATE cells SET payload = ? WHERE key = 'formality/layers'", _nan_payload()),
                        "NaN is not a JSON number"),
    # before: TypeError from safetensors, given text as the vector's bytes
    "vector bytes of the wrong type": (lambda f: _changed_store(f, "finished", "UPDATE cells SET blob = 'text' WHERE key = 'formality/vector'"),
                                       "holds a value of the wrong type"),
    # before: UnicodeDecodeError from the integrity check: SQLite's error message quoted bytes that are not UTF-8
    "error message not UTF-8": (lambda f: _from_fixture(f, "store_error_not_utf8.sqlite.gz"), "error message is not valid UTF-8"),
}


@pytest.mark.parametrize("name", REGRESSIONS)
def test_damaged_store_found_by_fuzzing_is_refused_in_one_line(name, tmp_path):
    """Each store that once ended in a traceback (or a message of many lines) now passes every surface,
    and `steerscope report` or `steerscope runs` says what is wrong in one line."""
    make, expected = REGRESSIONS[name]
    folder = tmp_path / "runs" / "run"
    folder.parent.mkdir()
    make(folder)
    _check_case(Case(name, (folder / STORE_NAME).read_bytes()), generated=False)
    shutil.rmtree(folder.parent / "run", ignore_errors=True)
    make(folder)
    said = [list_runs(folder.parent)[0].get("error", ""), _read_all(folder, readonly=True), _check_report(folder)]
    assert any(expected in line for line in said) and not any("\n" in line for line in said), said


def test_folder_names_with_uri_characters(tmp_path):
    """Folders named with '#', '?' or '%' hold their own store (before, SQLite's URI cut the path there:
    'run#1' failed, 'run?x' wrote into another file named 'run', 'run%41b' failed)."""
    for name in ("run#1", "run?x", "run%41b", "run space"):
        store, resumed = open_run(tmp_path / name, CONFIG, "test", "worker")
        with store:
            store.put("k", "s", {"v": name}, 0.1)
        with RunStore.open(tmp_path / name, readonly=True) as again:
            assert not resumed and again.get("k").payload == {"v": name}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run#1", "run?x", "run%41b", "run space"])
