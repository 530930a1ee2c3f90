"""`read_scan`: one entry point that asks the registered readers which one claims a path.

Readers are a plugin kind (`register_readers`, see `covidzoo.hookspecs`): a reader says which
paths it `claims` and `read`s one to a `Volume`. The built-in ones (registered in
`covidzoo.default_plugins.readers`) are the classes below. Readers are asked in this order:

1. the built-in readers that claim by what a path is, in name order: `array` (`.npy`/`.npz`),
   `itk` (`.mha`/`.mhd`/`.nrrd`/`.nhdr`, through SimpleITK: the `covidzoo[itk]` extra),
   `nifti` (`.nii`/`.nii.gz`), `slices` (a folder with any image file: `.jpg`, `.png`, ...);
2. the readers of third-party plugins, in name order;
3. the fallback readers (registered with `fallback=True`): `dicom`, which takes any other file
   or folder, since DICOM files often have no extension.

So a plugin's reader takes a path before the DICOM fallback, but never one a built-in format
claims.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import BadInputError, CovidzooError, PluginError, one_line
from .arrays import ARRAY_SUFFIXES, read_array
from .dicom import read_dicom
from .itk import is_itk, read_itk
from .listing import list_folder
from .nifti import is_nifti, read_nifti
from .slices import IMAGE_SUFFIXES, read_slices
from .volume import Volume


@runtime_checkable
class Reader(Protocol):
    """What a `register_readers` factory returns (MONAI's `ImageReader` is the model)."""

    def claims(self, path: Path) -> bool:
        """Whether this reader reads `path` (an existing file or folder); cheap, no parsing."""
        ...

    def read(self, path: Path, series: str | None = None) -> Volume:
        """The scan at `path`; bad input raises `BadInputError` naming the file."""
        ...


class ArrayReader:
    """`.npy` / `.npz` arrays (D x H x W, HU or uint8)."""

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES

    def read(self, path: Path, series: str | None = None) -> Volume:
        return read_array(path)


class NiftiReader:
    """NIfTI files (`.nii`, `.nii.gz`), reoriented to the DICOM reader's axis order."""

    def claims(self, path: Path) -> bool:
        return path.is_file() and is_nifti(path)

    def read(self, path: Path, series: str | None = None) -> Volume:
        return read_nifti(path)


class ItkReader:
    """MetaImage and NRRD files (`.mha`, `.mhd`, `.nrrd`, `.nhdr`) through SimpleITK, reoriented
    to the DICOM reader's axis order as NIfTI files are."""

    def claims(self, path: Path) -> bool:
        return path.is_file() and is_itk(path)

    def read(self, path: Path, series: str | None = None) -> Volume:
        return read_itk(path)


class SliceFolderReader:
    """A folder of 8-bit slice images (the COV19-CT-DB layout: `0.jpg, 1.jpg, ...`)."""

    def claims(self, path: Path) -> bool:
        return path.is_dir() and any(
            p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in list_folder(path))

    def read(self, path: Path, series: str | None = None) -> Volume:
        return read_slices(path)


class DicomReader:
    """A DICOM series folder or one DICOM file: the fallback for any other file or folder."""

    def claims(self, path: Path) -> bool:
        return path.is_file() or path.is_dir()

    def read(self, path: Path, series: str | None = None) -> Volume:
        return read_dicom(path, series=series)


def _check_folder(path: Path) -> None:
    """A folder no specific reader claimed must hold files for the fallback to read."""
    listed = list_folder(path)
    if not listed:
        raise BadInputError(f"{path}: empty folder")
    if not any(p.is_file() for p in listed):
        raise BadInputError(f"{path}: no files, only sub-folders (a scan is one folder)")


def _readers() -> list[tuple[str, Reader, bool]]:
    """(name, reader, fallback) of every registered reader, in the order they are asked."""
    from ..factory import list_components
    from ..plugins import is_builtin

    components = sorted(
        list_components("*", "reader"),
        key=lambda c: (bool(c.metadata.get("fallback")), not is_builtin(c.plugin), c.name),
    )
    readers = []
    for component in components:
        reader = component.create()
        if not isinstance(reader, Reader):
            raise PluginError(f"reader '{component.name}' (plugin '{component.plugin}') is "
                              "broken: its factory returned no object with claims() and read()")
        readers.append((component.name, reader, bool(component.metadata.get("fallback"))))
    return readers


def _claims(name: str, reader: Reader, path: Path) -> bool:
    try:
        return bool(reader.claims(path))
    except CovidzooError:
        raise
    except Exception as exc:  # a plugin's bug must not read as the user's bad input
        raise PluginError(f"reader '{name}' failed on {path}: {one_line(exc, with_type=True)}"
                          ) from exc


def _pick(path: Path) -> tuple[str, Reader]:
    if not (path.is_file() or path.is_dir()):
        raise BadInputError(f"{path}: no such file or folder")
    readers = _readers()
    for name, reader, fallback in readers:
        if not fallback and _claims(name, reader, path):
            return name, reader
    if path.is_dir():
        _check_folder(path)
    for name, reader, fallback in readers:
        if fallback and _claims(name, reader, path):
            return name, reader
    raise BadInputError(f"{path}: no registered reader reads it "
                        f"(readers: {', '.join(n for n, _, _ in readers)})")


def scan_files(paths: list[Path]) -> list[Path]:
    """The files of `paths` that a reader claims as a scan by itself: any reader but the
    fallback ones (so a class folder's `.nii.gz`, `.npy` or plugin-format files are scans,
    and a stray `notes.txt` is not taken for a DICOM file)."""
    readers = [(n, r) for n, r, fallback in _readers() if not fallback]
    return [p for p in paths if p.is_file() and any(_claims(n, r, p) for n, r in readers)]


def scan_format(path: str | os.PathLike[str]) -> str:
    """The name of the reader `read_scan` would read `path` with: "array", "itk", "nifti",
    "slices", "dicom", or a plugin reader's name."""
    return _pick(Path(path))[0]


def read_scan(path: str | os.PathLike[str], series: str | None = None) -> Volume:
    """Read one scan with the first registered reader that claims it: a DICOM series folder or
    file, a folder of slice images, an array file, a NIfTI, MHA/MHD or NRRD file, or a plugin's
    format.

    `series` picks a SeriesInstanceUID when a DICOM folder holds several. Bad input raises
    `BadInputError` with one line naming the file and the reason.
    """
    path = Path(path)
    name, reader = _pick(path)
    volume = reader.read(path, series)
    if not isinstance(volume, Volume):
        raise PluginError(f"reader '{name}' returned a {type(volume).__name__}, not a Volume")
    return volume
