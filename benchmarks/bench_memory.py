"""Peak memory of reading and preprocessing one long scan, measured in a fresh process.

    PYTHONPATH=. python benchmarks/bench_memory.py [--slices 2000] [--dicom-slices 500]
        [--out benchmarks/results/memory_cpu.json]

Writes a synthetic int16 `.npy` of SLICES x 512 x 512 (and a DICOM series of DICOM_SLICES
512 x 512 slices), then, in a child process per input, reads and preprocesses it to the default
64 x 224 x 224 with `covidzoo.data.load_scan`. The child reports its resident memory after
importing covidzoo and torch and preprocessing a small warm-up volume, and its peak resident
memory while preprocessing the scan (Linux `VmHWM`); the difference is what reading and
preprocessing the scan cost (Linux only). The budget it is held to is
twice the float32 output volume plus one slab of input slices in float32
(`covidzoo.data.volume.SLAB` slices).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# The child warms up first (a tiny scan through the same code: libraries' code pages and
# torch's kernels load on first use), so the difference measures what the big scan costs.
# The child warms up first (a small scan through the same code: libraries' code pages and
# torch's kernels load on first use), then resets the kernel's peak-RSS mark (`clear_refs` 5;
# `ru_maxrss` would carry the parent's peak across exec) and reads the mark again (`VmHWM`)
# after the scan: the peak resident memory that reading and preprocessing it cost.
CHILD = """
import json, sys
import numpy as np
import pydicom
import torch
from covidzoo.data import PreprocessConfig, Volume, load_scan, preprocess
torch.set_num_threads(1)

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

warm = Volume(np.zeros((40, 512, 512), np.int16), (1.0, 1.0, 1.0), "warm-up", "array")
preprocess(warm, PreprocessConfig())
del warm
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kib("VmHWM")
out = load_scan(sys.argv[1], PreprocessConfig())
after = kib("VmHWM")
print(json.dumps({"before_kib": before, "after_kib": after, "shape": list(out.shape)}))
"""


def write_npy(path: Path, slices: int, size: int) -> None:
    """An int16 HU volume written slice by slice (memory-mapped), so writing it costs no RAM."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16,
                                      shape=(slices, size, size))
    rng = np.random.default_rng(0)
    for k in range(slices):
        array[k] = rng.integers(-1024, 1500, (size, size), dtype=np.int16)
    array.flush()
    del array


def write_dicom(folder: Path, slices: int, size: int) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series = generate_uid()
    rng = np.random.default_rng(0)
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.ImagePositionPatient = [0.0, 0.0, 0.625 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.PixelData = rng.integers(0, 2500, (size, size), dtype=np.uint16).tobytes()
        pydicom.dcmwrite(folder / f"{k:05d}.dcm", ds, enforce_file_format=True)


def measure(path: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, check=True)
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return {"peak_increase_mib": round((child["after_kib"] - child["before_kib"]) / 1024, 1),
            "peak_rss_mib": round(child["after_kib"] / 1024, 1),
            "rss_after_imports_mib": round(child["before_kib"] / 1024, 1),
            "output_shape": child["shape"]}


def main() -> None:
    from covidzoo.data.preprocess import PreprocessConfig
    from covidzoo.data.volume import SLAB

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--dicom-slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_cpu.json"))
    args = parser.parse_args()
    output = PreprocessConfig().size
    output_mib = float(np.prod(output)) * 4 / 2**20
    slab_mib = SLAB * args.size**2 * 4 / 2**20
    results: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "output_float32_mib": round(output_mib, 1),
        "slab_float32_mib": round(slab_mib, 1),
        "budget_mib": round(2 * output_mib + slab_mib, 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.slices:
            npy = Path(tmp) / "scan.npy"
            write_npy(npy, args.slices, args.size)
            results["npy"] = {"input": f"{args.slices}x{args.size}x{args.size} int16 .npy",
                              "input_mib": round(npy.stat().st_size / 2**20, 1), **measure(npy)}
            npy.unlink()
        if args.dicom_slices:
            series = Path(tmp) / "series"
            write_dicom(series, args.dicom_slices, args.size)
            results["dicom"] = {
                "input": f"{args.dicom_slices} DICOM slices of {args.size}x{args.size}",
                "input_mib": round(args.dicom_slices * args.size**2 * 2 / 2**20, 1),
                **measure(series)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
