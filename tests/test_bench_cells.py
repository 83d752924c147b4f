"""The cost model of benchmarks/bench_cells.py against the work a tiny audit actually does.

A small audit of a tiny model runs with every decoder block counting the tokens it processes and
every autograd call counting its vector–Jacobian products; the counts the cost model derives from
the finished run folder (configuration, token lengths, payloads) must match them cell by cell:
the products exactly, the token × block passes within the padding of the batches.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from _resume_worker import build_model, small_config, word_scorers  # noqa: E402


def _bench_cells():
    spec = importlib.util.spec_from_file_location("bench_cells", ROOT / "benchmarks" / "bench_cells.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cells"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bc():
    return _bench_cells()


@pytest.fixture(scope="module")
def instrumented(tmp_path_factory):
    """A tiny audit (with the black-box probes) and the work each of its cells did."""
    from steerscope.audit.pipeline import Auditor
    from steerscope.models.layers import find_decoder_layers
    from steerscope.runstore import RunStore, open_run

    folder = tmp_path_factory.mktemp("cells") / "run"
    lm = build_model()
    count = {"blocks": 0, "rows": 0}

    def on_block(_module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        count["blocks"] += h.shape[0] * h.shape[1]

    blocks, _ = find_decoder_layers(lm.model)
    handles = [b.register_forward_hook(on_block) for b in blocks]
    grad, backward, put = torch.autograd.grad, torch.Tensor.backward, RunStore.put
    seen, last = {}, dict(count)

    def counted_grad(outputs, inputs, grad_outputs=None, **kwargs):
        count["rows"] += grad_outputs.shape[0] if kwargs.get("is_grads_batched") else 1
        return grad(outputs, inputs, grad_outputs=grad_outputs, **kwargs)

    def counted_backward(self, *args, **kwargs):
        count["rows"] += 1
        return backward(self, *args, **kwargs)

    def counted_put(self, key, *args, **kwargs):
        seen[key] = {k: count[k] - last[k] for k in count}
        last.update(count)
        return put(self, key, *args, **kwargs)

    config = small_config()
    config["settings"]["reach_black_box"] = 1
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.autograd, "grad", counted_grad)
    mp.setattr(torch.Tensor, "backward", counted_backward)
    mp.setattr(RunStore, "put", counted_put)
    try:
        store, _ = open_run(folder, config, "test", "bench_cells")
        with store:
            Auditor(lm, store, config, scorers=word_scorers("formality")).run()
    finally:
        mp.undo()
        for h in handles:
            h.remove()
    return folder, lm, seen


def test_counts_match_the_work_done(bc, instrumented):
    from steerscope.runstore import RunStore

    folder, lm, seen = instrumented
    shape = bc.shape_of_config("tiny", lm.model.config)
    with RunStore.open(folder, readonly=True) as store:
        ctx = bc.contexts(store, lm.tokenizer, shape)["formality"]
        stored = [c.key for c in store.cells() if c.key != "model" and not c.key.endswith("/spec")]
    done: dict[str, dict[str, int]] = {}  # the cells of a stage modelled as a whole, added up
    for key in stored:
        row = done.setdefault(bc.modelled_key(key), {"blocks": 0, "rows": 0})
        for k in row:
            row[k] += seen[key][k]
    assert any(k.startswith("formality/reachability/prompt=") for k in stored) and "formality/reachability" in done
    assert any(k.startswith("grams/") for k in done)
    for key, got in done.items():
        work = bc.cell_work(key, ctx)
        passes = work.forward + work.candidate_blocks + work.generated * shape.n_layers
        assert got["rows"] == work.backward, key
        if passes or got["blocks"]:  # the hooks also see the padding of batched rows
            assert 0.9 <= got["blocks"] / passes <= 1.3, (key, got["blocks"], passes)


def test_a_projection_scans_the_vocabulary_at_every_steered_position(bc, instrumented):
    from steerscope.runstore import RunStore

    folder, lm, _ = instrumented
    shape = bc.preset_shape("mistral-7b-v0.3")
    assert (shape.n_layers, shape.d_model, shape.vocab) == (32, 4096, 32768)
    assert shape.total_params == pytest.approx(7.25e9, rel=0.01)
    with RunStore.open(folder, readonly=True) as store:
        measured = bc.contexts(store, lm.tokenizer, bc.shape_of_config("tiny", lm.model.config))["formality"]
    sizes = bc.profile_sizes("full")
    cells = bc.audit_works(shape, "formality", 13, True, lm.tokenizer, sizes, measured)
    reach = bc.Work()
    for key, work in cells.items():  # the stage's cells
        if key.startswith("formality/reachability/"):
            reach += work
    width = round(min(sizes["reach_positions"], measured.lengths.user))
    main = sizes["reach_prompts"] * width * shape.vocab
    sweeps = (len(sizes["reach_alphas"]) + 1) * min(sizes["reach_sweep_prompts"], sizes["reach_prompts"]) * width * shape.vocab
    assert main + sweeps < reach.candidates < main + sweeps + 2 * shape.vocab + 1e5
    assert cells["formality/nullspace"].backward == (sizes["ns_prompts"] + sizes["ns_all_positions"]) * shape.d_model
