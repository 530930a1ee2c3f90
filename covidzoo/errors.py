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
