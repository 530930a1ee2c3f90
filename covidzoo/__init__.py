"""covidzoo: a plugin-based PyTorch model zoo for COVID-19 detection from chest CT scans.

Importing covidzoo is cheap: torch is imported only when a model is built.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any  # noqa: E402

from .errors import BadInputError, CovidzooError, PluginError, UnknownComponentError  # noqa: E402
from .hookspecs import hookimpl, hookspec  # noqa: E402
from .registry import KINDS, Component, Kind, check_kind  # noqa: E402


def list_models(
    pattern: str | list[str] | tuple[str, ...] = "*", kind: Kind | None = None
) -> list[str]:
    """Names of the registered components matching an fnmatch `pattern` (one or several).

    `kind` narrows the list to "backbone", "aggregator", "ensembler" or "optimizer".
    """
    from .plugins import get_registry

    return sorted({c.name for c in get_registry().components(pattern, kind)})


def get_component(name: str, kind: Kind = "backbone") -> Component:
    """The registered component `name` of `kind`, with its summary, plugin and metadata."""
    from .plugins import get_registry

    return get_registry().get(name, check_kind(kind))


def list_components(
    pattern: str | list[str] | tuple[str, ...] = "*", kind: Kind | None = None
) -> list[Component]:
    """Like `list_models`, but the `Component` records themselves."""
    from .plugins import get_registry

    return get_registry().components(pattern, kind)


def create_model(name: str, **kwargs: Any) -> Any:
    """Build the backbone registered as `name`.

    Keyword arguments override the backbone's configuration; those that are `None` are dropped,
    so command-line options left unset fall back to the defaults. An unknown name raises
    `UnknownComponentError` with the closest registered names.
    """
    return get_component(name, "backbone").create(**kwargs)


__all__ = [
    "KINDS",
    "BadInputError",
    "Component",
    "CovidzooError",
    "Kind",
    "PluginError",
    "UnknownComponentError",
    "__version__",
    "create_model",
    "get_component",
    "hookimpl",
    "hookspec",
    "list_components",
    "list_models",
]
