from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from covidzoo import plugins


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test sees plugins loaded anew under its own environment variables."""
    monkeypatch.delenv("COVIDZOO_PLUGINS", raising=False)
    monkeypatch.delenv("COVIDZOO_STRICT_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


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
