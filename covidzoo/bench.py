"""Throughput of covidzoo models: inference and training steps under each precision mode.

Modelled on timm's `benchmark.py`:

- a precision resolves to (autocast dtype, model dtype, data dtype): covidzoo trains and
  predicts with autocast, so the model stays float32; inference reads its input in the autocast
  dtype (the first convolution would cast it anyway), training in float32 (as augmentation
  hands it over);
- warm-up steps (which include `torch.compile`, cuDNN autotuning and CUDA-graph recording), then
  timed steps between two device synchronisations: the steps queue on the device as they do in a
  real run, so the time is the throughput, launch overhead included;
- a training step is the training loop's own step (`covidzoo.loop.train_step`): forward,
  BCE-with-logits loss, backward, momentum SGD step (fused on CUDA), and the gradient scaler
  under fp16;
- out of memory, the batch size decays in timm's power-of-two steps and the result records the
  batch size that fit;
- results are flat dicts with prefixed keys (`infer_samples_per_sec`, `train_step_time`, ...)
  that carry the whole configuration and the environment (device, torch, CUDA and cuDNN
  versions; no host name), written as JSON or CSV;
- each configuration may run in its own process (`python -m covidzoo.bench` reads a
  `BenchConfig` as JSON on stdin and prints one JSON result), so a compiled graph, cuDNN's
  autotuning cache or a fragmented allocator from one configuration cannot skew the next.

A "sample" is a scan. A 2D backbone sees every slice of a scan (64 by default), so its results
also give slices per second.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import BadInputError, CovidzooError, one_line
from .factory import DEFAULT_SLICES, check_scan_size, default_scan_size, get_component

MODES = ("infer", "train")
DEFAULT_BATCH = {"infer": 32, "train": 4}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
RESULTS_KIND = "covidzoo-bench"


@dataclass(frozen=True)
class BenchConfig:
    """One configuration to measure. `precision="auto"` takes channels-last and the compile
    mode from `covidzoo.runtime.AUTO_TABLE` as well, whatever `channels_last`/`compile_mode` say."""

    model: str
    mode: str = "infer"
    precision: str = "fp32"
    channels_last: bool = False
    compile_mode: str | None = None
    fold_bn: bool = True  # inference only: BatchNorm folded into the convolutions
    cudnn_benchmark: bool = True
    batch_size: int | None = None  # None: DEFAULT_BATCH[mode]
    input_size: tuple[int, ...] | None = None  # D,H,W (H,W for a 2D backbone); None: default
    device: str = "cpu"
    warmup: int = 5
    iters: int = 20
    model_args: dict[str, Any] = field(default_factory=dict)
    aggregator_args: dict[str, Any] = field(default_factory=dict)
    e2e_cache: str | None = None  # training only: also time steps fed from this cache
    workers: int | None = None  # loader workers of --e2e; None: runtime.default_workers
    threads: int | None = None  # torch's intra-op CPU threads (None: as this process has them)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = None if self.input_size is None else list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        data = dict(data)
        if data.get("input_size") is not None:
            data["input_size"] = tuple(data["input_size"])
        return cls(**data)


# --- checks that run before anything is measured -----------------------------------------------


def _component(name: str) -> Any:
    return get_component(name, "backbone")


def scan_size(cfg: BenchConfig) -> tuple[int, int, int]:
    """The scan (D, H, W) a configuration feeds: the cache's size under end-to-end, else
    `input_size`, else the backbone's `input_size` (with `DEFAULT_SLICES` slices for 2D)."""
    meta = _component(cfg.model).metadata
    dims = meta["spatial_dims"]
    size = cfg.input_size
    if size is not None and dims == 2 and len(size) == 2:
        size = (DEFAULT_SLICES, *size)
    if size is not None and (len(size) != 3 or min(size) < 1):
        extra = " (or H,W)" if dims == 2 else ""
        raise BadInputError(
            f"--input-size: give D,H,W{extra} for '{cfg.model}', got {_fmt(size, ',')}"
        )
    if cfg.e2e_cache is not None:
        from .data.cache import read_index

        cached = tuple(read_index(cfg.e2e_cache)["config"]["size"])
        if size is not None and tuple(size) != cached:
            raise BadInputError(
                f"--input-size {_fmt(size)} differs from the cached scans ({_fmt(cached)}); "
                "leave it out with --e2e"
            )
        return cached  # type: ignore[return-value]
    return default_scan_size(cfg.model) if size is None else tuple(size)  # type: ignore


def _fmt(size: Sequence[int], sep: str = "x") -> str:
    return sep.join(str(s) for s in size)


def build_model(cfg: BenchConfig) -> Any:
    """`create_model(cfg.model, aggregator="auto", ...)` with the configuration's arguments."""
    from .factory import create_model

    return create_model(cfg.model, aggregator="auto", aggregator_args=cfg.aggregator_args,
                        **cfg.model_args)


