"""Preprocessing: a `Volume` to a fixed-size uint8 `D x H x W` array, by a recorded config.

The config goes into the cache index and into every checkpoint, so a model is always fed scans
prepared the way it was trained on. Steps, in order:

1. crop: `crop_slices` / `crop_border` fractions; then, with `crop=lungs` and/or
   `slices=lungs`, to the lungs (`covidzoo.data.lungs.lung_mask`, computed on a coarse in-plane
   grid: only its extent and per-slice area are used);
2. intensity to [0, 1]: a HU window, or /255 for 8-bit slices;
3. fit to `size`: `stretch` resizes the crop to D x H x W (trilinear); `pad` (with `spacing`)
   resamples it to the target voxel spacing and pads or crops around the lungs' centre, so
   physical size is kept;
4. optional contrast enhancement, then round to uint8.

`PreprocessConfig.parse` reads the one command-line spelling every command shares:
`--preprocess crop=lungs,slices=lungs,spacing=1.5,1.5,3` (see docs/data.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..factory import DEFAULT_SCAN_SIZE
from .volume import SLAB, Volume

CONTRASTS = ("none", "stretch", "equalize")
CROPS = ("none", "lungs")
SLICE_RULES = ("all", "lungs")
FITS = ("stretch", "pad")
# The lung mask is computed on a grid at most this many voxels wide in-plane: its extent and
# per-slice area are all that cropping needs, and a 512 x 512 series masks 16 times faster.
MASK_SIDE = 128
# What padding holds (fit=pad): air, which the HU window maps to its darkest value.
PAD_HU = -1000.0
# Keys of `--preprocess` that take several numbers, and how many.
_VECTOR_KEYS = {"window": 2, "spacing": 3}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a scan becomes a model input.

    - `size`: output `(D, H, W)`, by default `covidzoo.factory.DEFAULT_SCAN_SIZE`; pass a
      smaller size for CPU demos.
    - `window`: `(level, width)` in HU for HU input. The lung window -600/1500 spans air-filled
      lung (-1000) to soft tissue (+150), the range where ground-glass opacities (-700 to
      -300 HU) show; bone and metal saturate. 8-bit slice images are passed through (their
      exporter already windowed them).
    - `crop_slices`: fraction of slices dropped at each end (top and bottom): CT series often run
      from abdomen to neck, and the 3D RegNet paper crops to the lungs.
    - `crop_border`: fraction of rows and columns dropped at each side (table, arms, air).
    - `contrast`: "none"; "stretch" maps the 1st-99th percentile to the full range;
      "equalize" equalizes the volume's histogram. The 3D RegNet paper raised contrast to make
      opacities stand out.
    - `crop`: "lungs" crops to the lungs' bounding box, widened by `margin` (a fraction of the
      box's extent on each side); "none" keeps the (fraction-cropped) scan. For 3D models.
    - `slices`: "lungs" keeps the run of slices whose lung area is at least `lung_area` times
      the largest slice's (first to last such slice); "all" keeps them all. For slice models.
      A scan with no lungs in view is kept whole, with a warning in the scan's warnings.
    - `spacing`: target voxel size in mm as X,Y,Z (columns, rows, slices: the order NIfTI's
      pixdim and MONAI's `Spacing` use); None keeps each scan's own. Needs scans that record
      their spacing (not JPG/PNG slices).
    - `fit`: "stretch" resizes to `size` whatever the physical extent; "pad" (the default when
      `spacing` is given, and only with it) samples `size` voxels at `spacing` around the
      lungs' centre (the crop's centre when no lungs were looked for), padding with air.
    """

    size: tuple[int, int, int] = DEFAULT_SCAN_SIZE
    window: tuple[float, float] = (-600.0, 1500.0)
    crop_slices: float = 0.0
    crop_border: float = 0.0
    contrast: str = "none"
    crop: str = "none"
    slices: str = "all"
    margin: float = 0.05
    lung_area: float = 0.1
    spacing: tuple[float, float, float] | None = None
    fit: str | None = None

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 3 or min(size) < 1:
            raise BadInputError(f"size must be 3 positive integers D,H,W, got {self.size}")
        window = tuple(float(w) for w in self.window)
        if len(window) == 2 and not all(map(math.isfinite, window)):
            raise BadInputError(f"window {list(window)} is not finite")
        if len(window) != 2 or window[1] <= 0:
            raise BadInputError(f"window must be level,width with width > 0, got {self.window}")
        for name, low, high in (("crop_slices", 0.0, 0.5), ("crop_border", 0.0, 0.5),
                                ("margin", 0.0, 1.0), ("lung_area", 0.0, 1.0)):
            value = float(getattr(self, name))
            if not low <= value < high:
                raise BadInputError(f"{name} must be in [{low:g}, {high:g}), got {value}")
            object.__setattr__(self, name, value)
        for name, choices in (("contrast", CONTRASTS), ("crop", CROPS), ("slices", SLICE_RULES)):
            if getattr(self, name) not in choices:
                raise BadInputError(f"unknown {name} '{getattr(self, name)}'; choose from "
                                    f"{', '.join(choices)}")
        spacing = self.spacing
        if spacing is not None:
            spacing = tuple(float(s) for s in spacing)
            if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise BadInputError(f"spacing must be 3 positive sizes X,Y,Z in mm, got "
                                    f"{self.spacing}")
        fit = self.fit or ("pad" if spacing is not None else "stretch")
        if fit not in FITS:
            raise BadInputError(f"unknown fit '{fit}'; choose from {', '.join(FITS)}")
        if fit == "pad" and spacing is None:
            raise BadInputError("fit=pad needs spacing=X,Y,Z (mm): padding keeps physical size")
        if fit == "stretch" and spacing is not None:
            raise BadInputError("spacing with fit=stretch would resample, then resize to the "
                                "size anyway; use fit=pad, or leave spacing out")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "fit", fit)

    @property
    def needs_lungs(self) -> bool:
        """Whether preprocessing looks for the lungs (`crop=lungs` or `slices=lungs`)."""
        return self.crop == "lungs" or self.slices == "lungs"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: lists for tuples."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """The inverse of `to_dict`; an unknown key is an error, a missing one takes its default
        (so a checkpoint written before a step existed reads as without it)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown preprocessing option(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def parse(cls, text: str | Sequence[str], base: PreprocessConfig | None = None,
              flag: str = "--preprocess") -> PreprocessConfig:
        """`base` (default: the defaults) with the `KEY=VALUE` steps of the command-line
        spelling: `crop=lungs,slices=lungs,spacing=1.5,1.5,3,window=-600,1500`. A value of
        several numbers runs on after commas; keys are the field names (`-` may stand for `_`);
        `size` has its own flag (`--size`). Several texts (a repeated flag) are read in order."""
        return (base or cls()).with_steps(parse_steps(text, flag))

    def with_steps(self, steps: dict[str, Any]) -> PreprocessConfig:
        """This config with `steps` (`PreprocessConfig` keywords) changed; a new `spacing`
        without a `fit` resolves `fit` again from it."""
        if "spacing" in steps and "fit" not in steps:
            steps = {**steps, "fit": None}
        return replace(self, **steps)

    def changed(self, other: PreprocessConfig) -> dict[str, tuple[Any, Any]]:
        """`{key: (self's value, other's value)}` where the two differ, in field order."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}

    def digest(self) -> str:
        """A short hash of the config: what the cache compares to decide a rebuild."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_steps(text: str | Sequence[str], flag: str = "--preprocess") -> dict[str, Any]:
    """The `KEY=VALUE` pairs of the preprocessing spelling as `PreprocessConfig` keywords."""
    texts = [text] if isinstance(text, str) else list(text)
    known = {f.name for f in fields(PreprocessConfig)} - {"size"}
    raw: dict[str, list[str]] = {}
    key = None
    for token in (t.strip() for part in texts for t in part.split(",")):
        name, sep, value = token.partition("=")
        if sep:
            key = name.strip().replace("-", "_")
            if key == "size":
                raise BadInputError(f"{flag}: the size has its own flag, --size D,H,W")
            if key not in known:
                raise BadInputError(f"{flag}: unknown step '{name.strip()}'; the steps are "
                                    f"{', '.join(sorted(known))}")
            if key in raw:
                raise BadInputError(f"{flag}: '{key}' given twice")
            raw[key] = [value.strip()]
        elif key is not None and token and key in _VECTOR_KEYS:
            raw[key].append(token)
        elif token or key is None:
            raise BadInputError(f"{flag} takes KEY=VALUE[,KEY=VALUE...], got '{token}' in "
                                f"'{','.join(texts)}'")
    return {k: _step_value(flag, k, v) for k, v in raw.items()}


def _step_value(flag: str, key: str, values: list[str]) -> Any:
    if key in _VECTOR_KEYS:
        if key == "spacing" and values == ["none"]:
            return None
        try:
            numbers = tuple(float(v) for v in values)
        except ValueError:
            numbers = ()
        if len(numbers) != _VECTOR_KEYS[key]:
            raise BadInputError(f"{flag}: {key} takes {_VECTOR_KEYS[key]} numbers, got "
                                f"'{','.join(values)}'")
        return numbers
    (value,) = values
    if key in ("crop_slices", "crop_border", "margin", "lung_area"):
        try:
            return float(value)
        except ValueError:
            raise BadInputError(f"{flag}: {key} takes a number, got '{value}'") from None
    return value


def describe(cfg: PreprocessConfig | dict[str, Any]) -> str:
    """The config in the command-line spelling, defaults left out: `crop=lungs,spacing=...`."""
    cfg = cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.from_dict(cfg)
    default = PreprocessConfig(size=cfg.size)
    steps = []
    for key, (value, _) in cfg.changed(default).items():
        if isinstance(value, list):
            value = ",".join(f"{v:g}" for v in value)
        steps.append(f"{key}={value}")
    return ",".join(steps) or "defaults"


@dataclass(frozen=True)
class Geometry:
    """Where a model input came from in its scan.

    `box`: the source ranges `[(z0, z1), (y0, y1), (x0, x1)]` (slices, rows, columns) the
    input shows; `offset` and `extent`: where that box lands in the input, per axis (the whole
    input for `fit=stretch`; with `fit=pad` the rest is padding); `source_slices`: for each
    input slice, the nearest source slice (-1 where the input is padding), so that per-slice
    scores map back to the scan's own slice numbers; `lungs`: `covidzoo.data.lungs.lung_facts`
    of the coarse lung mask (None when no lungs were looked for), with `found` False when the
    scan showed none.
    """

    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    source_slices: tuple[int, ...]
    lungs: dict[str, Any] | None = None
    offset: tuple[int, int, int] = (0, 0, 0)
    extent: tuple[int, int, int] | None = None  # None: the whole input

    def to_dict(self) -> dict[str, Any]:
        return {"box": [list(b) for b in self.box], "source_slices": list(self.source_slices),
                "lungs": self.lungs, "offset": list(self.offset),
                "extent": None if self.extent is None else list(self.extent)}


@dataclass(frozen=True)
class _Plan:
    """What `_plan` decides: the source box, and where its resampled image lands in the
    output (`offset`, `extent` per axis; the rest of the output is padding)."""

    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    extent: tuple[int, int, int]
    offset: tuple[int, int, int]
    lungs: dict[str, Any] | None


def _fraction_box(shape: tuple[int, int, int], cfg: PreprocessConfig
                  ) -> list[tuple[int, int]]:
    """The slices, rows and columns that `crop_slices` and `crop_border` keep."""
    d, h, w = shape
    kd = int(d * cfg.crop_slices)
    kh, kw = int(h * cfg.crop_border), int(w * cfg.crop_border)
    return [(kd, d - kd), (kh, h - kh), (kw, w - kw)]


def coarse_lung_mask(volume: Volume) -> tuple[np.ndarray, int]:
    """The lung mask of `volume` on a grid of every `step`-th row and column (at most
    `MASK_SIDE` wide), with `step`. Read a slab at a time; a `NoLungsWarning` goes to the
    volume's warnings (the scan is then kept whole), not to the console."""
    from .lungs import NoLungsWarning, lung_mask

    d, h, w = volume.shape
    step = max(1, math.ceil(max(h, w) / MASK_SIDE))
    small = np.empty((d, len(range(0, h, step)), len(range(0, w, step))), dtype=np.float32)
    for start, slab in volume.slabs():
        small[start:start + len(slab)] = slab[:, ::step, ::step]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoLungsWarning)
        mask = lung_mask(small, volume.intensity)
    for warning in caught:
        if issubclass(warning.category, NoLungsWarning):
            volume.warnings.append("no lungs found: the scan is kept whole")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    return mask, step


