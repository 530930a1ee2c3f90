"""The plugin manager: built-in plugins plus the entry points of group `covidzoo`.

Built-in components are plugins too: the modules in `DEFAULT_PLUGINS` implement the same hooks
a third-party package does. Third-party entry points are loaded one at a time, so a broken one
is skipped with a warning naming it and everything else keeps working:

- `COVIDZOO_PLUGINS=a,b` loads only the entry points named `a` and `b` (an empty value: none);
- `COVIDZOO_STRICT_PLUGINS=1` turns a failing plugin into an error (`PluginError`).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import CovidzooError, PluginError, one_line
from .registry import KIND_HOOKS, Component, Registry

DEFAULT_PLUGINS: tuple[str, ...] = (
    "covidzoo.default_plugins.backbones",
    "covidzoo.default_plugins.aggregators",
    "covidzoo.default_plugins.ensemblers",
    "covidzoo.default_plugins.optimizers",
    "covidzoo.default_plugins.commands",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_registry_key: tuple[int, ...] = ()
# Where each entry-point plugin came from, for `covidzoo plugins`: name -> version.
_versions: dict[str, str] = {}


def strict() -> bool:
    """Whether a failing plugin is an error (`COVIDZOO_STRICT_PLUGINS`)."""
    return os.environ.get("COVIDZOO_STRICT_PLUGINS", "").lower() in {"1", "true", "yes", "on"}


def plugin_failed(name: str, exc: BaseException) -> None:
    """Report a third-party plugin that failed: a warning, or `PluginError` in strict mode."""
    reason = one_line(exc, with_type=True)
    message = f"plugin '{name}' failed and was skipped: {reason}"
    if strict():
        raise PluginError(message.replace(" and was skipped", "")) from exc
    print(f"covidzoo: warning: {message}", file=sys.stderr)


def _allowed_entry_points() -> set[str] | None:
    value = os.environ.get("COVIDZOO_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowed_entry_points()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not break covidzoo
            plugin_failed(ep.name, exc)
            continue
        dist = getattr(ep, "dist", None)
        _versions[ep.name] = dist.version if dist is not None else "unknown"


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use (loading is idempotent)."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        for module_name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module_name), name=builtin_name(module_name))
        _load_entry_points(pm)
        _pm = pm
    return _pm


def reset() -> None:
    """Forget the manager and registry; the next use loads plugins again (for tests)."""
    global _pm, _registry, _registry_key
    _pm, _registry, _registry_key = None, None, ()
    _versions.clear()


def builtin_name(module_name: str) -> str:
    """The plugin name of a built-in module: `covidzoo.default_plugins.x` is `covidzoo.x`."""
    return f"{hookspecs.PROJECT_NAME}.{module_name.rsplit('.', 1)[-1]}"


def is_builtin(name: str) -> bool:
    return name in {builtin_name(m) for m in DEFAULT_PLUGINS}


def plugin_version(name: str) -> str:
    return __version__ if is_builtin(name) else _versions.get(name, "unknown")


def hook_functions(hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
    """`(plugin_name, function)` of every implementation of `hook_name`, built-ins first.

    Calling implementations one by one, rather than through `pm.hook`, tells which plugin each
    registration comes from and lets a third-party plugin fail alone.
    """
    impls = getattr(get_plugin_manager().hook, hook_name).get_hookimpls()
    # pluggy lists implementations last-registered-first.
    return [(impl.plugin_name, impl.function) for impl in reversed(impls)]


def drop_failed_plugin(name: str, exc: BaseException) -> None:
    """Unregister a third-party plugin whose hook raised (a built-in that raises is a bug)."""
    if is_builtin(name):
        raise exc
    plugin_failed(name, exc)
    get_plugin_manager().unregister(name=name)


def get_registry() -> Registry:
    """The registry of every component of every loaded plugin.

    Rebuilt when the set of registered plugins changes, e.g. when a test registers one. A
    plugin's components are added all together or, when one of its hooks raises or clashes with
    another plugin's name, not at all.
    """
    global _registry, _registry_key
    pm = get_plugin_manager()
    key = tuple(id(plugin) for plugin in pm.get_plugins())
    if _registry is not None and key == _registry_key:
        return _registry
    staged: dict[str, list[Component]] = {}
    registry = Registry()
    for kind, hook_name in KIND_HOOKS.items():
        for plugin_name, function in hook_functions(hook_name):
            try:
                components = staged.setdefault(plugin_name, [])
                function(register=registry.registrar(kind, plugin_name, components))
            except Exception as exc:
                staged.pop(plugin_name, None)
                drop_failed_plugin(plugin_name, exc)
    # Built-ins first, so that a third-party name clash drops the third-party plugin.
    for plugin_name, components in sorted(staged.items(), key=lambda kv: not is_builtin(kv[0])):
        if not pm.has_plugin(plugin_name):
            continue
        try:
            registry.commit(components)
        except Exception as exc:
            drop_failed_plugin(plugin_name, exc)
    _registry = registry
    _registry_key = tuple(id(plugin) for plugin in pm.get_plugins())
    return registry


def plugin_info() -> list[dict[str, Any]]:
    """Name, version, hooks and built-in flag of every loaded plugin."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append(
            {
                "name": name,
                "version": plugin_version(name),
                "builtin": is_builtin(name),
                "hooks": hooks,
            }
        )
    return sorted(rows, key=lambda r: (not r["builtin"], r["name"]))


__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "CovidzooError",
    "hook_functions",
    "get_plugin_manager",
    "get_registry",
    "plugin_info",
    "reset",
]