def channels(cfg: BenchConfig) -> int:
    """Input channels of a scan: 1, unless the model is built with another `in_chans`."""
    return int(cfg.model_args.get("in_chans", 1))


def check(cfg: BenchConfig) -> None:
    """Everything that makes a configuration bad input, checked before any measurement."""

    from .runtime import COMPILE_MODES, resolve_device, resolve_precision

    if cfg.mode not in MODES:
        raise BadInputError(f"unknown mode '{cfg.mode}'; choose from {', '.join(MODES)}")
    device = resolve_device(cfg.device)
    resolve_precision(cfg.precision, device, cfg.model, cfg.mode, cfg.channels_last)
    if cfg.compile_mode is not None and cfg.compile_mode not in COMPILE_MODES:
        raise BadInputError(
            f"unknown compile mode '{cfg.compile_mode}'; choose from {', '.join(COMPILE_MODES)}"
        )
    for name in ("warmup", "iters", "batch_size", "threads"):
        value, least = getattr(cfg, name), 0 if name == "warmup" else 1
        if value is not None and value < least:
            raise BadInputError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if cfg.e2e_cache is not None:
        if cfg.mode != "train":
            raise BadInputError("--e2e measures training steps; use --mode train")
        if not (Path(cfg.e2e_cache) / "index.json").is_file():
            raise BadInputError(
                f"--cache {cfg.e2e_cache}: not a prepared cache (no index.json); build one "
                "with 'covidzoo data prepare'"
            )
    check_scan_size(cfg.model, scan_size(cfg), cfg.model_args, "auto", cfg.aggregator_args)


# --- measurement -----------------------------------------------------------------------------


def resolve_dtypes(precision: Any, mode: str) -> tuple[Any, Any, Any]:
    """(autocast dtype, model dtype, data dtype) of a resolved `Precision`, as timm resolves
    them: the model stays float32 under autocast; inference input comes in the autocast dtype."""
    import torch

    amp = precision.amp_dtype
    data = amp if (amp is not None and mode == "infer") else torch.float32
    return amp, torch.float32, data


