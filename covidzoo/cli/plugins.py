"""`covidzoo plugins`: the loaded plugins, their versions and the hooks they implement."""

from __future__ import annotations

import click

from .options import print_json, print_table


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List the loaded plugins (built-in and installed), their versions and hooks."""
    from ..plugins import plugin_info

    rows = plugin_info()
    if as_json:
        print_json(rows)
        return
    print_table(
        None,
        ["name", "version", "built-in", "hooks"],
        [(r["name"], r["version"], "yes" if r["builtin"] else "", ", ".join(r["hooks"]))
         for r in rows],
    )
