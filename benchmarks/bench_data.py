"""Data-layer benchmark: DICOM and JPG reading, cached-volume reads, `data prepare` throughput.

    PYTHONPATH=. python benchmarks/bench_data.py [--out benchmarks/results/data_cpu.json]

Compares covidzoo's DICOM reader with a straightforward pydicom loop and with MONAI's
`LoadImage(reader="PydicomReader")` (a benchmark-only dependency: `pip install monai`) on the
same synthetic 300-slice 512x512 series in the same run, and checks the voxels are identical.
Timings are the best of a few repeats with a warm page cache; on a shared machine, the ratios
measured in one run are what count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import covidzoo
from covidzoo.data import CachedScans, PreprocessConfig, find_scans, prepare_cache, read_scan
from covidzoo.data.cache import save_volume, volume_file, write_index
from covidzoo.data.synthetic import synthesize


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def write_big_series(folder: Path, depth: int = 300, size: int = 512) -> None:
    """A CT-like series: 16-bit unsigned, slope 1 intercept -1024, shuffled file names."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{generate_uid(entropy_srcs=['bench', str(k)])[-12:]}.dcm" for k in range(depth)]
    series = generate_uid(entropy_srcs=["bench-series"])
    base = rng.integers(0, 1400, (size, size), dtype=np.uint16)
    for k in range(depth):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["bench-slice", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, series + ".1"
        ds.Modality, ds.InstanceNumber = "CT", k + 1
        ds.ImagePositionPatient = [-250.0, -250.0, 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.25
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.roll(base, k, axis=1).tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)


def naive_pydicom(folder: Path) -> np.ndarray:
    """The straightforward loop: dcmread every file, sort, pixel_array * slope + intercept."""
    slices = [pydicom.dcmread(p) for p in folder.iterdir()]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([
        ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices
    ]).astype(np.float32)


def monai_reader() -> Callable[[Path], np.ndarray] | None:
    try:
        from monai.transforms import LoadImage
    except ImportError:
        return None
    warnings.filterwarnings("ignore")
    load = LoadImage(reader="PydicomReader", image_only=True)
    # MONAI returns W x H x D (sorted by InstanceNumber); transpose to D x H x W to compare.
    return lambda folder: np.asarray(load(str(folder))).transpose(2, 1, 0)


def bench_dicom(tmp: Path, repeats: int) -> dict[str, Any]:
    folder = tmp / "series"
    write_big_series(folder)
    out: dict[str, Any] = {"dicom_series": "300 x 512 x 512, uint16, explicit VR little endian"}
    t_cz, ours = best_of(lambda: read_scan(folder).array, repeats)
    t_naive, naive = best_of(lambda: naive_pydicom(folder), repeats)
    out.update(dicom_covidzoo_s=round(t_cz, 3), dicom_naive_pydicom_s=round(t_naive, 3),
               dicom_identical_naive=bool(np.array_equal(ours, naive)))
    monai = monai_reader()
    if monai is not None:
        import monai as monai_pkg

        t_monai, theirs = best_of(lambda: monai(folder), repeats)
        out.update(monai_version=monai_pkg.__version__, dicom_monai_s=round(t_monai, 3),
                   dicom_identical_monai=bool(np.array_equal(ours, theirs)),
                   dicom_speedup_vs_monai=round(t_monai / t_cz, 2))
    out["dicom_speedup_vs_naive"] = round(t_naive / t_cz, 2)
    return out


def bench_jpg(tmp: Path, repeats: int) -> dict[str, Any]:
    from PIL import Image

    folder = tmp / "jpg"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = (rng.random((512, 512)) * 80 + np.linspace(0, 150, 512)[None]).astype(np.uint8)
    for k in range(300):
        Image.fromarray(np.roll(base, k, axis=0)).save(folder / f"{k}.jpg", quality=90)

    def pil_loop() -> np.ndarray:
        files = sorted(folder.iterdir(), key=lambda p: int(p.stem))
        return np.stack([np.asarray(Image.open(p).convert("L")) for p in files])

    t_cz, ours = best_of(lambda: read_scan(folder).array, repeats)
    t_pil, plain = best_of(pil_loop, repeats)
    return {"jpg_300x512x512_covidzoo_s": round(t_cz, 3), "jpg_300x512x512_pil_loop_s":
            round(t_pil, 3), "jpg_identical": bool(np.array_equal(ours, plain))}


def bench_cache_reads(tmp: Path, n: int = 64) -> dict[str, Any]:
    cache = tmp / "cache"
    (cache / "volumes").mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        stored = save_volume(cache / volume_file(str(i)),
                             rng.integers(0, 255, (64, 224, 224), dtype=np.uint8))
        entries.append({"source": str(i), "file": volume_file(str(i)), "label": i % 2,
                        "split": "train", "warnings": [], **stored,
                        "fingerprint": {"files": 1, "bytes": 0, "mtime_ns": 0}})
    write_index(cache, PreprocessConfig(), entries)
    data = CachedScans(cache)
    for i in range(n):  # warm the page cache: the steady state of an epoch after the first
        data[i]
    seconds, _ = best_of(lambda: [data[i] for i in range(n)], 5)
    return {"cached_64x224x224_uint8_vols_per_s": round(n / seconds, 1)}


def bench_prepare(tmp: Path, n: int) -> dict[str, Any]:
    root = synthesize(tmp / "demo", n=n, seed=0, fmt="dicom")
    records = find_scans(root)
    out: dict[str, Any] = {"prepare_input": f"{n} demo DICOM scans of 40x128x128 -> 64x224x224"}
    for workers in (1, 2):
        result = prepare_cache(records, tmp / f"c{workers}", PreprocessConfig(),
                               workers=workers, progress=False)
        # includes starting the worker processes (spawn imports torch in each: ~2-3 s)
        out[f"prepare_scans_per_s_workers_{workers}"] = round(result.scans_per_s, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/data_cpu.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepare-scans", type=int, default=48)
    parser.add_argument("--note", default="", help="conditions of the run, stored as they are")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "covidzoo": covidzoo.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "note": args.note,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for step in (lambda: bench_dicom(Path(tmp), args.repeats),
                     lambda: bench_jpg(Path(tmp), args.repeats),
                     lambda: bench_cache_reads(Path(tmp)),
                     lambda: bench_prepare(Path(tmp), args.prepare_scans)):
            part = step()
            print(json.dumps(part))
            result.update(part)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
