"""Read a DICOM series (a folder of single-slice files, or one multi-frame file) into a `Volume`.

Why not `pixel_array` in a loop: for uncompressed transfer syntaxes the pixel bytes *are* the
array, so this reader parses each header only up to the pixel data (`stop_before_pixels`),
reads the raw bytes right after it and views them with numpy (`frombuffer` with the dtype that
BitsAllocated, PixelRepresentation and the byte order give). Rescale slope and intercept are
applied to the whole stack at once, and files are read by a thread pool. Compressed transfer
syntaxes go through pydicom's decoders (pylibjpeg and GDCM, installed by the `covidzoo[dicom]`
extra).
"""

from __future__ import annotations

import os
import re
import struct
import warnings as _warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, one_line
from .listing import list_folder
from .volume import HU_RANGE, Volume

_PIXEL_DATA = (0x7FE0, 0x0010)
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT"}
_RAW_SYNTAXES = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still met)
}
_DECODERS_HINT = (
    "install the decoders: pip install 'covidzoo[dicom]' "
    "(pylibjpeg with its JPEG, JPEG 2000 and RLE plugins, and GDCM)"
)


@dataclass
class _Slice:
    """What the reader keeps of one file: the geometry, the rescale, and the raw pixels."""

    path: Path
    series_uid: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    instance: int | None
    slope: float
    intercept: float
    thickness: float | None
    slice_thickness: float | None  # SliceThickness alone (`thickness` prefers the spacing)
    pixels: np.ndarray | _RawPixels  # frames x rows x cols, stored (raw) values


