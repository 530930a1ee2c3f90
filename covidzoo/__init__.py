"""covidzoo: a plugin-based PyTorch model zoo for COVID-19 detection from chest CT scans.

This module only re-exports the public API; importing it is cheap (torch is imported only when
a model is built).
"""

from __future__ import annotations

from ._version import __version__
from .errors import BadInputError, CovidzooError, PluginError, UnknownComponentError
from .factory import (
    DEFAULT_AGGREGATORS,
    compatible_aggregators,
    create_model,
    default_aggregator,
    get_component,
    list_components,
    list_models,
    load_checkpoint,
)
from .hookspecs import Register, hookimpl, hookspec
from .registry import KINDS, Component, ComponentOption, Kind

__all__ = [
    "KINDS",
    "BadInputError",
    "Component",
    "ComponentOption",
    "CovidzooError",
    "Kind",
    "PluginError",
    "Register",
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
