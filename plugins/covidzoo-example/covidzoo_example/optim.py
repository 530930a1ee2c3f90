"""covidzoo-example: an optimizer, imported only when `covidzoo train --optimizer sgd-nodecay`
builds it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from covidzoo.optim import param_groups


def sgd_nodecay(params: Iterable[Any], lr: float = 1e-2, weight_decay: float = 1e-4,
                momentum: float = 0.9, nesterov: bool = True, **kwargs: Any) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on the weights of convolutions and linear
    layers only, not on biases and normalisation layers.

    `covidzoo train` passes one parameter group `{"params": [...], "param_names": [...]}`;
    `covidzoo.optim.param_groups` splits it into a decayed group and one with
    `weight_decay=0` (every 1-D parameter, and every `.bias`). Plain tensors are taken too.
    """
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    return torch.optim.SGD(param_groups(groups, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov, weight_decay=weight_decay, **kwargs)
