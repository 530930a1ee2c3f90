"""Read a MetaImage (`.mha`, `.mhd`) or NRRD (`.nrrd`, `.nhdr`) file into a `Volume` through
SimpleITK (the optional extra `covidzoo[itk]`), in the DICOM reader's axis order.

The orientation rule is the NIfTI reader's (see `covidzoo.data.nifti`): axis 0 slices inferior
-> superior, axis 1 rows anterior -> posterior, axis 2 columns patient's right -> left. ITK works
in LPS millimetres: a voxel at index (i, j, k) lies at `origin + direction @ (spacing * index)`,
so the direction matrix says where each index axis points (a NRRD file in RAS space is turned
to LPS by ITK). That becomes the RAS affine nibabel uses and the voxels are flipped and
transposed by `nifti.reorient`: the nearest axis-aligned orientation, an oblique scan is not
resampled, and the same CT saved as NIfTI, MHA or NRRD gives the same `Volume`, voxel for voxel.
Spacing (z, y, x) is in mm. The stored values are kept as stored (an int16 scan stays int16);
`Volume.slab` checks them (finite, within `volume.HU_RANGE`). These formats carry no rescale.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..native_output import native_output_discarded
from .nifti import reorient
from .volume import Volume

META_SUFFIXES = (".mha", ".mhd")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
ITK_SUFFIXES = META_SUFFIXES + NRRD_SUFFIXES
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def is_itk(path: Path) -> bool:
    """A file named `.mha`, `.mhd`, `.nrrd` or `.nhdr` (case-insensitive)."""
    return path.name.lower().endswith(ITK_SUFFIXES)


def _simpleitk(path: Path) -> Any:
    try:
        import SimpleITK
    except ImportError as exc:
        raise BadInputError(f"{path}: reading MHA/NRRD needs SimpleITK; "
                            "pip install 'covidzoo[itk]'") from exc
    return SimpleITK


def _format(path: Path) -> tuple[str, str]:
    """(the ITK ImageIO that reads `path`, the format's name): chosen by the suffix, so that a
    `.mha` holding something else is refused instead of read by whichever IO accepts it."""
    if path.name.lower().endswith(META_SUFFIXES):
        return "MetaImageIO", "MetaImage (MHA/MHD)"
    return "NrrdImageIO", "NRRD"


def _reason(exc: Exception) -> str:
    """The line of an ITK error that says what went wrong, as " (reason)" without ITK's source
    locations; empty when ITK only says that it could not read the file (MetaImage's words)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    nrrd = [line for line in lines if line.startswith("[nrrd]")]
    line = nrrd[-1] if nrrd else lines[0] if lines else ""
    line = re.sub(r"^\[nrrd\] \w+:\s*", "", line)
    line = re.sub(r"^(\S+::|ITK )?ERROR:\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", line)
    if not line or line.startswith("File cannot be read"):
        return ""
    return f" ({line.rstrip('.')})"


def _check_header(reader: Any, path: Path) -> None:
    """One 3D volume of one number per voxel; trailing dimensions of size 1 are allowed (a 4D
    `x,y,z,1` file), as for NIfTI."""
    size = tuple(int(n) for n in reader.GetSize())
    shown = " x ".join(str(n) for n in size)
    if len(size) < 3 or any(n != 1 for n in size[3:]):
        what = "several volumes" if len(size) > 3 else f"{len(size)}D"
        raise BadInputError(f"{path}: {what} ({shown} voxels); a scan is one 3D volume")
    if min(size) < 1:
        raise BadInputError(f"{path}: empty image ({shown} voxels)")
    components = int(reader.GetNumberOfComponents())
    if components != 1:
        raise BadInputError(f"{path}: {components} values per voxel (a vector, colour or "
                            "complex image); a CT scan has one")


def _affine(image: Any, path: Path) -> np.ndarray:
    """The RAS affine (index i, j, k -> mm) of the first three axes of an ITK image."""
    n = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(n, n)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=float)[:3]
    origin = np.asarray(image.GetOrigin(), dtype=float)[:3]
    if not (np.isfinite(direction).all() and np.isfinite(origin).all()):
        raise BadInputError(f"{path}: the direction or origin is not finite")
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise BadInputError(f"{path}: voxel size {tuple(spacing.tolist())} mm is not positive")
    if abs(np.linalg.det(direction)) < 1e-6:
        raise BadInputError(f"{path}: the direction matrix is singular")
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


def read_itk(path: str | os.PathLike[str]) -> Volume:
    """Read a `.mha` / `.mhd` / `.nrrd` / `.nhdr` CT scan into a HU `Volume` (see the module
    docstring for the axis order). SimpleITK not installed, a 4D file with several volumes,
    a 2D or vector image, a corrupt or truncated file (or an `.mhd` whose data file is missing), or
    values that are not CT numbers are `BadInputError`s naming the file."""
    path = Path(path)
    sitk = _simpleitk(path)
    io, name = _format(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(io)
    try:
        with native_output_discarded((2,)):  # ITK's IO classes print their complaints too
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise BadInputError(f"{path}: not a readable {name} file{_reason(exc)}") from exc
    _check_header(reader, path)
    try:
        with native_output_discarded((2,)):  # MetaIO prints a truncated file's sizes to stderr
            image = reader.Execute()
    except RuntimeError as exc:
        raise BadInputError(f"{path}: cannot read the voxel data{_reason(exc)}; truncated, or "
                            "its data file missing?") from exc
    affine = _affine(image, path)
    values = sitk.GetArrayFromImage(image)  # a copy, indexed [k, j, i] (... and t first)
    del image
    if values.dtype.kind not in "iuf":
        raise BadInputError(f"{path}: voxels of type {values.dtype}; a CT scan has numbers")
    values = values.reshape(values.shape[-3:]).transpose(2, 1, 0)  # i, j, k as the affine
    values, spacing = reorient(values, affine)
    return Volume(values, (spacing[0], spacing[1], spacing[2]), str(path), "itk")
