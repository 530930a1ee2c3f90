"""Reliability of the data layer: every bad input ends in one line naming the file and exit 2,
or in exit 0 with a correct result; never a traceback, never numbers computed from garbage.

Cases are built in a temporary folder by small builder functions; the command line is driven
in-process. Hypothesis fuzzes the readers and the manifest parser at the end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from data_helpers import CT_SMALL, TEST_FILES, write_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from covidzoo.cli import cli
from covidzoo.data import CachedScans, PreprocessConfig, ScanRecord, prepare_cache, read_scan
from covidzoo.data.layouts import find_scans
from covidzoo.errors import BadInputError

SIZE = (4, 32, 32)
# Modest by default so CI stays fast; COVIDZOO_FUZZ_EXAMPLES=2000 for a longer hunt.
FUZZ = settings(max_examples=int(os.environ.get("COVIDZOO_FUZZ_EXAMPLES", "50")), deadline=None,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run(*args: str | Path) -> tuple[int, list[str], str]:
    """Exit code, stderr lines and stdout of the CLI run in-process (a traceback fails)."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stderr.strip().splitlines(), result.stdout


def assert_one_line(args: list[str | Path], *names: str) -> str:
    code, lines, out = run(*args)
    assert code == 2, (code, lines, out)
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --- bad scans: builders return the path `data inspect` is given and the name the error names


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(tmp: Path, array: np.ndarray, name: str = "scan.npy") -> Path:
    path = tmp / name
    np.save(path, array, allow_pickle=True)
    return path


def _npy_header(tmp: Path, header: str, data: bytes = b"\0" * 64) -> Path:
    """An `.npy` with a hand-written header (version 1.0)."""
    text = header.encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    path = tmp / "forged.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data)
    return path


def _npz(tmp: Path, **arrays: np.ndarray) -> Path:
    path = tmp / "scan.npz"
    np.savez(path, **arrays)
    return path


def _volume(value: float = -600.0, dtype: str = "float32", shape=(6, 10, 10)) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


def _with_nan() -> np.ndarray:
    array = _volume()
    array[3, 4, 4] = np.nan
    return array


def _dicom(tmp: Path, name: str = "a.dcm", **changes) -> Path:
    """CT_small with attributes changed (None deletes one)."""
    ds = pydicom.dcmread(CT_SMALL)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    folder = tmp / "series"
    folder.mkdir(exist_ok=True)
    path = folder / name
    ds.save_as(path)
    return path


def _series_with_truncated_slice(tmp: Path) -> Path:
    """Five slices without an extension; the middle one cut inside its header."""
    paths = write_series(tmp / "series", [1, 2, 3, 4, 5], names=[f"IM{k}" for k in range(5)])
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:400])
    return paths[2]


def _slices(tmp: Path, images: list[Image.Image], suffix: str = ".png") -> Path:
    folder = tmp / "slices"
    folder.mkdir(exist_ok=True)
    for k, image in enumerate(images):
        image.save(folder / f"{k}{suffix}")
    return folder


def _grey(value: int = 100, size: int = 16) -> Image.Image:
    return Image.fromarray(np.full((size, size), value, np.uint8))


def _png16(tmp: Path) -> Path:
    image = Image.fromarray(np.full((16, 16), 40000, np.uint16))
    _slices(tmp, [_grey(), _grey()])
    image.save(tmp / "slices" / "2.png")
    return tmp / "slices" / "2.png"


def _tiff_pages(tmp: Path) -> Path:
    folder = tmp / "slices"
    folder.mkdir()
    _grey().save(folder / "0.tif", save_all=True, append_images=[_grey(50), _grey(60)])
    return folder / "0.tif"


def _tiff_float(tmp: Path) -> Path:
    folder = tmp / "slices"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(folder / "0.tif")
    return folder / "0.tif"


