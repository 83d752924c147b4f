import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.generate import GenerationConfig, generate
from steerscope.intervene import steer, steer_rows

PROMPTS = ["tell me about your weekend", "write a short poem about the moon", "hello"]


def test_completions_exclude_the_prompt(tiny_models):
    lm = tiny_models["llama"]
    outs = generate(lm, PROMPTS, GenerationConfig(max_new_tokens=5))
    assert len(outs) == 3
    for prompt, out in zip(PROMPTS, outs):
        assert not out.strip().startswith(prompt)
    full = generate(lm, ["hello"], GenerationConfig(max_new_tokens=5, chat="never"))[0]
    assert "hello" not in full.split()[:1]


def test_batched_greedy_equals_one_by_one(lm):
    config = GenerationConfig(max_new_tokens=6)
    together = generate(lm, PROMPTS, config, batch_size=3)
    alone = [generate(lm, [p], config)[0] for p in PROMPTS]
    assert together == alone


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny_models):
    lm = tiny_models["llama"]
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = generate(lm, PROMPTS, GenerationConfig(max_new_tokens=8, do_sample=True, seed=7))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = generate(lm, PROMPTS, GenerationConfig(max_new_tokens=8, do_sample=True, seed=7))
    c = generate(lm, PROMPTS, GenerationConfig(max_new_tokens=8, do_sample=True, seed=8))
    assert a == b
    assert a != c


def test_steering_changes_output_and_zero_alpha_does_not(tiny_models):
    lm = tiny_models["gpt2"]
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    config = GenerationConfig(max_new_tokens=6)
    plain = generate(lm, PROMPTS, config)
    assert generate(lm, PROMPTS, config, steering=steer(lm, {1: v}, 0.0)) == plain
    assert generate(lm, PROMPTS, config, steering=steer(lm, {1: v}, 25.0)) != plain


def test_conditions_in_one_batch_equal_a_loop(lm):
    """Vectors × strengths as per-row steering in one call give the loop's outputs."""
    gen = torch.Generator().manual_seed(1)
    vectors = [{1: torch.randn(lm.d_model, generator=gen)} for _ in range(2)]
    alphas = [0.0, 4.0, -4.0]
    config = GenerationConfig(max_new_tokens=5)
    conditions = [(v, a) for v in vectors for a in alphas]
    rows_v = [v for v, _ in conditions for _ in PROMPTS]
    rows_a = [a for _, a in conditions for _ in PROMPTS]
    together = generate(lm, PROMPTS * len(conditions), config, steering=steer_rows(lm, rows_v, rows_a), batch_size=64)
    loop = []
    for v, a in conditions:
        loop += generate(lm, PROMPTS, config, steering=steer(lm, v, a))
    assert together == loop


def test_per_row_steering_is_split_across_batches(tiny_models):
    lm = tiny_models["llama"]
    v = {1: torch.randn(lm.d_model, generator=torch.Generator().manual_seed(2))}
    rows = steer_rows(lm, [v, None, v, None], [8.0, 0.0, -8.0, 0.0])
    config = GenerationConfig(max_new_tokens=4)
    assert generate(lm, PROMPTS[:2] * 2, config, steering=rows, batch_size=1) == generate(lm, PROMPTS[:2] * 2, config, steering=rows, batch_size=4)


def test_bad_generation_input(tiny_models):
    lm = tiny_models["llama"]
    with pytest.raises(SteerscopeError, match="no prompts"):
        generate(lm, [])
    with pytest.raises(SteerscopeError, match="max_new_tokens"):
        generate(lm, ["hi"], GenerationConfig(max_new_tokens=0))
    with pytest.raises(SteerscopeError, match="2 rows but there are 1 prompts"):
        generate(lm, ["hi"], steering=steer_rows(lm, [None, None], [0.0, 0.0]))
