"""Sweeps: the grid of audits of a plan (:mod:`steerscope.sweep_plan`), each in its own run folder,
and a report that compares them (:mod:`steerscope.sweep_report`).

The sweep folder ``OUT`` holds the sweep store ``run.sqlite`` (a run store whose configuration is
the plan and whose cells ``audit/NAME`` are the finished audits, each with the numbers the report
compares), one run folder per audit under ``audits/NAME``, and the report. Running the same command
again resumes: finished audits are skipped, unfinished ones resume from their own stores.

The process that runs :func:`run_sweep` is the only writer of every store. A backend decides where
cells are computed: :class:`LocalBackend` here, one audit after another with each model loaded
once; :class:`steerscope.distributed.RayBackend` on the actors of a Ray cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Protocol

from steerscope.runstore import RunStore, open_run
from steerscope.score.base import Scorer
from steerscope.sweep_plan import AuditJob, SweepPlan

#: Folder of the audits' run folders inside a sweep folder.
AUDITS = "audits"


class Backend(Protocol):
    """Where a sweep's audits are computed: ``run(sweep, jobs)`` opens each job's store through
    ``sweep.audit(job)``, commits its cells, and calls ``sweep.finish_audit(job, store)``."""

    def run(self, sweep: Sweep, jobs: Sequence[AuditJob]) -> None: ...


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs: ``backend`` (None: :class:`LocalBackend`); ``scorers``: trait → scorer used by
    every audit instead of the one its spec names (built on first use otherwise); ``command``: recorded
    in every store; ``on_event(audit, what)``: told when an audit starts, resumes, is retried or finishes."""

    backend: Backend | None = None
    scorers: Mapping[str, Scorer] | None = None
    command: str = "steerscope.sweep.run_sweep"
    on_event: Callable[[str, str], None] | None = None


class Sweep:
    """A sweep being run: its plan, its folder and its store (open and locked for the whole run)."""

    def __init__(self, plan: SweepPlan, store: RunStore, settings: SweepSettings):
        self.plan, self.store, self.settings = plan, store, settings
        self.folder = store.folder

    def pending(self) -> list[AuditJob]:
        """The plan's audits that the sweep store does not hold as finished, in plan order."""
        return [job for job in self.plan.audits() if self.store.get(f"audit/{job.name}") is None]

    def event(self, audit: str, what: str) -> None:
        if self.settings.on_event is not None:
            self.settings.on_event(audit, what)

    @contextmanager
    def audit(self, job: AuditJob) -> Iterator[RunStore]:
        """The run store of ``job`` (created or resumed, locked), closed on exit; Ctrl-C is logged in it."""
        from steerscope._version import __version__

        store, resumed = open_run(self.folder / AUDITS / job.name, job.config, __version__, self.settings.command)
        with store, store.recording_interruption():
            self.event(job.name, f"resumed ({store.count()} cells done)" if resumed else "started")
            yield store

    def finish_audit(self, job: AuditJob, store: RunStore) -> None:
        """Write the audit's derived files and commit its sweep cell (the numbers the report compares)."""
        from steerscope.report import write_outputs
        from steerscope.sweep_report import audit_summary

        store.log("finished", f"{store.count()} cells")
        results = json.loads(write_outputs(store)["results"].read_text())
        entry = {"name": job.name, "folder": f"{AUDITS}/{job.name}", "model": job.model, "trait": job.spec.name, "layer": job.layer,
                 "profile": job.profile, "seed": job.seed} | audit_summary(results)
        self.store.put(f"audit/{job.name}", "audit", entry, sum(store.timings().values()), job.spec.name)
        self.event(job.name, "finished")


class LocalBackend:
    """The audits in this process, one after another; each model is loaded once for all its audits."""

    def run(self, sweep: Sweep, jobs: Sequence[AuditJob]) -> None:
        from steerscope.audit.pipeline import Auditor
        from steerscope.models.loading import load_model

        for model, group in groupby(jobs, key=lambda job: job.model):
            lm = load_model(model, device=sweep.plan.device, dtype=sweep.plan.dtype)
            for job in group:
                with sweep.audit(job) as store:
                    Auditor(lm, store, job.config, [job.spec], scorers=sweep.settings.scorers).run()
                    sweep.finish_audit(job, store)


def run_sweep(plan: SweepPlan, out: str | Path, settings: SweepSettings = SweepSettings()) -> dict[str, Path]:
    """Run (or resume) every audit of ``plan`` into the sweep folder ``out``, then write the sweep
    report; returns its files (name → path)."""
    from steerscope._version import __version__
    from steerscope.audit.pipeline import prepare_audit
    from steerscope.sweep_report import write_sweep_report

    config = prepare_audit(plan.config())
    store, _ = open_run(out, config, __version__, settings.command)
    with store, store.recording_interruption():
        sweep = Sweep(plan, store, settings)
        (settings.backend or LocalBackend()).run(sweep, sweep.pending())
        store.log("finished", f"{store.count()} audits")
        return write_sweep_report(store)
