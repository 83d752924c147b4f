"""Subprocess used by tests/test_pipeline.py and tests/test_faults.py: run a small full audit of a
tiny model into a run folder, optionally interrupting itself at a chosen point.

Usage: python _resume_worker.py FOLDER [KILL_AT WHEN SIGNAL | FAULT]
       python _resume_worker.py --serve   (a fork server: see :func:`serve`)

``KILL_AT WHEN SIGNAL``: a signal around the KILL_AT-th cell this process commits. WHEN: ``after``
(the cell is committed, then the signal) or ``before`` (the signal arrives while the cell is computed
but not yet committed). SIGNAL: KILL, INT or STOP.

``FAULT``: a SIGKILL at one exact point (``N``: the N-th cell this process commits):

- ``cell=N:commit``: inside the cell's transaction, its INSERT done and its COMMIT not yet issued;
- ``cell=N:io=OP@K``: inside the cell's COMMIT, just before the K-th system call OP (needs the
  preload library of tests/test_faults.py in LD_PRELOAD and STEERSCOPE_FAULT_SHIM); OP is
  ``journal-write``, ``journal-sync``, ``db-write``, ``db-sync`` or ``journal-unlink``;
- ``event=KIND:commit`` or ``event=KIND:io=OP@K``: the same inside the commit of the run event KIND;
- ``fingerprint:commit``: inside the commit of the model fingerprint;
- ``create:commit``: inside the transaction that creates the store (under its temporary name);
- ``create:link``: the new store complete under its temporary name, not yet linked into place;
- ``replace=NAME``: while the derived files are written, NAME (e.g. ``results.json``) complete in
  its temporary file and not yet renamed into place;
- ``partial=NAME``: half of NAME's text written to its temporary file.

A fault that never fires exits with code 3. A SteerscopeError ends the process as the CLI does:
``error: ...`` on one line of stderr and exit code 2.
"""

import ctypes
import json
import os
import pathlib
import signal
import sys
import traceback

import numpy as np
import torch

import steerscope.runstore as runstore
from steerscope.audit.pipeline import Auditor, audit_config
from steerscope.errors import SteerscopeError
from steerscope.report import write_outputs
from steerscope.runstore import RunStore, open_run

SMALL = {"candidate_layers": 2, "alphas": [1.0, 4.0], "calib_prompts": 3, "calib_samples": 2, "calib_tokens": 8, "id_draws": 2,
         "id_prompts": 4, "id_samples": 2, "id_tokens": 8, "ns_prompts": 4, "rec_env_prompts": 2, "rec_map_prompts": 1, "rec_boot": 3,
         "reach_prompts": 2, "reach_positions": 3, "reach_alphas": [1.0], "reach_sweep_prompts": 1, "reach_tokens": 6, "reach_budget": 32,
         "mon_prompts": 2, "mon_samples": 1, "mon_tokens": 4, "se_doses": [2.0], "se_prompts": 2, "se_samples": 1, "se_tokens": 4,
         "se_capability": 6, "rob_prompts": 2, "rob_samples": 1, "rob_tokens": 4, "rob_boot": 4, "rob_halves": 2, "rob_curve": [4],
         "rob_draws": 1}


class WordScorer:
    """Deterministic stand-in for a trait scorer: a count of a few words plus length."""

    name = "word-count"
    validity = None

    def __call__(self, texts):
        return np.array([sum(t.count(w) for w in ("please", "thank", "good")) + 0.05 * len(t.split()) for t in texts], float)


def word_scorers(*extra: str) -> dict:
    """A WordScorer for every built-in trait (the off-target readouts) and for ``extra`` traits."""
    from steerscope.data.traits import TRAITS

    return {t: WordScorer() for t in (*TRAITS, *extra)}


def small_config(traits=("formality",)):
    config = audit_config("tiny-llama", list(traits), "quick")
    config["settings"] |= SMALL
    return config


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_signal(kill_at: int, when: str, sig: int) -> None:
    original = RunStore.put
    done = [0]

    def put(self, *args, **kwargs):
        if when == "before" and done[0] + 1 == kill_at:
            os.kill(os.getpid(), sig)
        original(self, *args, **kwargs)
        done[0] += 1
        if when == "after" and done[0] == kill_at:
            os.kill(os.getpid(), sig)

    RunStore.put = put


# --- exact kill points ---------------------------------------------------------------------------

ARMED = {"commit": False}


