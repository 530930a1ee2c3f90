"""`Volume`: one scan as read from disk, before any preprocessing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from ..errors import BadInputError

VolumeKind = Literal["dicom", "slices", "array", "nifti", "itk"]
Intensity = Literal["hu", "uint8"]

# What Hounsfield units a CT scan can hold: every value a 16-bit store gives after the usual
# rescale, padding outside the field of view included (-3024 HU on many scanners, -33792 HU
# where int16's minimum is the padding), and metal on an extended scale (up to about 31000 HU).
# A value outside is not a CT number but garbage (a wrong rescale slope, uninitialised floats).
HU_RANGE: tuple[float, float] = (-34_000.0, 66_000.0)
# A chest CT holds air (about -1000 HU) in its lungs and around the body: a scan in "HU" whose
# lowest value lies above this holds none, and is not Hounsfield units at all (a lung mask or
# probability map, an MRI, an 8-bit image, or stored values without their rescale intercept).
AIR_CEILING_HU = -200.0

# Slices converted to float at a time: bounds the memory a reader or `preprocess` needs beyond
# its output (16 slices of 512 x 512 are 16 MB of float32).
SLAB = 16


class SliceSource(Protocol):
    """Stored values that can be read a few slices at a time (an `.npy` read from disk as
    needed); a numpy array is one too."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    def __getitem__(self, key: slice) -> np.ndarray: ...


@dataclass
class Volume:
    """A scan as `D x H x W` stored values with its voxel spacing and where it came from.

    `values` are the values as the file stores them (integers for DICOM and most arrays; an
    `.npy` may be read from disk only as `slab` asks for it), so a 2000-slice scan is never
    held whole in float. `slab(start, stop)` gives float32 values of a few slices, with the
    per-slice DICOM rescale (`slope`, `intercept`) applied and checked: a non-finite value or
    one outside `HU_RANGE` is a `BadInputError` naming the file (`files[i]`, the file of slice
    `i`, when known). `array` is the whole volume in float32, for small uses.

    `intensity` says how to read the values: `"hu"` for Hounsfield units (DICOM, most arrays),
    `"uint8"` for 8-bit images already windowed by whoever exported them (JPG/PNG slices), so
    preprocessing knows whether to apply a HU window. `warnings` collects what the reader
    noticed but could work around (unsorted names, gaps, a second series it ignored).

    `positions` are the slices' positions in mm along the slice axis, in slice order, where
    the format records each slice's own (a DICOM series with ImagePositionPatient); None
    elsewhere. `thicknesses` are the slices' nominal thicknesses in mm (DICOM SliceThickness,
    NaN for a slice without one), None where no slice records one.
    `geometry_checks.spacing_irregularities` reads both.
    """

    values: np.ndarray | SliceSource
    spacing: tuple[float, float, float]
    source: str
    kind: VolumeKind
    warnings: list[str] = field(default_factory=list)
    series_uid: str | None = None
    intensity: Intensity = "hu"
    slope: np.ndarray | None = None
    intercept: np.ndarray | None = None
    files: Sequence[str] | None = None
    positions: np.ndarray | None = None
    thicknesses: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.values.shape)  # type: ignore[return-value]

    def slab(self, start: int, stop: int) -> np.ndarray:
        """Slices `start:stop` as float32 HU (or 0-255 for 8-bit images), checked."""
        with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are refused below
            out = np.empty((max(stop - start, 0), *self.shape[1:]), dtype=np.float32)
            for k in range(start, stop):  # one stored slice at a time: no slab of stored values
                out[k - start] = self.values[k:k + 1][0]
            if self.slope is not None:
                out *= self.slope[start:stop, None, None]
            if self.intercept is not None:
                out += self.intercept[start:stop, None, None]
        self._check(out, start)
        return out

    def slabs(self, size: int = SLAB) -> Iterator[tuple[int, np.ndarray]]:
        """`(start, slab)` pairs that cover the volume, `size` slices at a time."""
        for start in range(0, self.shape[0], size):
            yield start, self.slab(start, min(start + size, self.shape[0]))

    @property
    def array(self) -> np.ndarray:
        """The whole volume as float32 (`slab` of every slice)."""
        return self.slab(0, self.shape[0])

    def _check(self, out: np.ndarray, start: int) -> None:
        if out.size == 0:
            return
        lo, hi = (0.0, 255.0) if self.intensity == "uint8" else HU_RANGE
        # Slice by slice, with min and max only (NaN propagates through both, and inf lies
        # outside any range): no temporary the size of the slab.
        bad = [i for i, plane in enumerate(out) if not (plane.min() >= lo and plane.max() <= hi)]
        if not bad:
            return
        i = bad[0]
        where = self.files[start + i] if self.files is not None else self.source
        values = out[i].ravel()
        if not np.isfinite(values).all():
            what = "NaN" if np.isnan(values).any() else "infinite"
            raise BadInputError(f"{where}: {what} values (slice {start + i}); not a usable scan")
        unit = "HU" if self.intensity == "hu" else ""
        raise BadInputError(
            f"{where}: values {values.min():.6g} to {values.max():.6g} {unit}".rstrip()
            + f" (slice {start + i}) lie outside {lo:g} to {hi:g}; not a CT scan's numbers"
        )

    def check_air(self, lowest: float) -> None:
        """`BadInputError` when `lowest`, the lowest value read of a HU scan, says it holds no
        air (`AIR_CEILING_HU`): computing on it would give a confident answer from garbage."""
        if self.intensity == "hu" and lowest > AIR_CEILING_HU:
            raise BadInputError(
                f"{self.source}: no value below {AIR_CEILING_HU:g} HU (the lowest is {lowest:.6g}):"
                " no air, so not a CT in Hounsfield units (a mask or probability map? an MRI? "
                "stored values without their rescale intercept?)")

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description: format, series, shape, spacing, value range, warnings."""
        lo, hi = np.inf, -np.inf
        for _, slab in self.slabs():
            lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
        warnings = list(self.warnings)
        try:
            self.check_air(lo)
        except BadInputError as exc:  # what preprocessing will refuse, said before it does
            warnings.append(f"preprocessing refuses this scan: {exc}")
        return {
            "source": self.source,
            "format": self.kind,
            "series_uid": self.series_uid,
            "shape": list(self.shape),
            "spacing": [round(float(s), 4) for s in self.spacing],
            "intensity": self.intensity,
            "min": lo,
            "max": hi,
            "warnings": warnings,
        }
