"""NIfTI reader: the same CT as a DICOM series and as NIfTI in any orientation reads the same."""

from __future__ import annotations

import gzip
import itertools

import nibabel
import numpy as np
import pytest

from covidzoo.data import read_scan, scan_format
from covidzoo.data.synthetic import PIXEL_MM, SLICE_MM, _write_dicom
from covidzoo.errors import BadInputError

SHAPE = (6, 10, 12)  # D x H x W, all different so a transposition cannot pass unseen


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """Random HU values written as a DICOM series: (folder, HU array in DICOM reader order)."""
    hu = np.random.default_rng(0).integers(-1024, 3000, SHAPE).astype(np.float32)
    folder = tmp_path_factory.mktemp("dicom")
    _write_dicom(folder, hu, seed=0, index=0)
    return folder, hu


def _dicom_geometry(shape):
    """The stored array (i = column, j = row, k = slice) and its RAS affine for the series
    `_write_dicom` writes: LPS position of voxel (c, r, k) is (x0 + c*px, y0 + r*px, k*dz)."""
    d, h, w = shape
    lps = np.array([
        [PIXEL_MM, 0, 0, -(w / 2) * PIXEL_MM],
        [0, PIXEL_MM, 0, -(h / 2) * PIXEL_MM],
        [0, 0, SLICE_MM, 0.0],
        [0, 0, 0, 1],
    ])
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


def _transformed(data, affine, order, flips):
    """`data` with its axes permuted to `order` and the new axes in `flips` reversed, and the
    affine that keeps every voxel where it was in the patient."""
    new = np.transpose(data, order)
    index_map = np.zeros((4, 4))  # new voxel index -> old voxel index
    index_map[3, 3] = 1
    for new_axis, old_axis in enumerate(order):
        if new_axis in flips:
            new = np.flip(new, new_axis)
            index_map[old_axis, new_axis] = -1
            index_map[old_axis, 3] = new.shape[new_axis] - 1
        else:
            index_map[old_axis, new_axis] = 1
    return np.ascontiguousarray(new), affine @ index_map


def _save(path, data, affine, **header):
    image = nibabel.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    for key, value in header.items():
        image.header[key] = value
    nibabel.save(image, path)
    return path


ORIENTATIONS = [
    ((0, 1, 2), ()),  # as DICOM stores it: LPS (the ITK convention)
    ((0, 1, 2), (0, 1)),  # RAS (the usual NIfTI convention)
    ((2, 1, 0), ()),  # axes permuted
    ((1, 2, 0), (2,)),  # permuted and flipped
    ((2, 0, 1), (0, 1, 2)),  # sagittal-first, every axis flipped
]


@pytest.mark.parametrize(("order", "flips"), ORIENTATIONS)
def test_nifti_in_any_orientation_reads_as_dicom(ct, tmp_path, order, flips):
    folder, hu = ct
    dicom = read_scan(folder)
    stored = np.transpose(hu, (2, 1, 0)).astype(np.int16)  # i = column, j = row, k = slice
    data, affine = _transformed(stored, _dicom_geometry(SHAPE), order, flips)
    path = _save(tmp_path / "scan.nii.gz", data, affine)
    volume = read_scan(path)
    assert volume.kind == "nifti" and scan_format(path) == "nifti"
    assert volume.shape == dicom.shape == SHAPE
    np.testing.assert_array_equal(volume.array, dicom.array)
    np.testing.assert_allclose(volume.spacing, dicom.spacing)
    assert volume.spacing == (SLICE_MM, PIXEL_MM, PIXEL_MM)


def test_scl_slope_and_inter_applied_and_plain_nii(ct, tmp_path):
    folder, hu = ct
    stored = np.transpose(hu + 1024, (2, 1, 0)).astype(np.uint16)  # stored as the DICOM is
    path = _save(tmp_path / "scan.NII", stored, _dicom_geometry(SHAPE))
    raw = bytearray(path.read_bytes())
    raw[112:120] = np.array([1.0, -1024.0], "<f4").tobytes()  # scl_slope, scl_inter
    path.write_bytes(bytes(raw))  # patched: nibabel would rescale what it writes itself
    volume = read_scan(path)
    assert volume.values.dtype == np.uint16  # stored values kept; the rescale done by slab
    np.testing.assert_array_equal(volume.array, read_scan(folder).array)


def test_trailing_unit_dimension_accepted(ct, tmp_path):
    _, hu = ct
    stored = np.transpose(hu, (2, 1, 0)).astype(np.int16)[..., None]
    volume = read_scan(_save(tmp_path / "scan.nii", stored, _dicom_geometry(SHAPE)))
    assert volume.shape == SHAPE


