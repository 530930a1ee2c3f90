"""The preprocessing steps of issue 17: the `--preprocess` spelling, lung crop, lung slices,
spacing with fit=pad, the recorded geometry, and the cache and train paths that carry them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidzoo.data import PreprocessConfig, Volume
from covidzoo.data.preprocess import describe, parse_steps, prepare_scan, preprocess
from covidzoo.data.synthetic import phantom_with_lungs
from covidzoo.errors import BadInputError

SIZE = (16, 32, 32)


def _phantom(seed=3, shape=(40, 96, 96), spacing=(2.5, 0.7, 0.7)):
    hu, mask = phantom_with_lungs(np.random.default_rng(seed), shape, True)
    return Volume(hu.astype(np.int16), spacing, "phantom", "array"), mask


def _cfg(text="", size=SIZE):
    return PreprocessConfig.parse(text, PreprocessConfig(size=size)) if text else \
        PreprocessConfig(size=size)


# --- the spelling ---------------------------------------------------------------------------


def test_spelling_reads_every_step_and_several_numbers():
    steps = parse_steps("crop=lungs,slices=lungs,spacing=1.5,1.5,3,window=-500,1400,"
                        "contrast=stretch,margin=0.1,lung-area=0.2,crop_slices=0.05")
    assert steps == {"crop": "lungs", "slices": "lungs", "spacing": (1.5, 1.5, 3.0),
                     "window": (-500.0, 1400.0), "contrast": "stretch", "margin": 0.1,
                     "lung_area": 0.2, "crop_slices": 0.05}
    # A repeated flag reads as one text.
    assert parse_steps(["crop=lungs", "spacing=1,1,2"]) == {"crop": "lungs",
                                                           "spacing": (1.0, 1.0, 2.0)}


def test_spacing_defaults_fit_to_pad_and_describe_round_trips():
    cfg = _cfg("crop=lungs,spacing=1.5,1.5,3")
    assert cfg.fit == "pad" and cfg.spacing == (1.5, 1.5, 3.0)
    text = describe(cfg)
    assert text == "crop=lungs,spacing=1.5,1.5,3,fit=pad"
    assert _cfg(text) == cfg
    assert describe(PreprocessConfig(size=SIZE)) == "defaults"
    # spacing=none on a config with spacing goes back to stretching.
    assert PreprocessConfig.parse("spacing=none", cfg).fit == "stretch"


@pytest.mark.parametrize("text, message", [
    ("crop", "takes KEY=VALUE"),
    ("crop=lungs,crop=none", "'crop' given twice"),
    ("zoom=2", "unknown step 'zoom'"),
    ("size=1,2,3", "the size has its own flag"),
    ("spacing=1,2", "spacing takes 3 numbers"),
    ("spacing=1,2,x", "spacing takes 3 numbers"),
    ("window=1", "window takes 2 numbers"),
    ("margin=wide", "margin takes a number"),
    ("crop=lung", "unknown crop 'lung'"),
    ("slices=some", "unknown slices 'some'"),
    ("fit=pad", "fit=pad needs spacing"),
    ("spacing=1,1,1,fit=stretch", "use fit=pad"),
    ("spacing=0,1,1", "spacing must be 3 positive"),
    ("spacing=nan,1,1", "spacing must be 3 positive"),
    ("margin=1", r"margin must be in \[0, 1\)"),
    ("lung_area=-0.1", r"lung_area must be in \[0, 1\)"),
])
def test_bad_spelling_is_one_line(text, message):
    with pytest.raises(BadInputError, match=message) as info:
        _cfg(text)
    assert "\n" not in str(info.value)


def test_a_config_written_before_the_steps_reads_as_without_them():
    old = {"size": [16, 32, 32], "window": [-600.0, 1500.0], "crop_slices": 0.0,
           "crop_border": 0.0, "contrast": "none"}
    cfg = PreprocessConfig.from_dict(old)
    assert cfg == PreprocessConfig(size=SIZE)
    assert (cfg.crop, cfg.slices, cfg.spacing, cfg.fit) == ("none", "all", None, "stretch")
    assert PreprocessConfig.from_dict(json.loads(json.dumps(_cfg("spacing=1,1,2").to_dict()))
                                      ) == _cfg("spacing=1,1,2")


# --- lungs ----------------------------------------------------------------------------------


def _box(mask):
    from scipy import ndimage

    return [(s.start, s.stop) for s in ndimage.find_objects(mask.astype(np.uint8))[0]]


def test_default_steps_are_unchanged_by_the_lung_machinery():
    volume, _ = _phantom()
    array, geometry = prepare_scan(volume, _cfg())
    assert np.array_equal(array, preprocess(volume, _cfg()))
    assert geometry.box == ((0, 40), (0, 96), (0, 96)) and geometry.lungs is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crop_lungs_holds_the_whole_lungs_within_the_margin(seed):
    volume, truth = _phantom(seed)
    cfg = _cfg("crop=lungs,margin=0.05")
    _, geometry = prepare_scan(volume, cfg)
    for (lo, hi), (t0, t1) in zip(geometry.box, _box(truth), strict=True):
        slack = int(np.ceil(0.05 * (t1 - t0))) + 4  # the margin and the coarse grid's step
        assert lo <= t0 and hi >= t1, (geometry.box, _box(truth))
        assert t0 - lo <= slack and hi - t1 <= slack, (geometry.box, _box(truth))
    assert geometry.lungs["found"] and geometry.lungs["lung_volume_ml"] > 0


def test_slices_lungs_keeps_the_slices_with_enough_lung():
    volume, truth = _phantom()
    cfg = _cfg("slices=lungs,lung_area=0.3")
    _, geometry = prepare_scan(volume, cfg)
    area = truth.sum(axis=(1, 2))
    kept = np.flatnonzero(area >= 0.3 * area.max())
    z0, z1 = geometry.box[0]
    assert abs(z0 - kept[0]) <= 1 and abs(z1 - 1 - kept[-1]) <= 1
    assert geometry.box[1:] == ((0, 96), (0, 96))  # rows and columns stay whole
    # Every output slice maps back into the kept range, in order.
    assert list(geometry.source_slices) == sorted(geometry.source_slices)
    assert z0 <= geometry.source_slices[0] and geometry.source_slices[-1] < z1


def test_source_slices_map_output_slices_back_to_the_scan():
    # Slice k of the scan holds the value k: the output slice must hold its source's value.
    values = np.repeat(np.arange(40, dtype=np.float32)[:, None, None] * 10 - 800, 16, axis=1)
    values = np.repeat(values, 16, axis=2)
    volume = Volume(values, (1.0, 1.0, 1.0), "ramp", "array")
    cfg = PreprocessConfig(size=(10, 8, 8), window=(-600.0, 800.0), crop_slices=0.1)
    array, geometry = prepare_scan(volume, cfg)
    hu = array[:, 0, 0] / 255 * 800 + (-600 - 400)
    source = np.array(geometry.source_slices)
    assert np.all(np.abs(hu - (source * 10 - 800)) <= 20)  # within one slice (10 HU)


def test_no_lungs_in_view_keeps_the_scan_whole_with_a_warning():
    belly = np.full((12, 32, 32), -1000, np.int16)  # air around a body of soft tissue
    belly[:, 4:28, 4:28] = 40
    volume = Volume(belly, (1.0, 1.0, 1.0), "belly", "array")
    _, geometry = prepare_scan(volume, _cfg("crop=lungs,slices=lungs", size=(6, 16, 16)))
    assert geometry.box == ((0, 12), (0, 32), (0, 32))
    assert geometry.lungs["found"] is False
    assert any("no lungs found" in w for w in volume.warnings)


def test_lungs_on_8bit_slices():
    from covidzoo.data.synthetic import _window_uint8

    hu, truth = phantom_with_lungs(np.random.default_rng(5), (24, 64, 64), False)
    volume = Volume(_window_uint8(hu), (1.0, 1.0, 1.0), "jpgs", "slices", intensity="uint8")
    _, geometry = prepare_scan(volume, _cfg("crop=lungs", size=(8, 16, 16)))
    for (lo, hi), (t0, t1) in zip(geometry.box[1:], _box(truth)[1:], strict=True):
        assert lo <= t0 and hi >= t1


# --- spacing --------------------------------------------------------------------------------


def _ball(shape, spacing, radius_mm=12.0):
    """A water ball in air, centred, of `radius_mm` at the given voxel spacing (z, y, x)."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in
                          zip(shape, spacing, strict=True)], indexing="ij")
    inside = sum(g ** 2 for g in grids) <= radius_mm ** 2
    return Volume(np.where(inside, 0, -1000).astype(np.int16), spacing, "ball", "array")


