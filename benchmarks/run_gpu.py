"""The GPU benchmark behind docs/benchmarks.md and the `--precision auto` table.

    PYTHONPATH=. python benchmarks/run_gpu.py [GROUP ...] [--out DIR] [--list]

Each group measures one shape, with its own fp32 eager baseline, every configuration in its own
process, and is written to `DIR/bench_<device class>_<group>.json` as soon as it finishes (DIR:
`$OUT` when set, else benchmarks/results). Without GROUP: the core groups (about 5 minutes on
an H100; `torch.compile` warm-ups take about a minute each). Then, to check `auto`:

    PYTHONPATH=. python benchmarks/make_auto_table.py
    PYTHONPATH=. python benchmarks/run_gpu.py auto          # about 3-4 minutes

Inductor caches compiled graphs on disk, so a configuration compiled once compiles faster the
second time on the same machine (the `auto` group profits).
"""

from __future__ import annotations

import argparse
import os
import sys
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
CORE = ("regnet3d-train-small", "regnet3d-train-large", "regnet3d-infer", "resdense2d-train")
# `auto` next to fp32 at each core shape: is the default ever slower than fp32?
AUTO_GROUPS = {
    f"auto-{name}": (*spec[:6], [FP32, AUTO], 60) for name, spec in GROUPS.items()
    if name in CORE
}


def configs(spec: tuple, device: str) -> list[BenchConfig]:
    model, mode, size, batch, warmup, iters, runs, _ = spec
    return [
        BenchConfig(model, mode=mode, precision=p, channels_last=cl, compile_mode=cm,
                    fold_bn=fold, batch_size=batch, input_size=size, device=device,
                    warmup=warmup, iters=iters)
        for p, cl, cm, fold in runs
    ]


def main(argv: list[str] | None = None) -> None:
    every = {**GROUPS, **AUTO_GROUPS}
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
    for name in names:
        start = time.perf_counter()
        results = run_benchmarks(
            configs(every[name], args.device), isolate=True, timeout=args.timeout,
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


if __name__ == "__main__":
    main()
