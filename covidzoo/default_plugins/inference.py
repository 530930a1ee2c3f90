"""The inference commands: `evaluate`, `ensemble` and `predict`."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from ..commands.inference import ensemble, evaluate, predict

    cli.add_command(evaluate)
    cli.add_command(ensemble)
    cli.add_command(predict)
