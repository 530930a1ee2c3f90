"""What the built-in commands share: option parsers, the options several commands take (one
definition each: --device, --workers, --threads, --precision, the data source, KEY=VALUE
arguments), JSON output, rich tables and a group with a default command.

Every command that computes takes `threads_option`, a plugin's command too."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import BadInputError
from ..values import parse_int_list

F = TypeVar("F", bound=Callable[..., Any])
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


SIZE_NAMES = {3: "D,H,W", 2: "H,W"}


def parse_size(flag: str, text: str, lengths: Sequence[int] = (3,)) -> tuple[int, ...]:
    """`"64,224,224"` -> `(64, 224, 224)`: positive integers, as many as one of `lengths`."""
    size = parse_int_list(flag, text)
    if len(size) not in lengths:
        shapes = " or ".join(SIZE_NAMES[n] for n in lengths)
        raise BadInputError(f"{flag} takes {shapes}, got '{text}'")
    return tuple(size)


def parse_key_values(flag: str, items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs (`--model-arg`, `--aggregator-arg`, `--optimizer-arg`) as keyword
    arguments; values are JSON when they parse as JSON (numbers, lists, booleans), else strings."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise BadInputError(f"{flag} takes KEY=VALUE, got '{item}'")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return kwargs


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """`--model-arg KEY=VALUE` pairs as keyword arguments of a backbone's factory."""
    return parse_key_values("--model-arg", items)


def preprocess_option(function: F) -> F:
    """--preprocess: preprocessing steps in the one spelling train, data prepare, evaluate and
    predict share (`covidzoo.data.preprocess.parse_steps`; docs/data.md)."""
    return click.option(
        "--preprocess", multiple=True, metavar="KEY=VALUE[,...]",
        help="Preprocessing steps: crop=lungs, slices=lungs, spacing=X,Y,Z (mm), fit=pad, "
             "window=L,W, contrast=stretch, margin=F, lung_area=F, crop_slices=F, "
             "crop_border=F (repeatable; see docs/data.md).")(function)


def tta_option(function: F) -> F:
    """--tta for evaluate and predict (`covidzoo.transforms.tta_views`)."""
    from ..values import TTA_MODES

    return click.option(
        "--tta", type=click.Choice(TTA_MODES), default="none", show_default=True,
        help="Test-time augmentation: flip (2 views), flip+shift (6); the mean probability "
             "over the views, batched on the device.")(function)


def parse_preprocess(texts: Sequence[str]) -> dict[str, Any]:
    """The steps of `--preprocess` as `PreprocessConfig` keywords (empty when not given)."""
    from ..data.preprocess import parse_steps

    return parse_steps(texts) if texts else {}


def _apply(function: F, options: Sequence[Callable[[F], F]]) -> F:
    for option in reversed(options):
        function = option(function)
    return function


def device_option(function: F) -> F:
    """--device: resolved by `covidzoo.runtime.resolve_device` (free text, checked there)."""
    return click.option("--device", metavar="DEVICE",
                        help="cpu, cuda or cuda:N.  [default: cuda when available]")(function)


def workers_option(function: F) -> F:
    """--workers: one meaning everywhere, as torch's DataLoader has it."""
    return click.option(
        "--workers", type=click.IntRange(min=0), metavar="N",
        help="Worker processes reading and preprocessing scans (0: the main process).  "
             "[default: 0 on CPU, up to 8 on CUDA]")(function)


def _apply_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int:
    from ..runtime import apply_threads

    return apply_threads(value)


def threads_option(function: F) -> F:
    """--threads: torch's CPU threads, resolved and applied while the command line is parsed
    (`covidzoo.runtime.apply_threads`), so the command's own signature does not take it;
    `torch.get_num_threads()` gives the number from then on."""
    return click.option(
        "--threads", type=click.IntRange(min=1), metavar="N", expose_value=False,
        callback=_apply_threads,
        help="CPU threads of torch.  [default: OMP_NUM_THREADS if set, else the cores other "
             "processes leave free, at least 1]")(function)


# What numpy's and scikit-learn's seeded generators (RandomState) accept.
SEED_RANGE = click.IntRange(0, 2**32 - 1)


def seed_option(text: str) -> Callable[[F], F]:
    """--seed, an integer numpy and scikit-learn accept (0 to 2^32 - 1); `text` says what it
    seeds."""
    return click.option("--seed", default=0, show_default=True, type=SEED_RANGE, help=text)


