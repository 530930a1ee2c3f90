"""How evenly a scan's slices lie: gaps, duplicate positions, varying slice thickness.

Facts for `covidzoo data inspect --json`, from the slice positions and thicknesses a reader
recorded on the `Volume` (`positions`, `thicknesses`). Only a DICOM series records each
slice's own position (ImagePositionPatient). A NIfTI (or MHA/NRRD) file has uniform spacing by
construction: one affine, one spacing, for the whole volume, so it has no irregularities to
find; `.npy`/`.npz` arrays and folders of slice images record no positions at all. For all of
these `positions_known` is False and the position facts are empty.

Tolerances, from the steps between neighbouring slices (positions in slice order):

- a *duplicate position*: a step under `DUPLICATE_MM` (0.01 mm) or under `DUPLICATE_FRACTION`
  (1 %) of the median step between distinct positions, whichever is larger;
- the *median step*: the median of the steps that are not duplicates;
- a *gap*: a step over `GAP_FACTOR` (1.5) times the median step (one slice missing or more);
- *varying thickness*: slice thicknesses (DICOM SliceThickness) that differ by more than
  `THICKNESS_MM` (0.01 mm; DICOM decimal strings carry far finer values).

Lengths are in mm, rounded to `DECIMALS` (4) places (0.1 micrometre), so that the JSON shows
2.5, not 2.4999999999999996.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .volume import Volume

DUPLICATE_MM = 0.01
DUPLICATE_FRACTION = 0.01
GAP_FACTOR = 1.5
THICKNESS_MM = 0.01
DECIMALS = 4


def _mm(value: float) -> float:
    return round(float(value), DECIMALS)


def _position_facts(positions: np.ndarray) -> dict[str, Any]:
    steps = np.abs(np.diff(positions))
    distinct = steps[steps >= DUPLICATE_MM]
    if distinct.size == 0:  # one slice, or every slice at one position
        duplicate = np.ones(steps.shape, dtype=bool)
    else:
        duplicate = steps < max(DUPLICATE_MM, DUPLICATE_FRACTION * float(np.median(distinct)))
    moving = steps[~duplicate]
    if moving.size == 0:
        gaps = np.zeros(steps.shape, dtype=bool)
        step = None
    else:
        median = float(np.median(moving))
        gaps = ~duplicate & (steps > GAP_FACTOR * median)
        step = {"min": _mm(moving.min()), "max": _mm(moving.max()), "median": _mm(median)}
    return {
        "gaps": [[int(i), _mm(steps[i])] for i in np.flatnonzero(gaps)],
        "duplicate_positions": [[int(i), int(i) + 1, _mm(positions[i])]
                                for i in np.flatnonzero(duplicate)],
        "slice_step_mm": step,
    }


def spacing_irregularities(volume: Volume) -> dict[str, Any]:
    """JSON-friendly facts about the spacing of `volume`'s slices:

    - `positions_known`: whether the reader recorded each slice's position;
    - `gaps`: `[after_slice_index, gap_mm]` for each step over 1.5 times the median, where
      `gap_mm` is the distance from slice `after_slice_index` to the next (0-based, in slice
      order);
    - `duplicate_positions`: `[i, i + 1, position_mm]` for each pair of neighbouring slices at
      one position (three slices at one position are two pairs);
    - `slice_step_mm`: `{"min", "max", "median"}` of the steps between distinct positions, None
      with fewer than two distinct positions;
    - `thickness_mm`: `{"min", "max"}` of the slices' recorded thicknesses, None where none
      is recorded (with or without positions);
    - `varying_thickness`: whether those differ by more than 0.01 mm.

    Without positions (NIfTI, whose spacing is uniform by construction; arrays; slice images)
    the position facts are empty lists and None. The tolerances are in the module's docstring.
    """
    facts: dict[str, Any] = {"positions_known": volume.positions is not None, "gaps": [],
                             "duplicate_positions": [], "slice_step_mm": None}
    if volume.positions is not None:
        facts.update(_position_facts(np.asarray(volume.positions, dtype=np.float64)))
    thicknesses = np.asarray([] if volume.thicknesses is None else volume.thicknesses,
                             dtype=np.float64)
    known = thicknesses[np.isfinite(thicknesses)]
    facts["thickness_mm"] = ({"min": _mm(known.min()), "max": _mm(known.max())}
                             if known.size else None)
    facts["varying_thickness"] = bool(known.size and known.max() - known.min() > THICKNESS_MM)
    return facts
