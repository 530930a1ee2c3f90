"""Command-line text to values, one parser per kind of value: every mistake is a one-line
`BadInputError` naming the flag. The shared options (`cli/options.py`) and the options that
backbones declare (`registry.ComponentOption`) both parse here. Numbers back to text for people
(`format_number`, `format_apart`) are here too: every table, log line and summary rounds through
them, while `--json` keeps full precision. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from numbers import Integral

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


def is_probability(value: object) -> bool:
    """Whether a value read from a file is a finite number within [0, 1] (a bool is not one)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


def parse_probability(flag: str, text: str) -> float:
    """One finite number within [0, 1]: a probability, or a threshold on one."""
    value = parse_float(flag, text)
    if not 0.0 <= value <= 1.0:
        raise BadInputError(f"{flag}: {text} must be within [0, 1]")
    return value


def parse_names(flag: str, text: str) -> list[str]:
    """`"resnet18,densenet121"` -> `["resnet18", "densenet121"]`; no empty item."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise BadInputError(f"{flag}: '{text}' has an empty item")
    return names


# --- text from files for people ----------------------------------------------------------------


def printable(text: str) -> str:
    """`text` with line breaks and other control characters escaped (`\\n`), so that a name
    read from an untrusted file cannot break the one line an error is shown as."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


@contextlib.contextmanager
def printable_errors() -> Iterator[None]:
    """Re-raise a `BadInputError` whose message holds a control character with it escaped
    (`printable`): around code that puts what a file says into its messages."""
    try:
        yield
    except BadInputError as exc:
        text = printable(str(exc))
        if text == str(exc):
            raise
        raise type(exc)(text) from exc


# --- numbers for people -------------------------------------------------------------------------

DIGITS = 4  # significant digits shown to people
MOST_DIGITS = 12  # at most this many when two numbers must read apart


def format_number(value: float | None, digits: int = DIGITS) -> str:
    """`value` rounded for people: `digits` significant digits (0.6493055555555556 -> "0.6493",
    184.23 -> "184.2"), integers as they are, "n/a" for None."""
    if value is None:
        return "n/a"
    if isinstance(value, Integral):
        return str(value)
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -4:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 1 - magnitude, 0)}f}"


def format_apart(value: float, reference: float, digits: int = DIGITS) -> tuple[str, str]:
    """`value` and `reference` (a probability and its threshold) for people, with more digits
    where needed until two different numbers read differently (at most `MOST_DIGITS`), so that
    a value just under its threshold never reads as equal to it."""
    shown = format_number(value, digits), format_number(reference, digits)
    while shown[0] == shown[1] and value != reference and digits < MOST_DIGITS:
        digits += 1
        shown = format_number(value, digits), format_number(reference, digits)
    return shown


# The class names of a two-class study by label (0 non-covid, 1 covid): what data sets,
# checkpoints and reports call them.
BINARY_CLASSES: tuple[str, ...] = ("non-covid", "covid")


def check_classes(value: object, where: str = "classes") -> tuple[str, ...]:
    """A recorded class list (a checkpoint's, an ensemble file's): two or more distinct
    non-empty strings; anything else is bad input naming `where`."""
    if (not isinstance(value, list | tuple) or len(value) < 2
            or not all(isinstance(c, str) and c for c in value) or len(set(value)) != len(value)):
        raise BadInputError(f"{where}: {value!r:.80} is not a list of two or more class names")
    return tuple(value)


def check_temperature(value: object, where: str = "temperature") -> float | None:
    """A recorded calibration temperature: None, or a finite number > 0."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise BadInputError(f"{where} {value!r:.40} is not a number > 0")
    return float(value)


# Test-time augmentation (`--tta`, `covidzoo.transforms.tta_views`): kept here, torch-free, so
# that the command line lists the choices without importing torch.
TTA_MODES: tuple[str, ...] = ("none", "flip", "flip+shift")
