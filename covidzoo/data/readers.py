"""`read_scan`: one entry point that picks the reader by what the path is."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInputError
from .arrays import ARRAY_SUFFIXES, read_array
from .dicom import read_dicom
from .listing import list_folder
from .slices import IMAGE_SUFFIXES, read_slices
from .volume import Volume


def scan_format(path: Path) -> str:
    """"array", "slices" or "dicom": what `read_scan` would read `path` as.

    A folder with any image file (`.jpg`, `.png`, ...) is a slice folder; any other folder is a
    DICOM series, since DICOM files often have no extension.
    """
    if path.is_file():
        return "array" if path.suffix.lower() in ARRAY_SUFFIXES else "dicom"
    if path.is_dir():
        listed = list_folder(path)
        names = [p.name for p in listed if p.is_file()]
        if not listed:
            raise BadInputError(f"{path}: empty folder")
        if not names:
            raise BadInputError(f"{path}: no files, only sub-folders (a scan is one folder)")
        if any(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
            return "slices"
        return "dicom"
    raise BadInputError(f"{path}: no such file or folder")


def read_scan(path: str | os.PathLike[str], series: str | None = None) -> Volume:
    """Read one scan: a DICOM series folder or file, a folder of slice images, or an array file.

    `series` picks a SeriesInstanceUID when a DICOM folder holds several. Bad input raises
    `BadInputError` with one line naming the file and the reason.
    """
    path = Path(path)
    kind = scan_format(path)
    if kind == "array":
        return read_array(path)
    if kind == "slices":
        return read_slices(path)
    return read_dicom(path, series=series)
