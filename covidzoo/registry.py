"""Named components (backbones, aggregators, ensemblers, optimizers, readers) and how to find them.

The registry is filled by the `register_*` hooks of every loaded plugin (see `covidzoo.plugins`)
and rebuilt whenever the set of registered plugins changes, so a plugin registered at run time
(as tests do) is seen at once. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from .errors import BadInputError, CovidzooError, PluginError, UnknownComponentError, one_line
from .values import parse_float, parse_int_list, parse_names, parse_positive_int

Kind = Literal["backbone", "aggregator", "ensembler", "optimizer", "reader"]
KINDS: tuple[Kind, ...] = get_args(Kind)

# The hook that registers each kind.
KIND_HOOKS: dict[Kind, str] = {
    "backbone": "register_backbones",
    "aggregator": "register_aggregators",
    "ensembler": "register_ensemblers",
    "optimizer": "register_optimizers",
    "reader": "register_readers",
}


class RegistrationError(CovidzooError):
    """A plugin registered a component wrongly: a bad name, factory, summary or metadata, or
    one name twice. (A clash between two plugins is no error: see `covidzoo.plugins`.)"""


# What a declared option's text becomes: checked for form here; the component's own config
# checks the values (ranges, combinations) when it is built, once.
OPTION_TYPES: dict[str, str] = {
    "int": "a positive integer",
    "ints": "positive integers, comma-separated",
    "float": "a finite number",
    "str": "a string",
    "strs": "names, comma-separated",
}
_METAVARS = {"int": "INT", "ints": "INTS", "float": "FLOAT", "str": "TEXT", "strs": "NAMES"}
_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "int": parse_positive_int,
    "ints": parse_int_list,
    "float": parse_float,
    "str": lambda flag, text: text,
    "strs": parse_names,
}


@dataclass(frozen=True)
class ComponentOption:
    """A command-line option a backbone declares at registration, e.g. regnet3d's `--depths`.

    `train`, `bench` and `models show` offer it; its parsed value is passed to the backbone's
    factory as the keyword `param`. Declared as `options=[{"flag": "--depths", "param":
    "depths", "type": "ints", "help": "..."}]` (or `ComponentOption` objects).
    """

    flag: str
    param: str
    type: str = "str"
    help: str = ""

    @classmethod
    def of(cls, value: Any, where: str) -> ComponentOption:
        """A `ComponentOption` from a declaration (a mapping or one already), checked."""
        try:
            option = value if isinstance(value, cls) else cls(**dict(value))
        except (TypeError, ValueError) as exc:
            raise RegistrationError(f"{where}: a bad option declaration ({exc})") from exc
        if not (option.flag.startswith("--") and len(option.flag) > 2
                and option.flag[2:].replace("-", "_").isidentifier()):
            raise RegistrationError(f"{where}: option flag '{option.flag}' is not --a-name")
        if not option.param.isidentifier():
            raise RegistrationError(f"{where}: option param '{option.param}' is no identifier")
        if option.type not in OPTION_TYPES:
            raise RegistrationError(f"{where}: option {option.flag} has type '{option.type}';"
                                    f" choose from {', '.join(OPTION_TYPES)}")
        return option

    @property
    def metavar(self) -> str:
        return _METAVARS[self.type]

    def parse(self, text: str) -> Any:
        """The option's value from its command-line text; bad form is a `BadInputError`
        naming the flag."""
        return _PARSERS[self.type](self.flag, str(text))

    def to_dict(self) -> dict[str, Any]:
        return {"flag": self.flag, "param": self.param, "type": self.type, "help": self.help}


@dataclass(frozen=True)
class Component:
    """One registered component: what it is, who provided it and how to build it."""

    name: str
    kind: Kind
    factory: Callable[..., Any] | str
    summary: str
    plugin: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        """The factory itself, importing it first when it was registered as `"module:attr"`.

        A factory that cannot be had (its module fails to import, even by `sys.exit`, or has
        no such attribute, or it is not callable) is a `PluginError` naming the component.
        """
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except ImportError as exc:  # its message is the plugin's advice: shown as it is
            raise self._unavailable(str(exc)) from exc
        except (Exception, SystemExit) as exc:  # a broken plugin must not end covidzoo
            raise self._unavailable(one_line(exc, with_type=True)) from exc
        if not callable(target):
            raise self._unavailable(f"'{self.factory}' is not callable "
                                    f"(a {type(target).__name__})")
        return target

    def _unavailable(self, reason: str) -> PluginError:
        return PluginError(f"{self.kind} '{self.name}' (plugin '{self.plugin}') is unavailable:"
                           f" {reason}")

    def create(self, **kwargs: Any) -> Any:
        """Build the component; keyword arguments that are `None` are dropped (timm's rule).

        A keyword the factory does not take is bad input naming the component; a factory that
        calls `sys.exit` is a `PluginError`.
        """
        factory = self.load()
        try:
            return factory(**{k: v for k, v in kwargs.items() if v is not None})
        except TypeError as exc:
            if "keyword argument" not in str(exc):
                raise
            raise BadInputError(f"{self.kind} '{self.name}': {one_line(exc, with_type=False)}"
                                ) from exc
        except SystemExit as exc:
            raise PluginError(f"{self.kind} '{self.name}' (plugin '{self.plugin}') is broken:"
                              f" its factory called sys.exit({exc.code!r})") from exc

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (the factory as its import path)."""
        factory = self.factory
        if callable(factory):
            factory = f"{factory.__module__}:{getattr(factory, '__qualname__', repr(factory))}"
        return {
            "name": self.name,
            "kind": self.kind,
            "plugin": self.plugin,
            "summary": self.summary,
            "factory": factory,
            "metadata": _jsonable(dict(self.metadata)),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, ComponentOption):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _input_size(value: Any, dims: int, where: str) -> tuple[int, ...]:
    """A backbone's `input_size` as a tuple of `dims` positive ints, or `RegistrationError`."""
    shape = "(D, H, W)" if dims == 3 else "(H, W)"
    if isinstance(value, (list, tuple)) and len(value) == dims and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value
    ):
        return tuple(int(v) for v in value)
    given = "no input_size" if value is None else f"input_size {value!r}"
    raise RegistrationError(
        f"{where} with {given}; a {dims}D backbone needs input_size={shape}, {dims} positive ints"
    )


