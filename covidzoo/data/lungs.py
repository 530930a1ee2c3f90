"""Lung masks by classical image processing (scipy.ndimage; no network weights exist offline).

`lung_mask(volume, intensity)` finds the lungs of a chest CT volume (D x H x W, slices along
the first axis), in HU or as 8-bit slices windowed like COV19-CT-DB (`synthetic.LUNG_WINDOW`):

1. air: below -400 HU (the same value through the window for 8-bit slices);
2. the air outside the body goes: every in-plane component of air that touches the slice's
   border. Only the in-plane border counts, because the lungs may run through the first or
   last slice of a scan;
3. the air left is labelled in 3D; components under a tenth of the largest (trachea, bowel
   gas, noise) go, and the two largest stay (one where both lungs merge into one component);
4. each lung is closed with a ball (opacities against its wall) and has its holes filled
   slice by slice (vessels, opacities inside it), one lung at a time so that the closing
   never bridges the mediastinum between them.

A scan with no lungs in view gets an all-True mask and a `NoLungsWarning`: the scan is kept
whole. A warning rather than an error, because a scan without lungs in view (a partial series,
an abdomen) is still a scan a model may be asked about; a category of its own, so that a caller
can record it, silence it or turn it into an error with `warnings.filterwarnings`.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

from ..errors import BadInputError
from .synthetic import LUNG_WINDOW

AIR_HU = -400.0
# The smallest lung that counts, as a fraction of the scan's voxels; below, no lungs in view.
MIN_LUNG_FRACTION = 0.002
# A component of air under this fraction of the largest one is not a lung (trachea, gas).
MIN_SECOND_LUNG = 0.1
# The closing's ball, as a fraction of the slice's width in voxels (8-bit slices have no
# spacing): an opacity against the lung's wall up to about this radius is taken into the lung.
CLOSING_FRACTION = 0.08

Intensity = Literal["hu", "uint8"]


class NoLungsWarning(UserWarning):
    """No lungs were found in a scan; its lung mask covers the whole scan."""


def air_threshold(intensity: Intensity) -> float:
    """The value below which a voxel is air: `AIR_HU`, or its 8-bit value through the lung
    window the COV19-CT-DB slices (and the demo's JPG slices) are stored in."""
    if intensity == "hu":
        return AIR_HU
    if intensity == "uint8":
        level, width = LUNG_WINDOW
        return (AIR_HU - (level - width / 2)) / width * 255
    raise BadInputError(f"intensity: '{intensity}' is not one of hu, uint8")


def _check(volume: np.ndarray) -> None:
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise BadInputError(f"lung mask: a D x H x W volume is needed, got shape {volume.shape}")
    if np.issubdtype(volume.dtype, np.floating) and not np.isfinite(volume).all():
        raise BadInputError("lung mask: the volume holds NaN or infinite values")


def _inside_air(air: np.ndarray) -> np.ndarray:
    """Air not connected to a slice's in-plane border: inside the body."""
    from scipy import ndimage

    inside = np.zeros_like(air)
    for k, plane in enumerate(air):
        labels, _ = ndimage.label(plane)
        border = np.unique(np.concatenate(
            [labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inside[k] = (labels > 0) & ~np.isin(labels, border)
    return inside


def _largest_two(air: np.ndarray) -> list[np.ndarray]:
    """The lungs among the inside air: the largest component and the second largest unless it
    is too small to be a lung. Empty when even the largest is too small."""
    from scipy import ndimage

    labels, count = ndimage.label(air)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:2]
    if sizes[order[0]] < MIN_LUNG_FRACTION * air.size:
        return []
    return [labels == i + 1 for i in order if sizes[i] >= MIN_SECOND_LUNG * sizes[order[0]]]


def _close(lung: np.ndarray, radius: float, open_ends: tuple[bool, bool]) -> np.ndarray:
    """Morphological closing of a 3D mask by a ball of `radius` voxels, through distance
    transforms (as fast for a large ball as for a small one). Padded with nothing first, so
    that the closing does not eat the lung where it meets a slice's border; except where the
    lung runs through the first or last slice: there the end slice is repeated, because the
    lung goes on beyond the scan (`open_ends`: it meets the scan's first, last slice)."""
    from scipy import ndimage

    pad = int(np.ceil(radius)) + 1
    padded = np.pad(lung, pad)
    if open_ends[0]:
        padded[:pad] = padded[pad]
    if open_ends[1]:
        padded[-pad:] = padded[-pad - 1]
    dilated = ndimage.distance_transform_edt(~padded) <= radius
    closed = ndimage.distance_transform_edt(dilated) > radius
    return closed[pad:-pad, pad:-pad, pad:-pad]


def _solid(lung: np.ndarray, radius: float) -> np.ndarray:
    """A lung closed by a ball of `radius` within its bounding box (the closing adds nothing
    outside it), then its holes filled slice by slice."""
    from scipy import ndimage

    box = ndimage.find_objects(lung.astype(np.uint8))[0]
    solid = np.zeros_like(lung)
    closed = _close(lung[box], radius, (box[0].start == 0, box[0].stop == len(lung)))
    for k, plane in enumerate(closed):
        closed[k] = ndimage.binary_fill_holes(plane)
    solid[box] = closed
    return solid


def lung_mask(volume: np.ndarray, intensity: Intensity = "hu") -> np.ndarray:
    """The lungs of `volume` (D x H x W, slices first) as a bool mask of its shape.

    `intensity` is "hu" for Hounsfield units or "uint8" for slices windowed like COV19-CT-DB.
    Where no lungs are found, the mask is all True and a `NoLungsWarning` says so.
    """
    volume = np.asarray(volume)
    threshold = air_threshold(intensity)
    _check(volume)
    lungs = _largest_two(_inside_air(volume < threshold))
    if not lungs:
        warnings.warn(f"no lungs found in a scan of shape {volume.shape}: "
                      "its lung mask is the whole scan", NoLungsWarning, stacklevel=2)
        return np.ones(volume.shape, dtype=bool)
    radius = max(1.0, CLOSING_FRACTION * volume.shape[2])
    mask = np.zeros(volume.shape, dtype=bool)
    for lung in lungs:
        mask |= _solid(lung, radius)
    return mask


def lung_facts(mask: np.ndarray,
               spacing: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Lung volume (ml; None without a spacing, as for COV19-CT-DB slices), the fraction of
    the scan that is lung, and the slices (first-axis indices) that contain lung.

    `spacing` is the voxel size in mm along the mask's axes (z, y, x)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise BadInputError(f"lung facts: a D x H x W mask is needed, got shape {mask.shape}")
    voxels = int(mask.sum())
    volume_ml = None
    if spacing is not None:
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise BadInputError(f"spacing: three positive sizes in mm are needed, got {spacing}")
        volume_ml = voxels * float(np.prod(spacing)) / 1000.0
    return {
        "lung_volume_ml": volume_ml,
        "lung_fraction": voxels / mask.size if mask.size else 0.0,
        "lung_slices": np.flatnonzero(mask.any(axis=(1, 2))).tolist(),
    }