def test_fit_pad_keeps_physical_size_whatever_the_source_spacing():
    cfg = _cfg("spacing=1,1,1", size=(32, 32, 32))
    widths = []
    for shape, spacing in (((40, 40, 40), (1.0, 1.0, 1.0)), ((16, 80, 80), (2.5, 0.5, 0.5))):
        array, _ = prepare_scan(_ball(shape, spacing), cfg)
        inside = array > 128
        widths.append([int(inside.any(axis=tuple(a for a in range(3) if a != k)).sum())
                       for k in range(3)])
    for width in widths:
        assert all(abs(w - 24) <= 2 for w in width), widths  # 24 mm at 1 mm per voxel


def test_stretch_makes_the_same_ball_look_different_at_different_spacings():
    # What `spacing` is for: without it, a 2.5 mm series and a 1 mm one look alike in voxels.
    small, _ = prepare_scan(_ball((40, 40, 40), (1.0, 1.0, 1.0)), _cfg(size=(32, 32, 32)))
    large, _ = prepare_scan(_ball((40, 40, 40), (1.0, 0.5, 0.5)), _cfg(size=(32, 32, 32)))
    assert (small > 128).sum() != (large > 128).sum()


def test_fit_pad_pads_with_air_and_marks_padded_slices():
    cfg = _cfg("spacing=1,1,1", size=(32, 32, 32))
    array, geometry = prepare_scan(_ball((8, 40, 40), (1.0, 1.0, 1.0)), cfg)
    air = array[16, 0, 0]  # the scan's own air, through the lung window (-1000 HU: 60)
    assert air == 60 and (array[0] == air).all() and (array[-1] == air).all()
    assert geometry.source_slices[0] == -1 and geometry.source_slices[-1] == -1
    assert sorted(set(geometry.source_slices) - {-1}) == list(range(8))


