"""The `data` command group: demo data, the preprocessing cache, scan inspection."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from ..commands.data import data

    cli.add_command(data)
