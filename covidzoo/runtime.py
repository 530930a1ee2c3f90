"""Where and how a model runs: device, precision, memory layout, distributed processes, loader
workers, CPU threads, and the preparation of a model for inference. Each of these is decided here
only.

Precision modes: what `--precision fp32|bf16|fp16|auto` means on a device. A mode resolves to
(autocast dtype, whether to use a gradient scaler), as timm's benchmark does.
`auto` looks up the fastest configuration measured for the model on the device class in
`AUTO_TABLE` (precision, channels-last, `torch.compile` mode), which
`benchmarks/make_auto_table.py` writes into `covidzoo/_auto_table.py` from the committed benchmark
results (`benchmarks/results/`). It is fp32 on the CPU and for anything not measured: a mode is
only chosen automatically once measured faster than fp32.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._auto_table import AUTO_TABLE
from .errors import BadInputError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
# `torch.compile` modes a configuration may use (None: eager). "reduce-overhead" adds CUDA
# graphs, which is what pays off when a step is bound by kernel launches on the CPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

__all__ = ["AUTO_TABLE", "COMPILE_MODES", "PRECISIONS", "Dist", "Precision", "all_gather_arrays",
           "all_reduce_mean", "apply_threads", "barrier", "busy_cores", "default_threads",
           "default_workers", "device_class", "memory_format", "prepare_model", "resolve_device",
           "resolve_precision", "resolve_threads", "setup_distributed", "shutdown_distributed",
           "to_layout", "tune_cudnn", "usable_cores", "valid_precisions"]


@dataclass(frozen=True)
class Precision:
    """A resolved precision mode: autocast dtype, memory format and `torch.compile` mode."""

    name: str
    channels_last: bool = False
    compile_mode: str | None = None

    @property
    def amp_dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def use_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range."""
        return self.name == "fp16"

    def autocast(self, device_type: str) -> Any:
        import contextlib

        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.amp_dtype)


def resolve_device(name: str | None) -> Any:
    """`--device`: CUDA when available and nothing was asked for, else what was asked for
    (`cpu`, `cuda` or `cuda:N`); anything else, or CUDA on a machine without it, is bad input."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise BadInputError(f"--device {name}: choose cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda: no CUDA device is available here; use --device cpu")
    return device


def tune_cudnn(device: Any) -> None:
    """Let cuDNN autotune its convolution algorithms on CUDA (`cudnn.benchmark`), as every
    measurement behind `AUTO_TABLE` did: a run's shapes are fixed, so the search is paid once.
    Results on the GPU are then not bit-reproducible; CPU runs are unaffected."""
    import torch

    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def device_class(device: Any) -> str:
    """"cpu", or the CUDA device's marketing family ("h100", "h200", "a100", ...) or "cuda"."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    for family in ("h200", "h100", "a100", "l40", "a10"):
        if family in name:
            return family
    return "cuda"


def resolve_precision(
    name: str,
    device: Any,
    backbone: str | None = None,
    mode: str = "train",
    channels_last: bool | None = None,
) -> Precision:
    """Check `name` against the device and resolve `auto`; `channels_last=None` means auto.

    `auto` also brings the compile mode measured fastest (a named precision is eager: compile
    is then the caller's choice).
    """
    import torch

    device = torch.device(device)
    if name == "auto":
        entry = AUTO_TABLE.get((device_class(device), backbone or "", mode))
        if device.type == "cpu" or entry is None:
            return Precision("fp32", bool(channels_last))
        auto_name, auto_cl, auto_compile = entry
        return Precision(
            auto_name, auto_cl if channels_last is None else channels_last, auto_compile
        )
    if name not in PRECISIONS:
        choices = ", ".join(PRECISIONS)
        raise BadInputError(f"unknown precision '{name}'; choose from auto, {choices}")
    if name not in valid_precisions(device):
        raise BadInputError("--precision fp16 needs a CUDA device; on the CPU use fp32 or bf16")
    return Precision(name, bool(channels_last))


