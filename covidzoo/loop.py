"""The pieces of a training loop that `covidzoo train` and `covidzoo bench` share: the loader,
device batches, one optimizer step, the learning-rate schedule and the RNG state.

`covidzoo bench --e2e` times exactly these functions, so its ratio measures the loop that
`covidzoo train` runs, not a copy of it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import unwrap_model
from .errors import BadInputError
from .runtime import Dist, Precision
from .task import Task
from .transforms import ScanAugment, to_model_input

SCHEDULES = ("cosine", "step", "none")


def training_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, *,
                    seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                    dist: Dist | None = None) -> DataLoader:
    """The loader of a training run, kept for the whole run: call `loader.sampler.set_epoch(e)`
    before each epoch. Its workers persist between epochs (starting them again each epoch would
    stall the GPU) and it pins memory on CUDA, for asynchronous copies.

    The order is a function of (seed, epoch) alone, so a resumed run reads what an uninterrupted
    one would. `DistributedSampler` gives it, for a single process too.
    """
    from torch.utils.data.distributed import DistributedSampler

    dist = dist or Dist()
    sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank,
                                 shuffle=shuffle, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0)


def device_batch(
    scans: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
    augment: ScanAugment | None = None,
    task: Task | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch on the device: the model input (augmented when `augment` is given) and
    the targets of `task` (`Task.targets`; without a task, binary float targets `B x 1`),
    unknown labels (-1) as 0.

    Both copies are asynchronous (the loader pins its memory on CUDA): a blocking copy would make
    the host wait for the previous training step before it can queue this one.
    """
    x = to_model_input(scans.to(device, non_blocking=True), channels_last=channels_last)
    if augment is not None:
        x = augment(x)
    labels = labels.to(device, non_blocking=True)
    if task is not None:
        return x, task.targets(labels)
    return x, labels.clamp(min=0).to(torch.float32).view(-1, 1)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: Any, scaler: Any,
               precision: Precision, *, cuda_graphs: bool = False,
               pos_weight: torch.Tensor | None = None,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               ) -> torch.Tensor:
    """One optimizer step on a device batch; returns the loss, detached and not yet read.
    `loss_fn(logits, y)` (a `Task.loss`) replaces the default binary cross-entropy.

    Nothing here waits for the device, so the host queues the next batch's copy and augmentation
    while this step runs (with fp16, the `GradScaler` skips its host-side check only for
    optimizers that take the scale themselves: the fused ones and NovoGrad, see `covidzoo.optim`).
    """
    if cuda_graphs:  # a new iteration: CUDA-graph outputs of the last one may be overwritten
        torch.compiler.cudagraph_mark_step_begin()
    with precision.autocast(x.device.type):
        logits = model(x)
    loss = (loss_fn(logits, y) if loss_fn is not None
            else F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pos_weight))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "step":  # /10 at half and at three quarters of the run
        return 0.1 ** (int(progress >= 0.5) + int(progress >= 0.75))
    if schedule == "none":
        return 1.0
    raise BadInputError(f"unknown --schedule '{schedule}'; choose from {', '.join(SCHEDULES)}")


def fine_tunable(model: nn.Module) -> Any:
    """The module with the staged fine-tuning API (`freeze_backbones`, `unfreeze_last`): the
    model itself or the backbone inside its aggregator; None when there is none.

    The API sets `requires_grad` only; the trainer puts what it froze in eval mode with
    `eval_frozen` (unless `--frozen-bn train`). A module that can tell whether its frozen part
    holds loaded weights says so in a `pretrained` attribute (False: random weights)."""
    model = unwrap_model(model)
    for candidate in (model, getattr(model, "backbone", None)):
        if hasattr(candidate, "freeze_backbones"):
            return candidate
    return None


def eval_frozen(module: nn.Module) -> None:
    """Put the frozen parts of `module` in inference mode: every submodule that has parameters,
    all of them frozen (`requires_grad` False), goes to eval mode with everything inside it, so
    its BatchNorms normalise with their running statistics and leave them unchanged, and its
    dropout is off. Parts with a trainable parameter, and parameter-free modules beside them,
    keep their mode. `module.train()` undoes this: call it after every `train()`.
    """
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        else:
            eval_frozen(child)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from (torch, CUDA, numpy, Python), for --resume."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1],
        "numpy_pos": int(np.random.get_state()[2]),
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"], state["numpy_pos"], 0, 0.0))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
