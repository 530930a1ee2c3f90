"""Exceptions that covidzoo raises on purpose.

The CLI turns every `CovidzooError` into a one-line message on stderr and a non-zero exit code
(`exit_code`): 2 for bad usage or bad input, 1 for a job that failed. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class CovidzooError(Exception):
    """Base class of the errors covidzoo reports to its user."""

    exit_code = 1


class BadInputError(CovidzooError, ValueError):
    """The user asked for something that cannot be done: a wrong flag, name, file or value."""

    exit_code = 2


class UnknownComponentError(BadInputError, KeyError):
    """No component of that name (and kind) is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginError(BadInputError):
    """A plugin failed to load or to register its components (raised in strict mode)."""


def one_line(exc: BaseException, *, with_type: bool | None = None) -> str:
    """`exc` as the one line a user is shown: the first line of its message.

    A `CovidzooError` is covidzoo's own words and stands alone; any other exception is prefixed
    with its type (`OSError: ...`), which is often the only clue. `with_type` overrides that.
    """
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in lines[1]:
        # A DataLoader worker's error, re-raised in the main process with the worker's traceback
        # as its message: the user's line is the original error's, the traceback's last line.
        lines = [lines[-1].split(": ", 1)[-1]]
    text = lines[0].strip() if lines else ""
    if with_type is None:
        with_type = not isinstance(exc, CovidzooError)
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text
