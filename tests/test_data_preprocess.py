"""Preprocessing config and steps; dataset layouts and manifests."""

from __future__ import annotations

import numpy as np
import pytest

from covidzoo.data import PreprocessConfig, Volume, find_scans, preprocess
from covidzoo.errors import BadInputError


def _volume(array, intensity="hu"):
    return Volume(np.asarray(array, np.float32), (1.0, 1.0, 1.0), "x", "array",
                  intensity=intensity)


def test_config_defaults_and_round_trip():
    cfg = PreprocessConfig()
    assert cfg.size == (64, 224, 224) and cfg.window == (-600.0, 1500.0)
    other = PreprocessConfig(size=[8, 16, 16], crop_slices=0.1, contrast="equalize")
    assert PreprocessConfig.from_dict(other.to_dict()) == other
    assert other.digest() != cfg.digest()
    with pytest.raises(BadInputError, match="unknown preprocessing option"):
        PreprocessConfig.from_dict({"sise": [1, 2, 3]})


@pytest.mark.parametrize("kwargs, match", [
    ({"size": (1, 2)}, "size must be"),
    ({"window": (0, 0)}, "width > 0"),
    ({"crop_border": 0.5}, "crop_border"),
    ({"contrast": "clahe"}, "unknown contrast 'clahe'"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        PreprocessConfig(**kwargs)


def test_hu_window_maps_lung_range():
    # level -600 width 1500: -1350 HU and below -> 0, 150 HU and above -> 255, -600 -> middle
    hu = np.array([-2000, -1350, -600, 150, 3000]).reshape(5, 1, 1)
    volume = _volume(hu * np.ones((5, 2, 2)))
    out = preprocess(volume, PreprocessConfig(size=(5, 2, 2)))
    assert out.dtype == np.uint8 and out[:, 0, 0].tolist() == [0, 0, 128, 255, 255]


def test_uint8_input_passes_through():
    values = np.arange(0, 250, 10).reshape(25, 1, 1) * np.ones((25, 2, 2))
    out = preprocess(_volume(values, "uint8"), PreprocessConfig(size=(25, 2, 2)))
    assert out[:, 1, 1].tolist() == list(range(0, 250, 10))


def test_crop_then_resize():
    array = np.full((10, 20, 20), -1000.0)  # air
    array[0] = array[-1] = 1000  # slices that the crop removes
    array[:, :2] = array[:, :, :2] = 1000  # borders that the crop removes
    cfg = PreprocessConfig(size=(4, 8, 8), crop_slices=0.1, crop_border=0.1)
    out = preprocess(_volume(array), cfg)
    assert out.shape == (4, 8, 8) and np.all(out == out[0, 0, 0])


def test_contrast_stretch_and_equalize_use_full_range():
    rng = np.random.default_rng(0)
    array = rng.uniform(-700, -500, (4, 16, 16))
    for mode in ("stretch", "equalize"):
        out = preprocess(_volume(array), PreprocessConfig(size=(4, 16, 16), contrast=mode))
        assert out.min() <= 5 and out.max() >= 250, mode


def _scan(path):
    path.mkdir(parents=True)
    (path / "0.jpg").write_bytes(b"")


def test_folder_layout_case_insensitive(tmp_path):
    for split, cls, name in [("Train", "COVID", "a"), ("Train", "non-covid", "b"),
                             ("val", "Non-Covid", "c"), ("test", None, "d")]:
        _scan(tmp_path / split / cls / name if cls else tmp_path / split / name)
    records = find_scans(tmp_path)
    got = {(r.path.name, r.label, r.split) for r in records}
    assert got == {("a", 1, "train"), ("b", 0, "train"), ("c", 0, "val"), ("d", None, "test")}


def test_flat_layout_stratified_split(tmp_path):
    for i in range(8):
        _scan(tmp_path / ("covid" if i % 2 else "non-covid") / f"s{i}")
    records = find_scans(tmp_path, val_split=0.25, seed=1)
    val = [r for r in records if r.split == "val"]
    assert sorted(r.label for r in val) == [0, 1]
    assert records == find_scans(tmp_path, val_split=0.25, seed=1)
    with pytest.raises(BadInputError, match="val split must be in"):
        find_scans(tmp_path, val_split=1.5)


def test_no_scans_found(tmp_path):
    with pytest.raises(BadInputError, match="no scans found"):
        find_scans(tmp_path)


def test_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,split\na,covid,train\nb,0,val\nc,,test\n")
    records = find_scans(manifest=tmp_path / "m.csv")
    assert [(r.path, r.label, r.split) for r in records] == [
        (tmp_path / "c", None, "test"), (tmp_path / "a", 1, "train"), (tmp_path / "b", 0, "val")
    ]


@pytest.mark.parametrize("text, match", [
    ("file,label\na,1\n", "missing column"),
    ("path,label\na,maybe\n", r"m\.csv:2: unknown label 'maybe'"),
    ("path,label\n", "lists no scans"),
])
def test_bad_manifest(tmp_path, text, match):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(BadInputError, match=match):
        find_scans(manifest=tmp_path / "m.csv")


def _whole_volume_reference(hu: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The preprocessing as it was before streaming: window the whole volume, one trilinear
    resize of it, round."""
    import torch
    import torch.nn.functional as F

    d, h, w = hu.shape
    kd, kh, kw = int(d * cfg.crop_slices), int(h * cfg.crop_border), int(w * cfg.crop_border)
    hu = hu[kd:d - kd, kh:h - kh, kw:w - kw]
    level, width = cfg.window
    unit = np.clip((hu - np.float32(level - width / 2)) * np.float32(1 / width), 0, 1)
    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(unit, np.float32))[None, None],
                        size=cfg.size, mode="trilinear", align_corners=False)[0, 0].numpy()
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape, size, crop", [
    ((70, 40, 36), (16, 24, 24), 0.0),  # several slabs, downsampled
    ((9, 20, 20), (20, 32, 32), 0.0),  # depth upsampled
    ((50, 33, 31), (50, 16, 16), 0.1),  # depth kept, cropped
])
def test_streamed_resize_matches_the_whole_volume_resize(shape, size, crop):
    hu = np.random.default_rng(0).uniform(-1400, 300, shape).astype(np.float32)
    cfg = PreprocessConfig(size=size, crop_slices=crop, crop_border=crop)
    ours = preprocess(_volume(hu), cfg).astype(int)
    reference = _whole_volume_reference(hu, cfg).astype(int)
    assert ours.shape == size
    # separable float32 sums round differently from torch's in the last bit at most
    assert np.abs(ours - reference).max() <= 1 and (ours != reference).mean() < 0.01


def test_npy_is_read_a_slab_at_a_time(tmp_path):
    from covidzoo.data import read_scan
    from covidzoo.data.arrays import NpyFile

    hu = np.arange(40 * 6 * 5, dtype=np.int16).reshape(40, 6, 5) - 1000
    np.save(tmp_path / "s.npy", hu)
    volume = read_scan(tmp_path / "s.npy")
    assert isinstance(volume.values, NpyFile) and volume.shape == (40, 6, 5)
    np.testing.assert_array_equal(volume.slab(17, 23), hu[17:23].astype(np.float32))
    np.testing.assert_array_equal(volume.array, hu.astype(np.float32))


def test_slab_applies_the_per_slice_rescale_and_names_the_slice_file():
    stored = np.full((3, 2, 2), 100, np.int16)
    volume = Volume(stored, (1.0, 1.0, 1.0), "series", "dicom",
                    slope=np.array([1, 2, 1e6], np.float32),
                    intercept=np.array([-1024, 0, 0], np.float32), files=["a", "b", "c"])
    np.testing.assert_array_equal(volume.slab(0, 2)[:, 0, 0], [-924, 200])
    assert stored[0, 0, 0] == 100  # the stored values are left as they are
    with pytest.raises(BadInputError, match=r"^c: values 1e\+08 to 1e\+08 HU \(slice 2\)"):
        volume.slab(0, 3)


def _numpy_peak(path, cfg: PreprocessConfig) -> int:
    """The peak of numpy's allocations (numpy reports them to tracemalloc) while `load_scan`
    reads and preprocesses `path`, after a warm-up (lazy imports allocate too)."""
    import tracemalloc

    from covidzoo.data import load_scan

    load_scan(path, cfg)
    tracemalloc.start()
    try:
        load_scan(path, cfg)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("suffix", [".npy", ".dcm"])
def test_a_long_scan_is_never_in_memory_whole(tmp_path, suffix):
    """Reading the whole scan (400 x 64 x 64, or 120 DICOM slices of 128 x 128) would allocate
    3.3 MB or 3.9 MB as int16, twice that as float32; a slab at a time stays far below."""
    if suffix == ".npy":
        path = tmp_path / "long.npy"
        np.save(path, np.random.default_rng(0).integers(-1000, 400, (400, 64, 64), np.int16))
    else:
        from data_helpers import write_series

        path = tmp_path / "series"
        write_series(path, list(range(120)))
    peak = _numpy_peak(path, PreprocessConfig(size=(8, 32, 32)))
    assert peak < 3_000_000, peak


def test_preprocessing_stays_within_twice_the_output_plus_one_slab(tmp_path):
    """The issue's memory budget, in numpy's own allocations: twice the float32 output plus one
    float32 slab of input slices, however long the scan. Two slabs alive at once (the next read
    before the last one is freed) broke it."""
    from covidzoo.data.volume import SLAB

    path = tmp_path / "long.npy"
    np.save(path, np.random.default_rng(0).integers(-1000, 400, (400, 128, 128), np.int16))
    peak = _numpy_peak(path, PreprocessConfig(size=(32, 64, 64)))
    budget = 2 * 32 * 64 * 64 * 4 + SLAB * 128 * 128 * 4
    assert peak <= budget, (peak, budget)
