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
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import BadInputError, CovidzooError, UnknownComponentError, one_line
from .fileio import atomic_write, atomic_write_text
from .values import (
    BINARY_CLASSES,
    check_classes,
    check_temperature,
    is_probability,
    printable_errors,
)

METADATA_KEY = "covidzoo"
FORMAT_VERSION = 1


# The components a checkpoint's provenance covers: the spec attribute, which is also the kind.
PROVENANCE_ROLES = ("backbone", "aggregator")
# Model arguments that say where initial weights come from. A checkpoint holds its weights, so
# they are dropped when one is loaded: metadata must not make covidzoo open another file.
WEIGHT_SOURCE_ARGS = ("pretrained_path",)
# The most voxels a checkpoint's recorded scan size may ask for (1024^3 uint8 voxels: 1 GiB a
# scan): more is a corrupt or hostile file, not a CT scan.
MAX_SCAN_VOXELS = 1024**3


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
    # The class names by label (`covidzoo.task`): a checkpoint written before there were more
    # than two classes is binary.
    classes: list[str] = field(default_factory=lambda: list(BINARY_CLASSES))
    # A temperature fitted by `covidzoo calibrate` (logits are divided by it); None: none.
    temperature: float | None = None

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
        recorded provenance, the message names the package to install. A factory that returns
        no torch module raises `PluginError`.
        """
        from .factory import create_model, get_component, require_module

        self.check_components()
        model = create_model(
            self.backbone,
            aggregator=self.aggregator,
            aggregator_args=dict(self.aggregator_args),
            **self.model_args,
        )
        return require_module(model, get_component(self.backbone, "backbone"))

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
            "classes": list(self.classes),
            "temperature": self.temperature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """The spec `to_dict` wrote. Metadata is untrusted: a field of the wrong type, a
        threshold that is not a number in [0, 1] or a scan size past `MAX_SCAN_VOXELS` is a
        `BadInputError` naming the field."""
        if not isinstance(data, Mapping):
            raise BadInputError(f"metadata is a JSON {type(data).__name__}, not an object")
        backbone, aggregator = data.get("backbone"), data.get("aggregator")
        if not (isinstance(backbone, str) and backbone):
            raise BadInputError(f"backbone {backbone!r} is not a name")
        if not (aggregator is None or isinstance(aggregator, str)):
            raise BadInputError(f"aggregator {aggregator!r} is not a name")
        spec = cls(
            backbone=backbone,
            model_args=_mapping(data, "model_args"),
            aggregator=aggregator,
            aggregator_args=_mapping(data, "aggregator_args"),
            preprocess=_mapping(data, "preprocess"),
            threshold=_threshold_of(data.get("threshold")),
            extra=_mapping(data, "extra"),
            provenance=_provenance_of(data.get("provenance")),
            classes=list(check_classes(data.get("classes", BINARY_CLASSES))),
            temperature=check_temperature(data.get("temperature")),
        )
        _check_preprocess(spec.preprocess)
        outputs = spec.model_args.get("num_classes", 1)
        if len(spec.classes) > 2 and outputs != len(spec.classes):
            raise BadInputError(f"{len(spec.classes)} classes but num_classes {outputs!r}")
        return spec


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`data[key]` as a dict ({} when absent or null); any other type is bad input."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadInputError(f"{key} is a JSON {type(value).__name__}, not an object")
    return dict(value)


def _threshold_of(value: Any) -> float | None:
    """A stored decision threshold: None, or a finite number in [0, 1]."""
    if value is None:
        return None
    if not is_probability(value):
        raise BadInputError(f"threshold {value!r} is not a number in [0, 1]")
    return float(value)


def _check_preprocess(preprocess: dict[str, Any]) -> None:
    """The recorded preprocessing must be a valid config of a scan size a CT scan can have."""
    from .data.preprocess import PreprocessConfig

    try:
        config = PreprocessConfig.from_dict(preprocess)
    except BadInputError as exc:
        raise BadInputError(f"preprocess: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadInputError(f"preprocess: malformed ({exc})") from None
    size = config.size
    if not all(math.isfinite(w) for w in config.window):  # NaN would make every voxel NaN
        raise BadInputError(f"preprocess: window {list(config.window)} is not finite")
    if math.prod(size) > MAX_SCAN_VOXELS:
        raise BadInputError(f"preprocess: scan size {'x'.join(map(str, size))} is more than "
                            f"{MAX_SCAN_VOXELS:,} voxels")


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
    try:
        if path.is_dir():
            raise BadInputError(f"{path}: a folder, not a checkpoint file")
        if not path.is_file():
            raise BadInputError(f"{path}: no such checkpoint file")
        with path.open("rb") as fh:
            head = fh.read(9)
    except (OSError, ValueError) as exc:  # unreadable, or a name the system cannot take
        raise BadInputError(f"{path}: cannot read the checkpoint "
                            f"({one_line(exc, with_type=False)})") from None
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


@printable_errors()
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
        data = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as exc:
        raise BadInputError(f"{path}: corrupt covidzoo metadata ({exc})") from None
    try:
        return ModelSpec.from_dict(data)
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from None


@printable_errors()
def load_checkpoint(path: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, ModelSpec]:
    """Rebuild the model stored in `path` with its weights; returns `(model, spec)`.

    Nothing in the file is trusted. The spec is checked as it is read (`read_spec`); arguments
    naming other weight files (`WEIGHT_SOURCE_ARGS`) are dropped, since the weights are in the
    file; the model is first built on the meta device (no memory) and must have exactly the
    tensors the file lists, shape for shape, so that a spec asking for a huge model is refused
    before anything is allocated; tensors holding NaN or infinity are refused.
    """
    from safetensors.torch import load_file

    path = Path(path)
    spec = read_spec(path)
    try:
        spec.check_components()
    except UnknownComponentError as exc:
        raise UnknownComponentError(f"{path}: {exc}") from exc
    to_build = replace(spec, model_args={k: v for k, v in spec.model_args.items()
                                         if k not in WEIGHT_SOURCE_ARGS})
    try:
        _check_fits_file(path, to_build)
        model = to_build.build()
    except BadInputError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors' own error type is not public
        raise BadInputError(f"{path}: unreadable safetensors file ({exc})") from None
    _check_finite(path, state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit, where the meta check could not run
        raise BadInputError(f"{path}: weights do not fit model '{spec.backbone}' "
                            f"({one_line(exc, with_type=False)})") from None
    if missing or unexpected:
        raise BadInputError(
            f"{path}: weights do not fit model '{spec.backbone}'"
            f" (missing {len(missing)}, unexpected {len(unexpected)}, e.g."
            f" {(list(missing) + list(unexpected))[0]})"
        )
    return model.to(device), spec


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, read from the safetensors header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            names = list(fh.keys())  # noqa: SIM118 (the handle itself is not iterable)
            return {key: tuple(fh.get_slice(key).get_shape()) for key in names}
    except Exception as exc:  # safetensors' own error type is not public
        raise BadInputError(f"unreadable safetensors file ({exc})") from None


def _check_fits_file(path: Path, spec: ModelSpec) -> None:
    """The model `spec` builds, built on the meta device (shapes only, no memory), must hold
    exactly the tensors of the file at `path`: a spec that asks for more than the file holds
    (absurd widths in hostile metadata) is refused before a byte is allocated. A model that
    cannot be built on the meta device is not checked here (its own config bounds it)."""
    import torch

    try:
        with torch.device("meta"):
            model = spec.build()
    except CovidzooError:
        raise
    except Exception:
        return
    if not isinstance(model, torch.nn.Module):
        return  # `build` itself refuses it
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = _file_shapes(path)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    if missing or unexpected:
        raise BadInputError(
            f"weights do not fit model '{spec.backbone}' (missing {len(missing)}, unexpected"
            f" {len(unexpected)}, e.g. {(missing + unexpected)[0]})")
    for key, shape in want.items():
        if have[key] != shape:
            raise BadInputError(
                f"weights do not fit model '{spec.backbone}': '{key}' is "
                f"{'x'.join(map(str, have[key])) or 'a scalar'} in the file, the model's is "
                f"{'x'.join(map(str, shape)) or 'a scalar'}")


def _check_finite(path: Path, state: Mapping[str, Any]) -> None:
    """Weights holding NaN or infinity give garbage, not probabilities: refused."""
    import torch

    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BadInputError(f"{path}: tensor '{key}' holds NaN or infinite values")


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
    """Where the resume state of `checkpoint` lives: (tensors file, JSON file), beside the file
    itself: a run folder's `last.safetensors` is a link into its current generation, and the
    state is read from that same generation."""
    base = Path(checkpoint)
    if base.is_symlink():
        base = base.resolve()
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
    """The training state saved by `save_state` beside `checkpoint`; a `BadInputError` naming
    the file when either part is missing, unreadable or does not fit the other."""
    from safetensors.torch import load_file

    tensor_path, json_path = state_paths(checkpoint)
    if not (tensor_path.is_file() and json_path.is_file()):
        raise BadInputError(f"{checkpoint}: no training state beside it to resume from")
    try:
        skeleton = json.loads(json_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{json_path}: corrupt training state ({exc})") from None
    _check_safetensors(tensor_path)
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # safetensors' own error type is not public
        raise BadInputError(f"{tensor_path}: unreadable training state ({exc})") from None
    try:
        state = _join_tensors(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"{json_path}: does not fit {tensor_path.name} ({exc})") from None
    if not isinstance(state, dict):
        raise BadInputError(f"{json_path}: corrupt training state (not a mapping)")
    return state
