"""The plugin manager: built-in plugins plus the entry points of group `covidzoo`.

Built-in components are plugins too: the modules in `DEFAULT_PLUGINS` implement the same hooks
a third-party package does. Third-party entry points are loaded one at a time, so a broken one
is skipped with a warning naming it and everything else keeps working:

- `COVIDZOO_PLUGINS=a,b` loads only the entry points named `a` and `b` (an empty value: none);
  a name that matches no installed entry point is a warning;
- `COVIDZOO_STRICT_PLUGINS=1` turns a failing plugin, a name clash or an unknown name in
  `COVIDZOO_PLUGINS` into an error (`PluginError`).

Name clashes (`get_registry`): built-in components always win; between two third-party
plugins, the plugin whose name sorts first (Python string order) keeps the name. The other
plugin loses only the clashing component, with a warning naming both plugins; its other
components stay registered. A plugin whose hook raises is dropped whole.

Provenance (`provenance`): each component is traced to its plugin and to the installed package
(distribution name and version) that provides the plugin, so that checkpoints and ensemble
files can say what to install to load them again.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import CovidzooError, PluginError, one_line
from .registry import KIND_HOOKS, Component, RegistrationError, Registry

DEFAULT_PLUGINS: tuple[str, ...] = (
    "covidzoo.default_plugins.backbones",
    "covidzoo.default_plugins.aggregators",
    "covidzoo.default_plugins.ensemblers",
    "covidzoo.default_plugins.optimizers",
    "covidzoo.default_plugins.readers",
    "covidzoo.default_plugins.commands",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
# The package that provides the built-in plugins.
PACKAGE_NAME = hookspecs.PROJECT_NAME

_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_registry_key: tuple[int, ...] = ()
# Where each loaded entry-point plugin came from: plugin name -> (package, version).
_dists: dict[str, tuple[str | None, str]] = {}
# Plugins that are not loaded, and why: name -> {"status", "reason", "package", "version",
# "hooks"}; status is "failed" (import or hook raised) or "skipped" (not allowed).
_not_loaded: dict[str, dict[str, Any]] = {}
# Components each plugin lost to a name clash in the current registry: name -> rows.
_dropped: dict[str, list[dict[str, str]]] = {}
# Warnings already printed (a registry rebuilt in the same process does not repeat them).
_warned: set[str] = set()


def strict() -> bool:
    """Whether a failing plugin is an error (`COVIDZOO_STRICT_PLUGINS`)."""
    return os.environ.get("COVIDZOO_STRICT_PLUGINS", "").lower() in {"1", "true", "yes", "on"}


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"covidzoo: warning: {message}", file=sys.stderr)


def plugin_failed(name: str, exc: BaseException) -> None:
    """Report a third-party plugin that failed: a warning, or `PluginError` in strict mode."""
    reason = one_line(exc, with_type=True)
    message = f"plugin '{name}' failed and was skipped: {reason}"
    if strict():
        raise PluginError(message.replace(" and was skipped", "")) from exc
    print(f"covidzoo: warning: {message}", file=sys.stderr)


def _not_loaded_row(
    name: str, status: str, reason: str, package: str | None, version: str,
    hooks: list[str] | None = None,
) -> None:
    _not_loaded[name] = {"status": status, "reason": reason, "package": package,
                         "version": version, "hooks": hooks or []}


def _allowed_entry_points() -> set[str] | None:
    value = os.environ.get("COVIDZOO_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _dist_of(ep: Any) -> tuple[str | None, str]:
    """`(package, version)` of the distribution that installed entry point `ep`."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, "unknown"
    name = getattr(dist, "name", None) or dist.metadata.get("Name")
    return name, dist.version or "unknown"


def _check_allow_list(allowed: set[str], installed: list[str]) -> None:
    """Warn (strict: `PluginError`) about `COVIDZOO_PLUGINS` names no plugin answers to."""
    known = set(installed) | {builtin_name(m) for m in DEFAULT_PLUGINS}
    unknown = sorted(allowed - known)
    if not unknown:
        return
    names = ", ".join(f"'{n}'" for n in unknown)
    verb = "matches" if len(unknown) == 1 else "match"
    message = (f"COVIDZOO_PLUGINS names {names}, which {verb} no installed plugin"
               f" (installed: {', '.join(installed) or 'none'})")
    if strict():
        raise PluginError(message)
    _warn(message)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowed_entry_points()
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if allowed is not None:
        _check_allow_list(allowed, sorted({ep.name for ep in eps}))
    for ep in eps:
        package, version = _dist_of(ep)
        if allowed is not None and ep.name not in allowed:
            _not_loaded_row(ep.name, "skipped", "not named in COVIDZOO_PLUGINS", package,
                            version)
            continue
        if pm.has_plugin(ep.name):
            if _dists.get(ep.name, (package, version)) != (package, version):
                _warn(f"plugin '{ep.name}' of package {package} {version} was skipped: a plugin"
                      f" of that name is already loaded (package {_dists[ep.name][0]})")
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except (Exception, SystemExit) as exc:  # a broken plugin must not end covidzoo
            plugin_failed(ep.name, exc)
            _not_loaded_row(ep.name, "failed", one_line(exc, with_type=True), package, version)
            continue
        _not_loaded.pop(ep.name, None)
        _dists[ep.name] = (package, version)


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
    _dists.clear()
    _not_loaded.clear()
    _dropped.clear()
    _warned.clear()