def valid_precisions(device: Any) -> tuple[str, ...]:
    """The named precisions that run on `device`: fp16 autocast needs CUDA."""
    import torch

    if torch.device(device).type == "cuda":
        return PRECISIONS
    return tuple(p for p in PRECISIONS if p != "fp16")


# --- memory layout ---------------------------------------------------------------------------


def memory_format(spatial_dims: int) -> Any:
    """The channels-last layout of a model's convolutions: `channels_last_3d` for a volume
    model, `channels_last` for a slice model (its input is reshaped to slices inside)."""
    import torch

    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def to_layout(model: nn.Module, precision: Precision, spatial_dims: int) -> nn.Module:
    """`model` in the memory layout `precision` asks for (unchanged unless channels-last)."""
    if not precision.channels_last:
        return model
    return model.to(memory_format=memory_format(spatial_dims))


def scans_channels_last(precision: Precision, spatial_dims: int) -> bool:
    """Whether scans are fed channels-last: only to 3D models, since a slice model's input is
    reshaped to slices by its aggregator."""
    return precision.channels_last and spatial_dims == 3


def prepare_model(model: nn.Module, device: Any, precision: Precision, spatial_dims: int,
                  fold: bool = True) -> nn.Module:
    """`model` ready for inference: eval mode, BatchNorm folded (`fold`), on `device`, and in
    the layout `precision` asks for. Folding works on a copy on the host, so a model still being
    trained is never altered and the unfolded copy never reaches the device."""
    from .models.folding import fold_batchnorm

    model = fold_batchnorm(model) if fold else model.eval()
    return to_layout(model.to(device), precision, spatial_dims)


# --- processes: distributed ranks and loader workers -----------------------------------------


@dataclass(frozen=True)
class Dist:
    """This process's place among torchrun's processes (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Whether this process is the one that reports: torchrun's rank 0, or the only process
    (the other ranks compute their share and stay silent)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes in the environment (or run alone); on CUDA
    each rank takes the GPU of its `LOCAL_RANK`. Returns the rank and the device to use."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size()), device


def shutdown_distributed(together: bool) -> None:
    """Leave the process group; `together` waits for every rank first, so a rank exiting early
    cannot abort the others' gloo connections. After an error, leave at once."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        if together:
            tdist.barrier()
        tdist.destroy_process_group()


def all_gather_arrays(dist: Dist, *arrays: np.ndarray) -> list[np.ndarray]:
    """Concatenate per-rank arrays on every rank (validation predictions)."""
    import numpy as np

    if dist.world == 1:
        return list(arrays)
    import torch.distributed as tdist

    gathered: list[Any] = [None] * dist.world
    tdist.all_gather_object(gathered, [a.tolist() for a in arrays])
    return [np.concatenate([np.asarray(g[i]) for g in gathered]) for i in range(len(arrays))]


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()


def all_reduce_mean(dist: Dist, value: float, count: int) -> float:
    """The mean of `value` over all ranks, each weighted by its `count`."""
    if dist.world == 1:
        return value
    import torch
    import torch.distributed as tdist

    t = torch.tensor([value * count, float(count)], dtype=torch.float64)
    tdist.all_reduce(t)
    return float(t[0] / max(t[1], 1.0))


def sync_buffers(dist: Dist, module: Any) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP sends them at the
    start of each training forward, so after the last step each rank's differ by its own last
    batch: validated as they are, the gathered predictions would not be those of the model
    rank 0 saves."""
    if dist.world == 1:
        return
    import torch.distributed as tdist

    for buffer in module.buffers():
        tdist.broadcast(buffer, src=0)


def broadcast(dist: Dist, value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. a time-stamped run folder name)."""
    if dist.world == 1:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def default_workers(device: Any) -> int:
    """Worker processes when `--workers` is not given (0 means: in the main process).

    None on CPU, where the model step needs every core, and up to 8 on CUDA, where the GPU must
    never wait for the next batch, sharing the cores with the other processes torchrun started
    on this machine.
    """
    import torch

    if torch.device(device).type != "cuda":
        return 0
    cores = (os.cpu_count() or 2) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(8, cores - 1))


