"""`covidzoo recipes`: the training recipes shipped with covidzoo (`covidzoo train --recipe`)."""

from __future__ import annotations

import click

from .options import DefaultGroup, print_json, print_table


@click.group("recipes", cls=DefaultGroup, default_command="list")
def recipes() -> None:
    """Training recipes from papers: `covidzoo train --recipe NAME` (flags override it)."""


@recipes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(as_json: bool) -> None:
    """List the recipes: name, backbone, settings and source."""
    from ..recipes import list_recipes

    found = list_recipes()
    if as_json:
        print_json([r.to_dict() for r in found])
        return
    print_table(None, ["name", "backbone", "settings", "source"],
                [(r.name, r.values.get("backbone"), r.settings(), r.source) for r in found])


@recipes.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Print recipe NAME as TOML, a file `covidzoo train --config` takes."""
    from ..recipes import get_recipe

    click.echo(get_recipe(name).text, nl=False)