def test_spacing_on_slice_images_is_refused_naming_the_scan():
    volume = Volume(np.zeros((4, 8, 8), np.uint8), (1.0, 1.0, 1.0), "scan7", "slices",
                    intensity="uint8")
    with pytest.raises(BadInputError, match="scan7: slice images record no voxel spacing"):
        prepare_scan(volume, _cfg("spacing=1,1,1", size=(4, 8, 8)))


# --- the cache, train, evaluate and predict --------------------------------------------------


def test_cache_records_the_geometry_and_refuses_a_malformed_one(tmp_path):
    from covidzoo.data.cache import CachedScans, prepare_cache, read_index
    from covidzoo.data.layouts import ScanRecord

    volume, _ = _phantom(shape=(24, 64, 64))
    path = tmp_path / "scan.npz"
    np.savez(path, volume=np.asarray(volume.values), spacing=np.array(volume.spacing))
    cfg = _cfg("crop=lungs", size=(8, 16, 16))
    prepare_cache([ScanRecord(path, 1, "train")], tmp_path / "cache", cfg, workers=0,
                  progress=False)
    (geometry,) = CachedScans(tmp_path / "cache").geometry
    assert geometry == prepare_scan(volume, cfg)[1].to_dict()
    index_path = tmp_path / "cache" / "index.json"
    index = json.loads(index_path.read_text())
    index["entries"][0]["geometry"]["source_slices"] = [0]
    index_path.write_text(json.dumps(index))
    with pytest.raises(BadInputError, match="geometry malformed"):
        read_index(tmp_path / "cache")


# MosMedData ships `{covid,non-covid}/study_NNNN.nii.gz`; these are synthetic phantoms saved in
# several orientations (the affine says which), as hospitals' converters write them.
ORIENTATIONS = [
    ("RAS", (0, 1, 2), (False, False, False)),
    ("LPS", (0, 1, 2), (True, True, False)),
    ("permuted", (2, 0, 1), (False, True, False)),
]


def _save_nifti(path, hu_zyx, spacing_zyx, orientation):
    """Save a (slices S, rows P, columns L) volume as NIfTI in another voxel order, with the
    affine that says so: the reader must turn it back."""
    import nibabel

    _, order, flips = orientation
    # Canonical (z=S, y=P, x=L) -> nibabel's RAS index order (x=R..., y=A..., z=S).
    data = np.ascontiguousarray(hu_zyx.transpose(2, 1, 0)[::-1, ::-1, :])  # (L->R? no: R, A, S)
    affine = np.diag([*[spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]], 1.0])
    # Index i runs right->left in the canonical array; reversed it runs left->right... let
    # nibabel compute the orientation: flip / permute the data and its affine together.
    for axis, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis)
            affine[:, axis] = -affine[:, axis]
            affine[axis, 3] = 0.0
    data = data.transpose(order)
    affine = affine[:, [*order, 3]]
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(data), affine), path)


