"""Meta-tests: every hook is documented and tested; the README's test command is what CI runs;
every example marked runnable in the README and the docs runs.

An example is runnable when the line before its fence is `<!-- runnable -->` (an HTML comment:
invisible on GitHub and in mkdocs-material). The examples of one page run in order, in one
temporary folder with a private `COVIDZOO_CACHE` and the built-in plugins only (the documented
install), Python examples in one namespace, so a page reads as a session: a later example may
use the files and names of an earlier one. Shell examples (`console` with `$ ` prompts, or
`bash`/`sh` lines) run `covidzoo ...` in-process through Click's `CliRunner`, anything else as
a subprocess. Mark only what runs in seconds on a CPU: tiny shapes, one epoch.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from covidzoo import hookspecs

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = "<!-- runnable -->"
SHELLS = ("console", "bash", "sh", "shell")
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


# --- runnable examples -------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A fenced example marked runnable: its page, the line of its first code line, its
    language and its code."""

    page: Path
    line: int
    lang: str
    code: str

    def where(self, offset: int = 0) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line + offset}"


class ExampleFailed(AssertionError):
    """A runnable example failed; the message starts with `page:line:`."""


def runnable_examples(page: Path) -> list[Example]:
    """The examples of `page` marked runnable, in page order; a marker not followed by a fenced
    Python or shell block is an `ExampleFailed`."""
    lines = page.read_text().splitlines()
    examples = []
    for i, line in enumerate(lines):
        if line.strip() != RUNNABLE:
            continue
        fence = re.fullmatch(r"```(\w+)\s*", lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None or fence.group(1) not in ("python", *SHELLS):
            raise ExampleFailed(f"{Example(page, i + 1, '', '').where()}: {RUNNABLE} must be "
                                "followed by a ```python, ```console or ```bash fence")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
        examples.append(Example(page, i + 3, fence.group(1), "\n".join(lines[i + 2:end])))
    return examples


def shell_commands(example: Example) -> list[tuple[int, str]]:
    """`(line offset, command)` of a shell example: `$ ` lines of a console block (output
    lines are left out), every line of a bash block; a trailing backslash continues a line."""
    commands: list[tuple[int, str]] = []
    open_line: list[str] | None = None
    for k, line in enumerate(example.code.splitlines()):
        if open_line is not None:
            open_line.append(line.strip())
        elif example.lang == "console" and line.startswith("$ "):
            open_line = [line[2:].strip()]
            start = k
        elif example.lang != "console" and line.strip() and not line.lstrip().startswith("#"):
            open_line = [line.strip()]
            start = k
        else:
            continue
        if open_line[-1].endswith("\\"):
            open_line[-1] = open_line[-1][:-1]
            continue
        commands.append((start, " ".join(open_line)))
        open_line = None
    return commands


def run_command(example: Example, offset: int, command: str, folder: Path) -> None:
    from click.testing import CliRunner

    from covidzoo.cli import cli

    where = example.where(offset)
    argv = shlex.split(command, comments=True)
    if argv[0] == "covidzoo":
        result = CliRunner().invoke(cli, argv[1:])
        if result.exit_code != 0:
            detail = result.output.strip().splitlines()[-3:] or [repr(result.exception)]
            raise ExampleFailed(f"{where}: `{command}` exited with {result.exit_code}: "
                                + " / ".join(detail))
        return
    argv = [sys.executable if argv[0] in ("python", "python3") else argv[0], *argv[1:]]
    done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ExampleFailed(f"{where}: `{command}` exited with {done.returncode}: "
                            + " / ".join(detail))


def run_python(example: Example, namespace: dict) -> None:
    # padded so that line numbers in the traceback are the page's own
    code = compile("\n" * (example.line - 1) + example.code, str(example.page), "exec")
    try:
        exec(code, namespace)
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if f.filename == str(example.page)]
        line = frames[-1].lineno if frames else example.line
        where = Example(example.page, line, "", "").where()
        raise ExampleFailed(f"{where}: {type(exc).__name__}: {exc}") from exc


def run_page(page: Path, folder: Path) -> int:
    """Run the runnable examples of `page` in order, in the current folder `folder`; returns
    how many ran. The first failure is an `ExampleFailed` naming the page and line."""
    namespace: dict = {"__name__": "__docs__"}
    examples = runnable_examples(page)
    for example in examples:
        if example.lang == "python":
            run_python(example, namespace)
            continue
        for offset, command in shell_commands(example):
            run_command(example, offset, command, folder)
    return len(examples)


PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
         if RUNNABLE in p.read_text()]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """An empty working folder, a private cache (examples write nothing elsewhere) and the
    built-in plugins only: the documented install, whatever else this environment holds."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / ".cache"))
    monkeypatch.setenv("COVIDZOO_PLUGINS", "")
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_examples_run(page, sandbox):
    try:
        run_page(page, sandbox)
    except ExampleFailed as failure:
        pytest.fail(str(failure), pytrace=False)


def test_runnable_examples_cover_the_entry_points():
    examples = [e for page in PAGES for e in runnable_examples(page)]
    pages = {str(e.page.relative_to(ROOT)) for e in examples}
    assert {"README.md", "docs/index.md", "docs/api.md", "docs/data.md"} <= pages
    assert sum(e.lang == "python" for e in examples) >= 4
    assert sum(len(shell_commands(e)) for e in examples if e.lang != "python") >= 6


def test_a_broken_example_is_named_by_file_and_line(sandbox):
    page = sandbox / "page.md"
    page.write_text("# Page\n\n<!-- runnable -->\n```python\nx = 1\ny = x + undefined\n```\n\n"
                    "<!-- runnable -->\n```console\n$ covidzoo models\n$ covidzoo nope\n```\n")
    with pytest.raises(ExampleFailed, match=r"page\.md:6: NameError: name 'undefined'"):
        run_page(page, sandbox)
    page.write_text(page.read_text().replace("+ undefined", ""))
    with pytest.raises(ExampleFailed, match=r"page\.md:12: `covidzoo nope` exited with 2"):
        run_page(page, sandbox)
    page.write_text("<!-- runnable -->\n    covidzoo models\n")
    with pytest.raises(ExampleFailed, match=r"page\.md:1: <!-- runnable --> must be followed"):
        run_page(page, sandbox)
