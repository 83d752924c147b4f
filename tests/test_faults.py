"""Faults in the run store: an audit killed (SIGKILL) at exact points, a full disk, a read-only run
folder, two processes on one run folder.

Each killed audit is resumed by the same command and must write a ``results.json`` byte-identical to
an uninterrupted run, leaving no temporary file behind. With ``STEERSCOPE_FAULT_TABLE=PATH`` the
kill points and what each showed are written to PATH as a Markdown table (docs/reliability.md).
"""

import json
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from steerscope.runstore import STORE_NAME, RunStore, RunStoreError

pytest.importorskip("matplotlib")
WORKER = Path(__file__).with_name("_resume_worker.py")
sys.path.insert(0, str(WORKER.parent))
from test_pipeline import _default_sigint  # noqa: E402

OUTPUTS = ("results.json", "report.html")
#: Cells of the audited run (tests/_resume_worker.py's small configuration); the reference run checks it.
CELLS = 35
ROWS: list[dict] = []  # one per kill point that passed, for $STEERSCOPE_FAULT_TABLE
NOTES: list[str] = []  # what the full-disk and read-only tests showed

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* SIGKILL just before the nth armed system call on the run store (db or journal); see _resume_worker.py. */
static char op[32];
static long left;

void steerscope_fault_arm(const char *which, long nth) { snprintf(op, sizeof op, "%s", which); left = nth; }

static const char *classify(const char *path) {
    size_t n = strlen(path);
    if (n >= 8 && strcmp(path + n - 8, "-journal") == 0) return "journal";
    return strstr(path, "run.sqlite") ? "db" : "other";
}