class FaultyConnection:
    """A store connection that kills the process at its next COMMIT while ``ARMED["commit"]``."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql, *args):
        if ARMED["commit"] and sql.strip().upper() == "COMMIT":
            die()
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def arm(how: str) -> None:
    """Arm ``commit`` (the next COMMIT) or ``io=OP@K`` (the K-th system call OP, in the preload library)."""
    if how == "commit":
        ARMED["commit"] = True
        return
    op, nth = how.removeprefix("io=").split("@")
    ctypes.CDLL(os.environ["STEERSCOPE_FAULT_SHIM"]).steerscope_fault_arm(op.encode(), int(nth))


def survived(fault: str) -> None:
    print(f"fault {fault} never fired", file=sys.stderr)
    sys.exit(3)


def armed_call(how: str, fault: str, call):
    """``call()`` with the kill armed; it must not return."""
    arm(how)
    call()
    survived(fault)


def install_fault(fault: str) -> None:
    """Patch the store and the file writes so that the process dies at ``fault`` (see the module docstring)."""
    connect = runstore._connect
    runstore._connect = lambda path, create: FaultyConnection(connect(path, create))
    target, _, how = fault.partition(":")
    kind, _, arg = target.partition("=")
    if kind == "cell":
        _at_method("put", lambda args: True, int(arg), how, fault)
    elif kind == "event":
        _at_method("log", lambda args: args[0] == arg, 1, how, fault)
    elif kind == "fingerprint":
        _at_method("set_fingerprint", lambda args: True, 1, how, fault)
    elif kind == "create" and how == "commit":
        create = RunStore.create.__func__
        RunStore.create = classmethod(lambda cls, *a, **k: armed_call("commit", fault, lambda: create(cls, *a, **k)))
    elif kind == "create" and how == "link":
        link = os.link
        os.link = lambda src, dst, **kw: die() if str(src).endswith(runstore._CREATING) else link(src, dst, **kw)
    elif kind == "replace":
        replace = os.replace
        os.replace = lambda src, dst, **kw: die() if pathlib.Path(dst).name == arg else replace(src, dst, **kw)
    elif kind == "partial":
        _partial_write(arg)
    else:
        raise SystemExit(f"unknown fault {fault}")


def _at_method(name: str, matches, nth: int, how: str, fault: str) -> None:
    """Arm the kill for the ``nth`` call of ``RunStore.<name>`` whose arguments match."""
    original = getattr(RunStore, name)
    seen = [0]

    def method(self, *args, **kwargs):
        if matches(args):
            seen[0] += 1
            if seen[0] == nth:
                return armed_call(how, fault, lambda: original(self, *args, **kwargs))
        return original(self, *args, **kwargs)

    setattr(RunStore, name, method)


def _partial_write(name: str) -> None:
    write_text = pathlib.Path.write_text

    def partial(self, data, *args, **kwargs):
        if self.name.startswith(f".{name}."):
            write_text(self, data[: len(data) // 2], *args, **kwargs)
            die()
        return write_text(self, data, *args, **kwargs)

    pathlib.Path.write_text = partial


def main(lm=None) -> None:
    """One worker run with the arguments in sys.argv; ``lm``: the tiny model, built here when None."""
    folder = sys.argv[1]
    traits = os.environ.get("WORKER_TRAITS", "formality").split(",")
    if len(sys.argv) > 3:
        install_signal(int(sys.argv[2]), sys.argv[3], getattr(signal, f"SIG{sys.argv[4]}"))
    elif len(sys.argv) == 3:
        install_fault(sys.argv[2])
    if lm is None:
        lm = build_model()
    config = small_config(traits)
    try:
        store, _ = open_run(folder, config, "test", "worker")
        with store:
            Auditor(lm, store, config, scorers=word_scorers(*traits)).run()
            store.log("finished")
            write_outputs(store)
    except SteerscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def build_model():
    from steerscope.testing import tiny_model

    torch.set_num_threads(1)
    return tiny_model("llama", n_layers=6)


def serve() -> None:
    """Fork server: import everything and build the model once, then run each request read from stdin
    (a JSON line ``{"argv": [FOLDER, ...], "log": PATH}``) in a forked child whose stdout and stderr go
    to PATH; answer ``{"pid": PID}`` when it starts and ``{"returncode": RC}`` when it ends (RC < 0:
    killed by signal -RC, as in subprocess). A child is a separate process, killed and resumed like a
    fresh one; it only skips the imports (seconds per run). One child at a time."""
    lm = build_model()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, lm)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def _child(request: dict, lm) -> None:
    """Run one request in this forked child and exit (never return into the server's loop)."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.argv = [__file__, *request["argv"]]
        main(lm)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main()
