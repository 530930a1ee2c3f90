"""Read a NIfTI file (`.nii`, `.nii.gz`) into a `Volume` in the DICOM reader's axis order.

The orientation convention, the one `read_dicom` gives a standard axial series
(ImageOrientationPatient 1,0,0,0,1,0; slices sorted by position along the slice normal):

- axis 0, slices: inferior -> superior (feet to head);
- axis 1, rows: anterior -> posterior;
- axis 2, columns: patient's right -> left.

In nibabel's axis codes (the direction each index grows towards) that is `("S", "P", "L")`. A
NIfTI file may store its voxels in any order and direction (RAS, LPS, sagittal...): its affine
says which, so the voxels are flipped and transposed to this order (the affine's nearest
axis-aligned orientation; an oblique scan is not resampled) and the same CT saved as a DICOM
series and as NIfTI gives the same `Volume`, voxel for voxel. Spacing (z, y, x) in mm comes from
the affine's column lengths. The stored values are kept as stored (an int16 scan stays int16)
and `scl_slope` / `scl_inter` are applied a slab at a time by `Volume.slab`, which also checks
them (finite, within `volume.HU_RANGE`).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, one_line
from .volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Where each array axis points, as nibabel's axis codes: slices S, rows P, columns L.
AXIS_CODES = ("S", "P", "L")


def is_nifti(path: Path) -> bool:
    """A file named `.nii` or `.nii.gz` (case-insensitive)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _load(path: Path) -> Any:
    import nibabel

    try:
        image = nibabel.load(path)
    except FileNotFoundError as exc:
        raise BadInputError(f"{path}: no such file") from exc
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, EOFError, zlib...
        raise BadInputError(f"{path}: not a readable NIfTI file "
                            f"({one_line(exc, with_type=False)})") from exc
    if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
        raise BadInputError(f"{path}: not a NIfTI image ({type(image).__name__})")
    return image


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The 3 spatial dimensions; trailing dimensions of size 1 are allowed (a `x,y,z,1` file)."""
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        extra = " x ".join(str(n) for n in shape)
        what = "several volumes" if len(shape) > 3 else f"{len(shape)}D"
        raise BadInputError(f"{path}: {what} ({extra} voxels); a scan is one 3D volume")
    if min(shape[:3]) < 1:
        raise BadInputError(f"{path}: empty image ({' x '.join(str(n) for n in shape)} voxels)")
    return shape[0], shape[1], shape[2]


def _stored_values(image: Any, path: Path) -> np.ndarray:
    """The voxels as the file stores them (before scl_slope/scl_inter)."""
    try:
        values = np.asanyarray(image.dataobj.get_unscaled())
    except MemoryError:
        raise
    except Exception as exc:  # truncated data: EOFError, ValueError, zlib.error, OSError
        reason = one_line(exc, with_type=not isinstance(exc, (zlib.error, EOFError)))
        raise BadInputError(f"{path}: cannot read the voxel data ({reason}; truncated?)"
                            ) from exc
    if values.dtype.kind not in "iuf":
        raise BadInputError(f"{path}: voxels of type {values.dtype}; a CT scan has numbers")
    return values


def _rescale(image: Any, path: Path) -> tuple[float, float]:
    """scl_slope and scl_inter as nibabel resolves them (0 or NaN slope: 1 and 0)."""
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise BadInputError(f"{path}: scl_slope {slope} / scl_inter {inter} is not finite")
    return slope, inter


def reorient(values: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """`values` flipped and transposed to `AXIS_CODES`, and its spacing in the new axis order.

    `affine` maps voxel indices to RAS+ millimetres, as nibabel gives it.
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    affine = np.asarray(affine, dtype=float)
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(AXIS_CODES))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # voxel size along each stored axis
    spacing = [0.0, 0.0, 0.0]
    for stored_axis, (new_axis, _flip) in enumerate(transform):
        spacing[int(new_axis)] = float(zooms[stored_axis])
    return np.ascontiguousarray(apply_orientation(values, transform)), tuple(spacing)


def read_nifti(path: str | os.PathLike[str]) -> Volume:
    """Read a `.nii` / `.nii.gz` CT scan into a HU `Volume` (see the module docstring for the
    axis order). A 4D file with several volumes, a 2D image, a corrupt or truncated file, or
    values that are not CT numbers are `BadInputError`s naming the file."""
    path = Path(path)
    image = _load(path)
    _spatial_shape(tuple(int(n) for n in image.shape), path)
    values = _stored_values(image, path)
    values = values.reshape(values.shape[:3])  # drops trailing size-1 axes
    affine = image.affine
    if affine is None or not np.isfinite(affine).all():
        raise BadInputError(f"{path}: the affine is missing or not finite")
    warnings: list[str] = []
    if int(image.header["sform_code"]) == 0 and int(image.header["qform_code"]) == 0:
        warnings.append("no sform/qform: orientation and spacing taken from pixdim (assumed)")
    values, spacing = reorient(values, affine)
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise BadInputError(f"{path}: voxel size {spacing} mm from the affine is not positive")
    slope, inter = _rescale(image, path)
    depth = values.shape[0]
    return Volume(
        values, (spacing[0], spacing[1], spacing[2]), str(path), "nifti", warnings,
        slope=None if slope == 1 else np.full(depth, slope, dtype=np.float32),
        intercept=None if inter == 0 else np.full(depth, inter, dtype=np.float32),
    )
