"""What `covidzoo data inspect` shows of a scan's geometry: the spacing irregularities of a
DICOM series (gaps, duplicate positions, varying thickness; none for formats without slice
positions) and the montage with the lung mask's outline, cut through the most lung of the mask
(and, without a mask, the montage as it was before masks)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pydicom
import pytest
from data_helpers import write_series
from PIL import ImageDraw
from scipy import ndimage

from covidzoo.data.dicom import read_dicom
from covidzoo.data.geometry_checks import spacing_irregularities
from covidzoo.data.montage import OUTLINE, OUTLINE_PX, montage
from covidzoo.data.synthetic import phantom_with_lungs
from covidzoo.data.volume import Volume
from covidzoo.errors import BadInputError

# --- spacing irregularities ---------------------------------------------------------------------


def _facts(folder, positions, thickness=None, **kwargs):
    paths = write_series(folder, [0] * len(positions), positions, size=8, **kwargs)
    for path, mm in zip(paths, thickness or [], strict=False):
        ds = pydicom.dcmread(path)
        ds.SliceThickness = mm
        ds.save_as(path)
    volume = read_dicom(folder)
    facts = spacing_irregularities(volume)
    assert json.loads(json.dumps(facts)) == facts  # JSON as it is
    return volume, facts


def test_regular_series_has_no_irregularities(tmp_path):
    volume, facts = _facts(tmp_path, [0, 2.5, 5, 7.5], names=["d", "c", "b", "a"])
    assert volume.positions.tolist() == [0, 2.5, 5, 7.5]  # in slice order, not file order
    assert facts == {"positions_known": True, "gaps": [], "duplicate_positions": [],
                     "slice_step_mm": {"min": 2.5, "max": 2.5, "median": 2.5},
                     "thickness_mm": {"min": 5.0, "max": 5.0}, "varying_thickness": False}


def test_gap_is_reported_after_its_slice(tmp_path):
    _, facts = _facts(tmp_path, [0, 2.5, 5, 10, 12.5])
    assert facts["gaps"] == [[2, 5.0]]
    assert facts["duplicate_positions"] == []
    assert facts["slice_step_mm"] == {"min": 2.5, "max": 5.0, "median": 2.5}


def test_duplicate_position_is_kept_by_the_reader_and_reported(tmp_path):
    volume, facts = _facts(tmp_path, [0, 2.5, 2.5, 5, 7.5])
    # The reader keeps both slices at 2.5 mm (in file order) and warns; it drops nothing.
    assert volume.shape[0] == 5 and volume.spacing[0] == 2.5
    assert "1 duplicate slice position(s)" in volume.warnings
    assert [name[-8:] for name in volume.files[1:3]] == ["s001.dcm", "s002.dcm"]
    assert facts["duplicate_positions"] == [[1, 2, 2.5]]
    assert facts["gaps"] == []
    assert facts["slice_step_mm"] == {"min": 2.5, "max": 2.5, "median": 2.5}


def test_varying_slice_thickness(tmp_path):
    volume, facts = _facts(tmp_path, [0, 2.5, 5, 7.5], thickness=[1.0, 1.0, 2.0, 1.0])
    assert volume.thicknesses.tolist() == [1.0, 1.0, 2.0, 1.0]
    assert facts["thickness_mm"] == {"min": 1.0, "max": 2.0}
    assert facts["varying_thickness"] is True
    assert facts["gaps"] == [] and facts["duplicate_positions"] == []


def test_series_without_geometry_knows_thickness_but_no_positions(tmp_path):
    volume, facts = _facts(tmp_path, [0, 2.5, 5], geometry=False)
    assert volume.positions is None
    assert facts == {"positions_known": False, "gaps": [], "duplicate_positions": [],
                     "slice_step_mm": None, "thickness_mm": {"min": 5.0, "max": 5.0},
                     "varying_thickness": False}


@pytest.mark.parametrize("kind", ["nifti", "array", "slices"])
def test_formats_without_slice_positions(kind):
    facts = spacing_irregularities(Volume(np.zeros((4, 8, 8)), (1.0, 1.0, 1.0), "scan", kind))
    assert facts == {"positions_known": False, "gaps": [], "duplicate_positions": [],
                     "slice_step_mm": None, "thickness_mm": None, "varying_thickness": False}


# --- the montage with a lung mask ---------------------------------------------------------------

# Where the three panels lie (left, top, right, bottom) for a 16 x 64 x 64 volume at
# 5 x 2.5 x 2.5 mm: the longest extent (160 mm) is 320 px, so 2 px per mm; panels start at
# GAP + MARGIN = 44 px, below the 46 px header and a 24 px margin, 320 + 2 * 24 + 20 px apart.
PANELS = [(44, 70, 364, 390), (432, 70, 752, 230), (820, 70, 1140, 230)]


@pytest.fixture
def texts(monkeypatch):
    """Every string drawn on a picture, in order."""
    drawn: list[str] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return drawn


def _outline(image) -> np.ndarray:
    return (np.asarray(image.convert("RGB")) == OUTLINE).all(axis=-1)


def _chest() -> np.ndarray:
    """Air, a body, two lungs and a spine, HU rising slice by slice (no randomness)."""
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    plane = np.full((64, 64), -1000.0)
    plane[(y / 0.6) ** 2 + (x / 0.9) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        plane[((x - side * 0.4) / 0.25) ** 2 + (y / 0.4) ** 2 <= 1] = -850.0
    plane[((y - 0.3) / 0.12) ** 2 + (x / 0.1) ** 2 <= 1] = 500.0
    volume = np.repeat(plane[None], 16, axis=0).astype(np.float32)
    return volume + np.linspace(0, 60, 16, dtype=np.float32)[:, None, None]


def test_montage_without_mask_is_as_before(texts):
    """Pinned from the montage before masks existed: the panels' pixels (no text in them, so
    no font in the hash) and every string drawn."""
    image = montage(Volume(_chest(), (5.0, 2.5, 2.5), "scan", "dicom"), mask=None)
    pixels = np.asarray(image)
    digest = hashlib.sha256()
    for left, top, right, bottom in PANELS:
        digest.update(pixels[top:bottom, left:right].tobytes())
    assert image.size == (1184, 524)
    assert digest.hexdigest() == \
        "1da4c048ebd4bec878a315199191e551a472679afd1c4d43adc6fc6c4fb3a2a2"
    assert texts[:18] == ["axial", "slice 1 of 16", "A", "P", "R", "L", "coronal",
                          "row 28 of 64", "S", "I", "R", "L", "sagittal",
                          "column 19 of 64, right side", "S", "I", "A", "P"]
    assert texts[21] == ("cuts through the most lung (dark voxels enclosed by the body); "
                         "yellow ticks: where the other two cuts lie")
    assert not _outline(image).any()


def test_montage_outlines_the_mask_and_cuts_through_its_most_lung(texts):
    hu, mask = phantom_with_lungs(np.random.default_rng(0), (16, 64, 64), covid=False)
    volume = Volume(hu, (5.0, 2.5, 2.5), "scan", "dicom")
    k, j, i = (int(np.argmax(mask.sum(axis=axes))) for axes in ((1, 2), (0, 2), (0, 1)))
    montage(volume)
    assert f"slice {k + 1} of 16" not in texts  # the guess without the mask cuts elsewhere
    texts.clear()
    image = montage(volume, mask=mask)
    assert f"slice {k + 1} of 16" in texts and f"row {j + 1} of 64" in texts
    assert any(t.startswith(f"column {i + 1} of 64") for t in texts)
    caption = "\n".join(texts)
    assert "cuts through the most lung of the lung mask" in caption
    assert "bluish green: the lung mask's outline" in caption

    outline = _outline(image)
    inside = np.zeros_like(outline)
    for left, top, right, bottom in PANELS:
        assert outline[top:bottom, left:right].sum() > 50  # an outline in every panel
        inside[top:bottom, left:right] = True
    assert not (outline & ~inside).any()  # and nowhere else
    # Each outline is the inner edge of the mask's cut at display size (5 px per voxel in
    # plane, 10 px per slice), slices shown superior at the top.
    cuts = [mask[k], np.flipud(mask[:, j, :]), np.flipud(mask[:, :, i])]
    for cut, (left, top, right, bottom) in zip(cuts, PANELS, strict=True):
        shown = np.repeat(np.repeat(cut, (bottom - top) // cut.shape[0], axis=0),
                          (right - left) // cut.shape[1], axis=1)
        edge = shown & ~ndimage.binary_erosion(shown, iterations=OUTLINE_PX)
        assert (outline[top:bottom, left:right] == edge).all()


def test_montage_with_an_empty_mask_falls_back_to_the_guess(texts):
    volume = Volume(_chest(), (5.0, 2.5, 2.5), "scan", "dicom")
    image = montage(volume, mask=np.zeros(volume.shape, dtype=bool))
    assert "column 19 of 64, right side" in texts  # as without a mask
    assert any(t.startswith("lung mask empty; cuts through the most lung") for t in texts)
    assert not _outline(image).any()


def test_montage_refuses_a_mask_of_another_shape():
    volume = Volume(_chest(), (5.0, 2.5, 2.5), "scan", "dicom")
    with pytest.raises(BadInputError, match="lung mask of shape"):
        montage(volume, mask=np.ones((16, 32, 32), dtype=bool))