def _summary_of(factory: Callable[..., Any] | str) -> str:
    doc = getattr(factory, "__doc__", None) if callable(factory) else None
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


class Registry:
    """Components keyed by (kind, name). Names are unique within a kind."""

    def __init__(self) -> None:
        self._components: dict[tuple[Kind, str], Component] = {}

    def registrar(
        self, kind: Kind, plugin: str, staged: list[Component]
    ) -> Callable[..., None]:
        """The `register` callback handed to one plugin's hook: it stages, `commit` applies.

        It checks each registration at once (a `RegistrationError` naming the plugin and the
        component): a name, a callable or `"module:attr"` factory, a summary for a string
        factory, and a backbone's `spatial_dims` and `input_size`.
        """

        def register(
            name: str,
            factory: Callable[..., Any] | str,
            *,
            summary: str | None = None,
            **metadata: Any,
        ) -> None:
            if not isinstance(name, str) or not name or name != name.strip():
                raise RegistrationError(f"plugin '{plugin}' registered a {kind} with a bad name")
            where = f"plugin '{plugin}' registered {kind} '{name}'"
            if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
                raise RegistrationError(f"{where} without a callable factory")
            if summary is None and not callable(factory):
                # Reading the docstring would import the module: `covidzoo models` would then
                # import torch and every plugin's dependencies just to list names.
                raise RegistrationError(
                    f"{where} with the import path '{factory}' but no summary=; give"
                    " summary='one line' (covidzoo does not import a factory to read its"
                    " docstring)"
                )
            if summary is not None and not isinstance(summary, str):
                raise RegistrationError(f"{where} with a summary that is not a string")
            if kind == "backbone":
                dims = metadata.get("spatial_dims")
                if dims not in (2, 3):
                    raise RegistrationError(f"{where} without spatial_dims 2 or 3")
                metadata["input_size"] = _input_size(metadata.get("input_size"), dims, where)
            if "options" in metadata:
                where_option = f"plugin '{plugin}', {kind} '{name}'"
                metadata["options"] = tuple(
                    ComponentOption.of(o, where_option) for o in metadata["options"] or ())
            staged.append(
                Component(
                    name=name,
                    kind=kind,
                    factory=factory,
                    summary=summary if summary is not None else _summary_of(factory),
                    plugin=plugin,
                    metadata=MappingProxyType(dict(metadata)),
                )
            )

        return register

    def commit(self, staged: Iterable[Component]) -> list[tuple[Component, Component]]:
        """Add one plugin's staged components; returns the clashes `(dropped, kept)`.

        A component whose (kind, name) is already registered is not added: the component
        registered first keeps the name (`covidzoo.plugins.get_registry` commits built-ins
        first, then third-party plugins in name order), and the others are added. A plugin
        that registers one name twice is a `RegistrationError` and nothing of it is added.
        """
        staged = list(staged)
        seen: dict[tuple[Kind, str], Component] = {}
        for comp in staged:
            key = (comp.kind, comp.name)
            if key in seen:
                raise RegistrationError(
                    f"plugin '{comp.plugin}' registered {comp.kind} '{comp.name}' twice"
                )
            seen[key] = comp
        clashes = []
        for key, comp in seen.items():
            other = self._components.get(key)
            if other is not None:
                clashes.append((comp, other))
            else:
                self._components[key] = comp
        return clashes

    def components(
        self, pattern: str | Sequence[str] = "*", kind: Kind | None = None
    ) -> list[Component]:
        """Components whose name matches any fnmatch pattern, sorted by kind order then name."""
        if kind is not None:
            check_kind(kind)
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        found = [
            c
            for c in self._components.values()
            if (kind is None or c.kind == kind)
            and any(fnmatch.fnmatchcase(c.name, p) for p in patterns)
        ]
        return sorted(found, key=lambda c: (KINDS.index(c.kind), c.name))

    def get(self, name: str, kind: Kind) -> Component:
        """The component `name` of `kind`; an unknown name raises with close matches."""
        check_kind(kind)
        comp = self._components.get((kind, name))
        if comp is not None:
            return comp
        names = [n for (k, n) in self._components if k == kind]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        close += [n for n in sorted(names) if n.startswith(name) and n not in close][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        elsewhere = [k for (k, n) in self._components if n == name]
        if elsewhere:
            hint = f"; '{name}' is a registered {elsewhere[0]}, not a {kind}"
        raise UnknownComponentError(
            f"unknown {kind} '{name}'{hint} (run `covidzoo models --kind {kind}` for the list)"
        )


def check_kind(kind: str) -> Kind:
    """`kind` itself when it is a component kind, else a `BadInputError` listing the kinds."""
    if kind not in KINDS:
        raise BadInputError(f"unknown kind '{kind}'; choose from {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]