@pytest.fixture(scope="module")
def tiny_nifti_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("mosmed")
    rng = np.random.default_rng(0)
    k = 0
    for split, n in (("train", 4), ("val", 2)):
        for label in ("covid", "non-covid"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for _ in range(n):
                hu, _ = phantom_with_lungs(rng, (20, 48, 48), label == "covid")
                _save_nifti(folder / f"study_{k:04d}.nii.gz", hu.astype(np.int16),
                            (5.0, 1.5, 1.5), ORIENTATIONS[k % len(ORIENTATIONS)])
                k += 1
    return root


def test_the_nifti_orientations_read_back_to_the_phantom(tmp_path):
    from covidzoo.data.readers import read_scan

    hu, _ = phantom_with_lungs(np.random.default_rng(1), (6, 10, 12), True)
    hu = hu.astype(np.int16)
    for orientation in ORIENTATIONS:
        path = tmp_path / f"{orientation[0]}.nii.gz"
        _save_nifti(path, hu, (5.0, 1.5, 1.25), orientation)
        volume = read_scan(path)
        assert np.array_equal(volume.array, hu), orientation[0]
        assert volume.spacing == pytest.approx((5.0, 1.5, 1.25)), orientation[0]


README_MODEL = ("regnet3d", "--depths", "2,6,12,4")  # the README's main command
TINY = ("--widths", "8,16,16,32", "--stem-width", "8", "--size", "8,32,32", "--epochs", "1",
        "--batch-size", "2", "--device", "cpu")


def test_mosmed_style_nifti_trains_and_evaluates_by_the_readme_commands(tmp_path, invoke,
                                                                       tiny_nifti_set):
    out = tmp_path / "run"
    result = invoke("train", *README_MODEL, "--data", str(tiny_nifti_set), *TINY,
                    "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", str(out / "best.safetensors"), "--data", str(tiny_nifti_set),
                    "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["metrics"]["n"] == 4 and report["split"] == "val"


def test_train_records_the_steps_and_evaluate_says_when_they_are_overridden(
        tmp_path, invoke, tiny_nifti_set):
    from covidzoo.checkpoint import read_spec

    out = tmp_path / "run"
    result = invoke("train", *README_MODEL, "--data", str(tiny_nifti_set), *TINY,
                    "--preprocess", "crop=lungs,spacing=4,4,5", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    spec = read_spec(out / "best.safetensors")
    assert spec.preprocess["crop"] == "lungs" and spec.preprocess["spacing"] == [4.0, 4.0, 5.0]
    assert spec.preprocess["fit"] == "pad"
    checkpoint = str(out / "best.safetensors")
    report = json.loads(invoke("evaluate", checkpoint, "--data", str(tiny_nifti_set),
                               "--json").output)
    assert not any("--preprocess" in n for n in report["notes"])
    result = invoke("evaluate", checkpoint, "--data", str(tiny_nifti_set), "--preprocess",
                    "crop=none", "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.output)["notes"]
    assert any("crop=none" not in n and "not as it was trained (crop=lungs" in n
               for n in notes), notes
    scan = next((tiny_nifti_set / "val" / "covid").iterdir())
    result = invoke("predict", checkpoint, str(scan), "--preprocess", "slices=lungs", "--json")
    assert result.exit_code == 0, result.output
    assert any("not as it was trained" in n for n in json.loads(result.output)["notes"])


def test_train_refuses_a_cache_prepared_otherwise(tmp_path, invoke, tiny_nifti_set):
    cache = tmp_path / "cache"
    result = invoke("data", "prepare", str(tiny_nifti_set), "--out", str(cache), "--size",
                    "8,32,32", "--preprocess", "slices=lungs", "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads((cache / "index.json").read_text())["config"]["slices"] == "lungs"
    result = invoke("train", *README_MODEL, "--cache", str(cache), *TINY, "--preprocess",
                    "crop=lungs", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "--preprocess crop=lungs differs from the scans of --cache" in result.output


def test_inspect_reports_the_lungs_and_draws_their_outline(tmp_path, invoke):
    from PIL import Image

    hu, truth = phantom_with_lungs(np.random.default_rng(2), (24, 64, 64), True)
    path = tmp_path / "scan.npz"
    np.savez(path, volume=hu.astype(np.int16), spacing=np.array([2.5, 1.0, 1.0]))
    png = tmp_path / "scan.png"
    result = invoke("data", "inspect", str(path), "--png", str(png), "--preprocess",
                    "lung_area=0.5", "--json")
    assert result.exit_code == 0, result.output
    lungs = json.loads(result.output)["lungs"]
    assert lungs["found"] and lungs["lung_area"] == 0.5
    true_ml = truth.sum() * 2.5 / 1000
    assert abs(lungs["lung_volume_ml"] - true_ml) < 0.1 * true_ml
    area = truth.sum(axis=(1, 2))
    kept = np.flatnonzero(area >= 0.5 * area.max())
    assert abs(lungs["slices_kept"][0] - kept[0]) <= 1
    assert abs(lungs["slices_kept"][1] - 1 - kept[-1]) <= 1
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert (pixels == (0, 158, 115)).all(axis=2).sum() > 100  # the outline's bluish green
    table = invoke("data", "inspect", str(path)).output
    assert "slices=lungs keeps" in table and "spacing irregularities" in table