def _cut_png(tmp: Path) -> Path:
    folder = _slices(tmp, [_grey(), _grey()])
    data = (folder / "1.png").read_bytes()
    (folder / "1.png").write_bytes(data[: len(data) // 2])
    return folder / "1.png"


def _garbage_png(tmp: Path) -> Path:
    folder = _slices(tmp, [_grey()])
    (folder / "1.png").write_bytes(b"not an image at all")
    return folder / "1.png"


def _looping_link(tmp: Path) -> Path:
    folder = _slices(tmp, [_grey(), _grey()])
    (folder / "2.png").symlink_to(folder / "2.png")
    return folder / "2.png"


def _dangling_link(tmp: Path) -> Path:
    folder = _slices(tmp, [_grey(), _grey()])
    (folder / "2.png").symlink_to(tmp / "gone.png")
    return folder / "2.png"


def _mixed_sizes(tmp: Path) -> Path:
    write_series(tmp / "series", [1, 2])
    write_series(tmp / "series", [3], names=["odd.dcm"], size=64)
    return tmp / "series" / "odd.dcm"


def _zip_member(tmp: Path, name: str, member: bytes) -> Path:
    path = tmp / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("volume.npy", member)
    return path


def _forged_member(shape: str) -> bytes:
    header = f"{{'descr': '<i2', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64


BAD_SCANS: dict[str, Callable[[Path], Path]] = {
    "npy NaN": lambda t: _npy(t, _with_nan()),
    "npy +inf": lambda t: _npy(t, _volume(np.inf)),
    "npy -inf": lambda t: _npy(t, _volume(-np.inf)),
    "npy 1e9 HU": lambda t: _npy(t, _volume(1e9)),
    "npy -1e6 HU": lambda t: _npy(t, _volume(-1e6)),
    "npy float64 1e300": lambda t: _npy(t, _volume(1e300, "float64")),
    "npy zero slices": lambda t: _npy(t, np.zeros((0, 8, 8), np.int16)),
    "npy zero rows": lambda t: _npy(t, np.zeros((4, 0, 8), np.int16)),
    "npy 2-D": lambda t: _npy(t, np.zeros((8, 8), np.int16)),
    "npy 4-D": lambda t: _npy(t, np.zeros((2, 2, 8, 8), np.int16)),
    "npy object (pickle)": lambda t: _npy(t, np.array([{"a": 1}] * 8, dtype=object)
                                          .reshape(2, 2, 2)),
    "npy complex": lambda t: _npy(t, np.zeros((2, 4, 4), np.complex64)),
    "npy bool": lambda t: _npy(t, np.zeros((2, 4, 4), bool)),
    "npy structured": lambda t: _npy(t, np.zeros((2, 4, 4), dtype=[("a", "i2"), ("b", "f4")])),
    "npy strings": lambda t: _npy(t, np.full((2, 4, 4), "x")),
    "npy header 1e15 elements": lambda t: _npy_header(
        t, "{'descr': '<i2', 'fortran_order': False, 'shape': (1000000, 1000000, 1000), }"),
    "npy header negative shape": lambda t: _npy_header(
        t, "{'descr': '<i2', 'fortran_order': False, 'shape': (-4, 4, 2), }"),
    "npy header not a dict": lambda t: _npy_header(t, "[1, 2, 3]"),
    "npy header bad dtype": lambda t: _npy_header(
        t, "{'descr': 'nonsense', 'fortran_order': False, 'shape': (2, 2, 2), }"),
    "npy truncated data": lambda t: _npy_header(
        t, "{'descr': '<i2', 'fortran_order': False, 'shape': (4, 8, 8), }", b"\0" * 100),
    "npy trailing bytes": lambda t: _npy_header(
        t, "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 2, 2), }", b"\0" * 40),
    "npy empty file": lambda t: _file(t / "e.npy", b""),
    "npy random bytes": lambda t: _file(t / "r.npy", os.urandom(300)),
    "npy future version": lambda t: _file(t / "v.npy", b"\x93NUMPY\x09\x00" + b"\0" * 100),
    "npz NaN": lambda t: _npz(t, volume=_with_nan()),
    "npz two arrays": lambda t: _npz(t, a=_volume(), b=_volume()),
    "npz NaN spacing": lambda t: _npz(t, volume=_volume(), spacing=np.array([np.nan, 1, 1])),
    "npz negative spacing": lambda t: _npz(t, volume=_volume(), spacing=np.array([-1, 1, 1.0])),
    "npz not a zip": lambda t: _file(t / "z.npz", b"PK\x03\x04junk"),
    "npz header 1e15 elements": lambda t: _zip_member(t, "h.npz",
                                                      _forged_member("(1000000, 1000000, 1000)")),
    "dicom NaN RescaleSlope": lambda t: _dicom(t, RescaleSlope="nan"),
    "dicom inf RescaleIntercept": lambda t: _dicom(t, RescaleIntercept="inf"),
    "dicom RescaleSlope 1e6": lambda t: _dicom(t, RescaleSlope=1000000),
    "dicom Rows 0": lambda t: _dicom(t, Rows=0),
    "dicom Columns 0": lambda t: _dicom(t, Columns=0),
    "dicom truncated slice in a series": _series_with_truncated_slice,
    "dicom truncated pixel data": lambda t: _file(p := _dicom(t), p.read_bytes()[:-500]),
    "dicom without pixel data": lambda t: _dicom(t, PixelData=None),
    "dicom garbage .dcm": lambda t: _file(t / "g.dcm", b"DICM" * 40),
    "dicom slice of another size": _mixed_sizes,
    "png 16-bit slice": _png16,
    "tiff with 3 pages": _tiff_pages,
    "tiff 32-bit float": _tiff_float,
    "png truncated": _cut_png,
    "png garbage": _garbage_png,
    "symlink loop in a scan": _looping_link,
    "dangling symlink in a scan": _dangling_link,
}


def _scan_argument(path: Path) -> Path:
    """What `data inspect` is given for a builder's file: the file itself, or its folder when
    it is one slice of a series or slice folder."""
    return path.parent if path.parent.name in ("series", "slices") else path


@pytest.mark.parametrize("case", sorted(BAD_SCANS))
def test_bad_scan_inspect_is_one_line_naming_the_file(tmp_path, case):
    path = BAD_SCANS[case](tmp_path)
    assert_one_line(["data", "inspect", _scan_argument(path)], path.name)


@pytest.mark.parametrize("case", ["npy NaN", "npy 1e9 HU", "dicom NaN RescaleSlope",
                                  "png 16-bit slice", "dicom truncated slice in a series"])
def test_prepare_never_caches_a_bad_scan(tmp_path, case):
    path = _scan_argument(BAD_SCANS[case](tmp_path))
    records = [ScanRecord(path, 1, "train")]
    result = prepare_cache(records, tmp_path / "c", PreprocessConfig(size=SIZE), workers=0,
                           progress=False)
    assert not result.done and len(result.failed) == 1
    assert list((tmp_path / "c" / "volumes").iterdir()) == []


def test_png_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # warning above 100, error above 200
    folder = _slices(tmp_path, [_grey(size=12), _grey(size=16)])
    assert_one_line(["data", "inspect", folder], "0.png", "too large")


def test_dicom_nan_slope_in_a_series_names_the_slice(tmp_path):
    paths = write_series(tmp_path / "s", [1, 2, 3])
    ds = pydicom.dcmread(paths[1])
    ds.RescaleSlope = "nan"
    ds.save_as(paths[1])
    with pytest.raises(BadInputError, match=paths[1].name):
        read_scan(tmp_path / "s")


def test_dicom_element_of_unknown_vr_names_the_slice(tmp_path):
    """pydicom parses an element when it is first read: one whose VR is garbage raised
    NotImplementedError there (found by the fuzzer below)."""
    paths = write_series(tmp_path / "s", [1, 2, 3])
    ds = pydicom.dcmread(paths[1])
    ds.SpacingBetweenSlices = "2.5"
    ds.save_as(paths[1])
    raw = paths[1].read_bytes()
    tag = b"\x18\x00\x88\x00DS"  # (0018,0088) SpacingBetweenSlices, explicit VR little endian
    assert raw.count(tag) == 1
    paths[1].write_bytes(raw.replace(tag, b"\x18\x00\x88\x00D\x00"))
    with pytest.raises(BadInputError, match=paths[1].name):
        read_scan(tmp_path / "s")


# --- pydicom's own test files: each is read, or refused in one line naming it


SHIPPED = sorted(p.name for p in TEST_FILES.iterdir() if p.is_file())


@pytest.mark.parametrize("name", SHIPPED)
def test_pydicom_test_files_read_or_refused(tmp_path, name):
    code, lines, out = run("data", "inspect", TEST_FILES / name, "--json")
    if code == 0:
        info = json.loads(out)
        assert info["format"] == "dicom" and min(info["shape"]) >= 1
        assert np.isfinite([info["min"], info["max"]]).all()
    else:
        assert code == 2 and len(lines) == 1 and name in lines[0], (code, lines)


def test_pydicom_ct_matches_its_own_decoding():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    volume = read_scan(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[0], expected)


# --- manifests


def _manifest(tmp: Path, text: bytes, name: str = "m.csv") -> Path:
    np.save(tmp / "a.npy", _volume(-500, "int16"))
    np.save(tmp / "b.npy", _volume(-700, "int16"))
    path = tmp / name
    path.write_bytes(text)
    return path


BAD_MANIFESTS: dict[str, tuple[bytes, str]] = {
    "latin-1": ("path,label\nä.npy,1\n".encode("latin-1"), "not UTF-8"),
    "UTF-16": ("path,label\na.npy,1\n".encode("utf-16"), "not UTF-8"),
    "NUL byte": (b"path,label\na.npy\0,1\n", "m.csv"),
    "no label column": (b"path\na.npy\n", "missing column(s) label"),
    "no columns": (b"", "missing column(s) path, label"),
    "unknown label": (b"path,label\na.npy,5\n", "m.csv:2: unknown label '5'"),
    "unknown split": (b"path,label,split\na.npy,1,later\n", "m.csv:2: unknown split"),
    "empty path": (b"path,label\n ,1\n", "m.csv:2: empty path"),
    "no rows": (b"path,label\n", "lists no scans"),
    "missing scan only": (b"path,label\ngone.npy,1\n", "every scan failed to read"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_one_line(tmp_path, case):
    text, message = BAD_MANIFESTS[case]
    path = _manifest(tmp_path, text)
    assert_one_line(["data", "prepare", path, "--out", tmp_path / "c", "--size", "4,32,32",
                     "--workers", "0", "--no-progress"], message)


def test_manifest_with_bom_just_works(tmp_path):
    path = _manifest(tmp_path, "\ufeffpath,label,split\na.npy,1,train\nb.npy,0,val\n"
                     .encode("utf-8"))
    records = find_scans(manifest=path)
    assert [(r.path.name, r.label, r.split) for r in records] == [("a.npy", 1, "train"),
                                                                  ("b.npy", 0, "val")]
    code, lines, out = run("data", "prepare", path, "--out", tmp_path / "c", "--size",
                           "4,32,32", "--workers", "0", "--json")
    assert code == 0 and json.loads(out)["done"] == 2


def test_manifest_that_is_a_folder(tmp_path):
    (tmp_path / "m.csv").mkdir()
    assert_one_line(["data", "prepare", tmp_path / "m.csv", "--out", tmp_path / "c"],
                    "m.csv: cannot read manifest")


# --- data folders


def _data(tmp: Path, values=(-500, -700, -400, -800)) -> Path:
    root = tmp / "data"
    for k, value in enumerate(values):
        split = "val" if k >= len(values) // 2 else "train"
        folder = root / split / ("covid" if k % 2 == 0 else "non-covid")
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"s{k}.npy", _volume(value, "int16"))
    return root


def _prepare(root: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["data", "prepare", root, "--out", out, "--size", "4,32,32", "--workers", "0",
            "--no-progress", *extra]


def test_symlink_loop_in_a_class_folder(tmp_path):
    root = _data(tmp_path)
    (root / "train" / "covid" / "loop").symlink_to(root / "train" / "covid" / "loop")
    assert_one_line(_prepare(root, tmp_path / "c"), "loop", "symbolic link")


def test_dangling_link_in_a_class_folder(tmp_path):
    root = _data(tmp_path)
    (root / "val" / "covid" / "gone").symlink_to(tmp_path / "nowhere")
    assert_one_line(_prepare(root, tmp_path / "c"), "gone", "symbolic link")


def test_every_scan_failed_is_bad_input(tmp_path):
    root = _data(tmp_path)
    for path in root.rglob("*.npy"):
        np.save(path, _with_nan())
    assert_one_line(_prepare(root, tmp_path / "c"), "every scan failed to read", "NaN")


def test_out_is_a_file(tmp_path):
    root = _data(tmp_path)
    (tmp_path / "file").write_text("mine")
    assert_one_line(_prepare(root, tmp_path / "file"), "file")
    assert (tmp_path / "file").read_text() == "mine"


def test_foreign_index_json_is_not_overwritten(tmp_path):
    root = _data(tmp_path)
    (root / "index.json").write_text('{"my": "own index"}')
    assert_one_line(_prepare(root, root), "index.json", "not a covidzoo cache index")
    assert json.loads((root / "index.json").read_text()) == {"my": "own index"}


def test_second_prepare_is_refused_while_one_runs(tmp_path):
    from covidzoo.fileio import exclusive_lock

    root = _data(tmp_path)
    with exclusive_lock(tmp_path / "c", "data prepare"):
        assert_one_line(_prepare(root, tmp_path / "c"), "already writing", ".covidzoo.lock")
    code, _, _ = run(*_prepare(root, tmp_path / "c"))
    assert code == 0  # a lock is the holder's only: released, the folder is usable at once


# --- the cache: verified on read, rebuilt by prepare, edited indexes refused


@pytest.fixture
def cache(tmp_path) -> Path:
    code, lines, _ = run(*_prepare(_data(tmp_path), tmp_path / "cache"))
    assert code == 0, lines
    return tmp_path / "cache"


def _index(cache: Path) -> dict:
    return json.loads((cache / "index.json").read_text())


def _edit(cache: Path, change: Callable[[dict], None]) -> None:
    data = _index(cache)
    change(data)
    (cache / "index.json").write_text(json.dumps(data))


def _first_volume(cache: Path) -> Path:
    return cache / _index(cache)["entries"][0]["file"]


def _truncate(cache: Path) -> None:
    path = _first_volume(cache)
    path.write_bytes(path.read_bytes()[:-7])


def _zero(cache: Path) -> None:
    path = _first_volume(cache)
    data = path.read_bytes()
    path.write_bytes(data[:128] + bytes(len(data) - 128))


def _swap(cache: Path) -> None:
    entries = _index(cache)["entries"]
    a, b = (cache / e["file"] for e in entries[:2])
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


DAMAGED_VOLUMES = {
    "truncated": _truncate,
    "zeroed": _zero,
    "swapped": _swap,
    "deleted": lambda c: _first_volume(c).unlink(),
}

EDITED_INDEXES: dict[str, Callable[[Path], None]] = {
    "label 5": lambda c: _edit(c, lambda d: d["entries"][0].update(label=5)),
    "label true": lambda c: _edit(c, lambda d: d["entries"][0].update(label=True)),
    "file ../../etc/passwd": lambda c: _edit(
        c, lambda d: d["entries"][0].update(file="../../etc/passwd")),
    "absolute file": lambda c: _edit(c, lambda d: d["entries"][0].update(file="/etc/passwd")),
    "another scan's file": lambda c: _edit(
        c, lambda d: d["entries"][0].update(file=d["entries"][1]["file"])),
    "shape not the config's": lambda c: _edit(
        c, lambda d: d["entries"][0].update(shape=[2, 2, 2])),
    "config size changed": lambda c: _edit(c, lambda d: d["config"].update(size=[2, 8, 8])),
    "missing key": lambda c: _edit(c, lambda d: d["entries"][0].pop("sha256")),
    "split unknown": lambda c: _edit(c, lambda d: d["entries"][0].update(split="later")),
    "duplicate source": lambda c: _edit(c, lambda d: d["entries"].append(d["entries"][0])),
    "owned outside": lambda c: _edit(c, lambda d: d["owned"].append("../x.npy")),
    "entries not a list": lambda c: _edit(c, lambda d: d.update(entries={})),
    "format 1": lambda c: _edit(c, lambda d: d.update(format=1)),
    "not JSON": lambda c: (c / "index.json").write_text('{"format": 2, "entr'),
    "not UTF-8": lambda c: (c / "index.json").write_bytes(b"\xff\xfe{}"),
    "a JSON list": lambda c: (c / "index.json").write_text("[]"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_VOLUMES))
def test_damaged_volume_is_refused_by_readers(cache, case):
    DAMAGED_VOLUMES[case](cache)
    with pytest.raises(BadInputError, match="covidzoo data prepare` again") as error:
        dataset = CachedScans(cache)
        for i in range(len(dataset)):
            dataset[i]
    assert "volumes/" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("case", sorted(DAMAGED_VOLUMES))
def test_damaged_volume_is_rebuilt_by_prepare(tmp_path, cache, case):
    before = {e["source"]: CachedScans(cache)[i][0] for i, e in enumerate(_index(cache)["entries"])}
    DAMAGED_VOLUMES[case](cache)
    code, lines, out = run(*_prepare(tmp_path / "data", cache, "--json"))
    assert code == 0, lines
    report = json.loads(out)
    assert report["repaired"] + report["done"] >= 1 and report["failed"] == []
    dataset = CachedScans(cache)
    for i, source in enumerate(dataset.sources):
        assert bool((dataset[i][0] == before[source]).all())


@pytest.mark.parametrize("case", sorted(EDITED_INDEXES))
def test_edited_index_is_refused_in_one_line(cache, case):
    EDITED_INDEXES[case](cache)
    with pytest.raises(BadInputError) as error:
        CachedScans(cache)
    message = str(error.value)
    assert "index.json" in message and "\n" not in message


def test_edited_index_never_opens_a_path_outside(cache, monkeypatch):
    opened: list[str] = []
    real_read_bytes = Path.read_bytes

    def spy(self):
        opened.append(str(self))
        return real_read_bytes(self)

    EDITED_INDEXES["file ../../etc/passwd"](cache)
    monkeypatch.setattr(Path, "read_bytes", spy)
    with pytest.raises(BadInputError):
        CachedScans(cache)
    assert all(str(cache) in p for p in opened) and not any("passwd" in p for p in opened)


def test_prepare_does_not_overwrite_an_unreadable_index(tmp_path, cache):
    EDITED_INDEXES["not JSON"](cache)
    assert_one_line(_prepare(tmp_path / "data", cache), "index.json", "not overwritten")
    assert (cache / "index.json").read_text() == '{"format": 2, "entr'


@pytest.mark.parametrize("case", ["label 5", "file ../../etc/passwd", "format 1",
                                  "another scan's file", "missing key"])
def test_prepare_rebuilds_over_an_edited_index(tmp_path, cache, case):
    EDITED_INDEXES[case](cache)
    code, lines, out = run(*_prepare(tmp_path / "data", cache, "--json"))
    assert code == 0, lines
    assert len(CachedScans(cache)) == 4 and sorted(CachedScans(cache).labels) == [0, 0, 1, 1]


def test_evaluate_on_a_damaged_cache_is_one_line(cache, checkpoint):
    _zero(cache)
    assert_one_line(["evaluate", checkpoint, "--cache", cache, "--split", "all",
                     "--workers", "0", "--device", "cpu"], _first_volume(cache).name)


# --- evaluate --data on bad folders


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from model_helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.safetensors", SIZE, seed=0)


def _evaluate(root: Path, model: Path) -> list[str | Path]:
    return ["evaluate", model, "--data", root, "--split", "all", "--workers", "0",
            "--device", "cpu", "--json"]


def test_evaluate_every_scan_bad_is_one_line(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / "zoo"))
    root = _data(tmp_path)
    for path in root.rglob("*.npy"):
        np.save(path, _volume(1e9))
    assert_one_line(_evaluate(root, checkpoint), "lie outside")


def test_evaluate_symlink_loop_is_one_line(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / "zoo"))
    root = _data(tmp_path)
    (root / "val" / "covid" / "x").symlink_to(root / "val" / "covid" / "x")
    assert_one_line(_evaluate(root, checkpoint), "symbolic link")


def test_evaluate_leaves_a_nan_scan_out_and_says_so(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / "zoo"))
    root = _data(tmp_path, values=(-500, -700, -400, -800, -450, -650))
    bad = next(root.rglob("s0.npy"))
    np.save(bad, _with_nan())
    code, lines, out = run(*_evaluate(root, checkpoint))
    assert code == 0, lines
    report = json.loads(out)
    assert report["timing"]["scans"] == 5
    assert "s0.npy" in json.dumps(report)


# --- ownership: a prepare deletes only what it wrote


def test_prepare_into_the_data_folder_deletes_nothing_of_it(tmp_path):
    root = _data(tmp_path)
    user = root / "volumes" / "notes.npy"
    user.parent.mkdir()
    np.save(user, np.zeros(3))
    before = sorted(p for p in root.rglob("*") if p.is_file())
    code, lines, _ = run(*_prepare(root, root))
    assert code == 0, lines
    after = {p for p in root.rglob("*") if p.is_file()}
    assert set(before) <= after and user.exists()


def test_two_data_sets_share_one_cache_folder_without_loss(tmp_path):
    first = _data(tmp_path / "one")
    second = _data(tmp_path / "two", values=(-300, -900, -200, -950))
    out = tmp_path / "shared"
    assert run(*_prepare(first, out))[0] == 0
    first_files = set((out / "volumes").iterdir())
    assert_one_line(_prepare(second, out), "holds the cache of another data set", str(first))
    assert first_files == set((out / "volumes").iterdir())
    assert sorted(CachedScans(out).sources) == sorted(str(p) for p in first.rglob("*.npy"))


def test_stale_volumes_of_our_own_and_killed_temps_are_removed(tmp_path):
    root = _data(tmp_path)
    out = tmp_path / "c"
    assert run(*_prepare(root, out))[0] == 0
    temp = out / "volumes" / f".{'a' * 24}.npy.x1y2z3.tmp"
    temp.write_bytes(b"half")
    user_temp = out / "volumes" / ".mine.tmp"
    user_temp.write_bytes(b"keep")
    dropped = next(root.rglob("s3.npy"))
    dropped.unlink()
    owned_before = set(_index(out)["owned"])
    assert run(*_prepare(root, out))[0] == 0
    owned_after = set(_index(out)["owned"])
    assert len(owned_after) == 3 and owned_after < owned_before
    assert {f"volumes/{p.name}" for p in (out / "volumes").glob("*.npy")} == owned_after
    assert not temp.exists() and user_temp.read_bytes() == b"keep"


# --- fuzzing: random or mutated files end in a result or BadInputError, nothing else


def _valid_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000)
    return buffer.getvalue()


