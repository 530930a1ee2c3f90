"""Readers as a plugin kind: built-ins listed, a plugin's format read with no change to covidzoo,
the order readers are asked in, and class folders of NIfTI files trained on."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest

from covidzoo import hookimpl, testing
from covidzoo.data import read_scan, scan_format
from covidzoo.data.layouts import find_scans
from covidzoo.data.volume import Volume
from covidzoo.errors import BadInputError, PluginError

register_plugin = testing.register_plugin


class FakeReader:
    """A made-up format: a text line `FAKE D H W`, then D*H*W little-endian int16 HU."""

    def claims(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".fake"

    def read(self, path: Path, series: str | None = None) -> Volume:
        head, _, body = path.read_bytes().partition(b"\n")
        magic, *dims = head.split()
        if magic != b"FAKE" or len(dims) != 3:
            raise BadInputError(f"{path}: not a FAKE file")
        shape = tuple(int(d) for d in dims)
        values = np.frombuffer(body, "<i2").reshape(shape)
        return Volume(values, (2.0, 1.0, 1.0), str(path), "fake")  # type: ignore[arg-type]


class FakePlugin:
    @hookimpl
    def register_readers(self, register):
        register("fake", FakeReader, summary="FAKE test files")


def _write_fake(path: Path, values: np.ndarray) -> Path:
    d, h, w = values.shape
    path.write_bytes(f"FAKE {d} {h} {w}\n".encode() + values.astype("<i2").tobytes())
    return path


def test_builtin_readers_listed(invoke):
    result = invoke("models", "--kind", "reader", "--json")
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == {"array", "itk", "nifti", "slices", "dicom"}
    assert all(r["kind"] == "reader" and r["plugin"] == "covidzoo.readers" for r in rows.values())
    assert rows["dicom"]["metadata"] == {"fallback": True}


def test_hook_register_readers(tmp_path, register_plugin, invoke):
    values = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 500
    path = _write_fake(tmp_path / "scan.fake", values)
    with pytest.raises(BadInputError, match="not a readable DICOM file"):
        read_scan(path)  # without the plugin the DICOM fallback takes it
    register_plugin(FakePlugin(), name="fakeformat")
    assert scan_format(path) == "fake"
    np.testing.assert_array_equal(read_scan(path).array, values.astype(np.float32))
    listed = json.loads(invoke("models", "--kind", "reader", "--json").output)
    assert {"fake": "fakeformat"}.items() <= {r["name"]: r["plugin"] for r in listed}.items()
    summary = json.loads(invoke("data", "inspect", str(path), "--json").output)
    assert summary["format"] == "fake" and summary["shape"] == [2, 3, 4]
    assert summary["spacing"] == [2.0, 1.0, 1.0] and summary["min"] == -500.0


def test_plugin_reader_asked_after_builtins_before_dicom(tmp_path, register_plugin):
    class Greedy:
        def claims(self, path: Path) -> bool:
            return True

        def read(self, path: Path, series: str | None = None) -> Volume:
            return Volume(np.zeros((1, 2, 2), np.int16), (1.0, 1.0, 1.0), str(path), "greedy")  # type: ignore[arg-type]

    class GreedyPlugin:
        @hookimpl
        def register_readers(self, register):
            register("greedy", Greedy, summary="claims everything")

    register_plugin(GreedyPlugin(), name="greedy")
    np.save(tmp_path / "a.npy", np.zeros((2, 2, 2), np.int16))
    (tmp_path / "dcm").mkdir()
    (tmp_path / "dcm" / "IM1").write_bytes(b"x")
    assert scan_format(tmp_path / "a.npy") == "array"  # a built-in format keeps its files
    assert scan_format(tmp_path / "dcm") == "greedy"  # before the DICOM fallback


def test_broken_plugin_reader_is_a_plugin_error(tmp_path, register_plugin):
    class NotAReader:
        pass

    class Plugin:
        @hookimpl
        def register_readers(self, register):
            register("broken", NotAReader, summary="no claims()")

    register_plugin(Plugin(), name="brokenreader")
    np.save(tmp_path / "a.npy", np.zeros((2, 2, 2), np.int16))
    with pytest.raises(PluginError, match="reader 'broken'"):
        read_scan(tmp_path / "a.npy")


def _nifti_dataset(root: Path, per_class: int = 3) -> Path:
    """`root/{covid,non-covid}/*.nii.gz`, MosMedData style, with a stray file beside them."""
    rng = np.random.default_rng(0)
    for label in ("covid", "non-covid"):
        (root / label).mkdir(parents=True)
        (root / label / "README.txt").write_text("not a scan")
        for i in range(per_class):
            hu = rng.integers(-1000, 400, (40, 40, 10)).astype(np.int16)  # x, y, z
            affine = np.diag([-0.8, -0.8, 2.5, 1.0])
            nibabel.save(nibabel.Nifti1Image(hu, affine), root / label / f"study_{i:04d}.nii.gz")
    return root


def test_class_folders_of_nifti_found(tmp_path):
    root = _nifti_dataset(tmp_path / "data")
    records = find_scans(root)
    assert len(records) == 6 and all(r.path.name.endswith(".nii.gz") for r in records)
    assert sorted(r.label for r in records) == [0, 0, 0, 1, 1, 1]


def test_train_on_class_folders_of_nifti(tmp_path, invoke):
    root = _nifti_dataset(tmp_path / "data")
    result = invoke(
        "train", "regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32",
        "--stem-width", "8", "--data", str(root), "--size", "8,32,32", "--epochs", "1",
        "--val-split", "0.34", "--batch-size", "2", "--device", "cpu",
        "--out", str(tmp_path / "run"),
    )
    assert result.exit_code == 0, result.output
    from covidzoo.checkpoint import load_checkpoint

    model, spec = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert tuple(spec.preprocess["size"]) == (8, 32, 32)
