"""`covidzoo models`: the registered components, their metadata and complexity."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import click

from ..errors import BadInputError
from ..registry import KINDS, Component
from .options import (
    BackboneCommand,
    DefaultGroup,
    backbone_kwargs,
    parse_size,
    print_json,
    print_table,
)


@click.group(cls=DefaultGroup, default_command="list")
def models() -> None:
    """List registered backbones, aggregators, ensemblers and optimizers."""


@models.command("list")
@click.argument("pattern", required=False, default="*")
@click.option("--kind", help=f"Only components of this kind: {', '.join(KINDS)}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(pattern: str, kind: str | None, as_json: bool) -> None:
    """List components whose name matches PATTERN (fnmatch, default '*')."""
    from ..factory import list_components
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


@models.command("show", cls=BackboneCommand)
@click.argument("name")
@click.option("--kind", help="The kind of NAME when several kinds share it.")
@click.option(
    "--input-size", metavar="D,H,W", help="Input size for the complexity table (default: the "
    "backbone's input_size)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show(
    name: str, kind: str | None, input_size: str | None, as_json: bool, **options: Any
) -> None:
    """Show component NAME: a backbone's per-stage complexity, else its metadata.

    Backbones with a `complexity()` method get a table of every stage (depth, widths, groups,
    output shape, parameters, FLOPs) for one input of --input-size; architecture options
    (--depths, --w0, ...) change the model shown, and any width adjustment is reported.
    """
    from ..factory import get_component, list_components, require_module
    from ..registry import check_kind

    if kind is not None:
        component = get_component(name, check_kind(kind))
    else:
        found = [c for c in list_components(name) if c.name == name]
        if len(found) > 1:
            kinds = ", ".join(c.kind for c in found)
            raise BadInputError(f"'{name}' names a {kinds}; choose one with --kind")
        component = found[0] if found else get_component(name, "backbone")
    kwargs = backbone_kwargs(component, options)
    if component.kind != "backbone":
        if input_size is not None:
            raise BadInputError(f"--input-size: only for backbones, not {component.kind} '{name}'")
        _show_metadata(component, as_json)
        return
    size = _input_size(input_size, component.metadata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = require_module(component.create(**kwargs), component)
    adjustments = [str(w.message) for w in caught]
    if not hasattr(model, "complexity"):
        if input_size is not None:
            raise BadInputError(f"--input-size: backbone '{name}' cannot report its complexity")
        _show_metadata(component, as_json)
        return
    report = model.complexity(size)
    cfg = getattr(model, "cfg", None)
    if as_json:
        print_json(
            {
                "name": component.name,
                "kind": component.kind,
                "plugin": component.plugin,
                **report,
                "adjustments": adjustments,
                **({"cfg": cfg.to_dict()} if hasattr(cfg, "to_dict") else {}),
            }
        )
        return
    rows = [
        (
            part["name"], part["depth"], part["width"], part["bottleneck_width"], part["groups"],
            "x".join(str(s) for s in part["output_shape"]), _human(part["params"]),
            _human(part["flops"]),
        )
        for part in report["stages"]
    ]
    rows.append(("total", "", "", "", "", "", _human(report["params"]), _human(report["flops"])))
    shape = "x".join(str(s) for s in report["input_size"])
    print_table(
        f"{component.name}, one {'volume' if component.metadata['spatial_dims'] == 3 else 'slice'} "
        f"{shape} (FLOPs: 2 per multiply-add)",
        ["stage", "depth", "width", "bottleneck width", "groups", "output shape", "params",
         "FLOPs"],
        rows,
    )
    click.echo(f"params {report['params']:,}, FLOPs {report['flops']:,}")
    for message in adjustments:
        click.echo(f"adjusted: {message}")


def _input_size(text: str | None, metadata: Mapping[str, Any]) -> tuple[int, ...]:
    if text is None:
        return tuple(metadata["input_size"])
    return parse_size("--input-size", text, lengths=(metadata["spatial_dims"],))


def _human(n: int | None) -> str:
    """1234567 -> '1.23M': three significant figures for the table (JSON keeps exact values)."""
    if n is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _show_metadata(component: Component, as_json: bool) -> None:
    data = component.to_dict()
    if as_json:
        print_json(data)
        return
    rows = [(k, data[k]) for k in ("name", "kind", "plugin", "summary", "factory")]
    rows += [(k, json.dumps(v)) for k, v in data["metadata"].items()]
    print_table(None, ["field", "value"], rows)
