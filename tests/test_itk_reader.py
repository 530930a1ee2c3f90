"""MHA/MHD and NRRD through SimpleITK: the same CT as NIfTI, MHA and NRRD in any orientation
reads the same, bad files are one-line errors, and without SimpleITK the error says what to
install."""

from __future__ import annotations

import sys

import nibabel
import numpy as np
import pytest

from covidzoo.data import read_scan, scan_format
from covidzoo.data.layouts import find_scans
from covidzoo.errors import BadInputError

SHAPE = (6, 10, 12)  # D x H x W, all different so a transposition cannot pass unseen
SPACING = (2.5, 0.8, 0.7)  # z, y, x in mm, all different too

# (order, flips) of the stored index axes, as in test_nifti: the stored array before any
# change is i = column (towards the patient's left), j = row (posterior), k = slice (superior).
ORIENTATIONS = [
    ((0, 1, 2), ()),  # LPS identity: ITK's own convention, as DICOM stores it
    ((0, 1, 2), (0, 1)),  # RAS (the usual NIfTI and 3D Slicer convention)
    ((2, 1, 0), ()),  # axes permuted
    ((1, 2, 0), (2,)),  # permuted and flipped
    ((2, 0, 1), (0, 1, 2)),  # sagittal-first, every axis flipped
]


@pytest.fixture(scope="module")
def hu():
    """Random int16 HU in the reader's order: slices S, rows P, columns L."""
    return np.random.default_rng(0).integers(-1024, 3000, SHAPE).astype(np.int16)


def _lps_affine(rotation_deg: float = 0.0) -> np.ndarray:
    """Index (i, j, k) -> LPS mm of the canonical stored array, optionally turned about the
    patient's long axis (an oblique scan)."""
    dz, dy, dx = SPACING
    t = np.deg2rad(rotation_deg)
    turn = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ np.diag([dx, dy, dz])
    affine[:3, 3] = (-40.0, -30.0, 100.0)
    return affine


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


def _stored(hu, order=(0, 1, 2), flips=(), rotation_deg=0.0):
    """The CT stored in another order: (array indexed i, j, k; affine to LPS mm)."""
    return _transformed(np.transpose(hu, (2, 1, 0)), _lps_affine(rotation_deg), order, flips)


def _save_nifti(path, data, lps_affine):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine  # LPS -> RAS
    image = nibabel.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nibabel.save(image, path)
    return path


def _save_itk(path, data, lps_affine):
    """`data` (indexed i, j, k) written by SimpleITK with the geometry of `lps_affine`."""
    sitk = pytest.importorskip("SimpleITK")
    spacing = np.sqrt((lps_affine[:3, :3] ** 2).sum(axis=0))
    image = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))  # numpy wants k, j, i
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps_affine[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps_affine[:3, 3]])
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("suffix", [".mha", ".mhd", ".nrrd", ".nhdr"])
@pytest.mark.parametrize(("order", "flips"), ORIENTATIONS)
def test_itk_in_any_orientation_reads_as_nifti(hu, tmp_path, order, flips, suffix):
    data, affine = _stored(hu, order, flips)
    nifti = read_scan(_save_nifti(tmp_path / "scan.nii.gz", data, affine))
    path = _save_itk(tmp_path / f"scan{suffix}", data, affine)
    volume = read_scan(path)
    assert volume.kind == "itk" and scan_format(path) == "itk"
    assert volume.shape == nifti.shape == SHAPE
    assert volume.values.dtype == np.int16  # stored values kept as stored
    np.testing.assert_array_equal(volume.array, nifti.array)
    np.testing.assert_array_equal(volume.array, hu.astype(np.float32))
    assert volume.spacing == pytest.approx(nifti.spacing) == SPACING


def test_oblique_scan_takes_nearest_axes_as_nifti_does(hu, tmp_path):
    data, affine = _stored(hu, (1, 0, 2), (0,), rotation_deg=20.0)
    nifti = read_scan(_save_nifti(tmp_path / "oblique.nii", data, affine))
    volume = read_scan(_save_itk(tmp_path / "oblique.mha", data, affine))
    np.testing.assert_array_equal(volume.array, nifti.array)  # not resampled
    np.testing.assert_array_equal(volume.array, hu.astype(np.float32))
    assert volume.spacing == pytest.approx(SPACING)


