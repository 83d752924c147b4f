"""The Ray backend of sweeps: audits on the actors of a Ray cluster, the driver the only writer.

Each actor (:class:`AuditWorker`) loads one model, once, and keeps it. The driver (the process that
runs :func:`~steerscope.sweep.run_sweep`) hands an actor one audit at a time: its configuration,
its trait and the cells its store already holds. The actor runs the audit against a replica of the
store (:class:`ReplicaStore`) and yields each cell it computes, as a Ray streaming generator; the
driver commits each cell to the audit's store as it arrives. The stores on the driver's disk are the
only ones, and they hold what a local run writes: the same cells, computed by the same code from the
same cells before them (committed in the same order, except parts that run side by side).

Work inside an audit that does not read other work runs side by side when actors would otherwise be
idle: the independent stages after calibration, and batches of independent cells (one per α value,
per recovery method, per robustness part), as :class:`~steerscope.audit.pipeline.FanOut` describes.
An audit submitted while other actors are idle and no audit waits stops where two or more such parts
are missing and names them; each part is computed on its own actor from the audit's committed cells
(read back, not recomputed), and once every part is in the audit continues from there. Each cell is
still computed by the same code from the same cells before it, so the results are those of a local run.

A worker that dies (its process killed, its node lost) is replaced by a new actor, and the driver
resubmits its audit (or part) with the cells committed so far; an audit is resubmitted at most ``retries``
times. A driver that dies takes its actors with it and leaves every committed cell; the same command
resumes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from steerscope.audit.pipeline import FanOut
from steerscope.errors import SteerscopeError
from steerscope.runstore import Cell, RunStore, RunStoreError, one_line, stored_payload
from steerscope.score.base import Scorer
from steerscope.sweep import Sweep
from steerscope.sweep_plan import AuditJob
from steerscope.traitspec import TraitSpec

#: What ``--ray`` without an address means: start a Ray cluster on this machine for the sweep.
LOCAL = "local"


class ReplicaStore:
    """A worker's stand-in for an audit's run store (:class:`~steerscope.runstore.CellStore`): the cells
    the driver's store held, and each cell computed here, given to ``emit`` as the store would commit it
    (payload as its canonical JSON reads back, so later cells see what they see in a local run)."""

    def __init__(self, cells: Sequence[Cell], fingerprint: str | None, emit: Callable[[Cell], None]):
        self._cells = {cell.key: cell for cell in cells}
        self.fingerprint = fingerprint
        self._emit = emit

    def get(self, key: str) -> Cell | None:
        return self._cells.get(key)

    def set_fingerprint(self, fingerprint: str) -> None:
        if self.fingerprint is not None and fingerprint != self.fingerprint:
            raise RunStoreError(f"this worker's model has fingerprint {fingerprint}; the run was started with {self.fingerprint}")
        self.fingerprint = fingerprint

    def cached(self, key: str, stage: str, compute: Callable[[], tuple[Any, bytes | None]], trait: str | None = None) -> Cell:
        cell = self._cells.get(key)
        if cell is not None:
            return cell
        start = time.perf_counter()
        payload, blob = compute()
        cell = Cell(key, stage, trait, stored_payload(payload), blob, time.perf_counter() - start, "")
        self._cells[key] = cell
        self._emit(cell)
        return cell


@dataclass
class _Failed:
    error: BaseException


@dataclass(frozen=True)
class SplitAt:
    """What a worker yields last when its audit stopped where parts can run side by side: the missing parts, in order."""

    keys: tuple[str, ...]


@dataclass(frozen=True)
class PartDone:
    """What a worker given one part yields last, once every cell of it was yielded."""

    key: str


class AuditWorker:
    """What a Ray actor holds: one model, loaded on first use and kept (``model``, ``device``, ``dtype``
    as :func:`~steerscope.models.loading.load_model` takes them); ``scorers`` as in
    :class:`~steerscope.sweep.SweepSettings`."""

    def __init__(self, model: str, device: str, dtype: str, scorers: Mapping[str, Scorer] | None = None):
        self.model, self.device, self.dtype, self.scorers = model, device, dtype, scorers
        self._lm: Any = None

    def _loaded(self) -> Any:
        if self._lm is None:
            from steerscope.models.loading import load_model

            self._lm = load_model(self.model, device=self.device, dtype=self.dtype)
        return self._lm

    def fingerprint(self) -> str:
        """The model's fingerprint (loading it)."""
        return self._loaded().fingerprint

    def cells(self, config: Mapping[str, Any], specs: Sequence[TraitSpec], known: Sequence[Cell], fingerprint: str | None,
              fan_out: FanOut = FanOut()) -> Iterator[Cell | SplitAt | PartDone]:
        """Run the audit of ``config`` against a replica of its store holding ``known``; yield each cell
        computed, in the order a local run commits them (a Ray streaming generator on an actor), and
        last a :class:`SplitAt` when ``fan_out`` made the audit stop at parts, or a :class:`PartDone`
        when it computed the one part it was given."""
        from steerscope.audit.pipeline import Auditor, Done, Split

        lm = self._loaded()
        made: queue.Queue[Cell | SplitAt | PartDone | _Failed | None] = queue.Queue()

        def work() -> None:
            try:
                Auditor(lm, ReplicaStore(known, fingerprint, made.put), config, specs, scorers=self.scorers, fan_out=fan_out).run()
            except Split as split:
                made.put(SplitAt(split.keys))
            except Done as done:
                made.put(PartDone(done.key))
            except BaseException as exc:  # handed to the generator, which raises it to the driver
                made.put(_Failed(exc))
            made.put(None)

        threading.Thread(target=work, name="audit", daemon=True).start()
        while (item := made.get()) is not None:
            if isinstance(item, _Failed):
                raise item.error
            yield item