def builtin_name(module_name: str) -> str:
    """The plugin name of a built-in module: `covidzoo.default_plugins.x` is `covidzoo.x`."""
    return f"{hookspecs.PROJECT_NAME}.{module_name.rsplit('.', 1)[-1]}"


def is_builtin(name: str) -> bool:
    return name in {builtin_name(m) for m in DEFAULT_PLUGINS}


def plugin_version(name: str) -> str:
    """The version of the package that provides plugin `name` ("unknown" when none does)."""
    if is_builtin(name):
        return __version__
    if name in _dists:
        return _dists[name][1]
    return _not_loaded.get(name, {}).get("version", "unknown")


def plugin_package(name: str) -> str | None:
    """The installed package (distribution name) that provides plugin `name`, if known.

    A plugin object registered at run time (`get_plugin_manager().register(obj, name=...)`,
    as tests do) comes from no package: `None`.
    """
    if is_builtin(name):
        return PACKAGE_NAME
    if name in _dists:
        return _dists[name][0]
    return _not_loaded.get(name, {}).get("package")


def provenance(component: Component | str) -> dict[str, str | None]:
    """Where a component comes from: `{"plugin", "package", "version"}`.

    `component` is a `Component` or a plugin name. Built-ins are plugin `covidzoo.<module>` of
    package `covidzoo` at covidzoo's version; an entry-point plugin's package and version are
    those of the distribution that installed the entry point; a plugin registered at run time
    has package and version `None`.
    """
    plugin = component if isinstance(component, str) else component.plugin
    package = plugin_package(plugin)
    return {"plugin": plugin, "package": package,
            "version": plugin_version(plugin) if package is not None else None}


def missing_component_message(
    kind: str, name: str, recorded: Any, source: str = "the checkpoint"
) -> str | None:
    """The one-line error for a component that `source` was made with but that is not
    registered now, saying what to install; `None` when `recorded` (the `provenance` stored
    in `source`) says nothing.

    e.g. "unknown backbone 'tiny3d' (the checkpoint was made with it from package
    covidzoo-example 0.1.0, plugin 'example'; pip install covidzoo-example)".
    """
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("plugin"), str):
        return None
    plugin = recorded["plugin"]
    package = recorded.get("package") if isinstance(recorded.get("package"), str) else None
    version = recorded.get("version") if isinstance(recorded.get("version"), str) else None
    if package:
        origin = f"package {package}{f' {version}' if version else ''}, plugin '{plugin}'"
    else:
        origin = f"plugin '{plugin}', which no package provided (registered at run time)"
    installed = {pkg: ver for pkg, ver in _dists.values() if pkg}
    state = _not_loaded.get(plugin)
    if state is not None and (package is None or state.get("package") == package):
        fix = f"plugin '{plugin}' is installed but {state['status']}: {state['reason']}"
    elif package == PACKAGE_NAME and version:
        fix = (f"covidzoo {__version__} has no such {kind}; pip install covidzoo=={version}"
               if version != __version__ else f"covidzoo {__version__} has no such {kind}")
    elif package and package in installed and version and installed[package] != version:
        fix = f"{package} {installed[package]} is installed; pip install {package}=={version}"
    elif package:
        fix = f"pip install {package}"
    else:
        fix = f"register plugin '{plugin}' again"
    return f"unknown {kind} '{name}' ({source} was made with it from {origin}; {fix})"