def test_nrrd_in_ras_space_and_upper_case_suffix(hu, tmp_path):
    """A hand-written NRRD header in RAS space (as 3D Slicer writes it): ITK turns it to LPS."""
    pytest.importorskip("SimpleITK")
    dz, dy, dx = SPACING
    stored = np.ascontiguousarray(hu[:, ::-1, ::-1])  # rows anterior, columns right: RAS
    header = (
        "NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
        f"sizes: {SHAPE[2]} {SHAPE[1]} {SHAPE[0]}\n"
        f"space directions: ({dx},0,0) (0,{dy},0) (0,0,{dz})\nkinds: domain domain domain\n"
        "endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n"
    )
    path = tmp_path / "SCAN.NRRD"
    path.write_bytes(header.encode() + stored.astype("<i2").tobytes())
    volume = read_scan(path)
    np.testing.assert_array_equal(volume.array, hu.astype(np.float32))
    assert volume.spacing == pytest.approx(SPACING)


def test_trailing_unit_dimension_accepted(hu, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.JoinSeries(sitk.GetImageFromArray(hu))  # 4D: x, y, z, 1
    sitk.WriteImage(image, str(tmp_path / "scan.mha"))
    assert read_scan(tmp_path / "scan.mha").shape == SHAPE


def _refused(path, pattern):
    with pytest.raises(BadInputError, match=pattern) as info:
        read_scan(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


def test_not_one_volume_refused(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    images = {
        "four.mha": sitk.Image([5, 4, 3, 2], sitk.sitkInt16),
        "vector.nrrd": sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.int16), isVector=True),
        "flat.mha": sitk.GetImageFromArray(np.zeros((4, 5), np.int16)),
        "complex.mha": sitk.GetImageFromArray(np.zeros((3, 4, 5), np.complex64)),
    }
    for name, image in images.items():
        sitk.WriteImage(image, str(tmp_path / name))
    _refused(tmp_path / "four.mha", r"four\.mha: several volumes \(5 x 4 x 3 x 2 voxels\)")
    _refused(tmp_path / "vector.nrrd", r"vector\.nrrd: 3 values per voxel")
    _refused(tmp_path / "flat.mha", r"flat\.mha: 2D \(5 x 4 voxels\)")
    _refused(tmp_path / "complex.mha", r"complex\.mha: 2 values per voxel")


def test_not_ct_numbers_refused(tmp_path):
    data = np.zeros((4, 5, 3), np.float32)
    data[1, 2, 0] = np.nan
    path = _save_itk(tmp_path / "nan.nrrd", data, np.eye(4))
    with pytest.raises(BadInputError, match=r"nan\.nrrd: NaN values"):
        _ = read_scan(path).array


def test_corrupt_and_truncated_refused(hu, tmp_path, capfd):
    data, affine = _stored(hu)
    good_mha = _save_itk(tmp_path / "good.mha", data, affine).read_bytes()
    good_nrrd = _save_itk(tmp_path / "good.nrrd", data, affine).read_bytes()
    cases = {
        "garbage.mha": b"not an image at all\n" * 20,
        "garbage.nrrd": b"NRRD0004\nnot a header\n" * 20,
        "short.mha": good_mha[:-100],  # header whole, voxel data cut short
        "short.nrrd": good_nrrd[:-100],
        "header.nrrd": good_nrrd[:60],  # cut inside the header
        "wrong.nrrd": good_mha,  # a MetaImage named .nrrd
        "empty.mha": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        _refused(tmp_path / name, rf"{name.replace('.', '[.]')}: ")
    _save_itk(tmp_path / "detached.mhd", data, affine)
    (tmp_path / "detached.raw").unlink()  # the header's data file is gone
    assert "data file missing" in _refused(tmp_path / "detached.mhd", r"detached\.mhd: cannot")
    # ITK's own complaints (MetaIO prints a truncated file's sizes) never reach the terminal
    # beside the one line: they are written by C++ straight to file descriptor 2.
    native = capfd.readouterr()
    assert native.err == native.out == "", native


def test_without_simpleitk_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now fails
    for name in ("scan.mha", "scan.NRRD"):
        path = tmp_path / name
        path.write_bytes(b"ObjectType = Image\n")
        assert scan_format(path) == "itk"  # claimed by its name: no DICOM fallback
        message = _refused(path, r"needs SimpleITK")
        assert message == f"{path}: reading MHA/NRRD needs SimpleITK; pip install 'covidzoo[itk]'"


def test_class_folders_of_mha_and_nrrd_found(hu, tmp_path):
    data, affine = _stored(hu)
    root = tmp_path / "data"
    for label, suffix in (("covid", ".mha"), ("non-covid", ".nrrd")):
        (root / label).mkdir(parents=True)
        (root / label / "README.txt").write_text("not a scan")
        for i in range(2):
            _save_itk(root / label / f"study_{i}{suffix}", data, affine)
    _save_itk(root / "covid" / "study_2.mhd", data, affine)  # with its study_2.raw beside it
    records = find_scans(root)
    names = sorted(r.path.name for r in records)
    assert names == ["study_0.mha", "study_0.nrrd", "study_1.mha", "study_1.nrrd", "study_2.mhd"]
    assert sorted(r.label for r in records) == [0, 0, 1, 1, 1]
