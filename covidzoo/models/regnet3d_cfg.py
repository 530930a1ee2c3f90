"""The 3D RegNet configuration: the dataclass, the named configs, the design space, complexity.

Everything here is plain Python (no torch, no numpy), so the registry can describe the models and
`covidzoo models show` can check a configuration without building anything. The network itself
is in `covidzoo.models.regnet3d`, which re-exports these names.

FLOPs convention: the one of `torch.utils.flop_counter.FlopCounterMode`, so the analytic numbers
can be checked against a forward pass. A multiply-add counts as 2 FLOPs; only convolutions and
the linear head are counted (their biases, BatchNorm, ReLU, pooling, the residual addition and
the squeeze-excitation gating are not). Numbers are for a batch of one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BadInputError

# Widths from the design space are quantized to multiples of this (pycls and timm use 8).
WIDTH_QUANTUM = 8
DESIGN_SPACE_FIELDS = ("w0", "wa", "wm", "depth")
# Bounds that keep a configuration from exhausting memory before it is built: a checkpoint's
# metadata or a flag may ask for anything. 2e9 parameters are 8 GB of fp32 weights, several
# times the largest 3D network covidzoo trains; 1024 blocks are ten times the paper's deepest;
# no channel count reaches 2^20 (one 1x1 conv of that width alone is 1e12 parameters). All are
# checked from the configuration alone, before a tensor exists.
MAX_PARAMETERS = 2_000_000_000
MAX_BLOCKS = 1024
MAX_WIDTH = 2**20


@dataclass(frozen=True)
class RegNet3DCfg:
    """A 3D RegNet: stem, stages of residual bottleneck blocks, pooled linear head.

    Give the stages either explicitly (`depths` and `widths`, one value per stage) or through
    the RegNet design space (`w0`, `wa`, `wm`, `depth`: block widths follow the quantized linear
    rule of Radosavovic et al.). `group_widths` is one value for every stage or one per stage.
    """

    depths: tuple[int, ...] | None = None
    widths: tuple[int, ...] | None = None
    group_widths: int | tuple[int, ...] = 8
    bottleneck_ratio: float = 1.0
    se_ratio: float = 0.0
    stem_width: int = 32
    in_chans: int = 1
    num_classes: int = 1
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = True
    w0: int | None = None
    wa: float | None = None
    wm: float | None = None
    depth: int | None = None

    def __post_init__(self) -> None:
        # Lists from JSON or the command line become tuples, so configs compare and hash.
        for name in ("depths", "widths", "group_widths"):
            value = getattr(self, name)
            if isinstance(value, Sequence) and not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists) that `RegNet3DCfg(**d)` turns back into `self`."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


REGNET3D_CFGS: dict[str, RegNet3DCfg] = {
    # Table 1 of the 3D RegNet paper: the best single family, its shallow variant, and a wider
    # first stage (64 channels instead of 48; the stem stays 32).
    "regnet3d": RegNet3DCfg(depths=(2, 6, 12, 4), widths=(48, 128, 256, 512), group_widths=8),
    "regnet3d_shallow": RegNet3DCfg(
        depths=(1, 3, 7, 4), widths=(48, 128, 256, 512), group_widths=8
    ),
    "regnet3d_w64": RegNet3DCfg(depths=(2, 6, 12, 4), widths=(64, 128, 256, 512), group_widths=8),
}


@dataclass(frozen=True)
class StageSpec:
    """One stage as built: `depth` blocks of output `width`, grouped 3x3x3 conv of
    `bottleneck_width` channels in groups of `group_width` channels."""

    depth: int
    width: int
    bottleneck_width: int
    group_width: int

    @property
    def groups(self) -> int:
        return self.bottleneck_width // self.group_width


def generate_regnet(
    w0: int, wa: float, wm: float, depth: int, quantum: int = WIDTH_QUANTUM
) -> tuple[list[int], list[int]]:
    """Stage widths and depths from the RegNet parameters (pycls/timm `generate_regnet`).

    Block j gets the continuous width `w0 + wa * j`, snapped to the nearest `w0 * wm**k` and
    quantized to a multiple of `quantum`; consecutive blocks of equal width form a stage.
    """
    if not (_is_int(w0) and w0 > 0 and w0 % quantum == 0):
        raise BadInputError(f"regnet3d: w0 must be a positive multiple of {quantum}, got {w0}")
    _check_widths("w0", [w0])
    for name, value in (("wa", wa), ("wm", wm)):
        if not _is_finite(value):
            raise BadInputError(f"regnet3d: {name} must be a finite number, got {value!r}")
    if not wa > 0:
        raise BadInputError(f"regnet3d: wa must be positive, got {wa}")
    if not wm > 1:
        raise BadInputError(f"regnet3d: wm must be greater than 1, got {wm}")
    if not (_is_int(depth) and 0 < depth <= MAX_BLOCKS):
        raise BadInputError(
            f"regnet3d: depth must be an integer from 1 to {MAX_BLOCKS}, got {depth}")
    # Python's round() is numpy's (half to even), so this reproduces pycls exactly.
    exponents = [round(math.log((w0 + wa * j) / w0) / math.log(wm)) for j in range(depth)]
    if math.log(w0) + max(exponents) * math.log(wm) > math.log(MAX_WIDTH):  # before w0 * wm**k
        raise BadInputError(f"regnet3d: w0, wa, wm and depth give a width of more than "
                            f"{MAX_WIDTH}")
    block_widths = [int(round(w0 * wm**k / quantum)) * quantum for k in exponents]
    widths: list[int] = []
    depths: list[int] = []
    for width in block_widths:
        if widths and widths[-1] == width:
            depths[-1] += 1
        else:
            widths.append(width)
            depths.append(1)
    return widths, depths


def adjust_block_compatibility(
    widths: Sequence[int], bottleneck_ratio: float, group_widths: Sequence[int]
) -> tuple[list[StageSpec], list[str]]:
    """Make each stage's widths and group width compatible, as pycls does, and say what changed.

    The group width is capped at the bottleneck width, then the bottleneck width is rounded to
    a multiple of the group width (of lcm(group width, ratio) for an integer ratio > 1, so the
    stage width stays an integer) and the stage width follows. Returns the stages (depth 0, to
    be filled in) and one message per adjusted stage; a stage whose bottleneck would have no
    channel cannot be made compatible and raises `BadInputError`.
    """
    stages: list[StageSpec] = []
    messages: list[str] = []
    for i, (width, group_width) in enumerate(zip(widths, group_widths, strict=True), 1):
        if width * bottleneck_ratio > MAX_WIDTH:
            raise BadInputError(f"regnet3d stage {i}: width {width} x bottleneck ratio "
                                f"{bottleneck_ratio} is more than {MAX_WIDTH} channels")
        bottleneck = int(width * bottleneck_ratio)
        if bottleneck < 1:
            raise BadInputError(
                f"regnet3d stage {i}: width {width} x bottleneck ratio {bottleneck_ratio} leaves"
                " no bottleneck channel; raise the width or the bottleneck ratio"
            )
        new_group_width = min(group_width, bottleneck)
        ratio_is_int = bottleneck_ratio > 1 and float(bottleneck_ratio).is_integer()
        multiple = math.lcm(new_group_width, int(bottleneck_ratio)) if ratio_is_int else (
            new_group_width
        )
        new_bottleneck = max(multiple, int(round(bottleneck / multiple) * multiple))
        new_width = int(new_bottleneck / bottleneck_ratio)
        changes = []
        if new_group_width != group_width:
            changes.append(
                f"group width {group_width} -> {new_group_width} (capped at the bottleneck width)"
            )
        if new_bottleneck != bottleneck:
            changes.append(
                f"bottleneck width {bottleneck} -> {new_bottleneck} (a multiple of {multiple})"
            )
        if new_width != width:
            changes.append(f"width {width} -> {new_width}")
        if changes:
            messages.append(f"regnet3d stage {i}: " + ", ".join(changes))
        stages.append(StageSpec(0, new_width, new_bottleneck, new_group_width))
    return stages, messages


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A real number (not a bool, not NaN or infinite): what JSON metadata may fail to be."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive_ints(name: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise BadInputError(f"regnet3d: {name} must be positive integers, got {values!r}")
    values = tuple(values)
    if not values or not all(_is_int(v) and v > 0 for v in values):
        raise BadInputError(f"regnet3d: {name} must be positive integers, got {list(values)}")
    return values


def _check_widths(name: str, values: Sequence[int]) -> None:
    """Channel counts must stay within `MAX_WIDTH` (a huge one would overflow floats)."""
    largest = max(values)
    if largest > MAX_WIDTH:
        shown = str(largest) if largest < 10**12 else f"a {len(str(largest))}-digit number"
        raise BadInputError(f"regnet3d: {name} must be at most {MAX_WIDTH}, got {shown}")


def _check_scalars(cfg: RegNet3DCfg) -> None:
    for name in ("bottleneck_ratio", "se_ratio", "drop_rate", "drop_path_rate"):
        if not _is_finite(getattr(cfg, name)):
            raise BadInputError(
                f"regnet3d: {name} must be a finite number, got {getattr(cfg, name)!r}")
    if not cfg.bottleneck_ratio > 0:
        raise BadInputError(
            f"regnet3d: bottleneck_ratio must be positive, got {cfg.bottleneck_ratio}"
        )
    if not 0 <= cfg.se_ratio < 1:
        raise BadInputError(f"regnet3d: se_ratio must be in [0, 1), got {cfg.se_ratio}")
    for name in ("stem_width", "in_chans"):
        _check_widths(name, _positive_ints(name, [getattr(cfg, name)]))
    if not (_is_int(cfg.num_classes) and cfg.num_classes >= 0):
        raise BadInputError(f"regnet3d: num_classes must be >= 0, got {cfg.num_classes}")
    for name in ("drop_rate", "drop_path_rate"):
        if not 0 <= getattr(cfg, name) < 1:
            raise BadInputError(f"regnet3d: {name} must be in [0, 1), got {getattr(cfg, name)}")


def _check_size(cfg: RegNet3DCfg, stages: Sequence[StageSpec]) -> None:
    """Refuse a network of more than `MAX_PARAMETERS` parameters, counted from the
    configuration alone (its blocks are bounded already): nothing is allocated before this."""
    params = _complexity(cfg, stages, (1, 1, 1))["params"]
    if params > MAX_PARAMETERS:
        raise BadInputError(f"regnet3d: {params:.3g} parameters; at most {MAX_PARAMETERS:.3g}"
                            " (check depths, widths, stem_width, in_chans, num_classes)")


def resolve_stages(cfg: RegNet3DCfg) -> tuple[list[StageSpec], list[str]]:
    """The stages `cfg` builds, and the messages of every compatibility adjustment made.

    Raises `BadInputError` naming the field for an impossible configuration, and for one too
    large to build (more than `MAX_BLOCKS` blocks or `MAX_PARAMETERS` parameters).
    """
    _check_scalars(cfg)
    design = {name: getattr(cfg, name) for name in DESIGN_SPACE_FIELDS}
    if any(v is not None for v in design.values()):
        missing = [name for name, v in design.items() if v is None]
        if missing:
            raise BadInputError(
                f"regnet3d: w0, wa, wm and depth go together; missing {', '.join(missing)}"
            )
        if cfg.depths is not None or cfg.widths is not None:
            raise BadInputError(
                "regnet3d: give either depths and widths or w0, wa, wm and depth, not both"
            )
        widths, depths = generate_regnet(cfg.w0, cfg.wa, cfg.wm, cfg.depth)  # type: ignore[arg-type]
    else:
        if cfg.depths is None or cfg.widths is None:
            raise BadInputError("regnet3d: give depths and widths, or w0, wa, wm and depth")
        depths = list(_positive_ints("depths", cfg.depths))
        widths = list(_positive_ints("widths", cfg.widths))
        _check_widths("widths", widths)
        if sum(depths) > MAX_BLOCKS:  # before anything loops over the blocks
            raise BadInputError(f"regnet3d: {sum(depths)} blocks in all; at most {MAX_BLOCKS}")
        if len(depths) != len(widths):
            raise BadInputError(
                f"regnet3d: depths has {len(depths)} values but widths has {len(widths)}"
            )
    group_widths = cfg.group_widths
    if isinstance(group_widths, int):
        group_widths = (group_widths,)
    group_widths = _positive_ints("group_widths", group_widths)
    if len(group_widths) == 1:
        group_widths = group_widths * len(widths)
    elif len(group_widths) != len(widths):
        raise BadInputError(
            f"regnet3d: group_widths has {len(group_widths)} values; give one, or one per stage"
            f" ({len(widths)})"
        )
    stages, messages = adjust_block_compatibility(widths, cfg.bottleneck_ratio, group_widths)
    stages = [dataclasses.replace(s, depth=d) for s, d in zip(stages, depths, strict=True)]
    _check_size(cfg, stages)
    return stages, messages


def resolve(cfg: RegNet3DCfg) -> tuple[RegNet3DCfg, list[StageSpec], list[str]]:
    """The resolved config, its stages and the compatibility adjustments (see `resolve_cfg`)."""
    stages, messages = resolve_stages(cfg)
    resolved = dataclasses.replace(
        cfg,
        depths=tuple(s.depth for s in stages),
        widths=tuple(s.width for s in stages),
        group_widths=tuple(s.group_width for s in stages),
        **dict.fromkeys(DESIGN_SPACE_FIELDS),
    )
    return resolved, stages, messages


def resolve_cfg(cfg: RegNet3DCfg) -> tuple[RegNet3DCfg, list[str]]:
    """`cfg` with explicit, compatible per-stage depths, widths and group widths.

    The design-space fields are cleared: the result describes the network alone, builds the
    same model with no further adjustment, and is what checkpoints and the registry record.
    Also returns the messages of the adjustments made.
    """
    resolved, _, messages = resolve(cfg)
    return resolved, messages


def make_cfg(name: str, **overrides: Any) -> RegNet3DCfg:
    """The named config `name` with fields overridden by keyword.

    Giving any of `w0`, `wa`, `wm`, `depth` switches to the design space: the named config's
    explicit depths and widths are dropped unless overridden too (which is then an error).
    """
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(RegNet3DCfg)})
    if unknown:
        raise BadInputError(f"regnet3d: unknown option {', '.join(unknown)}")
    base = REGNET3D_CFGS[name]
    if any(overrides.get(k) is not None for k in DESIGN_SPACE_FIELDS):
        base = dataclasses.replace(base, depths=None, widths=None)
    return dataclasses.replace(base, **overrides)


def se_channels(in_width: int, se_ratio: float) -> int:
    """Squeeze-excitation hidden channels: a fraction of the block's input width (pycls)."""
    return max(1, int(round(in_width * se_ratio))) if se_ratio > 0 else 0


