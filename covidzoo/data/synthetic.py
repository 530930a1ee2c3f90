"""Synthetic chest CT scans: the built-in demo data, written through the real file formats.

The label lives only in the shape of lung opacities, in nothing global (a logistic regression
on a scan's voxel mean and standard deviation, or gradient boosting on its lung histogram, is
near chance: `benchmarks/bench_demo_cpu.py`):

- Every scan varies in what moves global statistics far more than the findings do: body size
  and fat, lung size and inflation (parenchyma from -900 to -760 HU, a gravity gradient),
  patient position (shift and in-plane rotation), dose (noise 8 to 30 HU), reconstruction kernel
  (soft to sharp), slice thickness (blur along z) and a calibration offset.
- Both classes share the anatomy: vessels, small solid nodules, fissures.
- Both classes draw the same 8 to 14 opacities (sizes, densities of +480 to +680 HU over the
  lung, places inside the lungs). A covid scan gets them as they are: round. A non-covid scan
  gets the same density in other shapes: peribronchovascular cuffs (cigars along a vessel's
  path), plate-like atelectasis (flat horizontal discs) and dependent plates (flat, behind),
  added until they put exactly the density the round ones would have into the lungs
  (overlaps counted once). Every finding is an ellipsoid with one profile (flat inside, a
  short ramp at the edge), and the voxels of any ellipsoid take the same distribution of
  values whatever its axes: both classes have the same lung histogram, and only the shapes
  differ.

`phantom(rng, shape, covid, anatomy=...)` takes the patient and the scanner from `anatomy` and
the findings from `rng`, so one patient can be rendered with covid findings and with non-covid
ones. Scans are written as DICOM series (pydicom, with UIDs, geometry and rescale) or as
folders of JPG slices, in the COV19-CT-DB layout `{train,val}/{covid,non-covid}/SCAN`.
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .paths import demo_dir

DEMO_SHAPE: tuple[int, int, int] = (40, 128, 128)
# Enough scans for regnet3d, trained from scratch, to find the lesions' shape within the demo's
# epochs (covidzoo.train.DEMO_EPOCHS): it takes it 6 to 9 epochs of 192 training scans.
DEMO_SCANS = 256
DEMO_VERSION = 2
FORMATS = ("dicom", "jpg")
PIXEL_MM = 2.5
SLICE_MM = 5.0
LUNG_WINDOW = (-600.0, 1500.0)


# The profile of every finding: flat inside its ellipsoid, a linear ramp out to 1.25 times its
# axes. The voxels of any ellipsoid take the same distribution of values, whatever its axes.
_REACH = 1.25


class _Canvas:
    """Physical coordinates of a volume (x in [-1, 1], y and z scaled by the voxel spacing:
    one unit is half the field of view's width), and the HU added inside the lungs."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        d, h, w = shape
        self.shape = shape
        self.z_half, self.y_half = d * SLICE_MM / (w * PIXEL_MM), h / w
        self.axes = (np.linspace(-self.z_half, self.z_half, d, dtype=np.float32),
                     np.linspace(-self.y_half, self.y_half, h, dtype=np.float32),
                     np.linspace(-1.0, 1.0, w, dtype=np.float32))
        self.added = np.zeros(shape, dtype=np.float32)
        self.mask: np.ndarray | None = None

    def grid(self, lo: np.ndarray | None = None, hi: np.ndarray | None = None,
             ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]:
        """The index box covering `lo..hi` (z, y, x; everything when None) and its
        broadcastable z, y, x coordinates."""
        if lo is None or hi is None:
            box = (slice(None),) * 3
        else:
            box = tuple(slice(int(np.searchsorted(a, lo_)), int(np.searchsorted(a, hi_, "right")))
                        for a, lo_, hi_ in zip(self.axes, lo, hi, strict=True))
        z, y, x = (a[s] for a, s in zip(self.axes, box, strict=True))
        return box, z[:, None, None], y[None, :, None], x[None, None, :]

    def copy(self) -> _Canvas:
        """A canvas with the same coordinates and lungs and a copy of what was added."""
        other = copy.copy(self)
        other.added = self.added.copy()
        return other

    def ellipsoid(self, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray,
                  amplitude: float, commit: bool = True) -> float:
        """Add `amplitude` times the profile of an ellipsoid (centre and radii as z, y, x; the
        rotation's columns are its axes) inside the lungs, keeping the larger value where
        findings overlap. Returns the density it adds (HU x voxels), overlaps counted once;
        `commit=False` only measures it."""
        reach = _REACH * np.abs(rotation) @ radii
        box, z, y, x = self.grid(centre - reach, centre + reach)
        if any(s.start >= s.stop for s in box):
            return 0.0
        offsets = (z - centre[0], y - centre[1], x - centre[2])
        dist_sq = sum(
            ((rotation[0, k] * offsets[0] + rotation[1, k] * offsets[1]
              + rotation[2, k] * offsets[2]) / radii[k]) ** 2
            for k in range(3))
        value = np.clip((_REACH - np.sqrt(dist_sq)) / (_REACH - 1), 0.0, 1.0) * np.float32(
            amplitude)
        if self.mask is not None:
            value *= self.mask[box]
        region = self.added[box]
        raised = np.maximum(region, value)
        gain = float((raised - region).sum())
        if commit:
            region[...] = raised
        return gain


def _rotation(rng: np.random.Generator, axis: np.ndarray | None = None) -> np.ndarray:
    """A rotation whose first column is `axis` (z, y, x; random when None)."""
    first = rng.standard_normal(3) if axis is None else np.asarray(axis, dtype=np.float64)
    basis, _ = np.linalg.qr(np.column_stack([first, rng.standard_normal((3, 2))]))
    return basis * np.sign(basis[:, 0] @ first or 1.0)


@dataclass(frozen=True)
class _Lung:
    centre: np.ndarray  # z, y, x
    radii: np.ndarray

    def point(self, rng: np.random.Generator, reach: tuple[float, float],
              z_range: tuple[float, float] = (-0.7, 0.7)) -> np.ndarray:
        """A point at a fraction `reach` of the way from the lung's axis to its wall."""
        angle, r = rng.uniform(0, 2 * np.pi), rng.uniform(*reach)
        return self.centre + self.radii * np.array(
            [rng.uniform(*z_range), r * np.sin(angle), r * np.cos(angle)])

    def hilum(self) -> np.ndarray:
        """Where the vessels enter: the medial side of the lung, mid-height."""
        side = np.sign(self.centre[2])
        return self.centre + self.radii * np.array([0.1, 0.0, -0.55 * side])


def _anatomy(rng: np.random.Generator, canvas: _Canvas,
             ) -> tuple[np.ndarray, np.ndarray, list[_Lung], dict[str, float]]:
    """Body, spine, table and lungs (HU), the lung mask, the lungs, and the scanner."""
    _, _, y, x = canvas.grid()
    y2, x2 = y[0], x[0]  # one slice: the body is a prism
    shift_y, shift_x = rng.uniform(-0.07, 0.07, 2)
    ay = rng.uniform(0.6, 0.72) * canvas.y_half
    ax = min(ay * rng.uniform(1.3, 1.5), 0.95)
    body = ((y2 - shift_y) / ay) ** 2 + ((x2 - shift_x) / ax) ** 2
    fat = rng.uniform(0.04, 0.12)
    plane = np.full(body.shape, -1000.0, dtype=np.float32)
    table = np.broadcast_to((y2 - shift_y > ay + 0.04) & (y2 - shift_y < ay + 0.08), body.shape)
    plane[table] = rng.uniform(-200, 150)
    plane[body <= 1] = rng.uniform(-120, -70)  # subcutaneous fat
    plane[body <= (1 - fat) ** 2] = rng.uniform(25, 60)  # muscle and mediastinum
    spine = ((y2 - shift_y - 0.72 * ay) / 0.11) ** 2 + ((x2 - shift_x) / 0.09) ** 2 <= 1
    plane[spine] = rng.uniform(350, 700)
    vol = np.broadcast_to(plane, canvas.shape).copy()

    inflation = rng.uniform(0.85, 1.12)
    lungs, mask = [], np.zeros(canvas.shape, dtype=bool)
    cz = rng.uniform(-0.1, 0.1) * canvas.z_half
    for side in (-1.0, 1.0):
        radii = inflation * np.array([rng.uniform(0.75, 0.95) * canvas.z_half,
                                      rng.uniform(0.66, 0.72) * ay * (1 - fat),
                                      rng.uniform(0.3, 0.34) * ax])
        centre = np.array([cz, shift_y - 0.05 * ay, shift_x + side * rng.uniform(0.39, 0.42) * ax])
        lungs.append(_Lung(centre, radii))
        box, z, yy, xx = canvas.grid(centre - radii, centre + radii)
        inside = (((z - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                  + ((xx - centre[2]) / radii[2]) ** 2) <= 1
        mask[box] |= inside
    parenchyma = rng.uniform(-900, -760)
    gradient = rng.uniform(0, 50)  # dependent (posterior) lung is denser
    lung_hu = parenchyma + gradient * (np.broadcast_to(y, canvas.shape) - shift_y) / ay
    vol[mask] = lung_hu[mask]

    for lung in lungs:
        for _ in range(int(rng.integers(5, 9))):  # vessels: thin tubes from the hilum outwards
            start, end = lung.hilum(), lung.point(rng, (0.5, 0.95))
            length = np.linalg.norm(end - start)
            canvas.ellipsoid((start + end) / 2,
                             np.array([length / 2, *([rng.uniform(0.014, 0.028)] * 2)]),
                             _rotation(rng, end - start), rng.uniform(860, 900))
        for _ in range(int(rng.integers(0, 2))):  # a fissure: a large, thin, faint plate
            normal = np.array([rng.uniform(0.6, 1.0), rng.uniform(-0.8, 0.8), 0.0])
            canvas.ellipsoid(lung.point(rng, (0.0, 0.3)),
                             np.array([0.012, lung.radii[0], lung.radii[1]]),
                             _rotation(rng, normal), rng.uniform(120, 250))
    for _ in range(int(rng.integers(0, 4))):  # small solid nodules
        lung = lungs[int(rng.integers(2))]
        canvas.ellipsoid(lung.point(rng, (0.0, 0.8)), np.full(3, rng.uniform(0.022, 0.04)),
                         np.eye(3), rng.uniform(850, 900))
    scanner = {
        "noise": rng.uniform(8, 30),
        "kernel": rng.uniform(-1, 1),  # < 0: soft (blur), > 0: sharp (unsharp mask)
        "thickness": rng.uniform(0, 1.3),  # blur along z, in slices
        "offset": rng.uniform(-20, 20),
        "rotation": rng.uniform(-7, 7),
    }
    return vol, mask, lungs, scanner


def _consolidation(rng: np.random.Generator, canvas: _Canvas, lungs: list[_Lung]) -> None:
    """Community-acquired (lobar) pneumonia, the third class of `synthesize(classes=3)`: one
    large, dense, confluent consolidation filling the lower part of one lung (near soft-tissue
    density), unlike covid's multifocal, bilateral, round ground glass."""
    lung = lungs[int(rng.integers(2))]
    for _ in range(int(rng.integers(1, 3))):
        centre = lung.point(rng, (0.0, 0.35), (-0.6, -0.1))
        size = rng.uniform(0.22, 0.3)
        canvas.ellipsoid(centre, size * rng.uniform(0.8, 1.25, 3), _rotation(rng),
                         rng.uniform(820, 900))


def _findings(rng: np.random.Generator, canvas: _Canvas, lungs: list[_Lung],
              covid: bool | str) -> None:
    """The findings that carry the label. Both classes draw the same round lesions: covid
    scans get them; non-covid scans get elongated or flat findings of the same densities that
    add, all together, the same density to the lungs (overlaps counted once). `covid`
    "pneumonia" draws a lobar consolidation instead (`_consolidation`)."""
    if covid == "pneumonia":
        _consolidation(rng, canvas, lungs)
        return
    lesions = []
    for _ in range(int(rng.integers(8, 15))):
        lung = lungs[int(rng.integers(2))]
        size, amplitude = rng.uniform(0.1, 0.14), rng.uniform(480, 680)
        lesions.append((lung, size, amplitude, lung.point(rng, (0.2, 0.6), (-0.55, 0.55)),
                        size * rng.uniform(0.92, 1.08, 3), _rotation(rng)))
    if covid:
        for _, _, amplitude, centre, radii, rotation in lesions:
            canvas.ellipsoid(centre, radii, rotation, amplitude)
        return
    scratch = canvas.copy()
    target = sum(scratch.ellipsoid(centre, radii, rotation, amplitude)
                 for _, _, amplitude, centre, radii, rotation in lesions)
    added = 0.0
    for k in range(4 * len(lesions)):
        if added >= target:
            break
        lung, size, amplitude = lesions[k % len(lesions)][:3]
        added += _distractor(rng, canvas, lung, size, amplitude, target - added)


def _distractor(rng: np.random.Generator, canvas: _Canvas, lung: _Lung, size: float,
                amplitude: float, remaining: float) -> float:
    """One elongated or flat finding of half the volume of a round lesion of `size` (less if
    that would add more than `remaining`); the density it added."""
    thin = rng.uniform(0.05, 0.06)
    flat = np.sqrt(size ** 3 / 2 / thin)
    kind = int(rng.integers(3))
    if kind == 0:  # peribronchovascular cuff: a cigar along a vessel's path
        start, end = lung.hilum(), lung.point(rng, (0.55, 0.85))
        centre = start + (end - start) * rng.uniform(0.35, 0.6)
        rotation = _rotation(rng, end - start)
        axes, grow = np.array([size ** 3 / 2 / thin ** 2, thin, thin]), [0]
    elif kind == 1:  # plate-like atelectasis: a flat, near-horizontal disc
        centre = lung.point(rng, (0.0, 0.5), (-0.5, 0.3))
        rotation = _rotation(rng, np.array([rng.uniform(-0.2, 0.2), 1.0,
                                            rng.uniform(-0.2, 0.2)]))
        axes, grow = np.array([thin, flat * 1.2, flat / 1.2]), [1, 2]
    else:  # dependent plate: flat, behind, parallel to the posterior wall
        centre = lung.centre + lung.radii * np.array(
            [rng.uniform(-0.5, 0.2), rng.uniform(0.45, 0.6), rng.uniform(-0.3, 0.3)])
        rotation = _rotation(rng, np.array([0.0, 1.0, 0.0]))
        axes, grow = np.array([thin, flat * 1.4, flat / 1.4]), [1, 2]
    gain = canvas.ellipsoid(centre, axes, rotation, amplitude, commit=False)
    if gain > remaining:
        axes[grow] *= (remaining / gain) ** (1 / len(grow))
    return canvas.ellipsoid(centre, axes, rotation, amplitude)


def _scan(vol: np.ndarray, rng: np.random.Generator, scanner: dict[str, float]) -> np.ndarray:
    """What the scanner makes of the patient: slice thickness, kernel, rotation, noise."""
    from scipy import ndimage

    if scanner["thickness"] > 0.05:
        vol = ndimage.gaussian_filter1d(vol, scanner["thickness"], axis=0, mode="nearest")
    kernel = scanner["kernel"]
    if kernel < 0:  # a soft kernel blurs
        vol = ndimage.gaussian_filter(vol, (0, -1.2 * kernel, -1.2 * kernel), mode="nearest")
    else:  # a sharp one enhances edges
        blurred = ndimage.gaussian_filter(vol, (0, 1.0, 1.0), mode="nearest")
        vol = vol + np.float32(kernel) * (vol - blurred)
    vol = ndimage.rotate(vol, scanner["rotation"], axes=(1, 2), reshape=False, order=1,
                         mode="constant", cval=-1000.0)
    grain = 0.4 + 0.8 * max(-kernel, 0.0)  # soft kernels give coarser noise
    noise = ndimage.gaussian_filter(rng.standard_normal(vol.shape, dtype=np.float32),
                                    (0, grain, grain))
    noise *= np.float32(scanner["noise"]) / noise.std()
    return vol + noise + np.float32(scanner["offset"])


def _render(rng: np.random.Generator, shape: tuple[int, int, int], covid: bool | str,
            anatomy: np.random.Generator | None,
            ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The scan (HU, float32), the patient's lung mask before the scanner, and the scanner."""
    anatomy = rng if anatomy is None else anatomy
    canvas = _Canvas(tuple(shape))
    vol, mask, lungs, scanner = _anatomy(anatomy, canvas)
    canvas.mask = mask
    _findings(rng, canvas, lungs, covid)
    vol += np.where(mask, canvas.added, np.float32(0.0))
    return _scan(vol, anatomy, scanner).astype(np.float32, copy=False), mask, scanner


def phantom(rng: np.random.Generator, shape: tuple[int, int, int], covid: bool | str,
            anatomy: np.random.Generator | None = None) -> np.ndarray:
    """One synthetic chest CT volume in HU (float32, `shape`).

    `anatomy` draws the patient and the scanner (everything but the labelled findings), `rng`
    the findings; without `anatomy`, `rng` draws both. So `phantom(np.random.default_rng(s),
    shape, covid, anatomy=np.random.default_rng(a))` renders patient `a` with covid findings
    or with non-covid ones, the same sizes and densities in both.
    """
    return _render(rng, shape, covid, anatomy)[0]


def phantom_with_lungs(rng: np.random.Generator, shape: tuple[int, int, int], covid: bool | str,
                       anatomy: np.random.Generator | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`phantom(...)` (the same volume for the same generators) and where its lungs are: a
    bool mask of `shape`, every finding inside it, turned with the scan by the scanner's
    in-plane rotation. The ground truth that `covidzoo.data.lungs.lung_mask` is measured
    against."""
    from scipy import ndimage

    hu, mask, scanner = _render(rng, shape, covid, anatomy)
    # The same rotation, resampling and fill as `_scan`, on the mask as a fraction of lung.
    turned = ndimage.rotate(mask.astype(np.float32), scanner["rotation"], axes=(1, 2),
                            reshape=False, order=1, mode="constant", cval=0.0)
    return hu, turned >= 0.5


def phantom_with_findings(rng: np.random.Generator, shape: tuple[int, int, int],
                          covid: bool | str, anatomy: np.random.Generator | None = None,
                          lesions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A scan and where its labelled findings are: a bool mask of `shape`, the voxels inside
    the lungs to which the findings added density (their edge ramps too), turned with the scan
    by the scanner's in-plane rotation. The ground truth an explanation map is checked against.

    With `lesions=None` the scan is `phantom(rng, shape, covid, anatomy)`, voxel for voxel.
    `lesions=N` (with `covid=True`) draws N round lesions instead of covid's 8 to 14, as
    `_findings` draws each: a scan with one lesion has one place a covid model should point to.
    """
    from scipy import ndimage

    if lesions is not None and (covid is not True or lesions < 0):
        raise BadInputError(f"lesions={lesions} draws that many round (covid) lesions: it "
                            "takes covid=True and a count of at least 0")
    anatomy = rng if anatomy is None else anatomy
    canvas = _Canvas(tuple(shape))
    vol, mask, lungs, scanner = _anatomy(anatomy, canvas)
    canvas.mask = mask
    before = canvas.added.copy()  # vessels, fissures and nodules: anatomy, not findings
    if lesions is None:
        _findings(rng, canvas, lungs, covid)
    for _ in range(lesions or 0):
        lung = lungs[int(rng.integers(2))]
        size, amplitude = rng.uniform(0.1, 0.14), rng.uniform(480, 680)
        canvas.ellipsoid(lung.point(rng, (0.2, 0.6), (-0.55, 0.55)),
                         size * rng.uniform(0.92, 1.08, 3), _rotation(rng), amplitude)
    vol += np.where(mask, canvas.added, np.float32(0.0))
    hu = _scan(vol, anatomy, scanner).astype(np.float32, copy=False)
    found = (canvas.added > before) & mask
    turned = ndimage.rotate(found.astype(np.float32), scanner["rotation"], axes=(1, 2),
                            reshape=False, order=1, mode="constant", cval=0.0)
    return hu, turned >= 0.5


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


# The class folders of `synthesize`, by scan index modulo the number of classes: two classes
# alternate covid, non-covid (as always); a third adds lobar pneumonia.
SYNTH_CLASSES = ("covid", "non-covid", "pneumonia")


def _plan(n: int, val_fraction: float, classes: int = 2) -> list[tuple[str, str]]:
    """(class folder, split) per scan index: alternating classes, the first of each class to
    val."""
    plan = []
    names = SYNTH_CLASSES[:classes]
    counts = {name: len(range(k, n, classes)) for k, name in enumerate(names)}
    seen = dict.fromkeys(names, 0)
    for i in range(n):
        name = names[i % classes]
        split = "val" if seen[name] < round(counts[name] * val_fraction) else "train"
        seen[name] += 1
        plan.append((name, split))
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
    classes: int = 2,
) -> Path:
    """Write `n` synthetic scans to `out` (which must not exist or be empty), balanced between
    covid and non-covid (and, with `classes=3`, lobar pneumonia: a third class whose dense
    consolidation also raises the lungs' mean density, so unlike the two-class demo it can be
    told by global statistics), a `val_fraction` of each class in `val/`. Deterministic per
    `seed`.

    The set is built in a temporary sibling folder and renamed into place, so `out` is either
    absent or complete.
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
    if classes not in (2, 3):
        raise BadInputError(f"classes must be 2 or 3, got {classes}")
    if n < classes:
        raise BadInputError(f"n must be at least {classes} (one scan per class), got {n}")
    if len(shape) != 3 or min(shape) < 8:
        raise BadInputError(f"shape must be 3 sizes of at least 8, got {shape}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: already exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for i, (name, split) in enumerate(_plan(n, val_fraction, classes)):
            folder = tmp / split / name / f"scan_{i:04d}"
            folder.mkdir(parents=True)
            finding = "pneumonia" if name == "pneumonia" else name == "covid"
            hu = phantom(np.random.default_rng([seed, i]), tuple(shape), covid=finding)
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
