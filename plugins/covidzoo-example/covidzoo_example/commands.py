"""covidzoo-example: the `covidzoo example-info` command. Only click at module level: this
module is imported every time the command line starts, so torch is never imported here."""

from __future__ import annotations

import json

import click

# The commands this plugin adds (the registry knows components, not commands).
COMMANDS = ("example-info",)
PACKAGE = "covidzoo-example"


def _plugin_name() -> str:
    """The name covidzoo loaded this plugin under: its entry-point name, normally 'example'."""
    import covidzoo_example
    from covidzoo.plugins import get_plugin_manager

    return get_plugin_manager().get_name(covidzoo_example) or "example"


@click.command("example-info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def example_info(as_json: bool) -> None:
    """List what the covidzoo-example plugin adds: components, options and commands."""
    from importlib import metadata

    from covidzoo import list_components

    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    name = _plugin_name()
    components = [c for c in list_components() if c.plugin == name]
    if as_json:
        click.echo(json.dumps({
            "plugin": name, "package": PACKAGE, "version": version,
            "components": [c.to_dict() for c in components], "commands": list(COMMANDS),
        }, indent=2))
        return
    click.echo(f"{PACKAGE} {version} (plugin '{name}')")
    for c in components:
        click.echo(f"  {c.kind:<10} {c.name:<15} {c.summary}")
        for option in c.metadata.get("options", ()):
            click.echo(f"  {'':<10} {'':<15}   {option.flag} {option.metavar}: {option.help}")
    for command in COMMANDS:
        click.echo(f"  {'command':<10} {command:<15} covidzoo {command}")
