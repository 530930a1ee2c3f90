"""The built-in `bench` command (torch is imported only when it runs)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from ..commands.bench import bench

    cli.add_command(bench)