def environment(device: Any) -> dict[str, Any]:
    """What produced a result: device and library versions (never the host name)."""
    import torch

    from .runtime import device_class

    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.machine(),
        "device_class": device_class(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "covidzoo": __version__,
    }


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_memory(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def decaying_batch(
    run: Callable[[int], dict[str, Any]], batch_size: int, device: Any
) -> dict[str, Any]:
    """`run(batch_size)`, retried at timm's decaying batch sizes while it runs out of memory."""
    from timm.utils import decay_batch_step

    while batch_size > 0:
        failed = False
        try:
            return run(batch_size)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            failed = True  # free the memory outside the handler, which holds the traceback
        if failed:
            _free_memory(device)
            batch_size = decay_batch_step(batch_size)
    raise CovidzooError("out of memory even at batch size 1")


def timed(
    step: Callable[[], Any], warmup: int, iters: int, device: Any
) -> tuple[float, float, float | None]:
    """(seconds per step, seconds of warm-up, peak device memory in MB of the timed steps)."""
    import torch

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _synchronize(device)
    warmup_s = time.perf_counter() - start
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _synchronize(device)
    step_s = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return step_s, warmup_s, peak


def _scan_batch(batch: int, cfg: BenchConfig, size: Sequence[int], data_dtype: Any,
                channels_last: bool, device: Any) -> Any:
    """A batch as the model sees it: random uint8 scans through `to_model_input` on the device."""
    import torch

    from .transforms import to_model_input

    generator = torch.Generator().manual_seed(cfg.seed)
    raw = torch.randint(0, 256, (batch, channels(cfg), *size), dtype=torch.uint8,
                        generator=generator)
    return to_model_input(raw.to(device), dtype=data_dtype, channels_last=channels_last)


def _figures(prefix: str, batch: int, step_s: float, warmup_s: float, slices: int | None,
             ) -> dict[str, Any]:
    out = {
        f"{prefix}_samples_per_sec": round(batch / step_s, 2),
        f"{prefix}_step_time": round(step_s * 1000, 3),
        f"{prefix}_batch_size": batch,
        f"{prefix}_warmup_s": round(warmup_s, 2),
    }
    if slices is not None:
        out[f"{prefix}_slices_per_sec"] = round(batch * slices / step_s, 1)
    return out


def _prepare(model: Any, cfg: BenchConfig, precision: Any, compile_mode: str | None,
             device: Any) -> Any:
    """The model as `covidzoo evaluate` (inference) or `covidzoo train` prepares it."""
    import torch

    from .runtime import prepare_model, to_layout

    dims = _component(cfg.model).metadata["spatial_dims"]
    if cfg.mode == "infer":
        model = prepare_model(model, device, precision, dims, fold=cfg.fold_bn)
    else:
        model = to_layout(model.train().to(device), precision, dims)
    if compile_mode is not None:
        model = torch.compile(model, mode=compile_mode)
    return model


def run_config(cfg: BenchConfig) -> dict[str, Any]:
    """Measure one configuration in this process: a flat result dict (see the module doc)."""
    import torch

    from .loop import train_step
    from .optim import sgd
    from .runtime import resolve_precision, scans_channels_last

    check(cfg)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    auto = cfg.precision == "auto"
    precision = resolve_precision(cfg.precision, device, cfg.model, cfg.mode,
                                  None if auto else cfg.channels_last)
    compile_mode = precision.compile_mode if auto else cfg.compile_mode
    amp_dtype, model_dtype, data_dtype = resolve_dtypes(precision, cfg.mode)
    size = scan_size(cfg)
    dims = _component(cfg.model).metadata["spatial_dims"]
    slices = size[0] if dims == 2 else None
    base = build_model(cfg)
    input_channels_last = scans_channels_last(precision, dims)
    num_classes = getattr(base, "num_classes", None) or 1
    result: dict[str, Any] = {
        "model": cfg.model,
        "mode": cfg.mode,
        "precision": cfg.precision,
        "resolved_precision": precision.name,
        "amp_dtype": None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "model_dtype": str(model_dtype).removeprefix("torch."),
        "data_dtype": str(data_dtype).removeprefix("torch."),
        "channels_last": precision.channels_last,
        "compile_mode": compile_mode,
        "fold_bn": cfg.fold_bn and cfg.mode == "infer",
        "cudnn_benchmark": cfg.cudnn_benchmark,
        "batch_size": cfg.batch_size or DEFAULT_BATCH[cfg.mode],
        "input_size": [channels(cfg), *size],
        "default_input_size": size == scan_size(BenchConfig(cfg.model)),
        "spatial_dims": dims,
        "model_args": cfg.model_args,
        "aggregator_args": cfg.aggregator_args,
        "param_count": sum(p.numel() for p in base.parameters()),
        "warmup": cfg.warmup,
        "iters": cfg.iters,
        **environment(device),
    }
    model = _prepare(base, cfg, precision, compile_mode, device)
    mark_step = compile_mode in CUDA_GRAPH_MODES

    def forward(x: Any) -> Any:
        if mark_step:  # a new iteration: CUDA-graph outputs of the last one may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with precision.autocast(device.type):
            return model(x)

    if cfg.mode == "infer":

        def infer(batch: int) -> dict[str, Any]:
            x = _scan_batch(batch, cfg, size, data_dtype, input_channels_last, device)

            def step() -> None:
                with torch.inference_mode():
                    forward(x)

            step_s, warmup_s, peak = timed(step, cfg.warmup, cfg.iters, device)
            return {**_figures("infer", batch, step_s, warmup_s, slices), "peak_memory_mb": peak}

        result.update(decaying_batch(infer, result["batch_size"], device))
        return _rounded(result)

    # The training loop's own step (covidzoo.loop.train_step) with momentum SGD, fused on CUDA.
    optimizer = sgd(model.parameters(), lr=1e-4, momentum=0.9, nesterov=False)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)

    def step(x: Any, target: Any) -> None:
        train_step(model, x, target, optimizer, scaler, precision, cuda_graphs=mark_step)

    def train(batch: int) -> dict[str, Any]:
        x = _scan_batch(batch, cfg, size, data_dtype, input_channels_last, device)
        target = torch.randint(0, 2, (batch, num_classes), device=device).float()
        step_s, warmup_s, peak = timed(lambda: step(x, target), cfg.warmup, cfg.iters, device)
        return {**_figures("train", batch, step_s, warmup_s, slices), "peak_memory_mb": peak}

    result.update(decaying_batch(train, result["batch_size"], device))
    if cfg.e2e_cache is not None:
        result.update(_end_to_end(cfg, result, step, input_channels_last,
                                  num_classes, slices, device))
    return _rounded(result)


