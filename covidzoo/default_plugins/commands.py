"""The core commands: `models` and `plugins`."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from ..commands.models import models
    from ..commands.plugins import plugins

    cli.add_command(models)
    cli.add_command(plugins)