@dataclass
class _RawPixels:
    """Native pixel data left in its file until a slab of the volume needs it: where it starts
    and how to view it. So a 2000-slice series is never held in memory whole."""

    path: Path
    offset: int
    dtype: np.dtype[Any]
    shape: tuple[int, int, int]  # frames x rows x cols
    shift: int  # sign extension from BitsStored, 0 for none

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames `start:stop` of the file."""
        frame = self.shape[1] * self.shape[2]
        size = (stop - start) * frame * self.dtype.itemsize
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * frame * self.dtype.itemsize)
                data = f.read(size)
        except OSError as exc:
            raise BadInputError(f"{self.path}: cannot read ({exc.strerror})") from exc
        if len(data) < size:
            raise BadInputError(f"{self.path}: pixel data ended early (changed while read?)")
        array = np.frombuffer(data, dtype=self.dtype).reshape(stop - start, *self.shape[1:])
        if self.shift:  # sign-extend from the stored bit depth, as pydicom does
            array = (array.astype(self.dtype.newbyteorder("=")) << self.shift) >> self.shift
        return array


class _Stack:
    """The frames of a series in slice order, read from their files a slab at a time."""

    def __init__(self, parts: Sequence[np.ndarray | _RawPixels]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [p.shape[0] for p in self.parts]).tolist()
        self.shape = (self.starts[-1], *self.parts[0].shape[1:])
        self.dtype = np.result_type(*(p.dtype for p in self.parts))
        self.ndim = 3

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.shape[0])
        out = np.empty((max(stop - start, 0), *self.shape[1:]), dtype=self.dtype)
        for part, first in zip(self.parts, self.starts[:-1], strict=True):
            a, b = max(start, first), min(stop, first + part.shape[0])
            if a < b:
                values = part.read(a - first, b - first) if isinstance(part, _RawPixels) \
                    else part[a - first:b - first]
                out[a - start:b - start] = values
        return out


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None  # NaN: as if absent


def _number(value: Any, default: float | None) -> float | None:
    try:
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return default


def _raw_pixels(fp: Any, ds: Any, path: Path) -> _RawPixels | None:
    """Where the native pixel data that follows the header in `fp` lies (checked to be all
    there), and how to view it with numpy; None: use pydicom.

    `fp` is positioned where `dcmread(stop_before_pixels=True)` stopped: at the next element.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in _RAW_SYNTAXES:
        return None
    bits = int(ds.get("BitsAllocated", 0))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or bits not in (8, 16, 32):
        return None
    little = syntax != "1.2.840.10008.1.2.2"
    order = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8 or struct.unpack(order + "HH", head[:4]) != _PIXEL_DATA:
        raise BadInputError(f"{path}: DICOM file without pixel data")
    if syntax == "1.2.840.10008.1.2":
        (length,) = struct.unpack("<I", head[4:8])
    elif head[4:6] in _LONG_VRS:
        (length,) = struct.unpack(order + "I", fp.read(4))
    else:
        (length,) = struct.unpack(order + "H", head[6:8])
    if length == 0xFFFFFFFF:  # encapsulated, although the syntax says native
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    count = frames * rows * cols
    size = count * bits // 8
    offset = fp.tell()
    there = min(length, os.fstat(fp.fileno()).st_size - offset)
    if there < size:
        raise BadInputError(f"{path}: truncated pixel data ({there} of {size} bytes)")
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{order}{'i' if signed else 'u'}{bits // 8}")
    stored = int(ds.get("BitsStored", bits))
    shift = bits - stored if signed and 0 < stored < bits else 0
    return _RawPixels(path, offset, dtype, (frames, rows, cols), shift)


def _decoded_pixels(path: Path) -> np.ndarray:
    """Pixels through pydicom's own handlers (compressed or unusual files)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types on a mangled file
        raise BadInputError(f"{path}: not a readable DICOM file "
                            f"({one_line(exc, with_type=False)})") from exc
    if "PixelData" not in ds:
        raise BadInputError(f"{path}: DICOM file without pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise BadInputError(f"{path}: colour DICOM ({ds.SamplesPerPixel} samples per pixel)")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return np.asarray(ds.pixel_array).reshape(frames, int(ds.Rows), int(ds.Columns))
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError
        if _is_compressed(syntax):
            name = getattr(syntax, "name", str(syntax))
            message = f"{path}: cannot decode {name} pixel data; {_DECODERS_HINT}"
            raise BadInputError(message) from exc
        raise BadInputError(f"{path}: cannot read pixel data: {one_line(exc, with_type=False)}"
                            ) from exc


def _is_compressed(syntax: Any) -> bool:
    try:
        return syntax is not None and bool(syntax.is_compressed)
    except ValueError:  # not a transfer syntax UID at all
        return False


class _CutShort(Exception):
    """pydicom read a file that ends early without complaint; this says where it ended."""


def _check_complete(ds: Any) -> None:
    """Raise `_CutShort` when `ds` (read up to the pixel data) ends early: nothing after the
    file meta, or a last data element shorter than its stated length."""
    if len(ds) == 0:
        raise _CutShort("cut short: no data set after the file meta information")
    last = ds.get_item(max(ds.keys()))
    length, value = getattr(last, "length", None), getattr(last, "value", None)
    if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < length:
        raise _CutShort(f"cut short inside element {last.tag}: {len(value)} of {length} bytes")


def _looks_like_dicom(path: Path) -> bool:
    """A `.dcm` name, or the DICOM preamble's magic "DICM" at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _rescale(ds: Any, path: Path) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (1 and 0 when absent); not finite: bad input."""
    slope = _number(ds.get("RescaleSlope"), 1.0)
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    if not (np.isfinite(slope) and np.isfinite(intercept)):  # type: ignore[arg-type]
        raise BadInputError(f"{path}: RescaleSlope {slope} / RescaleIntercept {intercept} "
                            "is not a finite number")
    return slope or 1.0, intercept or 0.0  # type: ignore[return-value]


def _sop_class(ds: Any) -> str | None:
    """The name of the file's SOP class (what it holds: "CT Image Storage", "Basic Text SR
    Storage"...), from the data set or its file meta; None when neither says."""
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    name = getattr(uid, "name", None)
    return str(name) if name else None


def _check_size(ds: Any, path: Path) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{path}: unreadable Rows/Columns") from exc
    if rows < 1 or cols < 1:
        raise BadInputError(f"{path}: DICOM image of {rows}x{cols} pixels")


def _read_file(path: Path, strict: bool) -> _Slice | str | None:
    """One DICOM file. In a folder (`strict` off) a file that is not DICOM is None, one of the
    folder's extras, unless it is named `.dcm` or starts with the DICOM magic (then it is part
    of the series, and unreadable means bad input: a truncated slice is never dropped
    silently); a whole DICOM file without an image is a string saying so (a warning). Anything
    else unreadable is a `BadInputError`."""
    import pydicom

    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            if "Rows" not in ds or "Columns" not in ds:
                _check_complete(ds)
                kind = _sop_class(ds)
                if kind is not None and "Image Storage" in kind:
                    # an image without its size: a slice cut short inside its header
                    raise BadInputError(f"{path}: {kind} file without Rows/Columns (cut short?)")
                if strict:
                    raise BadInputError(f"{path}: DICOM file without an image")
                return f"{path.name}" + (f" ({kind})" if kind else "")
            _check_size(ds, path)
            pixels = _raw_pixels(fp, ds, path)
    except BadInputError:
        raise
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, OSError, _CutShort...
        if strict or _looks_like_dicom(path):
            reason = one_line(exc, with_type=False)
            raise BadInputError(f"{path}: not a readable DICOM file ({reason})") from exc
        return None
    try:
        slope, intercept = _rescale(ds, path)
        if pixels is None:  # decoded now; native pixels are checked as slabs read them
            pixels = _decoded_pixels(path)
            _check_stored(pixels, slope, intercept, path)
        return _slice(ds, path, pixels, slope, intercept)
    except BadInputError:
        raise
    except Exception as exc:  # pydicom parses elements when first read: a mangled one (an
        # unknown VR, a value it kept as given) raises here, of many types
        reason = one_line(exc, with_type=False)
        raise BadInputError(f"{path}: unreadable DICOM attribute ({reason})") from exc


def _slice(ds: Any, path: Path, pixels: np.ndarray | _RawPixels, slope: float,
           intercept: float) -> _Slice:
    spacing = _floats(ds.get("PixelSpacing"), 2)
    instance = _number(ds.get("InstanceNumber"), None)
    return _Slice(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=spacing if spacing is None else (spacing[0], spacing[1]),
        instance=int(instance) if instance is not None and np.isfinite(instance) else None,
        slope=slope,
        intercept=intercept,
        thickness=_number(ds.get("SpacingBetweenSlices", ds.get("SliceThickness")), None),
        slice_thickness=_number(ds.get("SliceThickness"), None),
        pixels=pixels,
    )


def _check_stored(pixels: np.ndarray, slope: float, intercept: float, path: Path) -> None:
    """The file's HU range, from its stored extremes: finite and within `HU_RANGE`."""
    if pixels.size == 0:
        raise BadInputError(f"{path}: DICOM image without pixels")
    lo, hi = sorted(float(v) * slope + intercept for v in (pixels.min(), pixels.max()))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise BadInputError(f"{path}: non-finite pixel values; not a usable scan")
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise BadInputError(f"{path}: values {lo:.6g} to {hi:.6g} HU after rescale lie outside "
                            f"{HU_RANGE[0]:g} to {HU_RANGE[1]:g}; not a CT scan's numbers")


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _positions(slices: Sequence[_Slice]) -> np.ndarray | None:
    """Each slice's ImagePositionPatient projected on the slice normal of the first slice's
    ImageOrientationPatient (mm); None when a slice lacks either."""
    if not all(s.position is not None and s.orientation is not None for s in slices):
        return None
    iop = np.asarray(slices[0].orientation)
    normal = np.cross(iop[:3], iop[3:])
    return np.array([float(np.dot(s.position, normal)) for s in slices])  # type: ignore[arg-type]


def _order(slices: list[_Slice], warnings: list[str]) -> tuple[list[_Slice], float]:
    """Slices sorted along the slice normal, and the slice spacing measured from positions."""
    where = _positions(slices)
    if where is not None:
        order = np.argsort(where, kind="stable")
        slices = [slices[i] for i in order]
        steps = np.diff(where[order])
        return slices, _check_steps(steps, slices, warnings)
    fallback = slices[0].thickness or 1.0
    if len(slices) > 1 and all(s.instance is not None for s in slices):
        warnings.append("no ImagePositionPatient/Orientation: ordered by InstanceNumber")
        return sorted(slices, key=lambda s: int(s.instance or 0)), fallback
    if len(slices) > 1:
        warnings.append("no slice geometry and no InstanceNumber: ordered by file name")
    return sorted(slices, key=lambda s: _natural_key(s.path)), fallback


def _check_steps(steps: np.ndarray, slices: list[_Slice], warnings: list[str]) -> float:
    if steps.size == 0:
        return slices[0].thickness or 1.0
    duplicates = int(np.sum(steps < 1e-3))
    moving = steps[steps >= 1e-3]
    if duplicates:
        warnings.append(f"{duplicates} duplicate slice position(s)")
    if moving.size == 0:
        return slices[0].thickness or 1.0
    step = float(np.median(moving))
    gaps = int(np.sum(moving > 1.5 * step))
    if gaps:
        warnings.append(f"{gaps} gap(s) in slice positions (spacing {step:.3g} mm)")
    elif float(moving.max() - moving.min()) > 0.05 * step:
        warnings.append(
            f"uneven slice spacing ({moving.min():.3g} to {moving.max():.3g} mm)"
        )
    return step


def _pick_series(slices: list[_Slice], series: str | None, folder: Path,
                 warnings: list[str]) -> tuple[str, list[_Slice]]:
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    if series is not None:
        if series not in groups:
            raise BadInputError(
                f"{folder}: no series {series}; found {', '.join(sorted(groups))}"
            )
        return series, groups[series]
    uid = max(groups, key=lambda u: (len(groups[u]), u))
    if len(groups) > 1:
        others = ", ".join(f"{u} ({len(g)})" for u, g in sorted(groups.items()) if u != uid)
        warnings.append(
            f"{len(groups)} series in folder; read {uid} ({len(groups[uid])} slices, the "
            f"largest); others: {others}"
        )
    return uid, groups[uid]


def list_dicom_files(folder: Path) -> list[Path]:
    """Candidate files of a folder: every regular file but hidden ones (DICOM has no fixed
    extension; files that do not parse are skipped later)."""
    return [p for p in list_folder(folder) if p.is_file()]


def read_dicom(
    path: str | os.PathLike[str], series: str | None = None, workers: int | None = None
) -> Volume:
    """Read a DICOM series folder (or one DICOM file) into a HU `Volume`.

    In a folder, files that are not DICOM are ignored, except a file named `.dcm` or starting
    with the DICOM magic that does not parse or ends early, which is an error naming it (a
    truncated slice is never dropped from a series); whole DICOM files without an image (a
    report, a DICOMDIR) are skipped with a warning. A non-finite RescaleSlope/Intercept, an
    image of 0 rows or columns, or values outside `volume.HU_RANGE` are bad input. Several
    series: the one with the most slices is read
    (and a warning says so) unless `series` names a SeriesInstanceUID. Slices are ordered by
    ImagePositionPatient projected on the slice normal, by InstanceNumber only when geometry is
    missing. `workers` threads read the files (default: up to 8).
    """
    path = Path(path)
    with _warnings.catch_warnings(record=True) as caught:
        # pydicom warns about odd values (an invalid IS, a guessed VR): the reader's warnings,
        # not stray lines on stderr. Set around the whole thread pool: the filter is global.
        _warnings.simplefilter("always")
        slices, no_image, files = _read_files(path, workers)
    warnings = list(dict.fromkeys(f"pydicom: {w.message}" for w in caught))
    if path.is_dir() and not slices:
        raise BadInputError(f"{path}: no readable DICOM slices among {len(files)} file(s)")
    if no_image:
        shown = ", ".join(no_image[:3]) + (", ..." if len(no_image) > 3 else "")
        warnings.append(f"skipped {len(no_image)} DICOM file(s) without an image: {shown}")
    uid, slices = _pick_series(slices, series, path, warnings)
    return _assemble(slices, uid, path, warnings)


def _read_files(path: Path, workers: int | None) -> tuple[list[_Slice], list[str], list[Path]]:
    """The slices of a folder (or of one file), the files without an image, and the files."""
    if path.is_dir():
        files = list_dicom_files(path)
        if not files:
            raise BadInputError(f"{path}: empty folder")
        n = workers or min(8, (os.cpu_count() or 1) * 2)
        if n > 1 and len(files) > 1:
            with ThreadPoolExecutor(n) as pool:
                read = list(pool.map(lambda p: _read_file(p, strict=False), files))
        else:
            read = [_read_file(p, strict=False) for p in files]
        return ([s for s in read if isinstance(s, _Slice)],
                [s for s in read if isinstance(s, str)], files)
    if path.is_file():
        return [_read_file(path, strict=True)], [], [path]  # type: ignore[list-item]
    raise BadInputError(f"{path}: no such file or folder")


def _assemble(slices: Sequence[_Slice], uid: str, source: Path, warnings: list[str]) -> Volume:
    sizes = [s.pixels.shape[1:] for s in slices]
    shape = max(sizes, key=sizes.count)  # the series' size: the one most slices have
    for s in slices:
        if s.pixels.shape[1:] != shape:
            raise BadInputError(
                f"{s.path}: slice size {s.pixels.shape[1]}x{s.pixels.shape[2]} differs from "
                f"the series' {shape[0]}x{shape[1]}"
            )
    if len(slices) > 1 and any(s.pixels.shape[0] != 1 for s in slices):
        raise BadInputError(f"{source}: a multi-frame file mixed with other files in one series")
    ordered, dz = _order(list(slices), warnings)
    if len(ordered) == 1 and ordered[0].pixels.shape[0] > 1:
        warnings.append("multi-frame file: frames taken in stored order")
    depth = sum(s.pixels.shape[0] for s in ordered)
    slopes = np.empty(depth, dtype=np.float32)
    intercepts = np.empty(depth, dtype=np.float32)
    files: list[str] = []
    i = 0
    for s in ordered:
        k = s.pixels.shape[0]
        slopes[i:i + k], intercepts[i:i + k] = s.slope, s.intercept
        files += [str(s.path)] * k
        i += k
    dy, dx = ordered[0].pixel_spacing or (1.0, 1.0)
    if ordered[0].pixel_spacing is None:
        warnings.append("no PixelSpacing: assumed 1 mm")
    stack = _Stack([s.pixels for s in ordered])  # read a slab at a time by `Volume.slab`
    # A multi-frame file's frames have their positions in per-frame groups, not read here.
    positions = _positions(ordered) if depth == len(ordered) else None
    thicknesses = np.repeat([np.nan if s.slice_thickness is None else s.slice_thickness
                             for s in ordered], [s.pixels.shape[0] for s in ordered])
    return Volume(stack, (float(dz), float(dy), float(dx)), str(source), "dicom", warnings, uid,
                  slope=None if np.all(slopes == 1) else slopes,
                  intercept=None if np.all(intercepts == 0) else intercepts, files=files,
                  positions=positions,
                  thicknesses=None if np.isnan(thicknesses).all() else thicknesses)
