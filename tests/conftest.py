from __future__ import annotations

import pytest
from click.testing import CliRunner

# Every test sees plugins loaded anew under its own environment (autouse).
from covidzoo.testing import fresh_plugins  # noqa: F401


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A command run in-process sets torch's CPU threads (`--threads`): every test starts with
    the suite's own."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner: CliRunner):
    """Run the covidzoo CLI in-process: `invoke("models", "--json")`."""
    from covidzoo.cli import cli

    def run(*args: str, **kwargs):
        return runner.invoke(cli, list(args), catch_exceptions=False, **kwargs)

    return run


@pytest.fixture(scope="module")
def inference_env(tmp_path_factory):
    """Tiny checkpoints and data shared by the inference and evaluation tests (model_helpers)."""
    from model_helpers import inference_env as build

    yield from build(tmp_path_factory.mktemp("inference"))
