"""Mixup and cutmix for batches of scans, and the loss on the soft targets they make.

- mixup (Zhang et al. 2018): each sample becomes `lam * x + (1 - lam) * partner`, its target
  likewise, with one `lam ~ Beta(alpha, alpha)` per batch;
- cutmix (Yun et al. 2019): a box of the partner is pasted into each sample: over the spatial
  dims, a 3D box for volumes (`B x C x D x H x W`), a 2D box for images (`B x C x H x W`). The box
  is drawn as timm draws it (`timm.data.mixup.rand_bbox`): each side `(1 - lam) ** (1 / n)` of the
  scan's (n spatial dims, so that the box's volume is `1 - lam` of it), centred anywhere and
  clipped at the borders; `lam` is then corrected to `1 - ` the box's actual fraction, and the
  targets mixed with that `lam`.

With both alphas > 0, a batch gets cutmix with probability `switch_prob`, else mixup (timm's
`Mixup`). Each sample's partner is another sample of the batch, drawn as a random cycle over the
batch, so no sample is mixed with itself. Every draw comes from one seeded `torch.Generator`
(`BatchMixer` keeps it and saves its state for --resume), so a run is reproducible under --seed.

The targets may be binary labels (float 0/1, `B` or `B x 1`) or class indices (long, `B`) with
`num_classes`: the mixed targets are then soft labels (`B`, `B x 1`) or class probabilities
(`B x K`), which `covidzoo.task.Task.loss` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Mixes `BatchMixer` draws from its own stream: with the seed of `ScanAugment`, the two would
# draw the same numbers.
MIX_STREAM = 0x6D6978


def check_mix_args(mixup_alpha: float, cutmix_alpha: float, switch_prob: float = 0.5) -> None:
    """Refuse alphas that are not finite numbers >= 0 and a `switch_prob` outside [0, 1]."""
    from .errors import BadInputError

    for flag, alpha in (("--mixup", mixup_alpha), ("--cutmix", cutmix_alpha)):
        if not (math.isfinite(alpha) and alpha >= 0):
            raise BadInputError(f"{flag} must be a finite number >= 0, got {alpha}")
    if not 0 <= switch_prob <= 1:
        raise BadInputError(f"switch_prob must be between 0 and 1, got {switch_prob}")


@dataclass(frozen=True)
class Mix:
    """One batch's mix: `partner[i]` is the sample mixed into sample `i`, `lam` the weight of
    sample `i` itself; `box` (cutmix only) the `(start, stop)` of each spatial dim."""

    kind: str  # "mixup" or "cutmix"
    lam: float
    partner: torch.Tensor  # long, B, on the CPU
    box: tuple[tuple[int, int], ...] | None = None


def draw_mix(batch_size: int, spatial: tuple[int, ...], *, mixup_alpha: float = 0.0,
             cutmix_alpha: float = 0.0, switch_prob: float = 0.5,
             generator: torch.Generator) -> Mix | None:
    """The mix of a batch of `batch_size` samples of spatial size `spatial`, drawn from
    `generator`; None (nothing drawn) when both alphas are 0 or the batch has one sample."""
    check_mix_args(mixup_alpha, cutmix_alpha, switch_prob)
    if batch_size < 2 or (mixup_alpha == 0 and cutmix_alpha == 0):
        return None
    # torch has no Beta sampler that takes a generator: one 63-bit draw seeds numpy for the rest.
    rng = np.random.default_rng(int(torch.randint(2**63 - 1, (), generator=generator)))
    if mixup_alpha > 0 and cutmix_alpha > 0:
        cutmix = bool(rng.random() < switch_prob)
    else:
        cutmix = cutmix_alpha > 0
    alpha = cutmix_alpha if cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    order = torch.from_numpy(rng.permutation(batch_size))
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)  # one cycle through the batch: nobody's own partner
    if not cutmix:
        return Mix("mixup", lam, partner)
    side = (1 - lam) ** (1 / len(spatial))
    box = []
    for size in spatial:
        cut = int(size * side)
        centre = int(rng.integers(size))
        box.append((min(max(centre - cut // 2, 0), size),
                    min(max(centre - cut // 2 + cut, 0), size)))
    fraction = math.prod(stop - start for start, stop in box) / math.prod(spatial)
    return Mix("cutmix", 1 - fraction, partner, tuple(box))


def soft_targets(targets: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Targets as floats: class indices (long) one-hot `B x num_classes`, floats unchanged."""
    if targets.is_floating_point():
        return targets
    if num_classes is None or num_classes < 2:
        raise ValueError(f"class-index targets need num_classes >= 2, got {num_classes}")
    return F.one_hot(targets.view(-1), num_classes).to(torch.float32)


def apply_mix(x: torch.Tensor, targets: torch.Tensor, mix: Mix | None,
              num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` and its (soft) targets mixed as `mix` says; unchanged where `mix` is None."""
    y = soft_targets(targets, num_classes)
    if mix is None:
        return x, y
    if x.dim() not in (4, 5) or len(y) != len(x):
        raise ValueError(f"expected B x C x [D x] H x W scans and B targets, got {tuple(x.shape)} "
                         f"and {tuple(targets.shape)}")
    partner = mix.partner
    if x.device.type == "cuda":  # asynchronous, as ScanAugment's parameters
        partner = partner.pin_memory()
    partner = partner.to(x.device, non_blocking=True)
    lam = mix.lam
    if mix.kind == "mixup":
        x = lam * x + (1 - lam) * x[partner]
    else:
        region = (slice(None), slice(None), *(slice(a, b) for a, b in mix.box or ()))
        x = x.clone()
        x[region] = x[region][partner]
    return x, lam * y + (1 - lam) * y[partner.to(y.device)]


def mix_batch(x: torch.Tensor, targets: torch.Tensor, *, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, switch_prob: float = 0.5,
              num_classes: int | None = None,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix a batch (`B x C x D x H x W` volumes or `B x C x H x W` images): the
    mixed batch and its soft targets (see the module docstring). With both alphas 0, or a batch
    of one sample, `x` is returned unchanged (and class indices as one-hot targets)."""
    mix = draw_mix(len(x), tuple(x.shape[2:]), mixup_alpha=mixup_alpha,
                   cutmix_alpha=cutmix_alpha, switch_prob=switch_prob, generator=generator)
    return apply_mix(x, targets, mix, num_classes)


class BatchMixer:
    """`mix_batch` with a seeded generator of its own, saved with the run (as `ScanAugment`)."""

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, *,
                 switch_prob: float = 0.5, num_classes: int | None = None,
                 seed: int = 0) -> None:
        check_mix_args(mixup_alpha, cutmix_alpha, switch_prob)
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.switch_prob, self.num_classes = switch_prob, num_classes
        self.generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, MIX_STREAM]).generate_state(1, np.uint64)[0]))

    def __call__(self, x: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mix_batch(x, targets, mixup_alpha=self.mixup_alpha,
                         cutmix_alpha=self.cutmix_alpha, switch_prob=self.switch_prob,
                         num_classes=self.num_classes, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
