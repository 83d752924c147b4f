"""The black-box probes of steered behaviour, on a tiny model."""

import numpy as np
import pytest
import torch

from steerscope.audit.blackbox import BlackBoxSettings, TunedPrompt, black_box_probes, readouts, tune_prompt
from steerscope.audit.markdown import reachability_markdown
from steerscope.audit.reachability import AuditSettings, run_reachability
from steerscope.encoding import encode_prompt
from steerscope.errors import SteerscopeError
from steerscope.invert import SearchConfig

PROMPTS = ["tell me about your weekend", "write a short poem about the moon", "how do I bake bread"]
DEMOS = ["help me write a letter", "what is the capital of france", "describe a cat", "explain rain"]
SMALL = BlackBoxSettings(prompts=3, shots=(1, 4), max_new_tokens=6, prefill_tokens=2, tune_tokens=3, tune_steps=20, tune_batch=2)
INSTRUCTIONS = ("Answer formally.", "Answer casually.")


def lengths(texts):
    return np.array([len(t) for t in texts], dtype=float)


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def vector(llama):
    return torch.randn(llama.d_model, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def probes(llama, vector):
    return black_box_probes(llama, vector, 1, 4.0, PROMPTS, DEMOS, 1, INSTRUCTIONS, lengths, SMALL)


def test_every_probe_is_a_column_with_its_readouts(probes):
    cols = probes["columns"]
    assert list(cols) == ["unsteered", "instruction", "1-shot", "4-shot", "copy", "prefill", "tuned prompt", "tuned soft"]
    assert probes["n_prompts"] == probes["n_compared"] == 3
    for name, c in cols.items():
        assert c["n"] == 3 and c["kl_from_steered"] >= 0 and 0 <= c["top1_agreement"] <= 1
        assert (c["trait_score"] is None) == (name == "tuned soft")  # a soft prompt is not text to generate from
    assert probes["instruction"] == INSTRUCTIONS[0] and cols["unsteered"]["state_distance_over_unsteered"] == 1.0
    assert cols["prefill"]["skip"] == SMALL.prefill_tokens and all("token_distances" not in c for c in cols.values())
    # captured right after the addition, every probe's states sit near α·v from the steered ones: the ratio is near 1
    assert all(0.5 < c["state_distance_over_unsteered"] < 2 for c in cols.values())


def test_without_steering_the_prompt_itself_reproduces_the_target_exactly(llama, vector):
    got = black_box_probes(llama, vector, 1, 0.0, PROMPTS, DEMOS, 1, INSTRUCTIONS, lengths, SMALL)
    for name in ("unsteered", "prefill"):
        assert got["columns"][name]["kl_from_steered"] == pytest.approx(0.0, abs=1e-6)
        assert got["columns"][name]["state_distance"] == pytest.approx(0.0, abs=1e-4)
    assert got["instruction"] == INSTRUCTIONS[0]


def test_the_prompt_alone_sits_alpha_v_from_the_steered_states_at_the_steering_layer(probes, vector):
    # captured right after the addition, the steered states over the completion are the natural ones + α·v
    assert probes["columns"]["unsteered"]["state_distance"] == pytest.approx(4.0 * float(vector.norm()), rel=1e-4)
    assert probes["columns"]["unsteered"]["kl_from_steered"] > 1e-4


def test_readouts_on_known_distributions():
    logp = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]), -1)
    h = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    same = readouts((logp, h), (logp, h), [0, 2])
    assert same == {"kl": pytest.approx(0.0, abs=1e-7), "top1_agreement": 0.5, "state_distance": 0.0, "state_cosine": pytest.approx(1.0),
                    "token_distances": [0.0, 0.0]}
    moved = readouts((logp, h), (logp.flip(-1), h + torch.tensor([0.0, 2.0])), [0, 1])
    assert moved["state_distance"] == pytest.approx(2.0) and moved["kl"] > 0.5 and moved["top1_agreement"] == 0.5
    assert moved["token_distances"] == pytest.approx([2.0, 2.0])