def _lung_box(mask: np.ndarray, step: int, shape: tuple[int, int, int], cfg: PreprocessConfig
              ) -> tuple[list[tuple[int, int]], list[float]]:
    """The lungs' box in source voxels (slices by `cfg.slices`' rule when it is "lungs", rows
    and columns by the mask's extent, each widened by `cfg.margin`) and the centre of the lungs'
    own extent."""
    from scipy import ndimage

    (zs, ys, xs), = ndimage.find_objects(mask.astype(np.uint8))
    extent = [(zs.start, zs.stop), (ys.start * step, min(ys.stop * step, shape[1])),
              (xs.start * step, min(xs.stop * step, shape[2]))]
    centre = [(lo + hi) / 2 for lo, hi in extent]
    box = []
    for (lo, hi), n in zip(extent, shape, strict=True):
        pad = math.ceil(cfg.margin * (hi - lo))
        box.append((max(0, lo - pad), min(n, hi + pad)))
    if cfg.slices == "lungs":
        area = mask.sum(axis=(1, 2))
        kept = np.flatnonzero(area >= cfg.lung_area * area.max())
        box[0] = (int(kept[0]), int(kept[-1]) + 1)
    if cfg.crop != "lungs":  # only the slice rule: rows and columns stay whole
        box[1], box[2] = (0, shape[1]), (0, shape[2])
        if cfg.slices != "lungs":
            box[0] = (0, shape[0])
    return box, centre


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Two boxes' overlap; where they do not overlap along an axis, `a` along it."""
    out = []
    for (a0, a1), (b0, b1) in zip(a, b, strict=True):
        lo, hi = max(a0, b0), min(a1, b1)
        out.append((lo, hi) if hi > lo else (a0, a1))
    return out


