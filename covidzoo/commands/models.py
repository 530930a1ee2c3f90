"""`covidzoo models`: the registered components and their metadata."""

from __future__ import annotations

import click

from ..registry import KINDS
from ._common import DefaultGroup, print_json, print_table


@click.group(cls=DefaultGroup, default_command="list")
def models() -> None:
    """List registered backbones, aggregators, ensemblers and optimizers."""


@models.command("list")
@click.argument("pattern", required=False, default="*")
@click.option("--kind", help=f"Only components of this kind: {', '.join(KINDS)}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(pattern: str, kind: str | None, as_json: bool) -> None:
    """List components whose name matches PATTERN (fnmatch, default '*')."""
    from .. import list_components
    from ..registry import check_kind

    components = list_components(pattern, check_kind(kind) if kind else None)
    if as_json:
        print_json([c.to_dict() for c in components])
        return
    if not components:
        click.echo(f"No component matches '{pattern}'.")
        return
    print_table(
        None,
        ["name", "kind", "plugin", "summary"],
        [(c.name, c.kind, c.plugin, c.summary) for c in components],
    )
