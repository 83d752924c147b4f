"""Sweeps on a Ray cluster that the tests start on this machine (2 CPUs: 2 worker processes, each
holding the tiny model): the results of the local sweep, a worker killed mid-sweep retried, a killed
driver resumed by the same command. Skipped without ray (``pip install 'steerscope[ray]'``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("matplotlib")

from steerscope.distributed import RayBackend  # noqa: E402
from steerscope.runstore import RunStore  # noqa: E402
from steerscope.sweep import SweepSettings, run_sweep  # noqa: E402
from steerscope.sweep_plan import read_plan  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _resume_worker  # noqa: E402
import _sweep_worker  # noqa: E402
from _sweep_worker import LAYERS, TRAITS, KillerScorer, local_sweep, make_plan, same_results  # noqa: E402

WORKER = Path(__file__).with_name("_sweep_worker.py")


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster on this machine with 2 CPUs (a small object store); its address for other drivers."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    for module in (_resume_worker, _sweep_worker):  # the workers cannot import the tests' scorers
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    return make_plan(tmp_path_factory.mktemp("sweep-ray"))


@pytest.fixture(scope="module")
def reference(plan) -> Path:
    return local_sweep(plan, plan.parent / "local")


def test_a_ray_sweep_gives_the_results_of_the_local_sweep(cluster, plan, reference, tmp_path):
    """2 traits × 2 layers on 2 actors: every audit's results.json and sweep.json byte-identical to the local run's."""
    events = []
    run_sweep(read_plan(plan), tmp_path / "ray", SweepSettings(RayBackend(workers=2), _resume_worker.word_scorers(),
                                                               on_event=lambda audit, what: events.append(what)))
    same_results(tmp_path / "ray", reference)
    assert events.count("started") == events.count("finished") == 4


def test_a_worker_killed_mid_sweep_is_retried_and_the_sweep_completes(cluster, plan, reference, tmp_path):
    """The sentiment readout kills its worker process (SIGKILL) once, mid-audit: Ray restarts the actor, the
    driver resubmits the audit with the cells it had committed, and the results are those of the local run."""
    marker = tmp_path / "killed"
    scorers = _resume_worker.word_scorers() | {"sentiment": KillerScorer(str(marker))}
    events = []
    run_sweep(read_plan(make_plan(plan.parent, TRAITS[:1])), tmp_path / "ray",
              SweepSettings(RayBackend(workers=2), scorers, on_event=lambda audit, what: events.append((audit, what))))
    assert marker.exists()
    retried = [audit for audit, what in events if what.startswith("retried")]
    assert len(retried) == 1, events
    with RunStore.open(tmp_path / "ray" / "audits" / retried[0], readonly=True) as store:
        kinds = [e["kind"] for e in store.events()]
        detail = next(e["detail"] for e in store.events() if e["kind"] == "retried")
    assert kinds == ["created", "retried", "finished"] and int(detail.split("resubmitted with ")[1].split()[0]) > 0, detail
    same_results(tmp_path / "ray", reference)


def test_an_audit_alone_splits_its_independent_cells_over_the_idle_workers(cluster, plan, reference, tmp_path):
    """One audit on 2 actors: its α values, then its seven independent stages, are split over the workers
    (each part computed from the committed cells); the reachability stage's part splits again, into its
    prompts and random control (the sweep's one α is the audit's own, read from the prompts after them);
    and results.json is the local run's."""
    events = []
    run_sweep(read_plan(make_plan(plan.parent, TRAITS[:1], LAYERS[:1])), tmp_path / "ray",
              SweepSettings(RayBackend(workers=2), _resume_worker.word_scorers(), on_event=lambda audit, what: events.append(what)))
    splits = [what for what in events if what.startswith("split")]
    assert [what.split()[2] for what in splits[:2]] == ["3", "7"], events
    assert any(what.startswith("split reachability into 3 parts") and what.endswith("prompt=1, formality/reachability/random_control")
               for what in splits[2:]), events
    same_results(tmp_path / "ray", reference)


def test_a_worker_killed_in_a_split_cell_is_retried(cluster, plan, reference, tmp_path):
    """The sentiment readout, first called in the α batch (split over both workers), kills its worker once:
    that part is computed again on a new actor and the audit's results are the local run's."""
    marker = tmp_path / "killed"
    scorers = _resume_worker.word_scorers() | {"sentiment": KillerScorer(str(marker))}
    events = []
    run_sweep(read_plan(make_plan(plan.parent, TRAITS[1:], LAYERS[:1])), tmp_path / "ray",
              SweepSettings(RayBackend(workers=2), scorers, on_event=lambda audit, what: events.append(what)))
    assert marker.exists()
    kinds = [what.split()[0] for what in events]
    assert kinds.index("split") < kinds.index("retried") and kinds.count("retried") == 1, events
    same_results(tmp_path / "ray", reference)


def _driver(plan: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(WORKER), str(plan), str(out), *options], capture_output=True, text=True, env=env, timeout=600)


def test_a_killed_driver_is_resumed_by_the_same_command(cluster, plan, reference, tmp_path):
    """A driver joined to the cluster (its address) is killed (SIGKILL) after 30 committed cells; its actors
    die with it, and the same command, run again, finishes the sweep with the results of the local run."""
    one, out = make_plan(plan.parent, TRAITS[:1]), tmp_path / "ray"
    killed = _driver(one, out, "--ray", cluster, "--kill-after", "30")
    assert killed.returncode == -9, killed.stderr
    resumed = _driver(one, out, "--ray", cluster)
    assert resumed.returncode == 0, resumed.stderr
    same_results(out, reference)
    kinds = []
    for audit in sorted((out / "audits").iterdir()):
        with RunStore.open(audit, readonly=True) as store:
            kinds.append([e["kind"] for e in store.events()])
    assert ["created", "resumed", "finished"] in kinds, kinds