@dataclass(frozen=True)
class RayBackend:
    """Where a sweep runs on Ray. ``address``: :data:`LOCAL` starts a cluster on this machine for the
    sweep, ``auto`` joins the one running here, else a cluster's address (``HOST:PORT``, ``ray://…``);
    an already connected process uses its connection. ``workers``: actors per model (default: as many
    as the cluster's CPUs, or GPUs with ``gpus_per_worker``, allow); ``retries``: resubmissions of an
    audit whose worker died."""

    address: str = LOCAL
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    retries: int = 3

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0 or self.retries < 0:
            raise SteerscopeError(f"Ray settings need workers >= 1, cpus per worker > 0, gpus per worker >= 0 and retries >= 0; got {self}")

    def run(self, sweep: Sweep, jobs: Sequence[AuditJob]) -> None:
        ray = _ray()
        started = self.connect(ray)
        try:
            remote = ray.remote(AuditWorker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)
            for model, group in groupby(jobs, key=lambda job: job.model):
                audits = list(group)
                driver = _Driver(ray, sweep, partial(remote.remote, model, sweep.plan.device, sweep.plan.dtype, sweep.settings.scorers),
                                 self.retries)
                try:
                    driver.start(self.worker_count(ray))  # more actors than audits compute their parts side by side
                    driver.run(audits)
                finally:
                    driver.stop()
        finally:
            if started:
                ray.shutdown()

    def connect(self, ray: Any) -> bool:
        """Connect this process to the cluster unless it is already; whether it connected here."""
        if ray.is_initialized():
            return False
        address = None if self.address == LOCAL else self.address
        try:
            ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SteerscopeError(f"could not {'start a local Ray cluster' if address is None else f'join the Ray cluster at {address}'}: "
                                  f"{one_line(exc)}") from None
        return True

    def worker_count(self, ray: Any) -> int:
        """``workers``, or as many actors as the cluster's resources hold."""
        if self.workers is not None:
            return self.workers
        resources = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))


