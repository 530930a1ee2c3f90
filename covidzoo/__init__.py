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


# The aggregator of a backbone whose metadata names no `default_aggregator`, by spatial_dims.
DEFAULT_AGGREGATORS: dict[int, str] = {3: "volume", 2: "slice-mean"}


def compatible_aggregators(backbone: str) -> list[str]:
    """Names of the aggregators that can wrap the backbone `backbone` (same `spatial_dims`).

    An aggregator registered without `spatial_dims` wraps anything.
    """
    dims = get_component(backbone, "backbone").metadata.get("spatial_dims")
    return sorted(
        c.name
        for c in list_components(kind="aggregator")
        if c.metadata.get("spatial_dims") in (None, dims)
    )


def default_aggregator(backbone: str) -> str:
    """The aggregator `aggregator="auto"` picks: the backbone's `default_aggregator` metadata,
    else `volume` for a 3D backbone and `slice-mean` for a 2D one."""
    meta = get_component(backbone, "backbone").metadata
    return meta.get("default_aggregator") or DEFAULT_AGGREGATORS[meta["spatial_dims"]]


def create_model(
    name: str,
    *,
    aggregator: str | None = None,
    aggregator_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Build the backbone registered as `name`, alone or wrapped in an aggregator.

    Keyword arguments override the backbone's configuration; those that are `None` are dropped,
    so command-line options left unset fall back to the defaults. An unknown name raises
    `UnknownComponentError` with the closest registered names.

    `aggregator=None` returns the bare backbone (slices or volumes in, logits out). A name
    returns one module from scans `B x C x D x H x W` to logits `B x num_classes`: the
    aggregator of that name, built with `aggregator_args`, around the backbone; `"auto"` picks
    `default_aggregator(name)`. An aggregator made for the other `spatial_dims` (a 2D backbone
    with `volume`, a 3D one with `slice-mean`) raises `BadInputError`.
    """
    backbone = get_component(name, "backbone")
    if aggregator is None:
        return backbone.create(**kwargs)
    if aggregator == "auto":
        aggregator = default_aggregator(name)
    wrapper = get_component(aggregator, "aggregator")
    dims, wraps = backbone.metadata["spatial_dims"], wrapper.metadata.get("spatial_dims")
    if wraps is not None and wraps != dims:
        raise BadInputError(
            f"aggregator '{aggregator}' wraps {wraps}D backbones but '{name}' is {dims}D;"
            f" use one of: {', '.join(compatible_aggregators(name))}"
        )
    return wrapper.create(backbone=backbone.create(**kwargs), **(aggregator_args or {}))


def load_checkpoint(path: str, device: Any = "cpu") -> tuple[Any, Any]:
    """Rebuild the model stored in a covidzoo `.safetensors` checkpoint: `(model, spec)`.

    The file carries the backbone's registry name, its arguments, the aggregator, the
    preprocessing and the decision threshold (`spec`), so no other file is needed. Pickle files
    are refused, never loaded.
    """
    from .checkpoint import load_checkpoint as load

    return load(path, device=device)


__all__ = [
    "KINDS",
    "BadInputError",
    "Component",
    "CovidzooError",
    "Kind",
    "PluginError",
    "UnknownComponentError",
    "__version__",
    "DEFAULT_AGGREGATORS",
    "compatible_aggregators",
    "create_model",
    "default_aggregator",
    "get_component",
    "hookimpl",
    "hookspec",
    "list_components",
    "list_models",
    "load_checkpoint",
]
