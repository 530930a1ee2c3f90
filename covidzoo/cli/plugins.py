"""`covidzoo plugins`: every plugin, loaded or not, its version, package, status and hooks."""

from __future__ import annotations

from typing import Any

import click

from .options import print_json, print_table


def _notes(row: dict[str, Any]) -> list[str]:
    """The lines under the table for one plugin: why it is not loaded, or the names it lost."""
    origin = f" ({row['package']} {row['version']})" if row["package"] else ""
    if row["reason"]:
        return [f"{row['name']}{origin} {row['status']}: {row['reason']}"]
    return [f"{row['name']}{origin} lost {d['kind']} '{d['name']}' to plugin '{d['kept_by']}'"
            " (name clash)" for d in row["dropped"]]


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List the plugins (built-in and installed), their versions, status and hooks.

    Plugins that failed to load or were skipped (COVIDZOO_PLUGINS) are listed too, with the
    reason, and so are the components a plugin lost to another plugin's name. --json adds each
    plugin's package, reason and lost components (`dropped`).
    """
    from ..plugins import plugin_info

    rows = plugin_info()
    if as_json:
        print_json(rows)
        return
    print_table(
        None,
        ["name", "version", "built-in", "status", "hooks"],
        [(r["name"], r["version"], "yes" if r["builtin"] else "", r["status"],
          ", ".join(r["hooks"])) for r in rows],
    )
    for row in rows:
        for line in _notes(row):
            click.echo(line)