def ray_backend(enabled: bool, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0) -> RayBackend | None:
    """The backend of a command line: Ray when ``enabled`` or given an ``address`` (None: the sweep runs
    here, and the Ray settings must not be given)."""
    if not enabled and address is None:
        if workers is not None or gpus_per_worker:
            raise SteerscopeError("--workers and --gpus-per-worker set up the Ray actors; add --ray (or --ray-address)")
        return None
    return RayBackend(address or LOCAL, workers, gpus_per_worker=gpus_per_worker)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SteerscopeError("the Ray backend needs the optional package ray: pip install 'steerscope[ray]'") from None
    return ray


@dataclass
class _Audit:
    """An audit the driver has open: its store (locked until it finishes), its failed attempts, and the
    parts it stopped at that are not finished yet."""

    job: AuditJob
    store: RunStore
    exit: ExitStack
    failures: int = 0
    parts: set[str] = field(default_factory=set)
    part_streams: int = 0  # parts on actors now
    stopped: bool = False  # stopped at parts: continues once every part is in and its actor free


@dataclass
class _Part:
    """One part (a stage, or a cell of a batch) that ``audit`` stopped at, computed on its own actor;
    ``within``: the stage part whose batch it was split off (its other stages may still be missing)."""

    audit: _Audit
    key: str
    within: str | None = None


@dataclass
class _Stream:
    """The cells of ``item`` streaming back from ``worker`` (actor, fingerprint); ``split``: it stopped at parts."""

    worker: tuple[Any, str]
    item: _Audit | _Part
    split: bool = False

    @property
    def audit(self) -> _Audit:
        return self.item.audit if isinstance(self.item, _Part) else self.item