def _valid_png() -> bytes:
    buffer = io.BytesIO()
    _grey(size=8).save(buffer, format="PNG")
    return buffer.getvalue()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for where, value in edits:
        out[where % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)
CUT = st.one_of(st.none(), st.integers(0, 400))


def _read_or_refuse(path: Path) -> None:
    try:
        volume = read_scan(path)
        summary = volume.summary()
    except BadInputError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert np.isfinite([summary["min"], summary["max"]]).all() and min(summary["shape"]) >= 1


@FUZZ
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".npy", ".npz", ".dcm"]))
def test_fuzz_random_bytes(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    _read_or_refuse(path)


@FUZZ
@given(edits=EDITS, cut=CUT)
def test_fuzz_mutated_npy(tmp_path, edits, cut):
    path = tmp_path / "m.npy"
    path.write_bytes(_mutate(_valid_npy(), edits, cut))
    _read_or_refuse(path)


@FUZZ
@given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, 200)))
def test_fuzz_mutated_png_slice(tmp_path, edits, cut):
    folder = tmp_path / "slices"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "0.png").write_bytes(_valid_png())
    (folder / "1.png").write_bytes(_mutate(_valid_png(), edits, cut))
    _read_or_refuse(folder)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(128, 2000), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 40000)))
def test_fuzz_mutated_dicom(tmp_path, edits, cut):
    path = tmp_path / "m.dcm"
    path.write_bytes(_mutate(CT_SMALL.read_bytes(), edits, cut))
    _read_or_refuse(path)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("path,label,split\n\r\"x01 ;covid-\ufeff\0é")),
                    max_size=80),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
def test_fuzz_manifest(tmp_path, text, encoding):
    path = tmp_path / "m.csv"
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        return
    try:
        records = find_scans(manifest=path)
    except BadInputError as exc:
        assert "\n" not in str(exc)
        return
    assert records and all(r.label in (0, 1, None) for r in records)
    assert all(r.split in ("train", "val", "test") for r in records)
