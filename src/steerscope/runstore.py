"""The run store: a SQLite database in each run folder that records a run as it goes.

One row describes the run (configuration, seeds, model fingerprint, steerscope version, command);
one row per finished unit of work (a *cell*, e.g. ``formality/calibrate/alpha=2``) holds its JSON
result, an optional binary payload (tensors as safetensors bytes, never pickle) and its wall time.
Every cell is committed in its own transaction with ``synchronous=FULL``, so a process killed at
any moment (SIGINT or SIGKILL) leaves every committed cell intact and no half-written one; running
the same command again resumes from the cells already there. A commit that a kill interrupted
(SQLite's hot journal) is rolled back by the next writer that opens the store; a store is created
under a temporary name and appears complete or not at all. A write that fails (full disk, read-only
folder) raises :class:`RunStoreError` saying why and what to do; the store stays as it was.

The file carries an application id: a foreign SQLite file, a corrupted file, a file of another
schema or a file that is not a database is refused with a clear error and never written to.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from steerscope.errors import SteerscopeError

STORE_NAME = "run.sqlite"
APPLICATION_ID = 0x53535452  # "SSTR"
SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_CREATING = ".creating"  # name suffix of a store under construction (see RunStore.create)
_SCHEMA = """
CREATE TABLE run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    created TEXT NOT NULL,
    config TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    model_fingerprint TEXT,
    version TEXT NOT NULL,
    command TEXT NOT NULL
);
CREATE TABLE cells (
    key TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    trait TEXT,
    payload TEXT NOT NULL,
    blob BLOB,
    seconds REAL NOT NULL,
    finished TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT
);
"""
_AGAIN = "run the same command again (every cell committed before is kept)"
# SQLite result codes (stable C API values; the sqlite3 module names them only from Python 3.11)
_PERM, _READONLY, _IOERR, _FULL, _CANTOPEN = 3, 8, 10, 13, 14
_READONLY_ROLLBACK = _READONLY | (3 << 8)


class RunStoreError(SteerscopeError):
    """The run folder's database is missing, foreign, corrupted, or belongs to another configuration."""


@dataclass(frozen=True)
class Cell:
    """A finished unit of work: ``payload`` (JSON value), ``blob`` (bytes or None), ``seconds``."""

    key: str
    stage: str
    trait: str | None
    payload: Any
    blob: bytes | None
    seconds: float
    finished: str


class CellStore(Protocol):
    """What an audit needs of a store: a cell read back, a cell read back or computed and committed, and the
    model recorded (:class:`RunStore`, or a worker's replica of one, :mod:`steerscope.distributed`)."""

    def get(self, key: str) -> Cell | None: ...

    def cached(self, key: str, stage: str, compute: Callable[[], tuple[Any, bytes | None]], trait: str | None = None) -> Cell: ...

    def set_fingerprint(self, fingerprint: str) -> None: ...


