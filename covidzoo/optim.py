"""Optimizer factories registered through `register_optimizers`.

Each takes `(params, lr, weight_decay, **kwargs)` so the training loop can build any registered
optimizer the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def adam(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, **kw: Any):
    """Adam (Kingma & Ba), L2 weight decay added to the gradient."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)


def adamw(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 1e-2, **kw: Any):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)


def sgd(
    params: Iterable[Any],
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    **kw: Any,
):
    """SGD with Nesterov momentum 0.9 (the usual choice for training CNNs from scratch)."""
    return torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, **kw
    )


def rmsprop(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, **kw: Any):
    """RMSprop (Hinton), as torch implements it."""
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, **kw)
