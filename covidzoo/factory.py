"""Building models by name: the registry's backbones and aggregators, and checkpoints.

timm keeps `create_model` in `_factory.py`; covidzoo does the same, so that the package face
(`covidzoo/__init__.py`) only re-exports. Nothing here imports torch at module level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import BadInputError, CovidzooError, PluginError
from .registry import Component, Kind, check_kind

if TYPE_CHECKING:
    from torch import nn

    from .checkpoint import ModelSpec

# The aggregator of a backbone whose metadata names no `default_aggregator`, by spatial_dims.
DEFAULT_AGGREGATORS: dict[int, str] = {3: "volume", 2: "slice-mean"}
# The scan size covidzoo preprocesses to when nothing else says: 64 x 224 x 224 keeps the lungs'
# 3D structure at a size a 3D network trains on in batches (the built-in 3D RegNets' input).
DEFAULT_SCAN_SIZE: tuple[int, int, int] = (64, 224, 224)
# Slices per scan for a 2D backbone, whose `input_size` is one slice (H, W).
DEFAULT_SLICES = DEFAULT_SCAN_SIZE[0]
# The side of the (meta-device) probe that measures how much a backbone reduces its input.
PROBE_SIDE = 1024


def list_models(
    pattern: str | list[str] | tuple[str, ...] = "*", kind: Kind | None = None
) -> list[str]:
    """Names of the registered components matching an fnmatch `pattern` (one or several).

    `kind` narrows the list to "backbone", "aggregator", "ensembler" or "optimizer".
    """
    return sorted({c.name for c in list_components(pattern, kind)})


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


def compatible_aggregators(backbone: str) -> list[str]:
    """Names of the aggregators that can wrap the backbone `backbone` (same `spatial_dims`).

    An aggregator registered without `spatial_dims` wraps anything.
    """
    dims = spatial_dims(backbone)
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


def spatial_dims(backbone: str) -> int:
    """3 for a volume backbone, 2 for a slice backbone (its registration says which)."""
    return int(get_component(backbone, "backbone").metadata["spatial_dims"])


def default_scan_size(backbone: str) -> tuple[int, int, int]:
    """The scan (D, H, W) a backbone is fed by default: its `input_size`, with
    `DEFAULT_SLICES` slices in front for a 2D backbone."""
    meta = get_component(backbone, "backbone").metadata
    size = tuple(int(s) for s in meta["input_size"])
    if meta["spatial_dims"] == 2:
        return (DEFAULT_SLICES, *size[-2:])  # type: ignore[return-value]
    return size  # type: ignore[return-value]


def create_model(
    name: str,
    *,
    aggregator: str | None = None,
    aggregator_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
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
    inner = require_module(backbone.create(**kwargs), backbone)
    return require_module(wrapper.create(backbone=inner, **(aggregator_args or {})), wrapper)


def require_module(model: Any, component: Component) -> Any:
    """`model` itself when it is a torch `nn.Module`; else the plugin that made it is broken
    (`PluginError`, one line naming the component and its plugin)."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise PluginError(
            f"{component.kind} '{component.name}' (plugin '{component.plugin}') is broken: its"
            f" factory returned a {type(model).__name__}, not a torch nn.Module")
    return model


def check_scan_size(backbone: str, size: Sequence[int], model_args: dict[str, Any] | None = None,
                    aggregator: str | None = "auto",
                    aggregator_args: dict[str, Any] | None = None) -> None:
    """Raise `BadInputError` when scans of `size` (D, H, W) are too small for the model that
    `create_model(backbone, aggregator=..., **model_args)` builds.

    Too small means that the model fails on such a scan, or that the scan is smaller than the
    backbone's total reduction (measured from `forward_features` on a large input) in every
    dimension, so that all of it is less than one cell of the last feature map. Smaller in some
    dimensions only is allowed: strided convolutions pad, and thin scans (8x32x32) are how
    tests and demos train in seconds. The model is built and run on the meta device, which
    computes shapes and nothing else: cheap for any model, and no weights are made. A model
    that cannot be built or run there is not checked (building it for real reports why).
    """
    import torch

    from .errors import one_line

    size = tuple(int(s) for s in size)
    args = dict(model_args or {})
    channels = int(args.get("in_chans", 1))
    dims = spatial_dims(backbone)
    shown = "x".join(map(str, size))
    try:
        with torch.device("meta"):
            model = create_model(backbone, aggregator=aggregator,
                                 aggregator_args=aggregator_args, **args).eval()
    except CovidzooError:
        raise
    except Exception:
        return
    try:
        with torch.no_grad():
            reduction = _reduction(model, channels, dims)
            if reduction is not None and all(
                s < r for s, r in zip(size[-dims:], reduction, strict=True)
            ):
                raise BadInputError(
                    f"scans of {shown} are too small for '{backbone}': it reduces "
                    f"{'x'.join(map(str, reduction))}, so at least one of "
                    f"{'D,H,W' if dims == 3 else 'H,W'} must reach that"
                )
            model(torch.empty(1, channels, *size, device="meta"))
    except NotImplementedError:  # an operator without a meta kernel: cannot check here
        return
    except RuntimeError as exc:
        if "meta" in str(exc):  # a value was read (`.item()`): shapes alone cannot tell
            return
        raise BadInputError(
            f"scans of {shown} do not fit '{backbone}': {one_line(exc, with_type=False)}"
        ) from exc


def _reduction(model: Any, channels: int, dims: int) -> list[int] | None:
    """How much the backbone inside `model` (on the meta device) reduces each spatial
    dimension, from its `forward_features` on a `PROBE_SIDE` input; None without one."""
    import torch

    bare = getattr(model, "backbone", model)
    if not hasattr(bare, "forward_features"):
        return None
    probe = torch.empty(1, channels, *([PROBE_SIDE] * dims), device="meta")
    shape = bare.forward_features(probe).shape[2:]
    return [PROBE_SIDE // max(s, 1) for s in shape] if len(shape) == dims else None


def load_checkpoint(path: str, device: Any = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model stored in a covidzoo `.safetensors` checkpoint: `(model, spec)`.

    The file carries the backbone's registry name, its arguments, the aggregator, the
    preprocessing and the decision threshold (`spec`), so no other file is needed. Pickle files
    are refused, never loaded.
    """
    from .checkpoint import load_checkpoint as load

    return load(path, device=device)
