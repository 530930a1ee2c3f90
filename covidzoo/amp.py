"""Precision modes: what `--precision fp32|bf16|fp16|auto` means on a device.

A mode resolves to (autocast dtype, whether to use a gradient scaler), as timm's benchmark does.
`auto` looks up the fastest configuration measured for the model on the device class in
`AUTO_TABLE` (precision, channels-last, `torch.compile` mode), which
`benchmarks/make_auto_table.py` writes into `covidzoo/_auto_table.py` from the committed benchmark
results (`benchmarks/results/`). It is fp32 on the CPU and for anything not measured: a mode is
only chosen automatically once measured faster than fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._auto_table import AUTO_TABLE
from .errors import BadInputError

PRECISIONS = ("fp32", "bf16", "fp16")
# `torch.compile` modes a configuration may use (None: eager). "reduce-overhead" adds CUDA
# graphs, which is what pays off when a step is bound by kernel launches on the CPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

__all__ = ["AUTO_TABLE", "COMPILE_MODES", "PRECISIONS", "Precision", "device_class",
           "resolve_precision", "tune_cudnn"]


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
    if name == "fp16" and device.type == "cpu":
        raise BadInputError("--precision fp16 needs a CUDA device; on the CPU use fp32 or bf16")
    return Precision(name, bool(channels_last))
