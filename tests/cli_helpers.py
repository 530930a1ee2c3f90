"""What the multi-class and cross-validation tests share: a tiny regnet3d's flags, the demo's
three classes, and an in-process CLI with a private cache."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

TINY = ("regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32", "--stem-width", "8",
        "--size", "8,32,32", "--epochs", "1", "--batch-size", "4", "--device", "cpu")
THREE = ["covid", "non-covid", "pneumonia"]


def cli_runner(cache: Path):
    """Run the CLI in-process with covidzoo's cache in `cache`, torch's threads kept."""
    import torch

    from covidzoo.cli import cli

    runner = CliRunner()

    def run(*args: object):
        threads = torch.get_num_threads()
        try:
            return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False,
                                 env={"COVIDZOO_CACHE": str(cache), "COLUMNS": "200"})
        finally:
            torch.set_num_threads(threads)

    return run


def one_line_error(result, *needles: str) -> str:
    """Exit 2 with exactly one line on stderr holding every needle."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def ok_json(result) -> dict:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)
