"""Synthetic chest CT scans: the built-in demo data, written through the real file formats.

Each scan is a HU volume with air around a body (fat and soft tissue), a spine, two lungs at
about -850 HU with vessels, a few small dense nodules in both classes (so "anything bright in
the lung" is no shortcut) and noise. Covid-positive scans get ground-glass opacities: soft
blobs of -500 to -300 HU near the lung periphery, sized to survive downsizing to 32 x 64 x 64.
Scans are written as DICOM series (pydicom, with UIDs, geometry and rescale) or as folders of
JPG slices, in the COV19-CT-DB layout `{train,val}/{covid,non-covid}/SCAN`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .paths import demo_dir

DEMO_SHAPE: tuple[int, int, int] = (40, 128, 128)
# Enough scans for a model trained from scratch to learn the demo's signal in a few epochs.
DEMO_SCANS = 192
DEMO_VERSION = 1
FORMATS = ("dicom", "jpg")
PIXEL_MM = 2.5
SLICE_MM = 5.0
LUNG_WINDOW = (-600.0, 1500.0)


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, h, w = shape
    return (
        np.linspace(-1, 1, d, dtype=np.float32)[:, None, None],
        np.linspace(-1, 1, h, dtype=np.float32)[None, :, None],
        np.linspace(-1, 1, w, dtype=np.float32)[None, None, :],
    )


def phantom(rng: np.random.Generator, shape: tuple[int, int, int], covid: bool) -> np.ndarray:
    """One synthetic chest CT volume in HU (float32, `shape`)."""
    z, y, x = _grid(shape)
    vol = np.full(shape, -1000.0, dtype=np.float32)
    jitter = 1 + 0.05 * rng.standard_normal(4)
    ay, ax = 0.62 * jitter[0], 0.88 * jitter[1]
    body = (y / ay) ** 2 + (x / ax) ** 2
    vol[:, (body <= 1)[0]] = -90.0  # subcutaneous fat
    vol[:, (body <= 0.8)[0]] = 40.0  # soft tissue
    vol[:, (((y - 0.45 * ay) / 0.12) ** 2 + (x / 0.1) ** 2 <= 1)[0]] = 500.0  # spine
    lungs = np.zeros(shape, dtype=bool)
    centres = []
    for side in (-1, 1):
        cx = side * 0.36 * ax * jitter[2]
        cy, rx, ry, rz = -0.05, 0.27 * ax, 0.42 * ay * jitter[3], 1.15
        centres.append((cx, cy, rx, ry, rz))
        lungs |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + (z / rz) ** 2 <= 1
    vol[lungs] = -850.0
    density = np.zeros(shape, dtype=np.float32)  # HU added inside the lungs
    for _ in range(int(rng.integers(8, 14))):  # vessels: thin oblique tubes
        cx, cy, rx, ry, _rz = centres[int(rng.integers(2))]
        x0, y0 = cx + rx * rng.uniform(-0.6, 0.6), cy + ry * rng.uniform(-0.6, 0.6)
        sx, sy = rng.uniform(-0.15, 0.15, 2)
        r = rng.uniform(0.015, 0.03)
        tube = (x - x0 - sx * z) ** 2 + (y - y0 - sy * z) ** 2 <= r * r
        density = np.maximum(density, np.where(tube, 880.0, 0.0).astype(np.float32))
    blobs = [(0.04, 0.06, 850.0, 900.0)] * int(rng.integers(0, 3))  # small dense nodules
    if covid:
        blobs += [(0.16, 0.24, 350.0, 550.0)] * int(rng.integers(2, 5))  # ground glass
    for r_lo, r_hi, add_lo, add_hi in blobs:
        cx, cy, rx, ry, _rz = centres[int(rng.integers(2))]
        angle = rng.uniform(0, 2 * np.pi)
        reach = rng.uniform(0.65, 0.85) if r_lo > 0.1 else rng.uniform(0, 0.7)
        bx, by = cx + reach * rx * np.cos(angle), cy + reach * ry * np.sin(angle)
        bz, r = rng.uniform(-0.6, 0.6), rng.uniform(r_lo, r_hi)
        dist = np.sqrt((x - bx) ** 2 + (y - by) ** 2 + ((z - bz) * 0.7) ** 2) / r
        weight = np.clip(1.5 - dist, 0.0, 1.0)  # flat core, soft edge
        density = np.maximum(density, weight * np.float32(rng.uniform(add_lo, add_hi)))
    vol += np.where(lungs, density, 0.0)
    vol += rng.standard_normal(shape, dtype=np.float32) * np.float32(20.0)
    return vol


def _window_uint8(hu: np.ndarray) -> np.ndarray:
    level, width = LUNG_WINDOW
    unit = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0)
    return (unit * 255 + 0.5).astype(np.uint8)


def _write_jpg(folder: Path, hu: np.ndarray) -> None:
    from PIL import Image

    for i, image in enumerate(_window_uint8(hu)):
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=90)


def _write_dicom(folder: Path, hu: np.ndarray, seed: int, index: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["covidzoo-demo", str(seed), str(index), *map(str, parts)])

    stored = np.clip(np.round(hu) + 1024, 0, 4095).astype(np.uint16)
    d, h, w = hu.shape
    study, series, frame = uid("study"), uid("series"), uid("frame")
    for k in range(d):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid("slice", k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName = "CT", "Demo^Synthetic"
        ds.PatientID = f"DEMO{seed}-{index:04d}"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [-(w / 2) * PIXEL_MM, -(h / 2) * PIXEL_MM, k * SLICE_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.SliceThickness = SLICE_MM
        ds.Rows, ds.Columns, ds.SamplesPerPixel = h, w, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def _plan(n: int, val_fraction: float) -> list[tuple[int, str]]:
    """(label, split) per scan index: alternating classes, the first of each class to val."""
    plan = []
    counts = {1: (n + 1) // 2, 0: n // 2}  # even indices covid, odd ones non-covid
    seen = {0: 0, 1: 0}
    for i in range(n):
        label = 1 - i % 2
        split = "val" if seen[label] < round(counts[label] * val_fraction) else "train"
        seen[label] += 1
        plan.append((label, split))
    return plan


def _publish(tmp: Path, out: Path) -> bool:
    """Rename the finished `tmp` folder to `out` (atomic); False when `out` appeared first."""
    try:
        os.rename(tmp, out)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if out.is_dir() and any(out.iterdir()):
            return False
        raise


def synthesize(
    out: str | os.PathLike[str],
    n: int = 64,
    seed: int = 0,
    fmt: str = "jpg",
    shape: tuple[int, int, int] = DEMO_SHAPE,
    val_fraction: float = 0.25,
) -> Path:
    """Write `n` synthetic scans to `out` (which must not exist or be empty), balanced between
    covid and non-covid, a `val_fraction` of each class in `val/`. Deterministic per `seed`.

    The set is built in a temporary sibling folder and renamed into place, so `out` is either
    absent or complete.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
    if n < 2:
        raise BadInputError(f"n must be at least 2 (one scan per class), got {n}")
    if len(shape) != 3 or min(shape) < 8:
        raise BadInputError(f"shape must be 3 sizes of at least 8, got {shape}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: already exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for i, (label, split) in enumerate(_plan(n, val_fraction)):
            folder = tmp / split / ("covid" if label else "non-covid") / f"scan_{i:04d}"
            folder.mkdir(parents=True)
            hu = phantom(np.random.default_rng([seed, i]), tuple(shape), covid=bool(label))
            if fmt == "jpg":
                _write_jpg(folder, hu)
            else:
                _write_dicom(folder, hu, seed, i)
        if not _publish(tmp, out):
            raise BadInputError(f"{out}: written by another process meanwhile")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def demo_data(
    n: int = DEMO_SCANS, seed: int = 0, fmt: str = "jpg", shape: tuple[int, int, int] = DEMO_SHAPE
) -> Path:
    """The demo data set in the user cache folder, generated on first use (a few seconds).

    Safe under concurrency: every process builds in its own temporary folder and the first
    rename wins; the others drop their copy and use it.
    """
    d, h, w = shape
    out = demo_dir(f"v{DEMO_VERSION}-{fmt}-n{n}-seed{seed}-{d}x{h}x{w}")
    if out.is_dir():
        return out
    try:
        return synthesize(out, n=n, seed=seed, fmt=fmt, shape=shape)
    except BadInputError:
        if out.is_dir():
            return out
        raise
