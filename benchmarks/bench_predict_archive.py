"""Archive-scale prediction on the CPU: scans/s of `covidzoo predict --manifest --out` with one
process and with two (torchrun, gloo), and where the time goes (read / preprocess / model).

    python benchmarks/bench_predict_archive.py [--scans 48] [--shape 64,192,192]
        [--out benchmarks/results/predict_archive_cpu.json]

The archive is `--scans` synthetic CT volumes (`.npy`, HU, `--shape` D,H,W) listed in a
manifest; the model is a random regnet3d at the README's size (`--depths 2,6,12,4`, scans
preprocessed to 32x64x64) saved as a checkpoint: the numbers measure the machinery, not a
trained model. An untimed run first warms the page cache; then each setting runs in fresh
processes on a fresh --out:

- `1 process`: `covidzoo predict ... --threads C` (C: the usable cores);
- `2 processes`: `torchrun --standalone --nproc-per-node 2 -m covidzoo predict ... --threads
  C/2` (at least 1).

Each records the wall clock of the whole command (process start, model load, predicting, the
merge) and its scans/s, and the command's own report: scans/s from its start, and the profile
summed over ranks (seconds reading, preprocessing and in the model; with `--workers` the loader
workers' seconds, which overlap the model's).

Run it on an otherwise quiet machine. `--tiny` is a smoke test of the script itself (a tiny
network on 8 small scans), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README_MODEL = {"depths": [2, 6, 12, 4]}
TINY_MODEL = {"depths": [1, 1, 1, 1], "widths": [8, 16, 16, 32], "stem_width": 8}


def make_archive(folder: Path, scans: int, shape: tuple[int, ...], seed: int = 0) -> Path:
    """`scans` CT-like HU volumes and a manifest (`path` column) listing them."""
    rng = np.random.default_rng(seed)
    (folder / "scans").mkdir(parents=True)
    names = []
    for k in range(scans):
        volume = rng.normal(-600, 300, shape).astype(np.float32)
        np.save(folder / "scans" / f"scan_{k:05d}.npy", volume)
        names.append(f"scans/scan_{k:05d}.npy")
    manifest = folder / "scans.csv"
    manifest.write_text("path\n" + "\n".join(names) + "\n")
    return manifest


def make_checkpoint(path: Path, model_args: dict[str, Any], size: tuple[int, int, int]) -> Path:
    """A random regnet3d, saved as `train` saves one (threshold 0.5)."""
    import torch

    import covidzoo
    from covidzoo.checkpoint import ModelSpec, save_checkpoint
    from covidzoo.data import PreprocessConfig

    torch.manual_seed(0)
    model = covidzoo.create_model("regnet3d", aggregator="volume", **model_args).eval()
    spec = ModelSpec("regnet3d", model_args, "volume", {}, PreprocessConfig(size=size).to_dict(),
                     0.5)
    return save_checkpoint(path, model, spec)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def predict_command(processes: int, checkpoint: Path, manifest: Path, out: Path, threads: int,
                    workers: int, batch_size: int) -> list[str]:
    launcher = [sys.executable, "-m", "covidzoo"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(processes), "-m", "covidzoo"]
    return [*launcher, "predict", str(checkpoint), "--manifest", str(manifest), "--out", str(out),
            "--device", "cpu", "--threads", str(threads), "--workers", str(workers),
            "--batch-size", str(batch_size), "--json"]


def run_setting(processes: int, checkpoint: Path, manifest: Path, folder: Path, threads: int,
                workers: int, batch_size: int) -> dict[str, Any]:
    """One fresh run: its wall clock and the command's own report."""
    out = folder / f"predictions_{processes}p_{time.monotonic_ns()}.csv"
    cmd = predict_command(processes, checkpoint, manifest, out, threads, workers, batch_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    return {
        "processes": processes, "threads_per_process": threads, "workers": workers,
        "batch_size": batch_size, "scans": report["predicted"],
        "wall_s": round(wall, 3), "scans_per_s_wall": round(report["predicted"] / wall, 3),
        "scans_per_s_command": report["scans_per_s"], "profile": report["profile"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=48)
    parser.add_argument("--shape", default="64,192,192", help="D,H,W of each archived volume")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0,
                        help="--workers of predict (0: each process reads in its main thread)")
    parser.add_argument("--tiny", action="store_true", help="a smoke test of this script")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/predict_archive_cpu.json"))
    args = parser.parse_args()

    import torch

    import covidzoo

    shape = tuple(int(v) for v in args.shape.split(","))
    model_args, size = README_MODEL, (32, 64, 64)
    if args.tiny:
        args.scans, shape, model_args, size = 8, (12, 40, 40), TINY_MODEL, (8, 32, 32)
    cores = usable_cores()
    result: dict[str, Any] = {
        "covidzoo": covidzoo.__version__, "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(), "usable_cores": cores,
        "tiny": args.tiny, "archive_scans": args.scans, "archive_shape": list(shape),
        "model": {"backbone": "regnet3d", **model_args}, "scan_size": list(size),
        "note": "wall_s: the whole command (start, model load, predicting, merge); profile: "
                "seconds summed over ranks (and loader workers)",
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        folder = Path(tmp)
        manifest = make_archive(folder, args.scans, shape)
        checkpoint = make_checkpoint(folder / "model.safetensors", model_args, size)
        run_setting(1, checkpoint, manifest, folder, cores, args.workers, args.batch_size)
        for processes in (1, 2):
            threads = max(1, cores // processes)
            run = run_setting(processes, checkpoint, manifest, folder, threads, args.workers,
                              args.batch_size)
            print(json.dumps(run))
            result["runs"].append(run)
    one, two = (r["scans_per_s_wall"] for r in result["runs"])
    result["speedup_2_processes"] = round(two / one, 3) if one else None
    if args.tiny and args.out == parser.get_default("out"):
        print(json.dumps(result, indent=2))  # a smoke test never overwrites the measurement
        return
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
