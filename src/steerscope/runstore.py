"""The run store: a SQLite database in each run folder that records a run as it goes.

One row describes the run (configuration, seeds, model fingerprint, steerscope version, command);
one row per finished unit of work (a *cell*, e.g. ``formality/calibrate/alpha=2``) holds its JSON
result, an optional binary payload (tensors as safetensors bytes, never pickle) and its wall time.
Every cell is committed in its own transaction with ``synchronous=FULL``, so a process killed at
any moment (SIGINT or SIGKILL) leaves every committed cell intact and no half-written one; running
the same command again resumes from the cells already there.

The file carries an application id: a foreign SQLite file, a corrupted file or a file that is not
a database is refused with a clear error and never written to.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import os
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError

STORE_NAME = "run.sqlite"
APPLICATION_ID = 0x53535452  # "SSTR"
SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(config: dict) -> str:
    """Hex digest (16 chars) of the canonical JSON of ``config``."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _check_file(path: Path) -> None:
    """Raise :class:`RunStoreError` unless ``path`` is an intact steerscope run database."""
    with open(path, "rb") as fh:
        head = fh.read(len(_SQLITE_MAGIC))
    if head != _SQLITE_MAGIC:
        raise RunStoreError(f"{path} is not a SQLite database (corrupted or not a steerscope run store); it was left untouched")
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            app, schema = conn.execute("PRAGMA application_id").fetchone()[0], conn.execute("PRAGMA user_version").fetchone()[0]
            if app != APPLICATION_ID:
                raise RunStoreError(f"{path} is a SQLite database of another application (application_id {app:#x}); it was left untouched")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise RunStoreError(f"{path} is corrupted ({exc}); it was left untouched") from None
    if check != "ok":
        raise RunStoreError(f"{path} is corrupted (integrity check: {check}); it was left untouched")
    if schema != SCHEMA_VERSION:
        raise RunStoreError(f"{path} has store schema {schema}; this steerscope reads schema {SCHEMA_VERSION}")


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
        """A new store in ``folder`` (which must not hold one yet)."""
        folder = Path(folder)
        path = folder / STORE_NAME
        if path.exists():
            raise RunStoreError(f"{path} already exists")
        folder.mkdir(parents=True, exist_ok=True)
        conn = _connect(path, create=True)
        try:
            conn.execute("BEGIN")
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO run VALUES (1, ?, ?, ?, NULL, ?, ?)",
                         (_now(), json.dumps(config, sort_keys=True), config_hash(config), version, command))
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            path.unlink(missing_ok=True)
            raise
        store = cls(folder, conn)
        store.log("created")
        return store

    @classmethod
    def open(cls, folder: str | Path, readonly: bool = False) -> RunStore:
        """The existing store of ``folder``; refuses foreign or corrupted files."""
        folder = Path(folder)
        path = folder / STORE_NAME
        if not path.is_file():
            raise RunStoreError(f"{folder} is not a steerscope run folder (no {STORE_NAME})")
        _check_file(path)
        if readonly:
            return cls(folder, sqlite3.connect(f"file:{path}?mode=ro", uri=True))
        return cls(folder, _connect(path, create=False))

    def close(self) -> None:
        self._conn.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- run metadata ------------------------------------------------------------------------

    @property
    def run(self) -> dict:
        created, config, digest, fingerprint, version, command = self._conn.execute(
            "SELECT created, config, config_hash, model_fingerprint, version, command FROM run").fetchone()
        return {"created": created, "config": json.loads(config), "config_hash": digest, "model_fingerprint": fingerprint,
                "version": version, "command": command}

    def set_fingerprint(self, fingerprint: str) -> None:
        """Record the model fingerprint; refuse a different model than the one the run started with."""
        known = self.run["model_fingerprint"]
        if known is not None and known != fingerprint:
            raise RunStoreError(f"{self.folder} was started with a model of fingerprint {known}; the loaded model has "
                                f"{fingerprint}. Use another --out folder for another model.")
        if known is None:
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
        self._conn.execute("INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)", (_now(), kind, detail))

    def events(self) -> list[dict]:
        return [{"at": a, "kind": k, "detail": d} for a, k, d in self._conn.execute("SELECT at, kind, detail FROM events ORDER BY id")]

    # --- cells -----------------------------------------------------------------------------------

    def get(self, key: str) -> Cell | None:
        row = self._conn.execute("SELECT key, stage, trait, payload, blob, seconds, finished FROM cells WHERE key = ?", (key,)).fetchone()
        return None if row is None else Cell(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])

    def put(self, key: str, stage: str, payload: Any, seconds: float, trait: str | None = None, blob: bytes | None = None) -> None:
        """Commit one finished cell (its own transaction); a key is written once."""
        text = json.dumps(payload, sort_keys=True, allow_nan=False)
        self._conn.execute("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)", (key, stage, trait, text, blob, seconds, _now()))

    def cells(self, stage: str | None = None) -> Iterator[Cell]:
        query = "SELECT key, stage, trait, payload, blob, seconds, finished FROM cells"
        rows = self._conn.execute(query + (" WHERE stage = ?" if stage else "") + " ORDER BY rowid", (stage,) if stage else ())
        for row in rows.fetchall():
            yield Cell(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]

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
        rows = self._conn.execute("SELECT stage, SUM(seconds) FROM cells GROUP BY stage ORDER BY MIN(rowid)")
        return {stage: float(total) for stage, total in rows}


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
        except RunStoreError:
            store.close()
            raise
        known = store.run["config"]
        if known != config:
            store.close()
            diff = sorted(k for k in set(known) | set(config) if known.get(k) != config.get(k))
            raise RunStoreError(f"{folder} holds a run with another configuration (differs in: {', '.join(diff)}); "
                                "run the same command to resume it, or choose another --out folder")
        store.log("resumed", f"{store.count()} cells already done")
        return store, True
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunStoreError(f"{folder} exists and is not a steerscope run folder; choose another --out folder")
    store = RunStore.create(folder, config, version, command)
    store.lock()
    return store, False


def list_runs(root: str | Path) -> list[dict]:
    """One row per run folder directly under ``root`` (or ``root`` itself): name, model, traits, cells, status."""
    root = Path(root)
    folders = [root] if (root / STORE_NAME).exists() else sorted(p for p in root.iterdir() if (p / STORE_NAME).exists()) if root.is_dir() else []
    rows = []
    for folder in folders:
        try:
            with RunStore.open(folder, readonly=True) as store:
                run, events = store.run, store.events()
                finished = any(e["kind"] == "finished" for e in events)
                rows.append({"folder": str(folder), "created": run["created"], "model": run["config"].get("model"),
                             "traits": run["config"].get("traits"), "profile": run["config"].get("profile"),
                             "cells": store.count(), "status": "finished" if finished else "incomplete",
                             "version": run["version"], "model_fingerprint": run["model_fingerprint"]})
        except RunStoreError as exc:
            rows.append({"folder": str(folder), "status": "unreadable", "error": str(exc)})
    return rows
