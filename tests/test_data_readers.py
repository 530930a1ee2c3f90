"""Readers: DICOM series (ordering, rescale, series choice, bad files), slice folders, arrays."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from data_helpers import CT_SMALL, TEST_FILES, write_series
from PIL import Image

from covidzoo.data import read_scan
from covidzoo.errors import BadInputError


def test_ct_small_matches_pydicom(tmp_path):
    shutil.copy(CT_SMALL, tmp_path / "a.dcm")
    volume = read_scan(tmp_path)
    ds = pydicom.dcmread(CT_SMALL)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert volume.kind == "dicom" and volume.shape == (1, 128, 128)
    np.testing.assert_array_equal(volume.array[0], expected.astype(np.float32))
    assert volume.spacing[1:] == tuple(float(v) for v in ds.PixelSpacing)
    assert volume.series_uid == ds.SeriesInstanceUID


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "MR_small_RLE.dcm"])
def test_other_syntaxes_match_pydicom(name):
    volume = read_scan(TEST_FILES / name)
    ds = pydicom.dcmread(TEST_FILES / name)
    np.testing.assert_array_equal(volume.array[0], ds.pixel_array.astype(np.float32))


def test_sorted_by_position_not_name(tmp_path):
    # file names in reverse order, positions shuffled: order must follow z
    positions = [5.0, 0.0, 7.5, 2.5]
    write_series(tmp_path, [30, 10, 40, 20], positions, names=["d", "c", "b", "a"])
    volume = read_scan(tmp_path)
    assert volume.array[:, 0, 0].tolist() == [10 - 1024, 20 - 1024, 30 - 1024, 40 - 1024]
    assert volume.spacing[0] == pytest.approx(2.5)
    assert volume.warnings == []


def test_rescale_slope_intercept(tmp_path):
    write_series(tmp_path, [100, 200], slope=2.0, intercept=-1000.0)
    assert read_scan(tmp_path).array[:, 5, 5].tolist() == [-800.0, -600.0]


def test_gap_and_duplicate_reported(tmp_path):
    write_series(tmp_path, [1, 2, 3, 4, 5], positions=[0, 2.5, 5, 5, 15])
    warnings = " ".join(read_scan(tmp_path).warnings)
    assert "1 duplicate" in warnings and "gap" in warnings


def test_missing_geometry_falls_back_to_instance_number(tmp_path):
    write_series(tmp_path, [1, 2, 3], names=["z.dcm", "a.dcm", "m.dcm"], geometry=False)
    volume = read_scan(tmp_path)
    assert volume.array[:, 0, 0].tolist() == [1 - 1024, 2 - 1024, 3 - 1024]
    assert "InstanceNumber" in volume.warnings[0]


def test_several_series_largest_or_chosen(tmp_path):
    write_series(tmp_path, [1, 2, 3], series_uid="1.2.3.9", names=["a1", "a2", "a3"])
    write_series(tmp_path, [7, 8], series_uid="1.2.3.7", names=["b1", "b2"])
    (tmp_path / "README.txt").write_text("not dicom")
    volume = read_scan(tmp_path)
    assert volume.series_uid == "1.2.3.9" and volume.shape[0] == 3
    assert "2 series" in volume.warnings[0]
    assert read_scan(tmp_path, series="1.2.3.7").shape[0] == 2
    with pytest.raises(BadInputError, match="no series 9.9"):
        read_scan(tmp_path, series="9.9")


def test_bad_dicom_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="empty folder"):
        read_scan(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="no readable DICOM slices"):
        read_scan(junk)
    (junk / "x.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(BadInputError, match=r"x\.dcm: not a readable DICOM"):
        read_scan(junk)
    with pytest.raises(BadInputError, match="truncated pixel data"):
        read_scan(TEST_FILES / "MR_truncated.dcm")
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(BadInputError, match=r"nopix\.dcm: DICOM file without pixel data"):
        read_scan(tmp_path / "nopix.dcm")


def test_mixed_slice_sizes_name_the_file(tmp_path):
    write_series(tmp_path, [1, 2], names=["a.dcm", "b.dcm"])
    write_series(tmp_path, [3], positions=[9.0], names=["c.dcm"], size=64)
    with pytest.raises(BadInputError, match=r"c\.dcm: slice size 64x64 differs"):
        read_scan(tmp_path)


def test_compressed_without_decoder_names_the_package():
    try:
        import libjpeg  # noqa: F401
    except ImportError:
        with pytest.raises(BadInputError, match="pylibjpeg"):
            read_scan(TEST_FILES / "JPEGLSNearLossless_16.dcm")
    else:
        assert read_scan(TEST_FILES / "JPEGLSNearLossless_16.dcm").shape[0] == 1


def _jpgs(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (value, size) in sizes.items():
        Image.fromarray(np.full(size, value, dtype=np.uint8)).save(folder / name)


def test_slices_numeric_order_and_resize(tmp_path):
    _jpgs(tmp_path, {"10.jpg": (200, (16, 16)), "2.jpg": (100, (8, 8)),
                     "1.png": (50, (16, 16)), "cover.jpg": (0, (16, 16))})
    volume = read_scan(tmp_path)
    assert volume.kind == "slices" and volume.intensity == "uint8"
    assert volume.shape == (3, 16, 16)
    assert np.abs(volume.array[:, 8, 8] - [50, 100, 200]).max() <= 2  # JPEG is lossy
    assert any("non-numeric" in w for w in volume.warnings)
    assert any("resized to 16x16, e.g. 2.jpg" in w for w in volume.warnings)


def test_slices_without_numbered_images(tmp_path):
    _jpgs(tmp_path, {"cover.jpg": (0, (8, 8))})
    with pytest.raises(BadInputError, match="no slice images named by a number"):
        read_scan(tmp_path)


def test_arrays(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((4, 5, 6), dtype=np.int16))
    assert read_scan(tmp_path / "v.npy").shape == (4, 5, 6)
    np.savez(tmp_path / "v.npz", volume=np.ones((2, 3, 3), np.uint8), spacing=[3.0, 1.0, 1.0])
    volume = read_scan(tmp_path / "v.npz")
    assert volume.spacing == (3.0, 1.0, 1.0) and volume.intensity == "uint8"
    np.save(tmp_path / "flat.npy", np.zeros((5, 6)))
    with pytest.raises(BadInputError, match=r"flat\.npy: expected a D x H x W array"):
        read_scan(tmp_path / "flat.npy")
    with pytest.raises(BadInputError, match="no such file"):
        read_scan(tmp_path / "missing.npy")


def test_a_dcm_file_cut_short_is_reported_not_dropped(tmp_path):
    # pydicom reads a file cut off after the file meta (300 bytes) or inside a data element
    # without complaint; a folder's .dcm file that ends early is bad input, named
    write_series(tmp_path, [1, 2], names=["a.dcm", "b.dcm"])
    whole = CT_SMALL.read_bytes()
    for size in (300, 1000):
        (tmp_path / "c.dcm").write_bytes(whole[:size])
        with pytest.raises(BadInputError, match=r"c\.dcm: not a readable DICOM file \(cut "):
            read_scan(tmp_path)
        with pytest.raises(BadInputError, match=r"c\.dcm: not a readable DICOM file \(cut "):
            read_scan(tmp_path / "c.dcm")


def test_a_dicom_file_without_an_image_is_skipped_with_a_warning(tmp_path):
    write_series(tmp_path, [1, 2], names=["a.dcm", "b.dcm"])
    report = pydicom.dcmread(TEST_FILES / "empty_charset_LEI.dcm")  # a whole non-image file
    assert "Rows" not in report
    report.save_as(tmp_path / "report.dcm")
    volume = read_scan(tmp_path)
    assert volume.shape[0] == 2
    assert any("report.dcm" in w and "without an image" in w for w in volume.warnings)
    with pytest.raises(BadInputError, match=r"report\.dcm: DICOM file without an image"):
        read_scan(tmp_path / "report.dcm")
