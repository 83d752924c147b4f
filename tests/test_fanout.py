"""Independent stages and batches of independent cells, split off and computed one part at a time (what
the Ray backend does on its actors), give the cells of a local run; without Ray: the driver's protocol
is played here in one process."""

import sys
from pathlib import Path

import pytest

from steerscope.audit.pipeline import Auditor, Done, FanOut, Split, stage_groups
from steerscope.audit.registry import stages
from steerscope.distributed import ReplicaStore
from steerscope.errors import SteerscopeError
from steerscope.testing import tiny_model

sys.path.insert(0, str(Path(__file__).parent))
from _resume_worker import small_config, word_scorers  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", n_layers=6)


@pytest.fixture(scope="module")
def config():
    return small_config()


def _run(lm, config, committed: dict, fan_out: FanOut) -> tuple[list, tuple[str, ...] | str | None]:
    """Run the audit against a replica holding ``committed``: the cells it made, and the parts it split at
    (a tuple), the part it computed alone (its key) or None when it ran to the end."""
    made: list = []
    try:
        Auditor(lm, ReplicaStore(list(committed.values()), None, made.append), config, scorers=word_scorers(), fan_out=fan_out).run()
    except Split as split:
        return made, split.keys
    except Done as done:
        return made, done.key
    return made, None


@pytest.fixture(scope="module")
def local(lm, config) -> dict:
    made, end = _run(lm, config, {}, FanOut())
    assert end is None
    return {cell.key: cell for cell in made}


STAGE_PARTS = tuple(f"formality/stage/{name}" for name in ("identifiability", "nullspace", "recover", "reachability", "monitor",
                                                             "side_effects", "robustness"))


def test_the_independent_stages_are_those_after_calibration():
    assert [[stage.name for stage in group] for group in stage_groups(stages())] == \
        [["layers"], ["vector"], ["calibrate"], [part.split("/")[-1] for part in STAGE_PARTS]]


def test_parts_computed_one_at_a_time_in_reverse_give_the_local_cells(lm, config, local):
    """The α batch, then the seven independent stages, are split off and each part computed by its own
    auditor, last first: the same cells, payload and blob, as the local run computes in order."""
    committed, splits = {}, []
    while True:
        made, keys = _run(lm, config, committed, FanOut(split=True))
        committed |= {cell.key: cell for cell in made}
        if keys is None:
            break
        assert keys and all(key not in committed for key in keys)
        splits.append(keys)
        for key in reversed(keys):
            part, end = _run(lm, config, committed, FanOut(only=key))
            assert end == key and part and not any(cell.key in committed for cell in part)
            committed |= {cell.key: cell for cell in part}
    assert splits == [tuple(f"formality/calibrate/alpha={a:g}" for a in (0.0, *config["settings"]["alphas"])), STAGE_PARTS]
    assert sorted(committed) == sorted(local)
    for key, cell in local.items():
        assert committed[key].payload == cell.payload and committed[key].blob == cell.blob, key


def test_stage_parts_that_split_their_batches_give_the_local_cells(lm, config, local):
    """Each stage part may split its own batches (the reachability prompts, …) while the other stages of its
    group are still missing; its cells are then computed one at a time, last first, by auditors told which
    stage they belong to, and the audit continues until it is complete: the local run's cells."""
    committed: dict = {}
    nested: list[tuple[str, tuple[str, ...]]] = []
    while True:
        made, keys = _run(lm, config, committed, FanOut(split=True))
        committed |= {cell.key: cell for cell in made}
        if keys is None:
            break
        queue = [(key, None) for key in keys]
        while queue:
            key, within = queue.pop()
            part, end = _run(lm, config, committed, FanOut(split=True, only=key, within=within))
            assert not any(cell.key in committed for cell in part)
            committed |= {cell.key: cell for cell in part}
            if isinstance(end, tuple):  # a stage part stopped at its batch
                assert within is None and key.startswith("formality/stage/") and all(k not in committed for k in end)
                nested.append((key, end))
                queue += [(k, key) for k in end]
            else:
                assert end == key
    reach = "formality/reachability"
    assert ("formality/stage/reachability", (f"{reach}/prompt=0", f"{reach}/prompt=1", f"{reach}/random_control")) in nested
    # the sweep at the audit's own α (1) is read from the prompts' searches, in the batch after them
    assert ("formality/stage/reachability", (f"{reach}/adversarial", f"{reach}/behaviour", f"{reach}/alpha=1")) in nested
    assert sorted(committed) == sorted(local)
    for key, cell in local.items():
        assert committed[key].payload == cell.payload and committed[key].blob == cell.blob, key


def test_a_cell_part_of_a_stage_part_is_refused_elsewhere(lm, config, local):
    """A cell part names its stage: given a stage that does not hold it, the worker says so."""
    committed = {k: c for k, c in local.items() if not k.startswith("formality/reachability/prompt=")}
    with pytest.raises(SteerscopeError, match="has no cell 'formality/reachability/prompt=1'"):
        _run(lm, config, committed, FanOut(only="formality/reachability/prompt=1", within="formality/stage/monitor"))


def test_a_lone_missing_stage_splits_at_its_own_batch(lm, config, local):
    """With one independent stage left to compute, the stages run in order and the one left splits its
    batch (the four recovery methods); checking which stages are complete computes nothing."""
    methods = tuple(f"formality/recover/{m}" for m in ("ica", "sparse", "multienv", "crosslayer"))
    committed = {k: c for k, c in local.items() if k not in methods}
    made, keys = _run(lm, config, committed, FanOut(split=True))
    assert made == [] and keys == methods


def test_a_part_needs_every_cell_before_its_batch(lm, config, local):
    """A worker given one cell of a batch reads the cells before it; one that is missing is an error, not recomputed."""
    key = "formality/calibrate/alpha=1"
    order = list(local)
    before = {k: local[k] for k in order[: order.index("formality/calibrate/alpha=0")]}
    made, end = _run(lm, config, before, FanOut(only=key))
    assert end == key and [cell.key for cell in made] == [key] and made[0].payload == local[key].payload
    del before["formality/vector"]
    with pytest.raises(SteerscopeError, match="'formality/vector'.*is missing"):
        _run(lm, config, before, FanOut(only=key))


def test_a_batch_with_one_cell_missing_is_computed_not_split(lm, config, local):
    """Splitting is for two or more missing cells; a batch with one left is computed where it stands."""
    order = list(local)
    last = order.index("formality/calibrate/alpha=4")
    committed = {k: local[k] for k in order[:last]}
    made, keys = _run(lm, config, committed, FanOut(split=True))
    assert [cell.key for cell in made] == ["formality/calibrate/alpha=4"] and made[0].payload == local[made[0].key].payload
    assert keys == STAGE_PARTS
