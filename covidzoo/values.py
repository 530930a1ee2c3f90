"""Command-line text to values, one parser per kind of value: every mistake is a one-line
`BadInputError` naming the flag. The shared options (`cli/options.py`) and the options that
backbones declare (`registry.ComponentOption`) both parse here. Nothing here imports torch.
"""

from __future__ import annotations

import math

from .errors import BadInputError


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


def parse_float(flag: str, text: str) -> float:
    """One finite number."""
    try:
        value = float(text.strip())
    except ValueError:
        raise BadInputError(f"{flag}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise BadInputError(f"{flag}: {text} is not a finite number")
    return value


def parse_names(flag: str, text: str) -> list[str]:
    """`"resnet18,densenet121"` -> `["resnet18", "densenet121"]`; no empty item."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise BadInputError(f"{flag}: '{text}' has an empty item")
    return names