def hook_functions(hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
    """`(plugin_name, function)` of every implementation of `hook_name`, built-ins first.

    Calling implementations one by one, rather than through `pm.hook`, tells which plugin each
    registration comes from and lets a third-party plugin fail alone.
    """
    impls = getattr(get_plugin_manager().hook, hook_name).get_hookimpls()
    # pluggy lists implementations last-registered-first.
    return [(impl.plugin_name, impl.function) for impl in reversed(impls)]


def _hooks_of(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    return sorted(h.name for h in pm.get_hookcallers(plugin) or [])


def drop_failed_plugin(name: str, exc: BaseException) -> None:
    """Unregister a third-party plugin whose hook raised (a built-in that raises is a bug)."""
    if is_builtin(name):
        raise exc
    plugin_failed(name, exc)
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    hooks = _hooks_of(pm, plugin) if plugin is not None else []
    package, version = _dists.pop(name, (None, "unknown"))
    _not_loaded_row(name, "failed", one_line(exc, with_type=True), package, version, hooks)
    pm.unregister(name=name)


def _report_clash(dropped: Component, kept: Component) -> dict[str, str]:
    """Warn about (strict: raise) a component that lost its name to another plugin's."""
    if is_builtin(dropped.plugin):  # two built-ins registering one name: a covidzoo bug
        raise RegistrationError(
            f"{dropped.kind} '{dropped.name}' is registered by both plugin '{kept.plugin}' and"
            f" plugin '{dropped.plugin}'"
        )
    rule = ("built-in components win" if is_builtin(kept.plugin)
            else "the plugin whose name sorts first keeps it")
    message = (f"{dropped.kind} '{dropped.name}' is registered by both plugin '{kept.plugin}'"
               f" and plugin '{dropped.plugin}'; plugin '{dropped.plugin}' loses it ({rule})")
    if strict():
        raise PluginError(message)
    _warn(message)
    return {"kind": dropped.kind, "name": dropped.name, "kept_by": kept.plugin}


def get_registry() -> Registry:
    """The registry of every component of every loaded plugin.

    Rebuilt when the set of registered plugins changes, e.g. when a test registers one. A
    plugin whose hook raises (or registers wrongly) is dropped whole. Components are then added
    plugin by plugin, built-ins first and third-party plugins in name order, so the first
    registration of a (kind, name) keeps it whatever the hooks' order: a later plugin loses only
    the clashing component (`_report_clash`).
    """
    global _registry, _registry_key, _dropped
    pm = get_plugin_manager()
    key = tuple(id(plugin) for plugin in pm.get_plugins())
    if _registry is not None and key == _registry_key:
        return _registry
    staged: dict[str, list[Component]] = {}
    registry = Registry()
    for kind, hook_name in KIND_HOOKS.items():
        for plugin_name, function in hook_functions(hook_name):
            components = staged.setdefault(plugin_name, [])
            try:
                function(register=registry.registrar(kind, plugin_name, components))
            except (Exception, SystemExit) as exc:  # a broken plugin must not end covidzoo
                staged.pop(plugin_name, None)
                drop_failed_plugin(plugin_name, exc)
    dropped: dict[str, list[dict[str, str]]] = {}
    for plugin_name in sorted(staged, key=lambda name: (not is_builtin(name), name)):
        if not pm.has_plugin(plugin_name):
            continue
        try:
            clashes = registry.commit(staged[plugin_name])
        except RegistrationError as exc:  # one name registered twice by the plugin
            drop_failed_plugin(plugin_name, exc)
            continue
        for component, kept in clashes:
            dropped.setdefault(plugin_name, []).append(_report_clash(component, kept))
    _dropped = dropped
    for name in [n for n in _not_loaded if pm.has_plugin(n)]:  # registered again since
        del _not_loaded[name]
    _registry = registry
    _registry_key = tuple(id(plugin) for plugin in pm.get_plugins())
    return registry


def plugin_info() -> list[dict[str, Any]]:
    """Every plugin, loaded or not: name, version, package, built-in flag, hooks, status
    ("loaded", "failed" or "skipped"), the reason it is not loaded, and the components it lost
    to a name clash (`dropped`: `{"kind", "name", "kept_by"}` rows)."""
    pm = get_plugin_manager()
    get_registry()  # drops plugins whose hooks raise, finds name clashes
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            rows.append({"name": name, "version": plugin_version(name), "builtin": False,
                         "hooks": [], "package": plugin_package(name), "status": "skipped",
                         "reason": "blocked", "dropped": []})
            continue
        rows.append(
            {
                "name": name,
                "version": plugin_version(name),
                "builtin": is_builtin(name),
                "hooks": _hooks_of(pm, plugin),
                "package": plugin_package(name),
                "status": "loaded",
                "reason": None,
                "dropped": list(_dropped.get(name, [])),
            }
        )
    listed = {row["name"] for row in rows}
    for name, state in _not_loaded.items():
        if name not in listed:
            rows.append({"name": name, "version": state["version"], "builtin": False,
                         "hooks": list(state["hooks"]), "package": state["package"],
                         "status": state["status"], "reason": state["reason"], "dropped": []})
    return sorted(rows, key=lambda r: (not r["builtin"], r["name"]))


__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PACKAGE_NAME",
    "CovidzooError",
    "get_plugin_manager",
    "get_registry",
    "hook_functions",
    "missing_component_message",
    "plugin_info",
    "plugin_package",
    "plugin_version",
    "provenance",
    "reset",
]
