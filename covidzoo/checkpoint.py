"""Checkpoints: `.safetensors` files that carry their own model configuration.

A checkpoint holds the model's tensors and, in the safetensors metadata under the key
`covidzoo`, a JSON document with the backbone's registry name, the keyword arguments that
rebuild it, the aggregator, the preprocessing, the decision threshold, the covidzoo version and
the provenance of the backbone and the aggregator (the plugin and the installed package, with
its version, that provided each). `load_checkpoint(path)` rebuilds the model from the file
alone; a component no loaded plugin provides any more is an error that says what to install.
Nothing is ever unpickled.

Training state for `--resume` (optimizer, grad scaler, scheduler, RNG) lives beside the model
in `NAME.state.safetensors` (tensors) and `NAME.state.json` (everything else).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import BadInputError, UnknownComponentError
from .fileio import atomic_write, atomic_write_text

METADATA_KEY = "covidzoo"
FORMAT_VERSION = 1


# The components a checkpoint's provenance covers: the spec attribute, which is also the kind.
PROVENANCE_ROLES = ("backbone", "aggregator")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model and to feed it: stored in every checkpoint.

    `provenance` maps each component role ("backbone", "aggregator") to where it came from,
    `{"plugin", "package", "version"}` (`covidzoo.plugins.provenance`); `save_checkpoint` fills
    it in, and a checkpoint written before it existed loads with `{}`.
    """

    backbone: str
    model_args: dict[str, Any] = field(default_factory=dict)
    aggregator: str | None = None
    aggregator_args: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def _components(self) -> list[tuple[str, str]]:
        """`(role, registry name)` of the spec's components; `aggregator="auto"` is resolved
        as `create_model` does, once the backbone is known."""
        found = [("backbone", self.backbone)]
        if self.aggregator == "auto":
            from .factory import default_aggregator

            with contextlib.suppress(UnknownComponentError):
                found.append(("aggregator", default_aggregator(self.backbone)))
        elif self.aggregator is not None:
            found.append(("aggregator", self.aggregator))
        return found

    def check_components(self, source: str = "the checkpoint") -> None:
        """Raise `UnknownComponentError` for a backbone or aggregator no loaded plugin provides,
        saying which package `source` was made with (when its provenance says so)."""
        from .factory import get_component
        from .plugins import missing_component_message

        for role, name in self._components():
            try:
                get_component(name, role)  # type: ignore[arg-type]
            except UnknownComponentError as exc:
                message = missing_component_message(role, name, self.provenance.get(role),
                                                    source)
                if message is None:
                    raise
                raise UnknownComponentError(message) from exc

    def with_provenance(self) -> ModelSpec:
        """A copy whose provenance records the plugins that provide its components now (a
        component that is not registered keeps what was recorded)."""
        from .factory import get_component
        from .plugins import provenance

        names = dict(self._components())
        recorded = {k: v for k, v in self.provenance.items()
                    if k in names or k not in PROVENANCE_ROLES}
        for role, name in names.items():
            with contextlib.suppress(UnknownComponentError):  # keeps what was recorded
                recorded[role] = provenance(get_component(name, role))  # type: ignore[arg-type]
        return replace(self, provenance=recorded)

    def build(self) -> Any:
        """A fresh, randomly initialised model of this spec (through the registry).

        A backbone or aggregator that is not registered raises `UnknownComponentError`; with a
        recorded provenance, the message names the package to install.
        """
        from .factory import create_model

        self.check_components()
        return create_model(
            self.backbone,
            aggregator=self.aggregator,
            aggregator_args=dict(self.aggregator_args),
            **self.model_args,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "covidzoo_version": __version__,
            "backbone": self.backbone,
            "model_args": self.model_args,
            "aggregator": self.aggregator,
            "aggregator_args": self.aggregator_args,
            "preprocess": self.preprocess,
            "threshold": self.threshold,
            "extra": self.extra,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(
            backbone=data["backbone"],
            model_args=dict(data.get("model_args") or {}),
            aggregator=data.get("aggregator"),
            aggregator_args=dict(data.get("aggregator_args") or {}),
            preprocess=dict(data.get("preprocess") or {}),
            threshold=data.get("threshold"),
            extra=dict(data.get("extra") or {}),
            provenance=_provenance_of(data.get("provenance")),
        )


def _provenance_of(value: Any) -> dict[str, Any]:
    """The stored provenance, tolerant: anything but a mapping of mappings is left out."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): dict(v) for k, v in value.items() if isinstance(v, Mapping)}


def unwrap_model(model: Any) -> Any:
    """The plain module inside DistributedDataParallel and `torch.compile` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_checkpoint(path: str | os.PathLike[str], model: Any, spec: ModelSpec) -> Path:
    """Write `model`'s weights and `spec` to `path` atomically, with the provenance of the
    spec's components (`ModelSpec.with_provenance`)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in unwrap_model(model).state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(spec.with_provenance().to_dict())}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file before a library gets to parse it."""
    if not path.is_file():
        raise BadInputError(f"{path}: no such checkpoint file")
    with path.open("rb") as fh:
        head = fh.read(9)
    # A safetensors file is an 8-byte little-endian header length, then the JSON header. Test
    # that first: the length's low byte can be 0x80 or its low bytes "PK", like pickle magic.
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if head[8:9] == b"{" and 8 + header_len <= path.stat().st_size:
        return
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        raise BadInputError(
            f"{path}: a pickle (torch.save) file; refused, covidzoo never unpickles checkpoints"
        )
    raise BadInputError(f"{path}: not a safetensors file")


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The `ModelSpec` stored in a checkpoint, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    _check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:
        raise BadInputError(f"{path}: unreadable safetensors file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise BadInputError(f"{path}: a safetensors file, but not a covidzoo checkpoint")
    try:
        return ModelSpec.from_dict(json.loads(metadata[METADATA_KEY]))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"{path}: corrupt covidzoo metadata ({exc})") from exc


def load_checkpoint(path: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, ModelSpec]:
    """Rebuild the model stored in `path` with its weights; returns `(model, spec)`."""
    from safetensors.torch import load_file

    spec = read_spec(path)
    try:
        spec.check_components()
    except UnknownComponentError as exc:
        raise UnknownComponentError(f"{path}: {exc}") from exc
    model = spec.build()
    state = load_file(str(path), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BadInputError(
            f"{path}: weights do not fit model '{spec.backbone}'"
            f" (missing {len(missing)}, unexpected {len(unexpected)}, e.g."
            f" {(list(missing) + list(unexpected))[0]})"
        )
    return model.to(device), spec


# --- training state for --resume ---------------------------------------------------------------


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, Any]) -> Any:
    """Replace every tensor in a nested structure by a `{"__tensor__": key}` reference."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().contiguous().cpu()
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"cannot store keys of {prefix}")
        return {
            "__dict__": [
                [k, _split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()
            ]
        }
    if isinstance(obj, (list, tuple)):
        items = [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    import numpy as np

    if isinstance(obj, np.ndarray):
        return _split_tensors(torch.from_numpy(obj.copy()), prefix, tensors) | {
            "__numpy__": True
        }
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix}")


def _join_tensors(obj: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            tensor = tensors[obj["__tensor__"]]
            return tensor.numpy() if obj.get("__numpy__") else tensor
        if "__dict__" in obj:
            return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def state_paths(checkpoint: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where the resume state of `checkpoint` lives: (tensors file, JSON file)."""
    base = Path(checkpoint)
    stem = base.name.removesuffix(".safetensors")
    return base.with_name(f"{stem}.state.safetensors"), base.with_name(f"{stem}.state.json")


def save_state(checkpoint: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Store a nested training state (optimizer, scaler, scheduler, RNG) without pickle."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    skeleton = _split_tensors(dict(state), "s", tensors)
    tensor_path, json_path = state_paths(checkpoint)
    atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp))
    atomic_write_text(json_path, json.dumps(skeleton))


def load_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The training state saved by `save_state` beside `checkpoint`."""
    from safetensors.torch import load_file

    tensor_path, json_path = state_paths(checkpoint)
    if not (tensor_path.is_file() and json_path.is_file()):
        raise BadInputError(f"{checkpoint}: no training state beside it to resume from")
    return _join_tensors(json.loads(json_path.read_text()), load_file(str(tensor_path)))
