"""Seconds per scan of each preprocessing step on a 300-slice 512 x 512 CT series, and the
cache path against reading the raw scan.

    PYTHONPATH=. python benchmarks/bench_preprocess_steps.py \\
        [--out benchmarks/results/preprocess_steps_cpu.json] [--repeats 3] [--note TEXT]

The series is the demo generator's phantom (`synthetic.phantom_with_lungs`: body, two lungs,
findings) rendered at 300 x 512 x 512 and written as an uncompressed DICOM series (0.7 mm
pixels, 1.25 mm slices), so the lung steps find real lungs. Each figure is the best of
`--repeats` runs in this process with a warm page cache, torch on its default threads:

- `read_s`: `read_scan` and every slab converted to float32 HU (what any step reads);
- `lung_mask_s`: the coarse lung mask (`preprocess.coarse_lung_mask`), reading included;
- `prepare_<steps>_s`: `prepare_scan` to 64 x 224 x 224 under each `--preprocess` spelling,
  reading included (the whole cost of a scan in a cache worker);
- `cache_read_s`: one prepared volume read back by `CachedScans` (sha256 verified): what
  training pays per scan once the cache exists.

The cache path must stay faster than the raw one (`cache_speedup` > 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import covidzoo
from covidzoo.data import CachedScans, PreprocessConfig, prepare_cache, read_scan
from covidzoo.data.layouts import ScanRecord
from covidzoo.data.preprocess import coarse_lung_mask, prepare_scan
from covidzoo.data.synthetic import phantom_with_lungs

SHAPE = (300, 512, 512)
SPACING = (1.25, 0.7, 0.7)  # z, y, x in mm
SIZE = (64, 224, 224)
STEPS = ("", "crop=lungs", "slices=lungs", "spacing=1.5,1.5,3", "crop=lungs,spacing=1.5,1.5,3",
         "crop=lungs,slices=lungs")


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def write_series(folder: Path, hu: np.ndarray) -> None:
    """`hu` (slices first, feet to head) as an uncompressed 16-bit DICOM series."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid(entropy_srcs=["bench-steps"])
    stored = np.clip(np.round(hu) + 1024, 0, 4095).astype(np.uint16)
    for k, plane in enumerate(stored):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["bench-steps", str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, series + ".1"
        ds.Modality, ds.InstanceNumber = "CT", k + 1
        ds.ImagePositionPatient = [-180.0, -180.0, SPACING[0] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [SPACING[1], SPACING[2]], SPACING[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/preprocess_steps_cpu.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", default=",".join(map(str, SHAPE)),
                        help="D,H,W of the series (smaller for a smoke test)")
    parser.add_argument("--note", default="", help="conditions of the run, stored as they are")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    result: dict[str, Any] = {
        "covidzoo": covidzoo.__version__, "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "series": f"{' x '.join(map(str, shape))} DICOM, uint16, explicit VR little endian, "
                  f"spacing {SPACING} mm (z, y, x)",
        "size": list(SIZE), "repeats": args.repeats, "note": args.note,
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        hu, _ = phantom_with_lungs(np.random.default_rng(0), shape, True)
        series = Path(tmp) / "series"
        write_series(series, hu)
        del hu
        print(f"series written in {time.perf_counter() - start:.0f} s", flush=True)

        def read() -> None:
            for _ in read_scan(series).slabs():
                pass

        result["read_s"] = round(best_of(read, args.repeats)[0], 3)
        seconds, (mask, step) = best_of(lambda: coarse_lung_mask(read_scan(series)),
                                        args.repeats)
        result["lung_mask_s"] = round(seconds, 3)
        result["lung_mask_grid"] = list(mask.shape)
        for text in STEPS:
            cfg = PreprocessConfig.parse(text, PreprocessConfig(size=SIZE)) if text else \
                PreprocessConfig(size=SIZE)
            seconds, (_, geometry) = best_of(lambda cfg=cfg: prepare_scan(read_scan(series), cfg),
                                             args.repeats)
            name = text or "defaults"
            result[f"prepare_{name}_s"] = round(seconds, 3)
            result[f"box_{name}"] = [list(b) for b in geometry.box]
            print(name, result[f"prepare_{name}_s"], flush=True)
        richest = PreprocessConfig.parse("crop=lungs,spacing=1.5,1.5,3",
                                         PreprocessConfig(size=SIZE))
        cache = Path(tmp) / "cache"
        prepare_cache([ScanRecord(series, 1, "train")], cache, richest, workers=0,
                      progress=False)
        scans = CachedScans(cache)
        result["cache_read_s"] = round(best_of(lambda: scans[0], args.repeats * 10)[0], 4)
        raw = result["prepare_crop=lungs,spacing=1.5,1.5,3_s"]
        result["cache_speedup"] = round(raw / result["cache_read_s"], 1)
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
