"""Subprocess used by tests/test_pipeline.py: run a small full audit of a tiny model into a run
folder, optionally sending itself a signal around the N-th committed cell.

Usage: python _resume_worker.py FOLDER [KILL_AT WHEN SIGNAL]
WHEN: ``after`` (the N-th cell is committed, then the signal) or ``before`` (the signal arrives
while the N-th cell is computed but not yet committed). SIGNAL: KILL or INT.
"""

import os
import signal
import sys

import numpy as np
import torch

from steerscope.audit.pipeline import Auditor, audit_config
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


def main() -> None:
    folder = sys.argv[1]
    traits = os.environ.get("WORKER_TRAITS", "formality").split(",")
    if len(sys.argv) > 2:
        install_signal(int(sys.argv[2]), sys.argv[3], getattr(signal, f"SIG{sys.argv[4]}"))
    from steerscope.testing import tiny_model

    torch.set_num_threads(1)
    lm = tiny_model("llama", n_layers=6)
    config = small_config(traits)
    store, _ = open_run(folder, config, "test", "worker")
    with store:
        Auditor(lm, store, config, scorers=word_scorers(*traits)).run()
        store.log("finished")
        write_outputs(store)


if __name__ == "__main__":
    main()