def stored_payload(payload: Any) -> Any:
    """``payload`` as a store gives it back: its canonical JSON read again (what every reader of a cell sees)."""
    return json.loads(json.dumps(payload, sort_keys=True, allow_nan=False))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def one_line(text: object, limit: int = 200) -> str:
    """``text`` (e.g. an exception) as one line of at most ``limit`` characters, for an error message."""
    line = " ".join(str(text).split()) or type(text).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def config_hash(config: dict) -> str:
    """Hex digest (16 chars) of the canonical JSON of ``config``."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _uri(path: Path, mode: str) -> str:
    """SQLite URI of ``path`` (percent-encoded, so that ``#``, ``?`` or ``%`` in folder names are kept)."""
    return f"{path.absolute().as_uri()}?mode={mode}"


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(_uri(path, mode), uri=True, isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple]:
    """``(name, type, not null, default, primary key)`` of each column of ``table`` ([] when absent)."""
    return [tuple(row[1:]) for row in conn.execute(f"PRAGMA table_info({table})")]


with closing(sqlite3.connect(":memory:")) as _memory:
    _memory.executescript(_SCHEMA)
    _TABLES = {table: _columns(_memory, table) for table in ("run", "cells", "events")}


def _sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of ``exc`` (None when unknown, as before Python 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


#: What reading a corrupted file raises: a database error, or an error whose message (which quotes
#: the damaged bytes) is not valid UTF-8, so that Python's sqlite3 cannot decode it.
_CORRUPTION = (sqlite3.DatabaseError, UnicodeDecodeError)


def _corrupted(path: Path, exc: BaseException) -> RunStoreError:
    reason = "SQLite's error message is not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else one_line(exc)
    return RunStoreError(f"{path} is corrupted ({reason}); it was left untouched")


def _interrupted_commit(exc: BaseException) -> bool:
    """Whether a read-only connection failed on a hot journal: a commit that a killed process left half done."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code == _READONLY_ROLLBACK if code is not None else "readonly database" in str(exc)


def _write_failure(path: Path, what: str, exc: BaseException, again: str = _AGAIN) -> str:
    """One line for a write of the store that failed while doing ``what``: the cause and what to do."""
    code, text, err = _sqlite_code(exc), one_line(exc), getattr(exc, "errno", None)
    if code == _FULL or err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        cause, fix = "the disk is full", "free space"
    elif code == _IOERR:
        cause, fix = f"a write failed ({text}: the disk may be full or failing)", "free space or check the disk"
    elif code in (_READONLY, _CANTOPEN, _PERM) or err in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause, fix = f"the run folder cannot be written ({text})", "make it writable"
    else:
        cause, fix = text, "fix the cause"
    return f"run store {path}: {cause} while {what}; {fix} and {again}"


def _require_writable(path: Path) -> None:
    """Refuse, before anything is written, a store or run folder that this process cannot write."""
    for target in (path.parent, path):
        if not os.access(target, os.W_OK):
            raise RunStoreError(f"{path.parent} is read-only for this process, so its run store cannot be written; "
                                f"make the folder writable and {_AGAIN}")


def _recover(path: Path) -> None:
    """Roll back a commit that a killed process left half done (SQLite's hot journal, ``run.sqlite-journal``)."""
    if not path.with_name(path.name + "-journal").exists():
        return
    try:
        with closing(_connect(path, create=False)) as conn:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the first read plays the journal back
    except _CORRUPTION as exc:
        raise _corrupted(path, exc) from None


def _check_file(path: Path, writable: bool = False) -> None:
    """Raise :class:`RunStoreError` unless ``path`` is an intact steerscope run database.

    ``writable``: the store will be written; refuse it early when it cannot be, and roll back an
    interrupted commit first. Without it the file is only read.
    """
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise RunStoreError(f"{path} cannot be read ({exc.strerror})") from None
    if header[: len(_SQLITE_MAGIC)] != _SQLITE_MAGIC:
        raise RunStoreError(f"{path} is not a SQLite database (corrupted or not a steerscope run store); it was left untouched")
    if len(header) < 100:
        raise RunStoreError(f"{path} is corrupted (truncated in its header); it was left untouched")
    app = int.from_bytes(header[68:72], "big")
    if app != APPLICATION_ID:
        raise RunStoreError(f"{path} is a SQLite database of another application (application_id {app:#x}); it was left untouched")
    if writable:
        _require_writable(path)
        _recover(path)
    try:
        with closing(sqlite3.connect(_uri(path, "ro"), uri=True)) as conn:
            schema = conn.execute("PRAGMA user_version").fetchone()[0]
            if schema != SCHEMA_VERSION:
                raise RunStoreError(f"{path} has store schema {schema}; this steerscope reads schema {SCHEMA_VERSION}")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            tables = {table: _columns(conn, table) for table in _TABLES}
    except _CORRUPTION as exc:
        if _interrupted_commit(exc):
            raise RunStoreError(f"{path} holds a commit that a killed process left unfinished; run the same audit command "
                                "again to roll it back and resume (that needs write access to the run folder)") from None
        raise _corrupted(path, exc) from None
    if check != "ok":
        raise RunStoreError(f"{path} is corrupted (integrity check: {one_line(check)}); it was left untouched")
    other = [table for table, columns in tables.items() if columns != _TABLES[table]]
    if other:
        raise RunStoreError(f"{path} does not have the tables of a steerscope run store (table {', '.join(other)} differs); "
                            "it was left untouched")


def _json(path: Path, what: str, text: Any) -> Any:
    """The JSON value of ``text`` read from the store (NaN and infinities are refused, as on writing)."""
    if not isinstance(text, str):
        raise RunStoreError(f"{path} is corrupted ({what} is not JSON text)")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise RunStoreError(f"{path} is corrupted ({what} is not valid JSON: {one_line(exc)})") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _leftovers(folder: Path) -> list[Path]:
    """Stores under construction that a killed process left behind (and their journals)."""
    return sorted(folder.glob(f".{STORE_NAME}.*{_CREATING}*"))


def _new_store(path: Path, config: dict, version: str, command: str) -> None:
    """Write a complete new store at ``path`` in one transaction."""
    with closing(_connect(path, create=True)) as conn:
        conn.execute("BEGIN")
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO run VALUES (1, ?, ?, ?, NULL, ?, ?)",
                     (_now(), json.dumps(config, sort_keys=True), config_hash(config), version, command))
        conn.execute("INSERT INTO events (at, kind, detail) VALUES (?, 'created', NULL)", (_now(),))
        conn.execute("COMMIT")


def _place(tmp: Path, path: Path) -> None:
    """Give the complete store ``tmp`` the name ``path``; never replace a store that appeared meanwhile."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.rename(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the new name survives a power cut
    finally:
        os.close(fd)


class RunStore:
    """Open run store of one run folder. Use :meth:`create`, :meth:`open` or :func:`open_run`."""

    def __init__(self, folder: Path, conn: sqlite3.Connection):
        self.folder = folder
        self.path = folder / STORE_NAME
        self._conn = conn
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold an exclusive advisory lock on the store until :meth:`close`; refuse a second writer."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunStoreError(f"another steerscope process is writing {self.folder}; wait for it or stop it first") from None
        self._lock = fd

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, config: dict, version: str, command: str) -> RunStore:
        """A new store in ``folder`` (which must not hold one yet).

        It is written under a temporary name and linked into place complete, so that a process
        killed while creating it leaves no ``run.sqlite`` (only a leftover that :func:`open_run` removes).
        """
        folder = Path(folder)
        path = folder / STORE_NAME
        if path.exists():
            raise RunStoreError(f"{path} already exists")
        tmp = folder / f".{STORE_NAME}.{os.getpid()}.{secrets.token_hex(4)}{_CREATING}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _new_store(tmp, config, version, command)
            _place(tmp, path)
        except FileExistsError:
            raise RunStoreError(f"{path} already exists (another process created it at the same time)") from None
        except (OSError, sqlite3.Error) as exc:
            raise RunStoreError(_write_failure(path, "creating the run store", exc, "run the same command again")) from exc
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
                with suppress(OSError):
                    leftover.unlink(missing_ok=True)
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | Path, readonly: bool = False) -> RunStore:
        """The existing store of ``folder``; refuses foreign or corrupted files."""
        folder = Path(folder)
        path = folder / STORE_NAME
        if path.exists() and not path.is_file():
            raise RunStoreError(f"{path} is not a file, so {folder} is not a steerscope run folder")
        if not path.is_file():
            raise RunStoreError(f"{folder} is not a steerscope run folder (no {STORE_NAME})")
        _check_file(path, writable=not readonly)
        try:
            conn = sqlite3.connect(_uri(path, "ro"), uri=True) if readonly else _connect(path, create=False)
        except sqlite3.Error as exc:
            raise RunStoreError(f"{path} cannot be opened ({one_line(exc)})") from None
        return cls(folder, conn)

    def close(self) -> None:
        self._conn.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading and writing -----------------------------------------------------------------

    def _rows(self, query: str, params: tuple = ()) -> list[tuple]:
        """The rows of a read; a database error (corruption that the open's check missed) becomes a RunStoreError."""
        try:
            return self._conn.execute(query, params).fetchall()
        except _CORRUPTION as exc:
            raise _corrupted(self.path, exc) from None

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """One transaction around the body; a write that fails (full disk, read-only folder) is rolled
        back and raised as a RunStoreError that says ``what`` failed and what to do."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            yield
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise RunStoreError(_write_failure(self.path, what, exc)) from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    # --- run metadata ------------------------------------------------------------------------

    @property
    def run(self) -> dict:
        rows = self._rows("SELECT created, config, config_hash, model_fingerprint, version, command FROM run")
        if len(rows) != 1:
            raise RunStoreError(f"{self.path} is corrupted (it holds {len(rows)} run records, not 1)")
        created, config, digest, fingerprint, version, command = rows[0]
        if not all(isinstance(v, str) for v in (created, digest, version, command)) or not isinstance(fingerprint, (str, type(None))):
            raise RunStoreError(f"{self.path} is corrupted (its run record holds a value of the wrong type)")
        config = _json(self.path, "the run configuration", config)
        if not isinstance(config, dict):
            raise RunStoreError(f"{self.path} is corrupted (its run configuration is not a JSON object)")
        return {"created": created, "config": config, "config_hash": digest, "model_fingerprint": fingerprint,
                "version": version, "command": command}

    def set_fingerprint(self, fingerprint: str) -> None:
        """Record the model fingerprint; refuse a different model than the one the run started with."""
        known = self.run["model_fingerprint"]
        if known is not None and known != fingerprint:
            raise RunStoreError(f"{self.folder} was started with a model of fingerprint {known}; the loaded model has "
                                f"{fingerprint}. Use another --out folder for another model.")
        if known is None:
            with self._writing("recording the model fingerprint"):
                self._conn.execute("UPDATE run SET model_fingerprint = ?", (fingerprint,))

    @contextmanager
    def recording_interruption(self) -> Iterator[None]:
        """Log an ``interrupted`` event (with the cells done) when Ctrl-C stops the body, then re-raise."""
        try:
            yield
        except KeyboardInterrupt:
            self.log("interrupted", f"{self.count()} cells done")
            raise

    def log(self, kind: str, detail: str | None = None) -> None:
        with self._writing(f"recording the {kind!r} event"):
            self._conn.execute("INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)", (_now(), kind, detail))

    def events(self) -> list[dict]:
        return [{"at": a, "kind": k, "detail": d} for a, k, d in self._rows("SELECT at, kind, detail FROM events ORDER BY id")]

    # --- cells -----------------------------------------------------------------------------------

    def _cell(self, row: tuple) -> Cell:
        """A row of ``cells`` as a :class:`Cell`, its values checked (the file may have been damaged)."""
        key, stage, trait, payload, blob, seconds, finished = row
        if not (isinstance(key, str) and isinstance(stage, str) and isinstance(trait, (str, type(None))) and isinstance(blob, (bytes, type(None)))
                and isinstance(seconds, (int, float)) and isinstance(finished, str)):
            raise RunStoreError(f"{self.path} is corrupted (cell {one_line(repr(key), 80)} holds a value of the wrong type)")
        return Cell(key, stage, trait, _json(self.path, f"cell {one_line(repr(key), 80)}", payload), blob, float(seconds), finished)

    def get(self, key: str) -> Cell | None:
        rows = self._rows("SELECT key, stage, trait, payload, blob, seconds, finished FROM cells WHERE key = ?", (key,))
        return self._cell(rows[0]) if rows else None

    def put(self, key: str, stage: str, payload: Any, seconds: float, trait: str | None = None, blob: bytes | None = None) -> None:
        """Commit one finished cell (its own transaction); a key is written once."""
        text = json.dumps(payload, sort_keys=True, allow_nan=False)
        with self._writing(f"committing cell {key!r}"):
            self._conn.execute("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)", (key, stage, trait, text, blob, seconds, _now()))

    def cells(self, stage: str | None = None) -> Iterator[Cell]:
        query = "SELECT key, stage, trait, payload, blob, seconds, finished FROM cells"
        for row in self._rows(query + (" WHERE stage = ?" if stage else "") + " ORDER BY rowid", (stage,) if stage else ()):
            yield self._cell(row)

    def count(self) -> int:
        return self._rows("SELECT COUNT(*) FROM cells")[0][0]

    def cached(self, key: str, stage: str, compute: Callable[[], tuple[Any, bytes | None]], trait: str | None = None) -> Cell:
        """The cell ``key``: read from the store, or computed by ``compute() -> (payload, blob)`` and committed."""
        cell = self.get(key)
        if cell is not None:
            return cell
        start = time.perf_counter()
        payload, blob = compute()
        seconds = time.perf_counter() - start
        self.put(key, stage, payload, seconds, trait, blob)
        stored = self.get(key)  # the stored round trip, so that fresh and resumed runs see identical values
        assert stored is not None
        return stored

    def timings(self) -> dict[str, float]:
        """Wall seconds per stage, summed over cells."""
        rows = self._rows("SELECT stage, SUM(seconds) FROM cells GROUP BY stage ORDER BY MIN(rowid)")
        return {stage: float(total) if isinstance(total, (int, float)) else 0.0 for stage, total in rows}


def open_run(folder: str | Path, config: dict, version: str, command: str) -> tuple[RunStore, bool]:
    """Create the store of ``folder`` or resume it; returns ``(store, resumed)``.

    Resuming requires the same configuration; a folder that exists with other files but no store
    is refused, so that nothing unrelated is mixed into a run.
    """
    folder = Path(folder)
    if (folder / STORE_NAME).exists():
        store = RunStore.open(folder)
        try:
            store.lock()
            known = store.run["config"]
            if known != config:
                diff = sorted(k for k in set(known) | set(config) if known.get(k) != config.get(k))
                raise RunStoreError(f"{folder} holds a run with another configuration (differs in: {', '.join(diff)}); "
                                    "run the same command to resume it, or choose another --out folder")
            store.log("resumed", f"{store.count()} cells already done")
        except BaseException:
            store.close()
            raise
        _remove_leftovers(folder)
        return store, True
    if folder.exists() and (not folder.is_dir() or any(p not in _leftovers(folder) for p in folder.iterdir())):
        raise RunStoreError(f"{folder} exists and is not a steerscope run folder; choose another --out folder")
    store = RunStore.create(folder, config, version, command)
    try:
        store.lock()
    except BaseException:
        store.close()
        raise
    _remove_leftovers(folder)
    return store, False


def _remove_leftovers(folder: Path) -> None:
    """Remove what killed creations left (the caller holds the store's lock)."""
    for leftover in _leftovers(folder):
        leftover.unlink(missing_ok=True)


def list_runs(root: str | Path) -> list[dict]:
    """One row per run folder directly under ``root`` (or ``root`` itself): name, model, traits, cells, status."""
    root = Path(root)
    folders = [root] if (root / STORE_NAME).exists() else sorted(p for p in root.iterdir() if (p / STORE_NAME).exists()) if root.is_dir() else []
    rows = []
    for folder in folders:
        try:
            rows.append(_run_row(folder))
        except RunStoreError as exc:
            rows.append({"folder": str(folder), "status": "unreadable", "error": str(exc)})
    return rows


def _run_row(folder: Path) -> dict:
    """The :func:`list_runs` row of one run folder."""
    with RunStore.open(folder, readonly=True) as store:
        run, events = store.run, store.events()
        config = run["config"]
        sweep = config.get("kind") == "sweep"  # a sweep's store (steerscope.sweep): its cells are the finished audits
        traits = config.get("traits")
        traits = list(traits) if sweep and isinstance(traits, dict) else traits
        if not isinstance(traits, list) or not all(isinstance(t, str) for t in traits):
            raise RunStoreError(f"{store.path} is not the store of an audit (its configuration has no list of traits)")
        finished = any(e["kind"] == "finished" for e in events)
        model, profile = (_listed(config.get("models")), _listed(config.get("profiles"))) if sweep else (config.get("model"), config.get("profile"))
        return {"folder": str(folder), "created": run["created"], "kind": "sweep" if sweep else "audit", "model": model, "traits": traits,
                "profile": profile, "cells": store.count(), "status": "finished" if finished else "incomplete",
                "version": run["version"], "model_fingerprint": run["model_fingerprint"]}


def _listed(values: Any) -> str:
    """A configuration's list of names as one comma-separated string ("" when it is not a list)."""
    return ", ".join(map(str, values)) if isinstance(values, list) else ""
