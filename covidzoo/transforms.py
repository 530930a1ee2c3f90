"""What a model sees: the conversion of cached scans to model input, and batched augmentation on
the training device, after the data loader.

The loader hands over `uint8` scans (`B x 1 x D x H x W`, straight from the on-disk cache); moving
bytes, not floats, keeps the host side cheap. Here the batch becomes the model's input:

- `to_model_input` converts to float and normalises (the same in training, evaluation and
  prediction, so it is the one place that defines what a model sees);
- `ScanAugment` applies, per scan, a random crop resized back to full size, left-right and
  front-back flips and a small in-plane rotation as one affine resampling (`grid_sample`), then
  contrast and brightness jitter. The 3D RegNet and Res-Dense papers use random crop, horizontal
  flip, rotation and contrast increase.

Random parameters are drawn on the CPU from a seeded `torch.Generator` and moved to the device,
so a run is reproducible under `--seed` whatever the device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .values import TTA_MODES

# uint8 [0, 255] -> roughly zero-mean, unit-range values.
INPUT_MEAN = 127.5
INPUT_SCALE = 1 / 127.5


def to_model_input(
    batch: torch.Tensor, dtype: torch.dtype = torch.float32, channels_last: bool = False
) -> torch.Tensor:
    """uint8 scans (`B x C x D x H x W`) to the normalised float tensor a model takes."""
    x = batch.to(dtype=torch.float32).sub_(INPUT_MEAN).mul_(INPUT_SCALE).to(dtype)
    if channels_last and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all recorded in the run's config.json)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)  # side of the crop, fraction of the scan
    flip_lr: float = 0.5  # probability of a left-right flip
    flip_ap: float = 0.0  # front-back flip: off, anatomy is not symmetric that way
    rotate_deg: float = 10.0  # in-plane rotation, uniform in [-r, r] degrees
    contrast: tuple[float, float] = (0.8, 1.25)  # multiplicative, around the scan mean
    brightness: float = 0.1  # additive, in normalised units

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScanAugment:
    """Random affine (crop, flip, rotation) and intensity jitter for a batch of scans."""

    def __init__(self, cfg: AugmentConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg or AugmentConfig()
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) * (high - low) + low

    def _affine(self, n: int, dims: int) -> torch.Tensor:
        """`n x dims x (dims+1)` matrices mapping output to input coordinates (x, y[, z])."""
        cfg = self.cfg
        scale = self._uniform(n, *cfg.crop_scale)
        # Crop centre: anywhere the crop still fits inside the scan.
        shift = (self._uniform(n * dims, -1, 1).view(n, dims)) * (1 - scale).unsqueeze(1)
        angle = self._uniform(n, -cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
        flip_x = torch.where(self._uniform(n, 0, 1) < cfg.flip_lr, -1.0, 1.0).double()
        flip_y = torch.where(self._uniform(n, 0, 1) < cfg.flip_ap, -1.0, 1.0).double()
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, dims, dims + 1, dtype=torch.float64)
        # In-plane (x: width, y: height) rotation and flips; depth (z) only scaled and shifted.
        theta[:, 0, 0] = cos * scale * flip_x
        theta[:, 0, 1] = -sin * scale * flip_y
        theta[:, 1, 0] = sin * scale * flip_x
        theta[:, 1, 1] = cos * scale * flip_y
        if dims == 3:
            theta[:, 2, 2] = scale
        theta[:, :, dims] = shift
        return theta

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a normalised float batch `B x C x D x H x W` (or `B x C x H x W`)."""
        n, dims = x.shape[0], x.dim() - 2
        theta = self._affine(n, dims).view(n, -1)
        contrast = self._uniform(n, *self.cfg.contrast)
        brightness = self._uniform(n, -self.cfg.brightness, self.cfg.brightness)
        # One host-to-device copy from pinned memory, asynchronous: a blocking copy here would
        # make the host wait for the previous training step and starve the GPU of work.
        params = torch.cat([theta, contrast[:, None], brightness[:, None]], dim=1).float()
        if x.device.type == "cuda":
            params = params.pin_memory()
        params = params.to(x.device, non_blocking=True)
        theta = params[:, : dims * (dims + 1)].view(n, dims, dims + 1)
        view = (n,) + (1,) * (x.dim() - 1)
        contrast, brightness = params[:, -2].view(view), params[:, -1].view(view)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Resample in float32 (grid_sample has no bf16 path on every device), then jitter.
        out = F.grid_sample(
            x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        mean = out.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        out = (out - mean) * contrast + mean + brightness
        if x.is_contiguous(memory_format=torch.channels_last_3d) and dims == 3:
            out = out.contiguous(memory_format=torch.channels_last_3d)
        return out.to(x.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def tta_views(x: torch.Tensor, mode: str | None) -> list[torch.Tensor]:
    """The views of a model-input batch `B x C x D x H x W` that `mode` averages over:

    - `none`: the batch as it is;
    - `flip`: it and its left-right mirror (the patient's right and left swapped, as training's
      augmentation flips);
    - `flip+shift`: those two, and the batch shifted by 1/32 of its width and height in each of
      the four in-plane directions (six views): a scan framed a few millimetres differently.

    Shifts roll the scan, so what leaves one side comes back on the other: at 1/32 of the
    width that is air around the body in a chest CT.
    """
    if mode in (None, "none"):
        return [x]
    if mode not in TTA_MODES:
        raise ValueError(f"unknown --tta '{mode}'; choose from {', '.join(TTA_MODES)}")
    views = [x, torch.flip(x, dims=(-1,))]
    if mode == "flip+shift":
        dy, dx = max(1, x.shape[-2] // 32), max(1, x.shape[-1] // 32)
        views += [torch.roll(x, shifts=s, dims=d) for d, s in ((-2, dy), (-2, -dy),
                                                               (-1, dx), (-1, -dx))]
    return views
