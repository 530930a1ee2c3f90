"""The classical lung mask, measured against the lungs the demo generator put in its scans."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

from covidzoo.data import find_scans, read_scan, synthesize
from covidzoo.data.lungs import NoLungsWarning, air_threshold, lung_facts, lung_mask
from covidzoo.data.synthetic import DEMO_SHAPE, phantom, phantom_with_lungs
from covidzoo.errors import BadInputError

SEED, SCANS = 5, 12
MIN_DICE = 0.95


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    """12 demo scans as the demo writes them (JPG slices, both classes), each with its HU
    volume and the generator's lung mask."""
    out = synthesize(tmp_path_factory.mktemp("lungs") / "demo", n=SCANS, seed=SEED)
    scans = []
    for record in find_scans(out):
        index = int(record.path.name[-4:])
        hu, truth = phantom_with_lungs(np.random.default_rng([SEED, index]), DEMO_SHAPE,
                                       covid=bool(record.label))
        scans.append((record, hu, read_scan(record.path).array, truth))
    assert {r.label for r, *_ in scans} == {0, 1}
    return scans


@pytest.fixture(scope="module")
def hu_masks(demo_set):
    return [lung_mask(hu, "hu") for _, hu, _, _ in demo_set]


def _dice_report(scores: dict[str, float]) -> str:
    worst = min(scores, key=scores.get)
    return (f"min Dice {scores[worst]:.4f} ({worst}), mean {np.mean(list(scores.values())):.4f}"
            f" over {len(scores)} scans")


def test_phantom_unchanged_by_exposing_its_lungs():
    # The demo data must stay what it was: phantom_with_lungs draws nothing more.
    rng = lambda: np.random.default_rng([3, 1])  # noqa: E731
    volume = phantom(rng(), (12, 32, 32), covid=True)
    digest = hashlib.sha256(np.round(volume).astype(np.int16).tobytes()).hexdigest()
    assert digest == "e873735fefc6e59164536caeac40bb7e12f71b3fecca9a34b199c07017f4dfb6", (
        "phantom() changed: the demo data changes with it (bump DEMO_VERSION)")
    with_lungs, truth = phantom_with_lungs(rng(), (12, 32, 32), covid=True)
    assert np.array_equal(with_lungs, volume)
    assert truth.dtype == bool and truth.shape == volume.shape and truth.any()


def test_lung_mask_matches_the_phantom_lungs_in_hu(demo_set, hu_masks):
    scores = {r.path.name: dice(mask, truth)
              for (r, _, _, truth), mask in zip(demo_set, hu_masks, strict=True)}
    assert min(scores.values()) >= MIN_DICE, _dice_report(scores)


def test_lung_mask_matches_the_phantom_lungs_on_the_demo_jpg_slices(demo_set):
    scores = {}
    for record, _, slices, truth in demo_set:
        assert slices.shape == truth.shape and slices.max() <= 255
        scores[record.path.name] = dice(lung_mask(slices, "uint8"), truth)
    assert min(scores.values()) >= MIN_DICE, _dice_report(scores)


def test_lung_mask_holds_the_findings(demo_set, hu_masks):
    # Opacities inside the lungs and against their walls are lung: in HU, nearly every voxel
    # of the true lungs above the air threshold (findings, vessels) is in the mask.
    for (record, hu, _, truth), mask in zip(demo_set, hu_masks, strict=True):
        dense = truth & (hu >= air_threshold("hu"))
        kept = (mask & dense).sum() / dense.sum()
        assert kept >= 0.8, f"{record.path.name}: only {kept:.2f} of the dense lung kept"


def test_lungs_through_the_first_and_last_slices(demo_set):
    _, hu, _, truth = demo_set[0]
    rows = np.flatnonzero(truth.any(axis=(1, 2)))
    middle = slice(rows[0] + 6, rows[-1] - 6)  # the lungs run through both ends
    mask = lung_mask(hu[middle], "hu")
    assert mask[0].any() and mask[-1].any()
    score = dice(mask, truth[middle])
    assert score >= MIN_DICE, f"Dice {score:.4f} on a scan cut through the lungs"


@pytest.mark.parametrize("case", ["soft tissue", "body without lungs"])
def test_no_lungs_keeps_the_whole_scan_with_a_warning(case):
    volume = np.full((10, 48, 48), 40.0, dtype=np.float32)
    if case == "body without lungs":
        y, x = np.mgrid[:48, :48]
        volume[:, (y - 24) ** 2 + (x - 24) ** 2 > 20 ** 2] = -1000.0
    with pytest.warns(NoLungsWarning, match="no lungs found"):
        mask = lung_mask(volume, "hu")
    assert mask.dtype == bool and mask.shape == volume.shape and mask.all()


def test_small_air_pocket_is_not_a_lung():
    # A trachea-sized bubble of air in a body: no lungs, not a tiny lung mask.
    volume = np.full((10, 48, 48), 40.0, dtype=np.float32)
    volume[4:6, 23:25, 23:25] = -1000.0
    with pytest.warns(NoLungsWarning):
        assert lung_mask(volume, "hu").all()


def test_lungs_found_raise_no_warning(demo_set):
    _, hu, _, _ = demo_set[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lung_mask(hu, "hu")


@pytest.mark.parametrize("volume, intensity, message", [
    (np.zeros((4, 8, 8)), "houndsfield", "intensity"),
    (np.zeros((8, 8)), "hu", "D x H x W"),
    (np.full((4, 8, 8), np.nan), "hu", "NaN"),
])
def test_lung_mask_bad_input(volume, intensity, message):
    with pytest.raises(BadInputError, match=message):
        lung_mask(volume, intensity)


def test_uint8_threshold_is_the_hu_threshold_through_the_lung_window():
    from covidzoo.data.synthetic import _window_uint8

    hu = air_threshold("hu")
    below, above = _window_uint8(np.array([hu - 6.0, hu + 6.0]))
    assert below < air_threshold("uint8") < above


def test_lung_facts():
    mask = np.zeros((4, 10, 10), dtype=bool)
    mask[1:3, 2:7, 2:6] = True  # 40 voxels
    facts = lung_facts(mask, (5.0, 2.5, 2.0))
    assert facts == {"lung_volume_ml": pytest.approx(1.0), "lung_fraction": 0.1,
                     "lung_slices": [1, 2]}
    assert lung_facts(mask)["lung_volume_ml"] is None
    with pytest.raises(BadInputError, match="spacing"):
        lung_facts(mask, (5.0, 0.0, 2.0))
