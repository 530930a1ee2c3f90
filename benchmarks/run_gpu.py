"""The GPU benchmark behind docs/benchmarks.md and the `--precision auto` table.

    PYTHONPATH=. python benchmarks/run_gpu.py [GROUP ...] [--out DIR] [--list]

Each group measures one shape, with its own fp32 eager baseline, every configuration in its own
process, and is written to `DIR/bench_<device class>_<group>.json` as soon as it finishes (DIR:
`$OUT` when set, else benchmarks/results). Without GROUP: the core groups (about 5 minutes on
an H100; `torch.compile` warm-ups take about a minute each). Then, to check `auto`:

    PYTHONPATH=. python benchmarks/make_auto_table.py
    PYTHONPATH=. python benchmarks/run_gpu.py auto          # about 3-4 minutes

The `e2e-regnet3d` group builds its own cache of synthetic scans, times `auto` training steps fed
from it next to the pure step (`covidzoo bench --e2e`), then runs `covidzoo train` on it and
writes each epoch's throughput against the pure step to `bench_<device class>_e2e-epochs.json`:
the training issue's "an epoch takes at most 1.15x the pure steps", measured on the real loop.

Inductor caches compiled graphs on disk, so a configuration compiled once compiles faster the
second time on the same machine (the `auto` group profits).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from covidzoo.bench import BenchConfig, run_benchmarks, write_json  # noqa: E402

SMALL = (64, 224, 224)
LARGE = (128, 256, 256)
SLICES = (64, 256, 256)  # resdense2d: scans of 64 slices of 256x256

# (precision, channels_last, compile_mode, fold_bn)
FP32 = ("fp32", False, None, True)
FP16_CL = ("fp16", True, None, True)
BF16_CL = ("bf16", True, None, True)
AUTO = ("auto", False, None, True)

# group -> (model, mode, input size, batch, warm-up, iterations, runs, estimated seconds)
GROUPS: dict[str, tuple] = {
    "regnet3d-train-small": ("regnet3d", "train", SMALL, 4, 10, 50, [
        FP32, BF16_CL, FP16_CL, ("fp16", True, "reduce-overhead", True)], 110),
    "regnet3d-train-large": ("regnet3d", "train", LARGE, 16, 3, 10, [FP32, FP16_CL], 50),
    "regnet3d-infer": ("regnet3d", "infer", SMALL, 64, 5, 20, [
        FP32, FP16_CL, ("fp16", True, "default", True)], 85),
    "resdense2d-train": ("resdense2d", "train", SLICES, 2, 5, 20, [FP32, BF16_CL, FP16_CL], 60),
    "resdense2d-compile": ("resdense2d", "train", SLICES, 2, 10, 20, [
        FP32, ("fp16", True, "reduce-overhead", True)], 150),
}
# Built on the fly from synthetic scans (see e2e_cache): the end-to-end groups need a cache.
E2E_GROUPS = {
    "e2e-regnet3d": ("regnet3d", "train", SMALL, 4, 10, 120, [AUTO], 150),
}
E2E_SCANS = 256  # 192 train / 64 val: 48 steps of 4 per epoch
CORE = ("regnet3d-train-small", "regnet3d-train-large", "regnet3d-infer", "resdense2d-train")
# `auto` next to fp32 at each core shape: is the default ever slower than fp32?
AUTO_GROUPS = {
    f"auto-{name}": (*spec[:6], [FP32, AUTO], 60) for name, spec in GROUPS.items()
    if name in CORE
}


def configs(spec: tuple, device: str, e2e_cache: Path | None = None) -> list[BenchConfig]:
    model, mode, size, batch, warmup, iters, runs, _ = spec
    return [
        BenchConfig(model, mode=mode, precision=p, channels_last=cl, compile_mode=cm,
                    fold_bn=fold, batch_size=batch, input_size=size, device=device,
                    warmup=warmup, iters=iters,
                    e2e_cache=None if e2e_cache is None else str(e2e_cache))
        for p, cl, cm, fold in runs
    ]


def e2e_cache(workdir: Path, size: tuple[int, int, int]) -> Path:
    """A prepared cache of `E2E_SCANS` synthetic scans at `size` (built once per workdir)."""
    from covidzoo.data import PreprocessConfig, find_scans, prepare_cache, synthesize

    cache = workdir / f"cache-{'x'.join(map(str, size))}"
    if not (cache / "index.json").is_file():
        start = time.perf_counter()
        scans = workdir / "scans"
        if not scans.is_dir():
            synthesize(scans, n=E2E_SCANS, seed=0)
        prepare_cache(find_scans(root=scans), cache, PreprocessConfig(size=size),
                      workers=os.cpu_count() or 1, progress=False)
        print(f"  cache of {E2E_SCANS} scans: {time.perf_counter() - start:.0f} s", flush=True)
    return cache


def train_epochs(cache: Path, spec: tuple, pure: dict, workdir: Path, epochs: int = 4) -> dict:
    """`covidzoo train` on `cache` under `auto`: each epoch's training throughput against the
    pure `auto` step `pure` (a bench result). Epoch 1 includes compiling and is not a measure."""
    model, _, _, batch, *_ = spec
    run = Path(tempfile.mkdtemp(dir=workdir)) / "run"
    cmd = [sys.executable, "-m", "covidzoo", "train", model, "--cache", str(cache),
           "--epochs", str(epochs), "--batch-size", str(batch), "--precision", "auto",
           "--out", str(run), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:], "command": cmd}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    rate = pure["train_samples_per_sec"]
    return {
        "command": " ".join(cmd[1:]),
        "optimizer": config["optimizer"],
        "workers": config["workers_resolved"],
        "n_train": config["n_train"],
        "pure_train_samples_per_sec": rate,
        "pure": {k: pure.get(k) for k in ("resolved_precision", "channels_last", "compile_mode",
                                          "device_name", "torch")},
        "epochs": [{"epoch": r["epoch"], "train_scans_per_s": round(r["train_scans_per_s"], 2),
                    "epoch_vs_pure_steps": round(rate / r["train_scans_per_s"], 3)}
                   for r in rows],
    }


def main(argv: list[str] | None = None) -> None:
    every = {**GROUPS, **AUTO_GROUPS, **E2E_GROUPS}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", help=f"groups to run; 'auto' for all auto-*. "
                        f"Default: {' '.join(CORE)}")
    parser.add_argument("--out", type=Path,
                        default=Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=float, default=420, help="seconds per configuration")
    parser.add_argument("--list", action="store_true", help="list the groups and stop")
    args = parser.parse_args(argv)
    names = [n for g in args.groups for n in (AUTO_GROUPS if g == "auto" else [g])] or CORE
    unknown = [n for n in names if n not in every]
    if args.list or unknown:
        for name, spec in every.items():
            print(f"{name:28} {spec[1]:5} {spec[0]:10} ~{spec[-1]} s")
        if unknown:
            sys.exit(f"unknown group(s): {', '.join(unknown)}")
        return
    total = sum(every[n][-1] for n in names)
    print(f"{len(names)} group(s), about {total / 60:.1f} min", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="covidzoo-gpu-"))
    for name in names:
        start = time.perf_counter()
        cache = e2e_cache(workdir, every[name][2]) if name in E2E_GROUPS else None
        results = run_benchmarks(
            configs(every[name], args.device, cache), isolate=True, timeout=args.timeout,
            progress=lambda i, c: print(f"  {c.model} {c.mode} {c.precision} cl={c.channels_last}"
                                        f" compile={c.compile_mode}", flush=True),
        )
        # The device class as the workers saw it: this process never initialises CUDA.
        measured = next((r["device_class"] for r in results if "device_class" in r), "cuda")
        path = args.out / f"bench_{measured}_{name}.json"
        write_json(path, results)
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {path}", flush=True)
        for r in results:
            rate = r.get(f"{r['mode']}_samples_per_sec")
            print(f"  {r['precision']:5} -> {r.get('resolved_precision', ''):5} "
                  f"cl={r['channels_last']!s:5} compile={r['compile_mode']!s:16} "
                  f"{rate if rate else r.get('error')} scans/s, {r.get('speedup_vs_fp32')}x",
                  flush=True)
            if "e2e_ratio" in r:
                print(f"  fed from the cache: {r['e2e_samples_per_sec']} scans/s, "
                      f"{r['e2e_ratio']}x the pure step", flush=True)
        if name in E2E_GROUPS and "train_samples_per_sec" in results[0]:
            epochs = train_epochs(cache, every[name], results[0], workdir)
            path = args.out / f"bench_{measured}_e2e-epochs.json"
            path.write_text(json.dumps(epochs, indent=2) + "\n")
            print(f"covidzoo train epochs -> {path}: {epochs.get('epochs', epochs)}", flush=True)


if __name__ == "__main__":
    main()
