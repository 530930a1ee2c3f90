from __future__ import annotations

import json
import subprocess
import sys

import covidzoo


def test_version(invoke):
    assert invoke("--version").output.strip() == f"covidzoo, version {covidzoo.__version__}"


def test_models_table_and_pattern(invoke):
    result = invoke("models", "sgd")
    assert "sgd" in result.output and "adam" not in result.output


def test_models_kind_filter(invoke):
    rows = json.loads(invoke("models", "--kind", "optimizer", "--json").output)
    assert rows and {r["kind"] for r in rows} == {"optimizer"}


def test_models_no_match(invoke):
    assert "No component matches" in invoke("models", "nothing-like-this*").output


def test_unknown_kind_is_one_line_exit_2(runner):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["models", "--kind", "widget"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: unknown kind 'widget'; choose from backbone, aggregator, ensembler, optimizer, "
        "reader"
    ]


def test_unknown_command_exit_2(runner):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["trian"])
    assert result.exit_code == 2 and "No such command 'trian'" in result.stderr


def test_help_does_not_import_torch():
    """`covidzoo --help` stays fast: no torch, timm or numpy import (a subprocess, on purpose)."""
    code = (
        "import sys\n"
        "from covidzoo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'timm', 'numpy', 'pydicom', 'sklearn')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands:" in out.stdout
    assert "HEAVY []" in out.stdout