def _end_to_end(cfg: BenchConfig, result: dict[str, Any], step: Callable[[Any, Any], None],
                channels_last: bool, num_classes: int, slices: int | None, device: Any,
                ) -> dict[str, Any]:
    """Training steps fed from the cache as `covidzoo train` feeds them: DataLoader (persistent
    workers, pinned memory) -> `device_batch` (copy, `to_model_input`, `ScanAugment`) -> step,
    at the batch size the pure steps fit. Epoch ends are included: the stream runs over them."""
    from .data.cache import CachedScans
    from .loop import device_batch, training_loader
    from .runtime import resolve_workers
    from .transforms import ScanAugment

    batch = result["train_batch_size"]
    dataset = CachedScans(cfg.e2e_cache)
    if len(dataset) < batch:
        raise BadInputError(f"--cache {cfg.e2e_cache} holds {len(dataset)} scans, fewer than "
                            f"one batch of {batch}")
    workers = resolve_workers(cfg.workers, device)
    loader = training_loader(dataset, batch, workers, device, seed=cfg.seed)
    augment = ScanAugment(seed=cfg.seed)

    def batches() -> Iterator[Any]:
        for epoch in itertools.count():
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            yield from loader

    stream = batches()

    def fed_step() -> None:
        x, y = device_batch(*next(stream), device, channels_last, augment)
        step(x, y.expand(-1, num_classes))

    step_s, warmup_s, _ = timed(fed_step, cfg.warmup, cfg.iters, device)
    figures = _figures("e2e", batch, step_s, warmup_s, slices)
    figures["e2e_ratio"] = round(step_s * 1000 / result["train_step_time"], 3)
    figures["e2e_workers"] = workers
    figures["e2e_cache"] = str(cfg.e2e_cache)
    return figures


def _rounded(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("peak_memory_mb") is not None:
        result["peak_memory_mb"] = round(result["peak_memory_mb"], 1)
    return result


# --- running many configurations -------------------------------------------------------------


def failed_result(cfg: BenchConfig, exc: BaseException | str) -> dict[str, Any]:
    """The result of a configuration that could not be measured: its config and the reason."""
    lines = (exc if isinstance(exc, str) else one_line(exc, with_type=True)).strip().splitlines()
    return {**cfg.to_dict(), "error": lines[0] if lines else "failed"}


def run_isolated(cfg: BenchConfig, timeout: float | None = None) -> dict[str, Any]:
    """`run_config` in a fresh `python -m covidzoo.bench` process (this checkout first on the
    path, the same plugins allowed)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "covidzoo.bench"], input=json.dumps(cfg.to_dict()),
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return failed_result(cfg, f"timed out after {timeout:.0f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    stderr = [line for line in proc.stderr.splitlines() if line.strip()]
    return failed_result(cfg, stderr[-1] if stderr else f"worker exited {proc.returncode}")


def add_speedups(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add `speedup_vs_fp32`: samples/s over those of the fp32 eager run (no channels-last, no
    compile) of the same model, mode and input size in `results`, when there is one."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["model"], r["mode"], json.dumps(r["input_size"]), r.get("e2e_cache")

    baselines: dict[tuple[Any, ...], float] = {}
    for r in results:
        rate = r.get(f"{r['mode']}_samples_per_sec")
        if (rate and r["precision"] == "fp32" and not r["channels_last"]
                and r["compile_mode"] is None):
            baselines.setdefault(key(r), rate)
    for r in results:
        rate, base = r.get(f"{r['mode']}_samples_per_sec"), baselines.get(key(r))
        r["speedup_vs_fp32"] = round(rate / base, 3) if rate and base else None
    return results


def run_benchmarks(
    configs: Sequence[BenchConfig],
    isolate: bool = False,
    timeout: float | None = None,
    progress: Callable[[int, BenchConfig], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every configuration (checked first, all of them, so bad input fails at once);
    a configuration that fails is a result with an `error`, not the end of the run."""
    for cfg in configs:
        check(cfg)
    results = []
    for i, cfg in enumerate(configs):
        if progress is not None:
            progress(i, cfg)
        if isolate:
            results.append(run_isolated(cfg, timeout))
            continue
        try:
            results.append(run_config(cfg))
        except Exception as exc:
            results.append(failed_result(cfg, exc))
    return add_speedups(results)


def write_json(path: str | os.PathLike[str], results: list[dict[str, Any]]) -> None:
    """`{"kind": "covidzoo-bench", "results": [...]}`: what `make_auto_table.py` reads."""
    from .fileio import atomic_write_text

    atomic_write_text(path, json.dumps({"kind": RESULTS_KIND, "results": results}, indent=2)
                      + "\n")


def write_csv(path: str | os.PathLike[str], results: list[dict[str, Any]]) -> None:
    """One row per result; columns in order of first appearance; lists and dicts as JSON."""
    import csv
    import io

    from .fileio import atomic_write_text

    columns: dict[str, None] = {}
    for r in results:
        columns.update(dict.fromkeys(r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                         for k, v in r.items()})
    atomic_write_text(path, buffer.getvalue())


def main() -> None:
    """Worker entry point: one `BenchConfig` as JSON on stdin, one JSON result on stdout."""
    cfg = BenchConfig.from_dict(json.loads(sys.stdin.read()))
    try:
        result = run_config(cfg)
    except Exception as exc:
        result = failed_result(cfg, exc)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
