"""Meta-tests: every hook is documented and tested; the README's test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from covidzoo import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    name for name in vars(hookspecs)
    if name.startswith("register_") and callable(getattr(hookspecs, name))
)


def test_there_are_hooks():
    assert "register_backbones" in HOOKS and "register_commands" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    assert f"### {hook}" in (ROOT / "docs" / "plugins.md").read_text()
    assert getattr(hookspecs, hook).__doc__


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    assert f"def test_hook_{hook}(" in tests


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^    (python3 -m venv .*)$", readme, flags=re.M)
    assert len(commands) == 2, "the README gives two commands: main job, tests"
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_docs_pages_are_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, page
