"""Helpers of tests/test_sweep.py and tests/test_sweep_ray.py, and the subprocess that runs a sweep
(the driver), optionally killing itself.

Usage: python _sweep_worker.py PLAN OUT [--ray ADDRESS] [--kill-after N]

``--ray ADDRESS``: join the Ray cluster at ADDRESS (two actors); ``--kill-after N``: SIGKILL this
process right after the N-th cell it commits to any store. The audits use the deterministic word
scorers of ``_resume_worker.py``. A SteerscopeError ends the process with ``error: ...`` and code 2.
"""

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _resume_worker import SMALL, WordScorer, word_scorers  # noqa: E402

TRAITS = ("formality", "sentiment")
LAYERS = (1, 3)


def make_plan(folder: Path, traits: tuple[str, ...] = TRAITS, layers: tuple[int, ...] = LAYERS) -> Path:
    """A plan of ``traits`` × ``layers`` on a tiny random model saved to ``folder/tiny`` (once), at the
    small sizes of the resumable-audit tests."""
    from steerscope.testing import tiny_model

    if not (folder / "tiny").exists():
        lm = tiny_model("llama", n_layers=6)
        lm.model.save_pretrained(folder / "tiny")
        lm.tokenizer.save_pretrained(folder / "tiny")
    keys = {"models": ["tiny"], "traits": list(traits), "layers": list(layers), "device": "cpu"}
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
    text += "\n\n[sizes]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in SMALL.items()) + "\n"
    plan = folder / f"plan-{'-'.join(traits)}-L{'-'.join(map(str, layers))}.toml"
    plan.write_text(text)
    return plan


def local_sweep(plan: Path, out: Path) -> Path:
    """The sweep of ``plan`` run here, one audit after another, with one thread (as the driver subprocesses
    and the Ray workers run, so that the numbers are comparable byte for byte)."""
    import torch

    from steerscope.sweep import SweepSettings, run_sweep
    from steerscope.sweep_plan import read_plan

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(read_plan(plan), out, SweepSettings(scorers=word_scorers()))
    finally:
        torch.set_num_threads(threads)
    return out


def same_results(folder: Path, reference: Path) -> None:
    """Each audit of the sweep in ``folder`` has the results.json, and the sweep entry, of the same audit in
    the sweep ``reference`` (byte for byte); sweep.json is identical too when the two sweeps have one plan."""
    entries = {e["name"]: e for e in json.loads((reference / "sweep.json").read_text())["audits"]}
    sweep = json.loads((folder / "sweep.json").read_text())
    for entry in sweep["audits"]:
        audit = Path(entry["folder"])
        assert (folder / audit / "results.json").read_bytes() == (reference / audit / "results.json").read_bytes(), entry["name"]
        assert entry == entries[entry["name"]]
    if len(sweep["audits"]) == len(entries):
        assert (folder / "sweep.json").read_bytes() == (reference / "sweep.json").read_bytes()


class KillerScorer(WordScorer):
    """A WordScorer that SIGKILLs its process at its first call while ``marker`` does not exist
    (creating it first), so that the worker that runs it dies once."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, texts):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(texts)


def kill_after(n: int) -> None:
    """SIGKILL this process right after the ``n``-th cell it commits."""
    from steerscope.runstore import RunStore

    original, done = RunStore.put, [0]

    def put(self, *args, **kwargs):
        original(self, *args, **kwargs)
        done[0] += 1
        if done[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    RunStore.put = put


def main() -> None:
    import torch

    from steerscope.errors import SteerscopeError
    from steerscope.sweep import SweepSettings, run_sweep
    from steerscope.sweep_plan import read_plan

    torch.set_num_threads(1)
    plan, out, *options = sys.argv[1:]
    settings = dict(zip(options[::2], options[1::2]))
    if "--kill-after" in settings:
        kill_after(int(settings["--kill-after"]))
    backend = None
    if "--ray" in settings:
        import ray

        from steerscope.distributed import RayBackend

        ray.cloudpickle.register_pickle_by_value(sys.modules["_resume_worker"])  # the workers cannot import the tests
        backend = RayBackend(settings["--ray"], workers=2)
    try:
        run_sweep(read_plan(plan), out, SweepSettings(backend, word_scorers(), on_event=lambda a, w: print(a, w, flush=True)))
    except SteerscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
