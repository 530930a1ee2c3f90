"""Training recipes: a `TrainConfig` as a file, and the named recipes shipped with covidzoo.

A configuration file (`covidzoo train --config FILE`) is TOML or JSON, told by its suffix. Its
keys are the fields of `covidzoo.train.TrainConfig`, read from the dataclass at run time, and
its values must have the fields' types (a number for `lr`, a list of three integers for
`size`, a table for `model_args`, `aggregator_args`, `optimizer_args` and `preprocess`, whose
keys are `PreprocessConfig`'s but `size`). An unknown key or a wrong type is bad input naming
the file and the key.

A run's `config.json` is a valid configuration. It is a run record (it holds
`covidzoo_version`), and a record's other keys are accepted and ignored: the ones
`Trainer._resolved_config` adds that are no fields (`RECORD_KEYS`), and the fields whose
recorded value belongs to that run rather than to its recipe (`RECORD_IGNORED_FIELDS`: its run
folder, whether it was resumed, the device it resolved). The resolved `epochs` and `size` are
kept, so a record trains the run it records again.

Named recipes are TOML files in `covidzoo/recipe_files/`, each opening with a comment that
cites its source; none names a data path.

Values come in layers, each overriding the ones before: `TrainConfig`'s defaults, a recipe, a
configuration file, the command line's flags (`merge`). A table merges key by key, except that
`model_args`, `aggregator_args` and `optimizer_args` belong to the backbone, aggregator and
optimizer they are for (`OWNED_TABLES`): a layer that names another one drops the earlier
layers' table.

Nothing here imports torch until a configuration is checked against `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from .train import TrainConfig

# Where the shipped recipes live, inside the package (wheel: [tool.setuptools.package-data]).
RECIPE_FOLDER = "recipe_files"
RECIPE_SUFFIX = ".toml"
# The formats of a configuration file, by suffix.
FORMATS = {".toml": "TOML", ".json": "JSON"}
# A file holding this key is a run record: a run's config.json.
RECORD_MARK = "covidzoo_version"
# The keys `Trainer._resolved_config` writes besides the fields: how the run was executed (the
# resolved precision, layout, compile mode, workers, threads, processes), what it built (the
# model spec, the augmentation's ranges), what it read (the data source, scan counts) and who
# wrote it. A record's are ignored: a new run resolves its own.
RECORD_KEYS = frozenset({
    "precision_resolved", "channels_last_resolved", "compile_mode_resolved", "workers_resolved",
    "threads_resolved", "world_size", "model", "augment_config", "data_source", "n_train",
    "n_val", "covidzoo_version",
})
# Fields a record holds for its own run, not for its recipe: the run folder (taken: a new run
# needs its own --out), whether that run was resumed, and the device rank 0 resolved (written
# over what was asked, so `cuda:0` on any GPU machine, or on every torchrun process).
RECORD_IGNORED_FIELDS = frozenset({"out", "resume", "device"})
# Tables that hold the keywords of one named component: the field naming it owns them.
OWNED_TABLES = {"model_args": "backbone", "aggregator_args": "aggregator",
                "optimizer_args": "optimizer"}
NO_BACKBONE = "no backbone: give BACKBONE, or a --recipe or --config that names one"


# --- configuration files -----------------------------------------------------------------------


def read_config(path: str | Path) -> dict[str, Any]:
    """The `TrainConfig` values a configuration file sets (TOML or JSON, by suffix), checked."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BadInputError(f"{path}: a configuration is a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise BadInputError(f"{path}: unreadable ({reason})") from None
    return check_values(_parse(text, kind, str(path)), str(path))


def _parse(text: str, kind: str, where: str) -> dict[str, Any]:
    if kind == "TOML":
        tomllib = _tomllib()
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BadInputError(f"{where}: not valid TOML ({exc})") from None
    else:
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise BadInputError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise BadInputError(f"{where}: not a table of settings (a JSON object)")
    return values


def _tomllib() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise BadInputError("reading TOML needs Python 3.11 or the tomli package "
                                "(pip install tomli)") from None
    return tomllib


