import sys
from pathlib import Path

import pytest
import torch

from steerscope.testing import tiny_model

sys.path.insert(0, str(Path(__file__).parent))
import fuzzing  # noqa: E402,F401  (registers the hypothesis profiles)

torch.set_num_threads(2)

ARCHS = ["llama", "gemma3", "gpt2"]


@pytest.fixture(scope="session")
def tiny_models():
    """One tiny random model per architecture family, built once."""
    return {arch: tiny_model(arch) for arch in ARCHS + ["qwen2", "gpt_neox"]}


@pytest.fixture(params=ARCHS)
def lm(request, tiny_models):
    return tiny_models[request.param]


CHAT_ITEMS = [
    [{"role": "user", "content": "Tell me about your weekend"}, {"role": "assistant", "content": "It was very good, thank you."}],
    [{"role": "user", "content": "what is the weather like"}, {"role": "assistant", "content": "bad"}],
    "hello there, how are you today my friend?",
    "a short one",
    [{"role": "system", "content": "be kind"}, {"role": "user", "content": "help me write a poem about the moon and the sun"}, {"role": "assistant", "content": "the moon is big and the sun is small"}],
]


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct on CPU (skips when its PyPI package is not installed)."""
    import steerscope as ss
    from steerscope.models.builtin import BUILTIN_MODELS, is_installed

    spec = BUILTIN_MODELS["smollm2-135m"]
    if not is_installed(spec):
        pytest.skip(f"{spec.name} is not installed: {spec.install_hint}")
    return ss.load_model("smollm2-135m", device="cpu")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print how many generated cases each fuzzed input surface received."""
    from fuzzing import CASES

    if CASES:
        terminalreporter.write_line("fuzz cases per input surface: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))


def pytest_sessionfinish(session, exitstatus):
    """Under ``--hypothesis-profile ci`` (or ``explore``), a fuzzed surface with fewer than 500 cases fails the run."""
    from hypothesis import settings

    from fuzzing import CASES, CI_CASES, COUNTED_PROFILES

    short = {k: v for k, v in CASES.items() if v < CI_CASES}
    profile = settings.get_current_profile_name()
    if profile in COUNTED_PROFILES and short and exitstatus == 0:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"fuzz surfaces below {CI_CASES} cases under the {profile} profile: {short}")
        session.exitstatus = 1