def _source_spacing(volume: Volume) -> tuple[float, float, float]:
    if volume.kind == "slices":
        raise BadInputError(f"{volume.source}: slice images record no voxel spacing; leave "
                            "spacing (and fit=pad) out of --preprocess for this data")
    return volume.spacing


def _plan(volume: Volume, cfg: PreprocessConfig) -> _Plan:
    shape = volume.shape
    box = _fraction_box(shape, cfg)
    centre = [(lo + hi) / 2 for lo, hi in box]
    lungs = None
    if cfg.needs_lungs:
        from .lungs import lung_facts

        mask, step = coarse_lung_mask(volume)
        dz, dy, dx = volume.spacing
        found = not mask.all()
        facts = lung_facts(mask, (dz, dy * step, dx * step)) if found else {}
        lungs = {"found": found, "grid_step": step,
                 "lung_volume_ml": facts.get("lung_volume_ml"),
                 "lung_fraction": facts.get("lung_fraction"),
                 "lung_slices": ([facts["lung_slices"][0], facts["lung_slices"][-1] + 1]
                                 if found else None)}
        if found:
            lung_box, centre = _lung_box(mask, step, shape, cfg)
            box = _intersect(box, lung_box)
    if cfg.fit == "stretch":
        return _Plan(tuple(box), cfg.size, (0, 0, 0), lungs)  # type: ignore[arg-type]
    source = _source_spacing(volume)
    target = tuple(reversed(cfg.spacing))  # type: ignore[arg-type]  # X,Y,Z -> z,y,x
    sub, extent, offset = [], [], []
    for (b0, b1), c, n_out, s_in, s_out in zip(box, centre, cfg.size, source, target,
                                              strict=True):
        half = n_out * s_out / s_in / 2  # half the output's field, in source voxels
        lo, hi = max(b0, math.floor(c - half)), min(b1, math.ceil(c + half))
        if hi <= lo:  # the field misses the box: show the box's nearest edge
            lo, hi = (b0, b0 + 1) if c < b0 else (b1 - 1, b1)
        scale = s_in / s_out  # output voxels per source voxel
        e = min(max(1, round((hi - lo) * scale)), n_out)
        o = min(max(0, round((lo - (c - half)) * scale)), n_out - e)
        sub.append((lo, hi))
        extent.append(e)
        offset.append(o)
    return _Plan(tuple(sub), tuple(extent), tuple(offset), lungs)  # type: ignore[arg-type]