def check_values(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`values` (a parsed file, named `where` in errors) as `TrainConfig` keywords: every key a
    field, every value of the field's type (ints taken as floats, lists as tuples); a run
    record's own keys dropped (`RECORD_KEYS`, `RECORD_IGNORED_FIELDS`)."""
    types_ = field_types()
    record = RECORD_MARK in values
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if record and key in RECORD_KEYS | RECORD_IGNORED_FIELDS:
            continue
        if key not in types_:
            close = difflib.get_close_matches(key, types_, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"the keys are {', '.join(types_)}"
            raise BadInputError(f"{where}: unknown key '{key}' ({hint})")
        converted = _coerce(value, types_[key])
        if converted is _NO_FIT:
            raise BadInputError(f"{where}: {key} must be {_describe(types_[key])}, got "
                                f"{_shown(value)}")
        checked[key] = converted
    if checked.get("preprocess"):
        _check_preprocess(checked["preprocess"], where)
    return checked


def field_types() -> dict[str, Any]:
    """`TrainConfig`'s fields and their types, in the dataclass's order."""
    from .train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _check_preprocess(steps: dict[str, Any], where: str) -> None:
    from .data.preprocess import PreprocessConfig

    known = [f.name for f in dataclasses.fields(PreprocessConfig) if f.name != "size"]
    for key in steps:
        if key == "size":
            raise BadInputError(f"{where}: preprocess.size: the size is the key 'size'")
        if key not in known:
            raise BadInputError(f"{where}: unknown key 'preprocess.{key}' (the steps are "
                                f"{', '.join(known)})")
    try:
        PreprocessConfig(**steps)
    except (TypeError, ValueError) as exc:  # BadInputError is a ValueError
        raise BadInputError(f"{where}: preprocess: {exc}") from None


_NO_FIT = object()


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as a field of type `hint` holds it (an integer for a float, a list for a tuple),
    or `_NO_FIT`. A type this does not know takes anything: `TrainConfig.check` and the run
    judge it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            converted = _coerce(value, arg)
            if converted is not _NO_FIT:
                return converted
        return _NO_FIT
    if hint is Any:
        return value
    if hint is type(None):
        return value if value is None else _NO_FIT
    if hint is bool or hint is str:
        return value if isinstance(value, hint) else _NO_FIT
    if hint is int or hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float) if hint is float else int):
            return _NO_FIT
        return hint(value)
    if origin is dict:
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        return dict(value) if ok else _NO_FIT
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return _NO_FIT
        if args and (origin is list or args[-1] is Ellipsis):
            args = (args[0],) * len(value)
        elif args and len(args) != len(value):
            return _NO_FIT
        items = [_coerce(v, t) for v, t in zip(value, args, strict=True)] if args else value
        return _NO_FIT if any(i is _NO_FIT for i in items) else origin(items)
    return value


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(hint: Any) -> str:
    """What a value of type `hint` is, for an error (null left out: TOML leaves the key out)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is dict:
        return "a table"
    if origin in (tuple, list):
        if args and args[-1] is not Ellipsis and origin is tuple and len(set(args)) == 1:
            item = _NAMES.get(args[0], "value").split(" ")[-1]
            return f"a list of {len(args)} {item}s"
        return "a list"
    return _NAMES.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """`TrainConfig` keywords from layers of values, each overriding the ones before: tables key
    by key, but an owned table (`OWNED_TABLES`) starts anew where a layer names another owner."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for table, owner in OWNED_TABLES.items():
            if owner in layer and owner in merged and layer[owner] != merged[owner]:
                merged.pop(table, None)
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def train_config(values: Mapping[str, Any]) -> TrainConfig:
    """The `TrainConfig` of merged values, which must name a backbone."""
    from .train import TrainConfig

    if not values.get("backbone"):
        raise BadInputError(NO_BACKBONE)
    return TrainConfig(**values)


# --- named recipes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """A recipe shipped with covidzoo: its name, the source it cites (the file's first comment
    line), its TOML text and the values the text sets."""

    name: str
    source: str
    text: str
    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "config": self.values}

    def settings(self) -> str:
        """Its values but the backbone, as `key=value` (tables spread out, lists with commas)."""
        flat: dict[str, Any] = {}
        for key, value in self.values.items():
            if key != "backbone":
                flat.update(value if isinstance(value, dict) else {key: value})
        return " ".join(f"{k}={_plain(v)}" for k, v in flat.items())


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_plain(v) for v in value)
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _folder() -> Traversable:
    return resources.files("covidzoo").joinpath(RECIPE_FOLDER)


def recipe_names() -> list[str]:
    """The names of the shipped recipes, sorted."""
    return sorted(entry.name[: -len(RECIPE_SUFFIX)] for entry in _folder().iterdir()
                  if entry.name.endswith(RECIPE_SUFFIX))


def get_recipe(name: str) -> Recipe:
    """The shipped recipe `name`; an unknown name is bad input listing the known ones."""
    names = recipe_names()
    if name not in names:
        raise BadInputError(f"unknown recipe '{name}'; the recipes are {', '.join(names)} "
                            "(see `covidzoo recipes`)")
    text = _folder().joinpath(name + RECIPE_SUFFIX).read_text(encoding="utf-8")
    source = next((line.lstrip("#").strip() for line in text.splitlines()
                   if line.startswith("#")), "")
    values = _parse(text, "TOML", f"recipe '{name}'")
    return Recipe(name=name, source=source.removeprefix("Source:").strip(), text=text,
                  values=values)


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, by name."""
    return [get_recipe(name) for name in recipe_names()]


def recipe_config(name: str) -> dict[str, Any]:
    """The `TrainConfig` values recipe `name` sets, checked."""
    return check_values(get_recipe(name).values, f"recipe '{name}'")
