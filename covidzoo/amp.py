"""Precision modes: what `--precision fp32|bf16|fp16|auto` means on a device.

A mode resolves to (autocast dtype, whether to use a gradient scaler), as timm's benchmark does.
`auto` looks up the fastest mode measured for the model on the device class in `AUTO_TABLE`,
which is written from the committed benchmark results (`benchmarks/results/`), and is fp32 on
the CPU and for anything not measured: a mode is only chosen automatically once measured faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BadInputError

PRECISIONS = ("fp32", "bf16", "fp16")

# (device class, backbone, "train" | "infer") -> (precision, channels_last). Written from
# benchmarks/results/*.json: see docs/benchmarks.md for the numbers behind each entry.
AUTO_TABLE: dict[tuple[str, str, str], tuple[str, bool]] = {}


@dataclass(frozen=True)
class Precision:
    """A resolved precision mode."""

    name: str
    channels_last: bool = False

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
    """Check `name` against the device and resolve `auto`; `channels_last=None` means auto."""
    import torch

    device = torch.device(device)
    if name == "auto":
        entry = AUTO_TABLE.get((device_class(device), backbone or "", mode))
        if device.type == "cpu" or entry is None:
            return Precision("fp32", bool(channels_last))
        auto_name, auto_cl = entry
        return Precision(auto_name, auto_cl if channels_last is None else channels_last)
    if name not in PRECISIONS:
        choices = ", ".join(PRECISIONS)
        raise BadInputError(f"unknown precision '{name}'; choose from auto, {choices}")
    if name == "fp16" and device.type == "cpu":
        raise BadInputError("--precision fp16 needs a CUDA device; on the CPU use fp32 or bf16")
    return Precision(name, bool(channels_last))