def _source_slices(plan: _Plan, depth: int) -> tuple[int, ...]:
    """The nearest source slice of each output slice (-1: padding)."""
    (z0, z1), e, o = plan.box[0], plan.extent[0], plan.offset[0]
    scale = (z1 - z0) / e
    return tuple(
        min(z1 - 1, max(z0, round(z0 + (k - o + 0.5) * scale - 0.5))) if o <= k < o + e else -1
        for k in range(depth))


def _depth_weights(n_in: int, n_out: int) -> list[tuple[int, int, np.float32, np.float32]]:
    """For each output slice, the two input slices and their weights of a linear resize along
    depth, computed as torch's trilinear interpolation does (`align_corners=False`, float32)."""
    if n_in == n_out:
        return [(o, o, np.float32(1), np.float32(0)) for o in range(n_out)]
    scale = np.float32(n_in) / np.float32(n_out)
    weights = []
    for o in range(n_out):
        src = max(scale * (np.float32(o) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        i0 = min(int(np.floor(src)), n_in - 1)
        w1 = np.float32(min(max(src - np.float32(i0), np.float32(0)), np.float32(1)))
        weights.append((i0, min(i0 + 1, n_in - 1), np.float32(1) - w1, w1))
    return weights


def _resize_planes(unit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Each slice of `unit` resized to `size` (H, W), as torch's trilinear resize would."""
    if unit.shape[1:] == size:
        return unit
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        tensor = torch.from_numpy(np.ascontiguousarray(unit))[None, None]
        out = F.interpolate(tensor, size=(unit.shape[0], *size), mode="trilinear",
                            align_corners=False)
    return out[0, 0].numpy()


def _to_unit(slab: np.ndarray, volume: Volume, cfg: PreprocessConfig) -> np.ndarray:
    """Intensities to [0, 1]: the HU window, or /255 for 8-bit slices (in place)."""
    if volume.intensity == "uint8":
        slab *= np.float32(1 / 255)
    else:
        level, width = cfg.window
        slab -= np.float32(level - width / 2)
        slab *= np.float32(1 / width)
    return np.clip(slab, 0.0, 1.0, out=slab)


def _resized(volume: Volume, box: Sequence[tuple[int, int]], size: tuple[int, int, int],
             cfg: PreprocessConfig) -> np.ndarray:
    """The source `box` of `volume`, windowed and resized to `size` in float32, a few slices
    at a time.

    Trilinear resizing is separable: each slab of input slices is resized in-plane, and each
    output slice is the weighted sum of the two input slices around it. So memory holds the
    output, one slab and nothing of the input beyond it, however many slices the scan has.
    """
    (z0, z1), (y0, y1), (x0, x1) = box
    depth = z1 - z0
    out = np.empty(size, dtype=np.float32)
    uses: dict[int, list[tuple[int, np.float32, bool]]] = {}
    for o, (i0, i1, w0, w1) in enumerate(_depth_weights(depth, size[0])):
        uses.setdefault(i0, []).append((o, w0, True))
        uses.setdefault(i1, []).append((o, w1, False))
    lowest = np.inf
    for start in range(0, depth, SLAB):
        stop = min(start + SLAB, depth)
        slab = volume.slab(z0 + start, z0 + stop)[:, y0:y1, x0:x1]
        lowest = min(lowest, float(slab.min()))
        planes = _resize_planes(_to_unit(slab, volume, cfg), size[1:])
        for i in range(start, stop):
            for o, weight, first in uses.get(i, ()):
                if first:
                    np.multiply(planes[i - start], weight, out=out[o])
                else:
                    out[o] += planes[i - start] * weight
        # Freed before the next slab is read, not when the names are rebound after it: else
        # two slabs live at once.
        del slab, planes
    volume.check_air(lowest)
    return out


def _pad_unit(volume: Volume, cfg: PreprocessConfig) -> float:
    """What padding holds, in [0, 1]: air through the window (black for 8-bit slices)."""
    if volume.intensity == "uint8":
        return 0.0
    level, width = cfg.window
    return float(np.clip((PAD_HU - (level - width / 2)) / width, 0.0, 1.0))


def _contrast(array: np.ndarray, mode: str) -> np.ndarray:
    if mode == "stretch":
        lo, hi = np.percentile(array, (1, 99))
        return np.clip((array - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if mode == "equalize":
        levels = np.round(array * 255).astype(np.uint8)
        cdf = np.cumsum(np.bincount(levels.ravel(), minlength=256)).astype(np.float32)
        first = cdf[cdf > 0][0]  # the darkest level present maps to 0
        cdf = np.clip((cdf - first) / max(cdf[-1] - first, 1.0), 0.0, 1.0)
        return cdf[levels]
    return array


def prepare_scan(volume: Volume, cfg: PreprocessConfig | None = None
                 ) -> tuple[np.ndarray, Geometry]:
    """The model input of `volume` (a uint8 array of shape `cfg.size`) and where it came from
    in the scan. Reads the volume a few slices at a time (`Volume.slab`), so bad values raise
    `BadInputError` naming the file; a lung step reads it once more, on a coarse grid."""
    cfg = cfg or PreprocessConfig()
    plan = _plan(volume, cfg)
    image = _resized(volume, plan.box, plan.extent, cfg)
    if plan.extent == cfg.size:
        unit = image
    else:
        unit = np.full(cfg.size, _pad_unit(volume, cfg), dtype=np.float32)
        (d, h, w), (od, oh, ow) = plan.extent, plan.offset
        unit[od:od + d, oh:oh + h, ow:ow + w] = image
        del image
    unit = _contrast(unit, cfg.contrast)
    unit *= 255  # in place: no float temporaries the size of the output
    unit += 0.5
    array = np.clip(unit, 0, 255, out=unit).astype(np.uint8)
    return array, Geometry(plan.box, _source_slices(plan, cfg.size[0]), plan.lungs,
                           plan.offset, plan.extent)


def preprocess(volume: Volume, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """The model input of `volume`: a uint8 array of shape `cfg.size` (`prepare_scan`
    without the geometry)."""
    return prepare_scan(volume, cfg)[0]


def load_scan(
    path: str | os.PathLike[str], cfg: PreprocessConfig | None = None, series: str | None = None
) -> np.ndarray:
    """Read and preprocess one scan (what `predict` feeds a model)."""
    from .readers import read_scan

    return preprocess(read_scan(path, series=series), cfg)