static void step(const char *path, int fd, const char *what) {
    char link[64], buf[4096], name[64];
    if (left <= 0) return;
    if (path == NULL) {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, buf, sizeof buf - 1);
        buf[n < 0 ? 0 : n] = 0;
        path = buf;
    }
    snprintf(name, sizeof name, "%s-%s", classify(path), what);
    if (strcmp(name, op) == 0 && --left == 0) kill(getpid(), SIGKILL);
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) { REAL(pwrite64); step(NULL, fd, "write"); return real(fd, buf, n, off); }
int fdatasync(int fd) { REAL(fdatasync); step(NULL, fd, "sync"); return real(fd); }
int fsync(int fd) { REAL(fsync); step(NULL, fd, "sync"); return real(fd); }
int unlink(const char *path) { REAL(unlink); step(path, -1, "unlink"); return real(path); }
"""


@dataclass(frozen=True)
class KillPoint:
    """One kill point: ``runs`` are the worker arguments of each killed run, in order; ``start`` is
    the run folder it starts from: empty, or the reference run's store cut back to its first
    ``start`` cells (as a run killed there leaves it; the killed process computes and commits the
    next cells itself), or "complete" (the finished store without its derived files)."""

    name: str
    interrupted: str
    runs: tuple[tuple[str, ...], ...]
    cells: int | None  # cells committed after the (last) kill (-1: no run.sqlite); None where it depends on timing
    start: int | str = "empty"
    journal: str | None = "none"  # the journal the kill leaves: "none", "not hot" or "hot"; None where it depends on timing


def _point(name: str, interrupted: str, fault: str, cells: int | None, start: int | str = "empty",
           journal: str | None = "none") -> KillPoint:
    return KillPoint(name, interrupted, ((fault,),), cells, start, journal)


# Cell 30 (formality/side_effects, 13 kB of JSON) spans several pages, so its commit has many system calls.
POINTS = [
    _point("create-commit", "the transaction creating the store (under its temporary name), before COMMIT", "create:commit", -1),
    _point("create-link", "the new store complete under its temporary name, not yet linked to run.sqlite", "create:link", -1),
    _point("fingerprint-commit", "the commit of the model fingerprint, before COMMIT", "fingerprint:commit", 0, journal="not hot"),
    _point("cell-2-insert", "cell 2 (formality/spec, 78 kB): INSERT done inside its transaction, COMMIT not issued", "cell=2:commit",
           1, journal="not hot"),
    KillPoint("killed-twice", "after cell 6, then on resume inside the commit of cell 11 (database partly written)",
              (("6", "after", "KILL"), ("cell=5:io=db-write@2",)), 10, journal="hot"),
    KillPoint("cell-17-computing", "while cell 17 (formality/recover/ica, the slowest) is computed", (("1", "before", "KILL"),), 16, 16),
    _point("cell-17-insert", "cell 17: INSERT done, COMMIT not issued", "cell=1:commit", 16, 16, journal="not hot"),
    _point("cell-30-insert", "cell 30 (formality/side_effects, 13 kB): INSERT done, COMMIT not issued", "cell=1:commit", 29, 29,
           journal="not hot"),
    _point("cell-30-journal-written", "cell 30's commit: journal pages written, journal header not final (journal not hot)",
           "cell=1:io=journal-sync@1", 29, 29, journal="not hot"),
    _point("cell-30-journal-synced", "cell 30's commit: journal complete and synced, database untouched (hot journal)",
           "cell=1:io=db-write@1", 29, 29, journal="hot"),
    _point("cell-30-db-partly-written", "cell 30's commit: 2 of its database pages written (hot journal)", "cell=1:io=db-write@3",
           29, 29, journal="hot"),
    _point("cell-30-db-written", "cell 30's commit: every database page written, not synced (hot journal)", "cell=1:io=db-sync@1",
           29, 29, journal="hot"),
    _point("cell-30-before-journal-delete", "cell 30's commit: database synced, journal not yet deleted (the commit point)",
           "cell=1:io=journal-unlink@1", 29, 29, journal="hot"),
    KillPoint(f"cell-{CELLS}-after", "just after the last cell was committed, before the 'finished' event", (("1", "after", "KILL"),),
              CELLS, CELLS - 1),
    _point("finished-event-commit", "the commit of the 'finished' event, before COMMIT", "event=finished:commit", CELLS, "complete",
           journal="not hot"),
    _point("finished-event-journal", "the commit of the 'finished' event: database synced, journal not yet deleted",
           "event=finished:io=journal-unlink@1", CELLS, "complete", journal="hot"),
    _point("vector-file-rename", "report writing: vector_formality.safetensors complete in its temp file, not renamed",
           "replace=vector_formality.safetensors", CELLS, "complete"),
    _point("plot-rename", "report writing: the first plot complete in its temp file, not renamed",
           "replace=formality_calibration.png", CELLS, "complete"),
    _point("results-json-half-written", "report writing: half of results.json written to its temp file", "partial=results.json",
           CELLS, "complete"),
    _point("results-json-rename", "report writing: results.json complete in its temp file, not renamed", "replace=results.json",
           CELLS, "complete"),
    _point("report-html-half-written", "report writing: half of report.html written to its temp file (results.json in place)",
           "partial=report.html", CELLS, "complete"),
    _point("report-html-rename", "report writing: report.html complete in its temp file, not renamed", "replace=report.html",
           CELLS, "complete"),
]
_RNG = random.Random(20)
DELAYS = [round(_RNG.uniform(low, low + 0.2), 2) for low in (0.1, 0.3, 0.5)]  # fractions of an uninterrupted run's wall time
POINTS += [_point(f"random-delay-{i + 1}", f"kill -9 from the parent after {f:.2f} of an uninterrupted run's wall time",
                  f"delay={f}", None, journal=None) for i, f in enumerate(DELAYS)]


# --- helpers ---------------------------------------------------------------------------------------

def _env(**extra: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def _worker(folder: Path, *args: str, env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    """Run the worker to its end (or its fault); a child preexec runs after the SIGINT reset."""
    def setup():
        _default_sigint()
        if preexec is not None:
            preexec()

    return subprocess.run([sys.executable, str(WORKER), str(folder), *args], capture_output=True, text=True, env=env or _env(),
                          timeout=600, preexec_fn=setup)


class Result(NamedTuple):
    returncode: int
    stderr: str


class ForkServer:
    """The worker's fork server (``_resume_worker.py --serve``): each run is a forked child, a process
    of its own that is killed and resumed like a fresh one but does not pay for the imports."""

    def __init__(self, env: dict, logs: Path):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, preexec_fn=_default_sigint, bufsize=0)
        self.logs, self.runs, self.buffer = logs, 0, b""

    def _answer(self, timeout: float = 600) -> dict:
        while b"\n" not in self.buffer:
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                raise TimeoutError
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError("the fork server stopped")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def start(self, folder: Path, *args: str) -> int:
        """Start a worker run; its process id."""
        self.runs += 1
        self.log = self.logs / f"run-{self.runs}.log"
        self.proc.stdin.write((json.dumps({"argv": [str(folder), *args], "log": str(self.log)}) + "\n").encode())
        return self._answer()["pid"]

    def wait(self, timeout: float = 600) -> Result:
        return Result(self._answer(timeout)["returncode"], self.log.read_text())

    def run(self, folder: Path, *args: str) -> Result:
        self.start(folder, *args)
        return self.wait()

    def killed_after(self, folder: Path, seconds: float) -> int:
        """Start the worker and SIGKILL it after ``seconds`` (unless it finished first); its return code."""
        pid = self.start(folder)
        try:
            return self.wait(seconds).returncode
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
        return self.wait().returncode

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _cli(*args: str, env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steerscope", *args], capture_output=True, text=True, timeout=300,
                          env=env or _env(), preexec_fn=preexec)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a process that exited with code 2 (no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def _store_state(folder: Path) -> tuple[int, list[str]]:
    """Cells committed in the store of ``folder`` and its events, read from a copy (the copy is recovered,
    the folder is not); the integrity check must pass. (-1, []) when there is no run.sqlite."""
    if not (folder / STORE_NAME).exists():
        return -1, []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        for path in folder.glob(f"{STORE_NAME}*"):
            shutil.copy(path, copy / path.name)
        with RunStore.open(copy) as store:
            count, events = store.count(), [e["kind"] for e in store.events()]
        with closing(sqlite3.connect(copy / STORE_NAME)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return count, events


def _leftovers(folder: Path) -> list[str]:
    """Files that are neither the store nor a derived file: journals, temporary and half-created files."""
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    return sorted(n for n in names if n.endswith(("-journal", ".tmp")) or ".creating" in n)


def _pattern(name: str) -> str:
    """A temporary file's name with its random part as ``*`` (for the table)."""
    return re.sub(r"\.[^.]+\.tmp$", ".*.tmp", re.sub(r"\.\d+\.[0-9a-f]+\.creating", ".*.creating", name))