def precision_option(function: F) -> F:
    """--precision for train, evaluate, ensemble and predict (bench takes a list)."""
    return click.option("--precision", default="auto", show_default=True,
                        type=click.Choice(PRECISION_CHOICES),
                        help="Autocast mode; auto is the fastest measured for the model.")(function)


def data_options(function: F) -> F:
    """--data / --manifest: where labelled scans come from (the demo data when neither is
    given, as in `train`; see `covidzoo.data.sources`)."""
    return _apply(function, [
        click.option("--data", "data_root", type=click.Path(path_type=Path),
                     help="Data folder ({train,val,test}/{covid,non-covid}/SCAN). "
                          "Default: the demo data."),
        click.option("--manifest", type=click.Path(path_type=Path),
                     help="CSV manifest (path,label[,split]) instead of --data."),
        workers_option,
    ])


def cache_option(function: F) -> F:
    """--cache: a cache made by `covidzoo data prepare`, instead of --data or --manifest."""
    return click.option(
        "--cache", type=click.Path(path_type=Path), metavar="DIR",
        help="A cache made by `covidzoo data prepare` (instead of --data/--manifest), used as "
             "it is: it must be prepared as the model's checkpoint records.")(function)


def runtime_options(function: F) -> F:
    """--device / --precision / --batch-size / --threads: how models run for inference."""
    return _apply(function, [
        device_option,
        precision_option,
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Scans per forward pass."),
        threads_option,
    ])


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


# --- options declared by backbones -------------------------------------------------------------


def declared_options() -> dict[str, list[Any]]:
    """Every flag the registered backbones declare, with the backbones that declare it (each
    backbone's own declaration: two backbones may map one flag to different keywords)."""
    from ..factory import list_components

    found: dict[str, list[Any]] = {}
    for component in list_components(kind="backbone"):
        for option in component.metadata.get("options", ()):
            found.setdefault(option.flag, []).append(component.name)
    return found


def _param_name(flag: str) -> str:
    """The click parameter of a declared flag: the flag's own name (`--tiny-widths` ->
    `tiny_widths`), so that two flags never share a parameter whatever keyword they set."""
    return flag[2:].replace("-", "_")


class BackboneCommand(click.Command):
    """A command that also takes the options the registered backbones declare (regnet3d's
    `--depths`, a plugin's own), read from the registry each time the command is parsed.

    Its callback receives their values among `**options` (None when not given); pass them to
    `backbone_kwargs`. A declared flag that the command itself has is not offered.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        taken = {name for p in params for name in (p.name, *p.opts)}
        extra = []
        for flag, names in declared_options().items():
            if flag in taken or _param_name(flag) in taken:
                continue
            taken |= {flag, _param_name(flag)}
            first = _declaration(names[0], flag)
            extra.append(click.Option([flag, _param_name(flag)], metavar=first.metavar,
                                      help=f"{first.help} ({', '.join(_short(names))})"))
        return params[:-1] + extra + params[-1:]  # --help stays last


def _declaration(backbone: str, flag: str) -> Any:
    """The `ComponentOption` of `flag` that `backbone` declares, or None."""
    from ..factory import get_component

    options = get_component(backbone, "backbone").metadata.get("options", ())
    return next((o for o in options if o.flag == flag), None)


def _short(names: Sequence[str]) -> list[str]:
    """Backbone names for a help line: `regnet3d*` for a family sharing a prefix."""
    stems = sorted({n.split("_")[0] for n in names})
    return [s + ("*" if any(n != s for n in names if n.startswith(s)) else "") for s in stems]


def backbone_kwargs(component: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The factory keywords of the declared options given for `component` (a backbone), parsed
    by its own declaration; options left unset are dropped, so the backbone's own configuration
    fills them in.

    A declared option that `component` does not declare is bad input naming the flag.
    """
    own = {o.flag: o for o in component.metadata.get("options", ())}
    kwargs: dict[str, Any] = {}
    for flag, names in declared_options().items():
        value = options.get(_param_name(flag))
        if value is None:
            continue
        if flag not in own:
            raise BadInputError(
                f"{flag}: an option of {', '.join(_short(names))}, not of {component.kind} "
                f"'{component.name}'"
            )
        kwargs[own[flag].param] = own[flag].parse(value)
    return kwargs
