"""The 3D RegNet command-line options, shared by every command that builds a regnet3d.

    @regnet3d_options
    def show(name, **options):
        kwargs = regnet3d_kwargs(options)          # only what the user gave
        check_regnet3d_options(component, kwargs)  # refused for other backbones
        model = create_model(name, **kwargs)

Values are parsed here, strictly, rather than by Click types, so that every mistake is one line
naming the option (exit 2) instead of a usage screen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import BadInputError
from ._common import parse_int_list, parse_positive_int

F = TypeVar("F", bound=Callable[..., Any])

# option name -> (parameter name, kind, help)
_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--depths", "depths", "ints", "Blocks per stage, e.g. 2,6,12,4."),
    ("--widths", "widths", "ints", "Output width per stage, e.g. 48,128,256,512."),
    ("--group-widths", "group_widths", "ints", "Group width: one value, or one per stage."),
    ("--bottleneck-ratio", "bottleneck_ratio", "float", "Bottleneck width / block width."),
    ("--se-ratio", "se_ratio", "ratio", "Squeeze-excitation ratio (0: none)."),
    ("--stem-width", "stem_width", "int", "Channels of the stem conv."),
    ("--w0", "w0", "int", "Design space: initial width (a multiple of 8)."),
    ("--wa", "wa", "float", "Design space: width slope per block."),
    ("--wm", "wm", "float", "Design space: width multiplier between stages (> 1)."),
    ("--depth", "depth", "int", "Design space: total number of blocks."),
)
_METAVARS = {"ints": "INTS", "int": "INT", "float": "FLOAT", "ratio": "FLOAT"}
_FLAGS = {param: flag for flag, param, _, _ in _OPTIONS}
DESIGN_SPACE = ("w0", "wa", "wm", "depth")


def regnet3d_options(function: F) -> F:
    """Click decorator adding the 3D RegNet architecture options (all optional)."""
    for flag, param, kind, help_text in reversed(_OPTIONS):
        function = click.option(
            flag, param, default=None, metavar=_METAVARS[kind], help=help_text
        )(function)
    return function


def _float(flag: str, text: str, allow_zero: bool = False) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise BadInputError(f"{flag}: '{text}' is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise BadInputError(f"{flag}: {text} must be {'>= 0' if allow_zero else 'positive'}")
    return value


def regnet3d_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The `create_model` keyword arguments for the 3D RegNet options the user gave.

    `options` is the command's keyword arguments (other keys are ignored); options left unset
    are dropped, so the backbone's own configuration fills them in. Raises `BadInputError`
    naming the option for a malformed value, lists of different lengths, or explicit stages
    mixed with the design space.
    """
    kwargs: dict[str, Any] = {}
    for flag, param, kind, _ in _OPTIONS:
        text = options.get(param)
        if text is None:
            continue
        text = str(text)
        if kind == "ints":
            kwargs[param] = parse_int_list(flag, text)
        elif kind == "int":
            kwargs[param] = parse_positive_int(flag, text)
        else:
            kwargs[param] = _float(flag, text, allow_zero=kind == "ratio")
    if "se_ratio" in kwargs and kwargs["se_ratio"] >= 1:
        raise BadInputError(f"--se-ratio: {kwargs['se_ratio']} must be below 1")
    if "wm" in kwargs and kwargs["wm"] <= 1:
        raise BadInputError(f"--wm: {kwargs['wm']} must be greater than 1")
    if "w0" in kwargs and kwargs["w0"] % 8:
        raise BadInputError(f"--w0: {kwargs['w0']} must be a multiple of 8")
    design = [p for p in DESIGN_SPACE if p in kwargs]
    if design:
        for param in ("depths", "widths"):
            if param in kwargs:
                raise BadInputError(
                    f"{_FLAGS[param]} cannot be combined with {_FLAGS[design[0]]}: give the"
                    " stages explicitly or through --w0 --wa --wm --depth"
                )
        missing = [_FLAGS[p] for p in DESIGN_SPACE if p not in kwargs]
        if missing:
            raise BadInputError(
                f"{_FLAGS[design[0]]} needs --w0, --wa, --wm and --depth together; missing"
                f" {', '.join(missing)}"
            )
    lengths = {p: len(kwargs[p]) for p in ("depths", "widths") if p in kwargs}
    if len(set(lengths.values())) > 1:
        raise BadInputError(
            f"--widths has {lengths['widths']} values but --depths has {lengths['depths']}"
        )
    groups = kwargs.get("group_widths")
    if groups is not None and len(groups) > 1 and lengths and len(groups) != max(
        lengths.values()
    ):
        raise BadInputError(
            f"--group-widths has {len(groups)} values; give one, or one per stage"
            f" ({max(lengths.values())})"
        )
    if groups is not None and len(groups) == 1:
        kwargs["group_widths"] = groups[0]
    return kwargs


def check_regnet3d_options(component: Any, kwargs: dict[str, Any]) -> None:
    """Refuse 3D RegNet options for a component that is not a 3D RegNet backbone."""
    if kwargs and not (
        component.kind == "backbone" and component.metadata.get("family") == "regnet3d"
    ):
        flags = ", ".join(_FLAGS[p] for p in kwargs)
        raise BadInputError(
            f"{flags}: only for regnet3d backbones, not {component.kind} '{component.name}'"
        )
