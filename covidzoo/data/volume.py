"""`Volume`: one scan as read from disk, before any preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

VolumeKind = Literal["dicom", "slices", "array"]
Intensity = Literal["hu", "uint8"]


@dataclass
class Volume:
    """A scan as a float32 `D x H x W` array with its voxel spacing and where it came from.

    `intensity` says how to read the values: `"hu"` for Hounsfield units (DICOM, most arrays),
    `"uint8"` for 8-bit images already windowed by whoever exported them (JPG/PNG slices), so
    preprocessing knows whether to apply a HU window. `warnings` collects what the reader
    noticed but could work around (unsorted names, gaps, a second series it ignored).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    kind: VolumeKind
    warnings: list[str] = field(default_factory=list)
    series_uid: str | None = None
    intensity: Intensity = "hu"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description: format, series, shape, spacing, value range, warnings."""
        return {
            "source": self.source,
            "format": self.kind,
            "series_uid": self.series_uid,
            "shape": list(self.shape),
            "spacing": [round(float(s), 4) for s in self.spacing],
            "intensity": self.intensity,
            "min": float(self.array.min()),
            "max": float(self.array.max()),
            "warnings": list(self.warnings),
        }
