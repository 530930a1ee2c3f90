"""Fixtures of the covidzoo-example suite (covidzoo's own tests/conftest.py is not visible here)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

# The conformance kit's fixtures: plugins loaded anew for every test (autouse), and one to
# register a plugin object for a test.
from covidzoo.testing import fresh_plugins, register_plugin  # noqa: F401


@pytest.fixture
def invoke():
    """Run the covidzoo command line in-process: `invoke("models", "--json")`; exceptions
    that are not covidzoo's own propagate, with their traceback."""
    from covidzoo.cli import cli

    def run(*args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return run