def resolve_workers(workers: int | None, device: Any) -> int:
    """`--workers`: the number given (0: the main process), else `default_workers(device)`."""
    if workers is None:
        return default_workers(device)
    if workers < 0:
        raise BadInputError(f"--workers must be at least 0, got {workers}")
    return workers


# --- CPU threads -------------------------------------------------------------------------------
#
# torch's default is one intra-op thread per core. On a machine where other processes keep cores
# busy, those threads wait for each other at every operator's barrier, spinning while the thread
# they wait for has no core: on a shared 2-core CPU beside one CPU-bound process, a training
# step of the README's job took 1.1-3.4 s with 2 threads and 0.38 s with 1 (0.25 s with 2 when
# the other work was light). So covidzoo uses the cores that are free when a command starts.
# OpenMP's passive wait policy (OMP_WAIT_POLICY=PASSIVE) avoids the collapse too, but only when
# set before torch is imported (OpenMP reads it when loaded), and it made the lightly loaded step
# 1.9x slower (0.47 s): it is not used. benchmarks/bench_threads_cpu.py measures all three. The
# inter-op pool is left alone: eager training and inference do not use it.


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity (macOS, Windows)
        return os.cpu_count() or 1


def niced_work_yields(autogroup: str = "/proc/sys/kernel/sched_autogroup_enabled") -> bool:
    """Whether work at lowered priority (`nice`) gives its core up to ours: true unless the
    kernel groups processes by session (autogroup), which shares the CPU between sessions
    whatever their niceness."""
    try:
        with open(autogroup) as fh:
            return fh.read().strip() == "0"
    except OSError:
        return True  # no autogroup: plain niceness decides


def _cpu_ticks(cpus: set[int], stat: str = "/proc/stat",
               niced_yields: bool = False) -> tuple[int, int]:
    """(busy, all) clock ticks of `cpus` since boot, from /proc/stat (busy: neither idle nor
    waiting for I/O, nor, when `niced_yields`, spent on niced work, which would give its core
    to our threads)."""
    busy = total = 0
    with open(stat) as fh:
        for line in fh:
            name, *fields = line.split()
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq soft steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4] - (ticks[1] if niced_yields else 0)
    return busy, total


def busy_cores(interval: float = 0.1) -> float:
    """How many of this process's cores other work keeps busy now: measured over `interval`
    seconds from /proc/stat (Linux), else the 1-minute load average, else 0.

    The measurement is of now, not of the last minute, so the run a command follows (a `train`
    before an `evaluate`) does not count; this process sleeps meanwhile, so it does not count
    itself.
    """
    try:
        cpus, yields = os.sched_getaffinity(0), niced_work_yields()
        busy, total = _cpu_ticks(cpus, niced_yields=yields)
        time.sleep(interval)
        busy_after, total_after = _cpu_ticks(cpus, niced_yields=yields)
    except (AttributeError, OSError, ValueError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    ticks = total_after - total
    return len(cpus) * (busy_after - busy) / ticks if ticks > 0 else 0.0


def default_threads() -> int:
    """torch's CPU threads when neither `--threads` nor OMP_NUM_THREADS says: the usable cores
    less those other work keeps busy (a core counts from half busy), at least 1, shared between
    torchrun's local processes."""
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    cores = usable_cores()
    if cores <= local:
        return 1
    free = cores - math.floor(busy_cores() + 0.5)
    return max(1, free // local)


def resolve_threads(threads: int | None) -> int:
    """`--threads`: the number given, else OMP_NUM_THREADS when set (torchrun sets it to 1 for
    several local processes), else `default_threads()`."""
    if threads is not None:
        if threads < 1:
            raise BadInputError(f"--threads must be at least 1, got {threads}")
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return default_threads()


def apply_threads(threads: int | None) -> int:
    """Resolve `--threads` (`resolve_threads`) and give torch that many intra-op threads for the
    rest of this process; returns the number. Data-loader workers and the cache's worker
    processes run one thread each (torch's DataLoader and `prepare_cache` set it)."""
    import torch

    resolved = resolve_threads(threads)
    torch.set_num_threads(resolved)
    return resolved
