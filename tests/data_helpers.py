"""Builders of tiny DICOM series for the data tests, from the files pydicom ships."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"


def write_series(
    folder: Path,
    values: Sequence[int],
    positions: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    series_uid: str = "1.2.3.4.1",
    slope: float = 1.0,
    intercept: float = -1024.0,
    geometry: bool = True,
    size: int | None = None,
) -> list[Path]:
    """One CT_small-derived slice per value, each slice filled with its value (stored units).

    `positions` are z positions (default 0, 2.5, 5, ...); `names` the file names.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, value in enumerate(values):
        ds = pydicom.dcmread(CT_SMALL)
        rows = size or ds.Rows
        ds.Rows = ds.Columns = rows
        ds.PixelData = np.full((rows, rows), value, dtype="<i2").tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = f"{series_uid}.{k + 1}"
        ds.InstanceNumber = k + 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        z = positions[k] if positions is not None else 2.5 * k
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        if not geometry:
            del ds.ImagePositionPatient, ds.ImageOrientationPatient
        path = folder / (names[k] if names is not None else f"s{k:03d}.dcm")
        ds.save_as(path)
        paths.append(path)
    return paths