def test_prompt_tuning_lowers_its_training_loss(probes):
    losses = probes["tuned_prompt"]["losses"]
    assert len(losses) == SMALL.tune_steps and min(losses[-5:]) < losses[0]


def test_a_soft_prompt_made_of_token_embeddings_is_that_token_prompt(llama):
    tokens = encode_prompt(llama.tokenizer, "dog")[-3:]
    rows = llama.model.get_input_embeddings()(torch.tensor(tokens)).detach().float()
    tuned = TunedPrompt(rows, tokens, [])
    soft, hard = tuned.insert(llama, PROMPTS[0], soft=True), tuned.insert(llama, PROMPTS[0], soft=False)
    assert torch.equal(soft.inputs(llama, [5, 6]), hard.inputs(llama, [5, 6]))
    assert hard.ids[:3] != tokens and tokens == hard.ids[hard.ids.index(tokens[0]):][:3]


def test_tuning_is_deterministic_for_a_seed(llama):
    train = [(p, encode_prompt(llama.tokenizer, "ok")[-2:]) for p in DEMOS]
    a, b = tune_prompt(llama, train, SMALL), tune_prompt(llama, train, SMALL)
    assert a.tokens == b.tokens and a.losses == b.losses


def test_bad_settings_and_too_few_prompts_are_refused(llama, vector):
    with pytest.raises(SteerscopeError, match="prefill_tokens"):
        BlackBoxSettings(prompts=2, prefill_tokens=24)
    assert BlackBoxSettings(prompts=0, max_new_tokens=3).prompts == 0  # no probes: the prefill size does not matter
    with pytest.raises(SteerscopeError, match="shot counts"):
        BlackBoxSettings(shots=(0, 2))
    with pytest.raises(SteerscopeError, match="prompt tuning"):
        BlackBoxSettings(tune_lr=float("inf"))
    with pytest.raises(SteerscopeError, match=r"need 36 prompts \(4 audited \+ 32 demonstrations\), got 10"):
        BlackBoxSettings(prompts=4).split([f"p{i}" for i in range(10)])
    assert BlackBoxSettings(prompts=2, shots=(1, 3)).split(list("abcdefg")) == (["a", "b"], ["c", "d", "e"])
    with pytest.raises(SteerscopeError, match="demonstration prompts"):
        black_box_probes(llama, vector, 1, 1.0, PROMPTS, DEMOS[:2], 1, None, None, SMALL)


def test_the_reachability_audit_reports_black_box_probes_apart_from_white_box_results(llama, vector):
    settings = AuditSettings(positions="last:2", alphas=(1.0,), sweep_prompts=1, max_new_tokens=3, search=SearchConfig(budget=8, max_candidates=16),
                             black_box=BlackBoxSettings(prompts=2, shots=(1, 2), max_new_tokens=4, prefill_tokens=1, tune_tokens=2, tune_steps=2))
    report = run_reachability(llama, vector, 1, 2.0, PROMPTS[:1], ["help me write a letter to my friend"], settings=settings,
                              instructions=INSTRUCTIONS, probe_prompts=PROMPTS + DEMOS)
    bb = report["black_box_probes"]
    assert bb["n_prompts"] == 2 and set(bb["columns"]) >= {"unsteered", "1-shot", "2-shot", "copy", "prefill", "tuned prompt"}
    assert set(report["behaviour"]["white_box"]) == {"steered", "unsteered", "nearest_prompt"}
    md = reachability_markdown(report)
    assert "## Black-box probes" in md and "| 2-shot |" in md
    with pytest.raises(SteerscopeError, match="black-box probes need"):
        run_reachability(llama, vector, 1, 2.0, PROMPTS[:1], ["x"], settings=settings, probe_prompts=PROMPTS)


def test_the_probe_pool_puts_the_audited_environment_first():
    from steerscope.audit.blackbox import probe_pool
    from steerscope.traitspec import builtin_spec

    spec = builtin_spec("formality")
    pool = probe_pool(spec)
    assert pool[:24] == spec.env_prompts("in_distribution") and len(pool) == len(set(pool)) == 72
    assert BlackBoxSettings(prompts=20).split(pool)[0] == spec.env_prompts("in_distribution")[:20]
