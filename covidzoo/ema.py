"""An exponential moving average of a model's weights (timm's `ModelEmaV2`/`ModelEmaV3`).

`ModelEma(model, decay)` keeps a copy of the model, in eval mode and without gradients. After each
optimizer step, `update(model)` moves every floating-point parameter of the copy towards the
model's, `ema = d * ema + (1 - d) * param`, and copies the buffers (BatchNorm running statistics,
counters) as they are, as timm's `exclude_buffers=True` does: the statistics then match the
weights that are being trained.

Warm-up (on by default): the `n`-th update (from 0) uses `d = min(decay, (1 + n) / (10 + n))`,
TensorFlow's `ExponentialMovingAverage(num_updates=...)` rule. A copy that starts as the random
initial weights then forgets them within a few hundred steps, which matters for short runs: at
`decay=0.999` without warm-up the demo's 720 steps leave half the average on the initial
weights (`0.999 ** 720`). `warmup=False` uses `decay` from the first update.

`state_dict()` holds the averaged weights and the update count, so a resumed run's next update is
exactly the one an uninterrupted run makes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .checkpoint import unwrap_model
from .errors import BadInputError


def check_decay(decay: float) -> None:
    """Refuse an EMA decay outside [0, 1)."""
    if not (math.isfinite(decay) and 0 <= decay < 1):
        raise BadInputError(f"--ema must be a decay in [0, 1), e.g. 0.999; got {decay}")


class ModelEma:
    """The moving average of `model`'s weights (see the module docstring). `model` may be
    wrapped by DDP or `torch.compile`: the plain module inside is averaged."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        check_decay(decay)
        self.decay, self.warmup = float(decay), warmup
        self.updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
            param.grad = None

    def current_decay(self) -> float:
        """The decay the next `update` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards `model`'s current weights (after an optimizer step)."""
        decay = self.current_decay()
        source = unwrap_model(model)
        params = dict(source.named_parameters())
        averaged, current = [], []
        for name, ema in self.module.named_parameters():
            if ema.is_floating_point():
                averaged.append(ema)
                current.append(params[name].detach())
            else:
                ema.copy_(params[name])
        if averaged:
            torch._foreach_mul_(averaged, decay)
            torch._foreach_add_(averaged, current, alpha=1 - decay)
        buffers = dict(source.named_buffers())
        for name, ema in self.module.named_buffers():
            ema.copy_(buffers[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (`"weights"`) and how the average stands."""
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the average saved by `state_dict`; its decay and warm-up must be these."""
        if float(state["decay"]) != self.decay or bool(state["warmup"]) != self.warmup:
            raise BadInputError(
                f"the saved EMA has decay {state['decay']} (warm-up {state['warmup']}), not "
                f"{self.decay} (warm-up {self.warmup})")
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
