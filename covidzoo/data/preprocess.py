"""Preprocessing: a `Volume` to a fixed-size uint8 `D x H x W` array, by a recorded config.

The config goes into the cache index and into every checkpoint, so a model is always fed scans
prepared the way it was trained on. Steps, in order: crop, intensity to [0, 1] (a HU window, or
/255 for 8-bit slices), trilinear resize, optional contrast enhancement, round to uint8.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..factory import DEFAULT_SCAN_SIZE
from .volume import SLAB, Volume

CONTRASTS = ("none", "stretch", "equalize")


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
    """

    size: tuple[int, int, int] = DEFAULT_SCAN_SIZE
    window: tuple[float, float] = (-600.0, 1500.0)
    crop_slices: float = 0.0
    crop_border: float = 0.0
    contrast: str = "none"

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 3 or min(size) < 1:
            raise BadInputError(f"size must be 3 positive integers D,H,W, got {self.size}")
        window = tuple(float(w) for w in self.window)
        if len(window) != 2 or window[1] <= 0:
            raise BadInputError(f"window must be level,width with width > 0, got {self.window}")
        for name in ("crop_slices", "crop_border"):
            value = float(getattr(self, name))
            if not 0.0 <= value < 0.5:
                raise BadInputError(f"{name} must be in [0, 0.5), got {value}")
            object.__setattr__(self, name, value)
        if self.contrast not in CONTRASTS:
            raise BadInputError(
                f"unknown contrast '{self.contrast}'; choose from {', '.join(CONTRASTS)}"
            )
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "window", window)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: lists for tuples."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """The inverse of `to_dict`; an unknown key is an error, a missing one takes its default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown preprocessing option(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def digest(self) -> str:
        """A short hash of the config: what the cache compares to decide a rebuild."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _crop(shape: tuple[int, int, int], cfg: PreprocessConfig) -> tuple[slice, slice, slice]:
    """The slices, rows and columns that `crop_slices` and `crop_border` keep."""
    d, h, w = shape
    kd = int(d * cfg.crop_slices)
    kh, kw = int(h * cfg.crop_border), int(w * cfg.crop_border)
    return slice(kd, d - kd), slice(kh, h - kh), slice(kw, w - kw)


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


def _resized(volume: Volume, cfg: PreprocessConfig) -> np.ndarray:
    """Crop, window and resize `volume` to `cfg.size` in float32, a few slices at a time.

    Trilinear resizing is separable: each slab of input slices is resized in-plane, and each
    output slice is the weighted sum of the two input slices around it. So memory holds the
    output, one slab and nothing of the input beyond it, however many slices the scan has.
    """
    zs, ys, xs = _crop(volume.shape, cfg)
    depth = zs.stop - zs.start
    out = np.empty(cfg.size, dtype=np.float32)
    uses: dict[int, list[tuple[int, np.float32, bool]]] = {}
    for o, (i0, i1, w0, w1) in enumerate(_depth_weights(depth, cfg.size[0])):
        uses.setdefault(i0, []).append((o, w0, True))
        uses.setdefault(i1, []).append((o, w1, False))
    for start in range(0, depth, SLAB):
        stop = min(start + SLAB, depth)
        slab = volume.slab(zs.start + start, zs.start + stop)[:, ys, xs]
        planes = _resize_planes(_to_unit(slab, volume, cfg), cfg.size[1:])
        for i in range(start, stop):
            for o, weight, first in uses.get(i, ()):
                if first:
                    np.multiply(planes[i - start], weight, out=out[o])
                else:
                    out[o] += planes[i - start] * weight
        # Freed before the next slab is read, not when the names are rebound after it: else
        # two slabs live at once.
        del slab, planes
    return out


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


def preprocess(volume: Volume, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """The model input of `volume`: a uint8 array of shape `cfg.size`. Reads the volume a few
    slices at a time (`Volume.slab`), so bad values raise `BadInputError` naming the file."""
    cfg = cfg or PreprocessConfig()
    unit = _contrast(_resized(volume, cfg), cfg.contrast)
    unit *= 255  # in place: no float temporaries the size of the output
    unit += 0.5
    return np.clip(unit, 0, 255, out=unit).astype(np.uint8)


def load_scan(
    path: str | os.PathLike[str], cfg: PreprocessConfig | None = None, series: str | None = None
) -> np.ndarray:
    """Read and preprocess one scan (what `predict` feeds a model)."""
    from .readers import read_scan

    return preprocess(read_scan(path, series=series), cfg)
