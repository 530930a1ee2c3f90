"""Named components (backbones, aggregators, ensemblers, optimizers) and the functions to find them.

The registry is filled by the `register_*` hooks of every loaded plugin (see `covidzoo.plugins`)
and rebuilt whenever the set of registered plugins changes, so a plugin registered at run time
(as tests do) is seen at once. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from .errors import BadInputError, CovidzooError, UnknownComponentError, one_line

Kind = Literal["backbone", "aggregator", "ensembler", "optimizer"]
KINDS: tuple[Kind, ...] = get_args(Kind)

# The hook that registers each kind.
KIND_HOOKS: dict[Kind, str] = {
    "backbone": "register_backbones",
    "aggregator": "register_aggregators",
    "ensembler": "register_ensemblers",
    "optimizer": "register_optimizers",
}


class RegistrationError(CovidzooError):
    """A plugin registered a component wrongly (a name clash, a bad name or metadata)."""


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
        text = str(text)
        if self.type in ("int", "ints"):
            items = text.split(",") if self.type == "ints" else [text]
            if any(not item.strip() for item in items):
                raise BadInputError(f"{self.flag}: '{text}' has an empty item; give "
                                    f"{OPTION_TYPES[self.type]}")
            values = []
            for item in items:
                try:
                    value = int(item.strip())
                except ValueError:
                    raise BadInputError(f"{self.flag}: '{item}' is not an integer") from None
                if value <= 0:
                    raise BadInputError(f"{self.flag}: {value} must be positive")
                values.append(value)
            return values if self.type == "ints" else values[0]
        if self.type == "float":
            try:
                value = float(text.strip())
            except ValueError:
                raise BadInputError(f"{self.flag}: '{text}' is not a number") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise BadInputError(f"{self.flag}: {text} is not a finite number")
            return value
        if self.type == "strs":
            names = [n.strip() for n in text.split(",")]
            if not all(names):
                raise BadInputError(f"{self.flag}: '{text}' has an empty item")
            return names
        return text

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
        """The factory itself, importing it first when it was registered as `"module:attr"`."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except ImportError as exc:
            raise CovidzooError(
                f"{self.kind} '{self.name}' (plugin '{self.plugin}') is unavailable: {exc}"
            ) from exc
        return target

    def create(self, **kwargs: Any) -> Any:
        """Build the component; keyword arguments that are `None` are dropped (timm's rule).

        A keyword the factory does not take is bad input naming the component.
        """
        factory = self.load()
        try:
            return factory(**{k: v for k, v in kwargs.items() if v is not None})
        except TypeError as exc:
            if "keyword argument" not in str(exc):
                raise
            raise BadInputError(f"{self.kind} '{self.name}': {one_line(exc, with_type=False)}"
                                ) from exc

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
        """The `register` callback handed to one plugin's hook: it stages, `commit` applies."""

        def register(
            name: str,
            factory: Callable[..., Any] | str,
            *,
            summary: str | None = None,
            **metadata: Any,
        ) -> None:
            if not isinstance(name, str) or not name or name != name.strip():
                raise RegistrationError(f"plugin '{plugin}' registered a {kind} with a bad name")
            if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
                raise RegistrationError(
                    f"plugin '{plugin}' registered {kind} '{name}' without a callable factory"
                )
            if kind == "backbone" and metadata.get("spatial_dims") not in (2, 3):
                raise RegistrationError(
                    f"plugin '{plugin}' registered backbone '{name}' without spatial_dims 2 or 3"
                )
            if "options" in metadata:
                where = f"plugin '{plugin}', {kind} '{name}'"
                metadata["options"] = tuple(
                    ComponentOption.of(o, where) for o in metadata["options"] or ())
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

    def commit(self, staged: Iterable[Component]) -> None:
        """Add a plugin's staged components all together, or none if one clashes."""
        staged = list(staged)
        seen: dict[tuple[Kind, str], Component] = {}
        for comp in staged:
            key = (comp.kind, comp.name)
            other = self._components.get(key) or seen.get(key)
            if other is not None:
                raise RegistrationError(
                    f"{comp.kind} '{comp.name}' is registered by both plugin '{other.plugin}'"
                    f" and plugin '{comp.plugin}'"
                )
            seen[key] = comp
        self._components.update(seen)

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