@pytest.mark.parametrize(("shape", "message"), [
    ((12, 10, 6, 2), "several volumes"),
    ((12, 10), "2D"),
])
def test_not_one_volume_refused(tmp_path, shape, message):
    path = _save(tmp_path / "bad.nii.gz", np.zeros(shape, np.int16), np.eye(4))
    with pytest.raises(BadInputError, match=rf"bad\.nii\.gz: {message}"):
        read_scan(path)


def test_not_ct_numbers_refused(tmp_path):
    data = np.full((4, 4, 3), np.nan, np.float32)
    path = _save(tmp_path / "nan.nii", data, np.eye(4))
    with pytest.raises(BadInputError, match=r"nan\.nii: NaN values"):
        _ = read_scan(path).array


def test_corrupt_and_truncated_refused(tmp_path):
    good = _save(tmp_path / "good.nii", np.zeros((8, 8, 4), np.int16), np.eye(4))
    raw = good.read_bytes()
    cases = {
        "garbage.nii": b"not a nifti file at all" * 20,
        "short.nii": raw[:len(raw) - 100],  # header whole, voxel data cut short
        "header.nii": raw[:200],  # cut inside the header
        "short.nii.gz": gzip.compress(raw)[:-40],  # gzip stream cut short
        "notgzip.nii.gz": raw,  # says gzip, is not
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BadInputError, match=rf"{name.replace('.', '[.]')}: "):
            read_scan(tmp_path / name)


def test_every_axis_permutation_gives_one_spacing(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(4, 3, 2)  # i, j, k
    affine = np.diag([-0.7, -0.8, 3.0, 1.0])  # LPS-stored like DICOM: columns R->L, rows A->P
    expected = read_scan(_save(tmp_path / "ref.nii", data, affine))
    assert expected.spacing == pytest.approx((3.0, 0.8, 0.7))
    for order in itertools.permutations(range(3)):
        moved, moved_affine = _transformed(data, affine, order, ())
        volume = read_scan(_save(tmp_path / "p.nii", moved, moved_affine))
        np.testing.assert_array_equal(volume.array, expected.array)
        assert volume.spacing == pytest.approx(expected.spacing)


@pytest.mark.parametrize("name, values", [
    ("mask.nii.gz", lambda rng: (rng.uniform(size=(8, 16, 16)) > 0.5).astype(np.uint8)),
    ("probability.nii.gz", lambda rng: rng.uniform(size=(8, 16, 16)).astype(np.float32)),
    # A CT whose rescale intercept (-1024) was lost: air is stored as 0.
    ("raw.nii.gz", lambda rng: rng.integers(0, 2000, (8, 16, 16)).astype(np.int16)),
])
def test_values_without_air_are_not_hounsfield_units(tmp_path, name, values):
    """A lung mask or probability map (MosMedData ships its masks as NIfTI), or a CT that lost
    its intercept, would be windowed as HU into a confident prediction of nothing."""
    from covidzoo.data import preprocess

    path = _save(tmp_path / name, values(np.random.default_rng(0)), np.eye(4))
    volume = read_scan(path)
    with pytest.raises(BadInputError, match=rf"{name.replace('.', '[.]')}: no value below -200 "
                                            r"HU .*not a CT in Hounsfield units"):
        preprocess(volume)


def test_a_scan_with_air_passes_and_the_cli_names_one_without(tmp_path, invoke):
    from model_helpers import make_checkpoint

    from covidzoo.data import preprocess
    from covidzoo.data.preprocess import DEFAULT_SCAN_SIZE

    rng = np.random.default_rng(0)
    ct = _save(tmp_path / "ct.nii.gz", rng.normal(-500, 400, (8, 16, 16)).astype(np.int16),
               np.eye(4))
    assert preprocess(read_scan(ct)).shape == DEFAULT_SCAN_SIZE
    mask = _save(tmp_path / "mask.nii.gz", np.ones((8, 16, 16), np.uint8), np.eye(4))
    ckpt = make_checkpoint(tmp_path / "m.safetensors", (8, 32, 32), seed=0)
    result = invoke("predict", str(ckpt), str(ct), str(mask), "--json")
    assert result.exit_code == 0, result.output
    assert "mask.nii.gz: no value below -200 HU" in result.output  # listed as failed
    result = invoke("predict", str(ckpt), str(mask))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "mask.nii.gz: no value below" in result.output
    # `data inspect` describes the file, and says before any command refuses it.
    import json

    described = invoke("data", "inspect", str(mask), "--json")
    assert described.exit_code == 0, described.output
    assert any(w.startswith("preprocessing refuses this scan: ") and "no value below" in w
               for w in json.loads(described.output)["warnings"])
    warnings = json.loads(invoke("data", "inspect", str(ct), "--json").output)["warnings"]
    assert not any("refuses" in w for w in warnings), warnings  # noise, but air: a CT