def _journal_state(folder: Path) -> str:
    """What a read-only open makes of the journal a kill left (a hot one is refused with a clear message)."""
    if not (folder / f"{STORE_NAME}-journal").exists():
        return ""
    try:
        RunStore.open(folder, readonly=True).close()
    except RunStoreError as exc:
        assert "left unfinished" in str(exc) and "run the same audit command again" in str(exc), exc
        return "hot journal (refused by a read-only open)"
    return "journal, not hot (ignored)"


def _complete(folder: Path, ref: Path, name: str) -> bool:
    """Whether the derived file ``name`` is whole: results.json as the reference's, report.html closed."""
    data = (folder / name).read_bytes()
    return data == (ref / name).read_bytes() if name == "results.json" else data.endswith(b"</main></body></html>")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _complete_copy(reference: Path, folder: Path) -> None:
    """``folder`` with the store of the finished reference run and none of its derived files."""
    folder.mkdir(parents=True)
    shutil.copy(reference / STORE_NAME, folder / STORE_NAME)


def _cut_copy(reference: Path, folder: Path, cells: int) -> None:
    """``folder`` with the reference run's store as a run killed after its first ``cells`` cells leaves it."""
    _complete_copy(reference, folder)
    with closing(sqlite3.connect(folder / STORE_NAME, isolation_level=None)) as conn:
        conn.execute("DELETE FROM cells WHERE rowid > ?", (cells,))
        conn.execute("DELETE FROM events WHERE kind != 'created'")
        conn.execute("VACUUM")
    assert _store_state(folder) == (cells, ["created"])


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path | None:
    """The kill-at-a-system-call library (tests/_resume_worker.py), built with cc; None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    folder = tmp_path_factory.mktemp("shim")
    (folder / "shim.c").write_text(SHIM_C)
    lib = folder / "shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(folder / "shim.c"), "-ldl"], check=True, capture_output=True)
    return lib


@pytest.fixture(scope="module")
def server(tmp_path_factory, shim):
    """The fork server of the kill points, with the library preloaded (inactive until a run arms it)."""
    env = _env() if shim is None else _env(LD_PRELOAD=str(shim), STEERSCOPE_FAULT_SHIM=str(shim))
    forks = ForkServer(env, tmp_path_factory.mktemp("logs"))
    yield forks
    forks.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, server) -> tuple[Path, float]:
    """An uninterrupted run of the small audit, and its wall time."""
    folder = tmp_path_factory.mktemp("faults") / "reference"
    start = time.perf_counter()
    proc = server.run(folder)
    assert proc.returncode == 0, proc.stderr
    assert _store_state(folder)[0] == CELLS  # the kill points' cell numbers are this run's
    return folder, time.perf_counter() - start


@pytest.fixture(scope="module", autouse=True)
def kill_point_table():
    """Write the rows of the kill points that passed to $STEERSCOPE_FAULT_TABLE (Markdown)."""
    yield
    target = os.environ.get("STEERSCOPE_FAULT_TABLE")
    if target and ROWS:
        head = "| kill point | what was interrupted | cells committed at the kill | left behind | after resuming |\n|---|---|---|---|---|\n"
        order = {p.name: i for i, p in enumerate(POINTS)}
        body = "".join(f"| `{r['name']}` | {r['interrupted']} | {r['cells']} | {r['left']} | {r['resume']} |\n"
                       for r in sorted(ROWS, key=lambda r: order[r["name"]]))
        Path(target).write_text(head + body + "".join(f"\n- {note}" for note in NOTES) + "\n")


# --- kill points -----------------------------------------------------------------------------------

def _kill(point: KillPoint, folder: Path, reference: tuple[Path, float], server: ForkServer) -> list[int]:
    """Run the killed runs of ``point``; their return codes."""
    codes = []
    for args in point.runs:
        if args[0].startswith("delay="):
            codes.append(server.killed_after(folder, float(args[0].removeprefix("delay=")) * reference[1]))
            continue
        proc = server.run(folder, *args)
        assert proc.returncode == -signal.SIGKILL, (args, proc.returncode, proc.stderr[-3000:])
        codes.append(proc.returncode)
    return codes


@pytest.mark.parametrize("point", POINTS, ids=[p.name for p in POINTS])
def test_kill_then_resume_gives_identical_results(point, reference, server, shim, tmp_path):
    """SIGKILL at the point; the store stays intact (integrity check, the expected cells), no output is
    partial, and the same command resumes to a byte-identical results.json with nothing left over."""
    ref, _ = reference
    folder = tmp_path / "run"
    if shim is None and any("io=" in arg for run in point.runs for arg in run):
        pytest.skip("no C compiler to build the preload library of the system-call kill points")
    if point.start == "complete":
        _complete_copy(ref, folder)
    elif isinstance(point.start, int):
        _cut_copy(ref, folder, point.start)
    codes = _kill(point, folder, reference, server)
    cells, _ = _store_state(folder)
    if point.cells is not None:
        assert cells == point.cells
    assert all(_complete(folder, ref, name) for name in OUTPUTS if (folder / name).exists())  # never a partial output
    if point.start != "complete" and codes[-1] == -signal.SIGKILL:
        assert not (folder / "results.json").exists()
    journal = _journal_state(folder)
    if point.journal is not None:
        assert journal.split(" (")[0] == {"none": "", "not hot": "journal, not hot", "hot": "hot journal"}[point.journal], journal
    left = [*filter(None, [journal]), *[_pattern(n) for n in _leftovers(folder) if not n.endswith("-journal")],
            *[n for n in OUTPUTS if (folder / n).exists()]]
    resumed = server.run(folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (folder / "results.json").read_bytes() == (ref / "results.json").read_bytes()
    assert _leftovers(folder) == []
    final, events = _store_state(folder)
    assert final == CELLS and events[-1] == "finished"
    shown = "no run.sqlite" if cells < 0 else str(cells)
    if point.runs[0][0].startswith("delay=") and codes[-1] == 0:
        shown = "finished before the kill"
    ROWS.append({"name": point.name, "interrupted": point.interrupted, "cells": shown, "left": ", ".join(left) or "nothing",
                 "resume": "results.json identical, nothing left over"})


# --- full disk ---------------------------------------------------------------------------------

class SmallDisk:
    """A run folder on a small disk: a tmpfs of ``size`` bytes where mounting is permitted (root with
    CAP_SYS_ADMIN), else a per-process file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) of ``size``
    bytes in the worker, under which a write beyond the limit fails with EFBIG as on a full disk.
    STEERSCOPE_FAULT_DISK=rlimit forces the second."""

    def __init__(self, root: Path, size: int):
        self.root, self.size, self.mounted = root, size, False
        root.mkdir(parents=True, exist_ok=True)
        if os.environ.get("STEERSCOPE_FAULT_DISK") != "rlimit" and os.geteuid() == 0:
            self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)],
                                          capture_output=True).returncode == 0
        self.full = True

    @property
    def mechanism(self) -> str:
        return "tmpfs" if self.mounted else "RLIMIT_FSIZE"

    def preexec(self):
        if self.mounted or not self.full:
            return None
        import resource

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.size))
        return limit

    def free(self) -> None:
        """Make room: grow the tmpfs to 64 MiB, or lift the limit."""
        self.full = False
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.root)], check=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.root)], check=True)


@contextmanager
def small_disk(root: Path, size: int):
    disk = SmallDisk(root, size)
    try:
        yield disk
    finally:
        disk.close()


def test_full_disk_while_committing_cells(reference, tmp_path):
    """The disk fills up during the cells: one-line error, the store intact with the cells before, and
    after space is freed the same command resumes to the same results.json."""
    ref, _ = reference
    with small_disk(tmp_path / "disk", 160 * 1024) as disk:
        folder = disk.root / "run"
        line = _one_error_line(_worker(folder, preexec=disk.preexec()))
        assert "while committing cell" in line and "run the same command again" in line, line
        assert ("the disk is full" in line and "free space" in line) or (disk.mechanism == "RLIMIT_FSIZE" and "write failed" in line), line
        cells, events = _store_state(folder)
        assert 0 < cells < CELLS and events == ["created"]
        assert not (folder / "results.json").exists() and _leftovers(folder) == []
        disk.free()
        resumed = _worker(folder)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (folder / "results.json").read_bytes() == (ref / "results.json").read_bytes()
    NOTES.append(f"full disk ({disk.mechanism}) during the cells: `{line}`; {cells} cells intact; resumed identical")


def test_full_disk_while_writing_the_report(reference, tmp_path):
    """Room for the store but not for the derived files: `steerscope report` and the audit stop with a
    one-line error, leave no results.json or report.html (nor a temporary file), and resume after
    space is freed."""
    ref, _ = reference
    store_size = (ref / STORE_NAME).stat().st_size
    with small_disk(tmp_path / "disk", store_size + 320 * 1024) as disk:
        folder = disk.root / "run"
        _complete_copy(ref, folder)
        before = (folder / STORE_NAME).read_bytes()
        report = _one_error_line(_cli("report", str(folder), preexec=disk.preexec()))
        assert (folder / STORE_NAME).read_bytes() == before
        line = _one_error_line(_worker(folder, preexec=disk.preexec()))
        for text in (report, line):
            assert "could not write the outputs of" in text and "the run store is intact: free space" in text, text
        assert not (folder / "report.html").exists() and _leftovers(folder) == []
        assert all(_complete(folder, ref, name) for name in OUTPUTS if (folder / name).exists())
        assert _store_state(folder) == (CELLS, ["created", "finished", "resumed", "finished"])
        disk.free()
        resumed = _worker(folder)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (folder / "results.json").read_bytes() == (ref / "results.json").read_bytes()
    NOTES.append(f"full disk ({disk.mechanism}) during report writing: `{report}` / `{line}`; resumed identical")


# --- read-only run folder ------------------------------------------------------------------------

@contextmanager
def read_only(folder: Path):
    """Make ``folder`` read-only for the processes started with the yielded preexec function: a
    read-only bind mount where mounting is permitted; else, as root, children run as user nobody
    (root ignores permission bits); else the write bits are removed. STEERSCOPE_FAULT_RO=nobody
    forces the second. Yields ``(mechanism, preexec, env)`` for the children."""
    if os.environ.get("STEERSCOPE_FAULT_RO") != "nobody" and os.geteuid() == 0 and subprocess.run(
            ["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0:
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
            yield "read-only bind mount", None, _env()
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    if os.geteuid() == 0:
        env = _env(MPLCONFIGDIR=str(Path(tempfile.gettempdir()) / f"steerscope-mpl-nobody-{os.getpid()}"))
        if not _runs_as_nobody(env):
            pytest.skip("mounting is not permitted here and user nobody cannot run this Python: no way to make a folder read-only")
        paths = [*folder.parents, folder, *folder.rglob("*")]  # nobody may reach and read the folder, not write it
        modes = {p: p.stat().st_mode | (0o005 if p.is_dir() else 0o004) for p in paths}
        mechanism, preexec = "children run as user nobody", _nobody
    else:
        modes = {p: p.stat().st_mode & ~0o222 for p in [folder, *folder.rglob("*")]}
        mechanism, preexec, env = "write bits removed", None, _env()
    old = {p: p.stat().st_mode for p in modes}
    for path, mode in modes.items():
        path.chmod(mode)
    try:
        yield mechanism, preexec, env
    finally:
        for path, mode in old.items():
            path.chmod(mode)


def _nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


def _runs_as_nobody(env: dict) -> bool:
    """Whether this Python and steerscope run as user nobody (they may lie in a home folder nobody cannot read)."""
    try:
        return subprocess.run([sys.executable, "-c", "import steerscope"], preexec_fn=_nobody, env=env, capture_output=True).returncode == 0
    except OSError:
        return False


def test_read_only_run_folder_is_refused_and_left_unchanged(reference, tmp_path):
    """Resuming the audit and `steerscope report` in a read-only run folder: a one-line error each and
    not a byte or a time stamp changed; `steerscope runs` still lists it. Writable again, it resumes."""
    ref, _ = reference
    folder = tmp_path / "run"
    _complete_copy(ref, folder)
    before = _snapshot(folder)
    with read_only(folder) as (mechanism, preexec, env):
        audit = _one_error_line(_worker(folder, env=env, preexec=preexec))
        assert "read-only" in audit and "make the folder writable" in audit, audit
        report = _one_error_line(_cli("report", str(folder), env=env, preexec=preexec))
        assert "could not write the outputs of" in report and "make the folder writable" in report, report
        runs = _cli("runs", str(folder), "--json", env=env, preexec=preexec)
        assert runs.returncode == 0 and json.loads(runs.stdout)[0]["status"] == "finished", runs.stderr
        assert _snapshot(folder) == before
    resumed = _worker(folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (folder / "results.json").read_bytes() == (ref / "results.json").read_bytes()
    NOTES.append(f"read-only run folder ({mechanism}): audit `{audit}`; report `{report}`; runs lists it; nothing changed")


def test_new_run_in_a_read_only_folder_is_refused(tmp_path):
    """A new audit whose run folder would be created in a read-only folder: a one-line error, nothing created."""
    parent = tmp_path / "parent"
    parent.mkdir()
    with read_only(parent) as (mechanism, preexec, env):
        line = _one_error_line(_worker(parent / "run", env=env, preexec=preexec))
        assert "creating the run store" in line and "make it writable" in line, line
        assert list(parent.iterdir()) == []
    NOTES.append(f"new run in a read-only folder ({mechanism}): `{line}`; nothing created")


# --- two processes on one run folder -------------------------------------------------------------

def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_a_second_process_on_the_same_run_folder_is_refused(reference, tmp_path):
    """While one audit holds the run folder (stopped after its 7th cell), a second audit on it is
    refused with a one-line error and writes nothing; `steerscope runs` reads it; the first finishes
    with the reference results."""
    ref, _ = reference
    folder = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(WORKER), str(folder), "7", "after", "STOP"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env(), preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 300
        while not _stopped(first.pid) and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert _stopped(first.pid), "the first audit did not stop after its 7th cell"
        before = _snapshot(folder)
        line = _one_error_line(_worker(folder))
        assert "another steerscope process is writing" in line, line
        assert _snapshot(folder) == before
        runs = _cli("runs", str(folder), "--json")
        assert runs.returncode == 0 and json.loads(runs.stdout)[0]["cells"] == 7, runs.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert (folder / "results.json").read_bytes() == (ref / "results.json").read_bytes()
    assert _store_state(folder) == (CELLS, ["created", "finished"])