def conv_out(size: int, stride: int) -> int:
    """Output size of a conv with kernel 3 and padding 1 (or kernel 1, padding 0) at `stride`."""
    return (size - 1) // stride + 1


def complexity(cfg: RegNet3DCfg, input_size: Sequence[int]) -> dict[str, Any]:
    """Parameters and FLOPs of the network, per part, for one volume of `input_size` (D, H, W).

    Computed from the configuration alone. FLOPs follow `torch.utils.flop_counter` (see the
    module docstring); parameters are the trainable ones (BatchNorm running stats excluded).
    """
    size = tuple(int(s) for s in input_size)
    if len(size) != 3 or min(size) < 1:
        raise BadInputError(f"regnet3d: input size must be three positive sizes D,H,W, got {size}")
    return _complexity(cfg, resolve_stages(cfg)[0], size)


def _complexity(cfg: RegNet3DCfg, stages: Sequence[StageSpec],
                input_size: tuple[int, ...]) -> dict[str, Any]:
    """`complexity` of resolved `stages`, for an `input_size` already checked."""
    size = input_size

    def vol(s: tuple[int, ...]) -> int:
        return math.prod(s)

    def down(s: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(conv_out(n, 2) for n in s)

    def conv(cin: int, cout: int, k: int, groups: int, out: tuple[int, ...]) -> tuple[int, int]:
        weights = cout * (cin // groups) * k**3
        return weights + 2 * cout, 2 * weights * vol(out)  # + BatchNorm weight and bias

    size = down(size)
    stem_params, stem_flops = conv(cfg.in_chans, cfg.stem_width, 3, 1, size)
    parts = [
        {
            "name": "stem",
            "depth": 1,
            "width": cfg.stem_width,
            "bottleneck_width": None,
            "groups": 1,
            "group_width": None,
            "output_shape": [cfg.stem_width, *size],
            "params": stem_params,
            "flops": stem_flops,
        }
    ]
    in_width = cfg.stem_width
    for i, stage in enumerate(stages, 1):
        params = flops = 0
        for j in range(stage.depth):
            out = down(size) if j == 0 else size
            v, w = stage.bottleneck_width, stage.width
            terms = [
                conv(in_width, v, 1, 1, size),
                conv(v, v, 3, stage.groups, out),
                conv(v, w, 1, 1, out),
            ]
            if in_width != w or j == 0:
                terms.append(conv(in_width, w, 1, 1, out))
            se = se_channels(in_width, cfg.se_ratio)
            if se:
                terms.append((v * se + se + se * v + v, 4 * v * se))
            params += sum(p for p, _ in terms)
            flops += sum(f for _, f in terms)
            size, in_width = out, w
        parts.append(
            {
                "name": f"s{i}",
                "depth": stage.depth,
                "width": stage.width,
                "bottleneck_width": stage.bottleneck_width,
                "groups": stage.groups,
                "group_width": stage.group_width,
                "output_shape": [stage.width, *size],
                "params": params,
                "flops": flops,
            }
        )
    n = cfg.num_classes
    parts.append(
        {
            "name": "head",
            "depth": None,
            "width": n,
            "bottleneck_width": None,
            "groups": None,
            "group_width": None,
            "output_shape": [n] if n else [in_width],
            "params": in_width * n + n,
            "flops": 2 * in_width * n,
        }
    )
    return {
        "input_size": [cfg.in_chans, *(int(s) for s in input_size)],
        "params": sum(p["params"] for p in parts),
        "flops": sum(p["flops"] for p in parts),
        "stages": parts,
    }