class _Driver:
    """Hands the audits of one model, and their parts, to its actors (made by ``new_actor()``) and commits
    the cells they stream back. An audit whose cells are all in is finished (its report written) after
    its actor has been given the next audit; a dead actor is replaced."""

    def __init__(self, ray: Any, sweep: Sweep, new_actor: Callable[[], Any], retries: int):
        self.ray, self.sweep, self.new_actor, self.retries = ray, sweep, new_actor, retries
        self.idle: list[tuple[Any, str]] = []  # (actor, its model's fingerprint)
        self.running: dict[Any, _Stream] = {}
        self.waiting: deque[AuditJob | _Audit | _Part] = deque()  # to submit: new audits; parts, continued audits and retries first
        self.complete: list[_Audit] = []  # every cell committed, the report not yet written

    def start(self, count: int) -> None:
        """Start ``count`` actors and wait until each has loaded its model."""
        actors = [self.new_actor() for _ in range(count)]
        try:
            fingerprints = self._get([actor.fingerprint.remote() for actor in actors])
        except BaseException as exc:
            for actor in actors:
                self.ray.kill(actor)
            if isinstance(exc, self.ray.exceptions.RayActorError):
                raise SteerscopeError(f"a Ray worker died while loading its model ({one_line(exc)}); run the same command again") from None
            raise
        self.idle += zip(actors, fingerprints)

    def stop(self) -> None:
        """Kill every actor."""
        for actor, _ in self.idle + [stream.worker for stream in self.running.values()]:
            self.ray.kill(actor)

    def run(self, jobs: Sequence[AuditJob]) -> None:
        self.waiting.extend(jobs)
        with ExitStack() as every:
            while self.waiting or self.running or self.complete:
                while self.waiting and self.idle:
                    self.submit(self.waiting.popleft(), self.idle.pop(), every)
                if self.complete:
                    audit = self.complete.pop(0)
                    self.sweep.finish_audit(audit.job, audit.store)
                    audit.exit.close()
                    continue
                ready, _ = self.ray.wait(list(self.running), num_returns=1)
                self.step(ready[0])

    def submit(self, item: AuditJob | _Audit | _Part, worker: tuple[Any, str], every: ExitStack) -> None:
        """Open the audit's store (unless it is open) and start its cells, or its part's, on ``worker``
        (actor, fingerprint). An audit may stop at parts to split when other actors are idle and nothing waits."""
        if isinstance(item, AuditJob):
            exit = every.enter_context(ExitStack())
            item = _Audit(item, exit.enter_context(self.sweep.audit(item)), exit)
        audit = item.audit if isinstance(item, _Part) else item
        audit.part_streams += isinstance(item, _Part)
        # a stage part always splits its batches (more, smaller parts for whichever actor frees first)
        fan_out = FanOut(True, item.key, item.within) if isinstance(item, _Part) else FanOut(split=bool(self.idle) and not self.waiting)
        actor, fingerprint = worker
        audit.store.set_fingerprint(fingerprint)
        cells = actor.cells.remote(audit.job.config, [audit.job.spec], list(audit.store.cells()), fingerprint, fan_out)
        self.running[cells] = _Stream(worker, item)

    def step(self, cells: Any) -> None:
        """Commit the next cell of ``cells``; at a split, queue its parts; at its end, free its actor and
        queue what comes next; when its worker died, queue the audit (or part) to resubmit."""
        stream = self.running[cells]
        audit = stream.audit
        try:
            got = self._get(next(cells))
        except StopIteration:
            del self.running[cells]
            self.idle.append(stream.worker)
            self.ended(stream)
            return
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError) as exc:
            del self.running[cells]
            self.ray.kill(stream.worker[0])
            self.failed(audit, exc)
            finished = stream.split or isinstance(stream.item, _Part) and stream.item.key not in audit.parts
            if not finished:  # (a stream that had handed on its parts, or finished its part, has nothing left to do)
                self.waiting.appendleft(stream.item)
            self.start(1)
            self.part_ended(stream)
            return
        if isinstance(got, SplitAt):
            stream.split = audit.stopped = True
            within = None
            if isinstance(stream.item, _Part):  # a stage part split its own batch: its cells replace it
                audit.parts.discard(stream.item.key)
                within = stream.item.key
            audit.parts |= set(got.keys)
            self.waiting.extendleft(_Part(audit, key, within) for key in reversed(got.keys))
            where = f"{within.rsplit('/', 1)[-1]} " if within else ""
            self.sweep.event(audit.job.name, f"split {where}into {len(got.keys)} parts side by side: {', '.join(got.keys)}")
        elif isinstance(got, PartDone):
            audit.parts.discard(got.key)
        else:
            audit.store.put(got.key, got.stage, got.payload, got.seconds, got.trait, got.blob)

    def ended(self, stream: _Stream) -> None:
        """``stream`` ended: a part must have finished; an audit that did not stop at parts is complete."""
        item = stream.item
        if isinstance(item, _Part):
            if item.key in item.audit.parts:
                raise SteerscopeError(f"audit {item.audit.job.name}: the worker given part {item.key!r} ended without finishing it")
            self.part_ended(stream)
        elif not stream.split:
            self.complete.append(item)

    def part_ended(self, stream: _Stream) -> None:
        """After a part's stream ended: once every part of its audit is in and their actors are free (so
        that it may split again), the audit continues."""
        if not isinstance(stream.item, _Part):
            return
        audit = stream.audit
        audit.part_streams -= 1
        if audit.stopped and not audit.parts and not audit.part_streams:
            audit.stopped = False
            self.waiting.appendleft(audit)

    def failed(self, audit: _Audit, exc: BaseException) -> None:
        audit.failures += 1
        if audit.failures > self.retries:
            raise SteerscopeError(f"audit {audit.job.name}: its worker died {audit.failures} times (last: {one_line(exc)}); "
                                  "every committed cell is kept: run the same command again to resume")
        audit.store.log("retried", f"the worker died ({one_line(exc, 120)}); resubmitted with {audit.store.count()} cells done")
        self.sweep.event(audit.job.name, f"retried (its worker died; {audit.store.count()} cells kept)")

    def _get(self, refs: Any) -> Any:
        """``ray.get(refs)``, an error raised on a worker re-raised as itself (a SteerscopeError stays one line)."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, SteerscopeError):
                raise cause from None
            raise
