"""Pieces shared by the built-in commands: JSON output, rich tables, a group with a default."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click

from ..errors import BadInputError


def parse_positive_int(flag: str, text: str) -> int:
    """One positive integer; anything else is bad input naming `flag`."""
    try:
        value = int(text.strip())
    except ValueError:
        raise BadInputError(f"{flag}: '{text}' is not an integer") from None
    if value <= 0:
        raise BadInputError(f"{flag}: {value} must be positive")
    return value


def parse_int_list(flag: str, text: str) -> list[int]:
    """`"2,6,12,4"` -> `[2, 6, 12, 4]`; empty items, non-integers and values <= 0 are refused."""
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise BadInputError(f"{flag}: '{text}' has an empty item; give integers like 2,6,12,4")
    return [parse_positive_int(flag, item) for item in items]


SIZE_NAMES = {3: "D,H,W", 2: "H,W"}


def parse_size(flag: str, text: str, lengths: Sequence[int] = (3,)) -> tuple[int, ...]:
    """`"64,224,224"` -> `(64, 224, 224)`: positive integers, as many as one of `lengths`."""
    size = parse_int_list(flag, text)
    if len(size) not in lengths:
        shapes = " or ".join(SIZE_NAMES[n] for n in lengths)
        raise BadInputError(f"{flag} takes {shapes}, got '{text}'")
    return tuple(size)


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """`--model-arg KEY=VALUE` pairs as keyword arguments of a backbone's factory; values are
    JSON when they parse as JSON (numbers, lists, booleans), else strings."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise BadInputError(f"--model-arg takes KEY=VALUE, got '{item}'")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return kwargs


def print_json(data: Any) -> None:
    """Machine-readable output on stdout: indented, key order kept, one document."""
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """A rich table on stdout (plain text when stdout is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(file=sys.stdout).print(table)


class DefaultGroup(click.Group):
    """A group that runs `default_command` when the first argument names no subcommand.

    `covidzoo models regnet*` is then `covidzoo models list regnet*`, while
    `covidzoo models show regnet3d` still reaches `show`.
    """

    def __init__(self, *args: Any, default_command: str, **kwargs: Any) -> None:
        kwargs.setdefault("invoke_without_command", False)
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
