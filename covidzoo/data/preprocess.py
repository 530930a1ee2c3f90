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
from .volume import Volume

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


def _crop(array: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    d, h, w = array.shape
    kd = int(d * cfg.crop_slices)
    kh, kw = int(h * cfg.crop_border), int(w * cfg.crop_border)
    return array[kd:d - kd or None, kh:h - kh or None, kw:w - kw or None]


def _resize(array: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    if array.shape == size:
        return array
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
        out = F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


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
    """The model input of `volume`: a uint8 array of shape `cfg.size`."""
    cfg = cfg or PreprocessConfig()
    array = _crop(volume.array, cfg)
    if volume.intensity == "uint8":
        unit = array * np.float32(1 / 255)
    else:
        level, width = cfg.window
        unit = (array - np.float32(level - width / 2)) * np.float32(1 / width)
    np.clip(unit, 0.0, 1.0, out=unit)
    unit = _contrast(_resize(unit.astype(np.float32, copy=False), cfg.size), cfg.contrast)
    return np.clip(unit * 255 + 0.5, 0, 255).astype(np.uint8)


def load_scan(
    path: str | os.PathLike[str], cfg: PreprocessConfig | None = None, series: str | None = None
) -> np.ndarray:
    """Read and preprocess one scan (what `predict` feeds a model)."""
    from .readers import read_scan

    return preprocess(read_scan(path, series=series), cfg)
