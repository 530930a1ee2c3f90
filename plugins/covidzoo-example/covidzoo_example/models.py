"""covidzoo-example: the torch code, imported only when a component is built.

Both backbones follow timm's model API (`forward_features`, `forward_head(x, pre_logits=...)`,
`get_classifier`, `reset_classifier`, `num_features`, `num_classes`) and declare which BatchNorm
follows which convolution, so that
`covidzoo bench`, `evaluate` and `predict` can fold BatchNorm away for inference: `Tiny3D` through
an `nn.Sequential` of conv, bn, relu (folded without a declaration), `Tiny2D` through the
`conv_bn_pairs` attribute of its blocks. `Tiny2D` also reports its parameters and FLOPs per
block (`complexity`), which `covidzoo models show tiny2d` prints as a table; `models show tiny3d`
prints the registration metadata, as for any backbone without `complexity`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from covidzoo import BadInputError

POOLS = ("avg", "max")


def _check_channels(name: str, channels: Sequence[int]) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if not channels or min(channels) < 1:
        raise BadInputError(
            f"{name}: channels must be one or more positive integers, got {channels}")
    return channels


def _complexity(channels: Sequence[int], in_chans: int, num_classes: int,
                input_size: Sequence[int]) -> dict[str, Any]:
    """Parameters and FLOPs of a stack of stride-2 3x3(x3) convolutions (no bias) + BatchNorm,
    then a linear head, for one input of `input_size`. FLOPs as `torch.utils.flop_counter`
    counts them: 2 per multiply-add, convolutions and the head only."""
    size = [int(s) for s in input_size]
    prev, parts = in_chans, []
    for i, width in enumerate(channels):
        size = [(s - 1) // 2 + 1 for s in size]  # kernel 3, stride 2, padding 1
        weights = prev * width * 3 ** len(size)
        parts.append({
            "name": f"block{i}", "depth": 1, "width": width, "bottleneck_width": None,
            "groups": 1, "output_shape": [width, *size], "params": weights + 2 * width,
            "flops": 2 * weights * math.prod(size),
        })
        prev = width
    parts.append({
        "name": "head", "depth": None, "width": num_classes, "bottleneck_width": None,
        "groups": None, "output_shape": [num_classes] if num_classes else [prev],
        "params": prev * num_classes + num_classes, "flops": 2 * prev * num_classes,
    })
    return {
        "input_size": [in_chans, *(int(s) for s in input_size)],
        "params": sum(p["params"] for p in parts),
        "flops": sum(p["flops"] for p in parts),
        "stages": parts,
    }


class TimmHead(nn.Module):
    """The head half of timm's model API, shared by both backbones: global pooling, then a
    linear classifier (none for `num_classes=0`: the model then returns pooled features)."""

    num_features: int
    num_classes: int
    head: nn.Module

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh linear classifier for `num_classes` outputs (0: none, pooled features)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Tiny3D(TimmHead):
    """Strided 3x3x3 conv + BatchNorm + ReLU blocks (`channels`: the output channels of each),
    global average pool, linear head."""

    def __init__(
        self, channels: Sequence[int] = (8, 16, 32, 64), in_chans: int = 1, num_classes: int = 1
    ) -> None:
        super().__init__()
        self.channels = _check_channels("tiny3d", channels)
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        prev = in_chans
        for width in self.channels:
            # conv then bn in one nn.Sequential: covidzoo folds the pair with no declaration.
            layers += [
                nn.Conv3d(prev, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm3d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        self.features = nn.Sequential(*layers)
        self.num_features = prev
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's feature map, `B x num_features x d x h x w`."""
        return self.features(x)


class ConvBlock2d(nn.Module):
    """3x3 conv (stride 2, no bias) -> BatchNorm -> ReLU."""

    # For covidzoo's BatchNorm folding: forward computes bn(conv(x)).
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Tiny2D(TimmHead):
    """Strided 3x3 conv blocks on CT slices (`channels`: the output channels of each), global
    average or max pool (`pool`), linear head."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), pool: str = "avg",
                 in_chans: int = 1, num_classes: int = 1) -> None:
        super().__init__()
        if pool not in POOLS:
            raise BadInputError(f"tiny2d: pool '{pool}' is unknown; choose from {', '.join(POOLS)}")
        self.channels = _check_channels("tiny2d", channels)
        self.pool_type = pool
        self.in_chans = in_chans
        chans = (in_chans, *self.channels)
        self.blocks = nn.Sequential(*(ConvBlock2d(a, b) for a, b in zip(chans, chans[1:],
                                                                          strict=False)))
        self.num_features = chans[-1]
        self.reset_classifier(num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3)) if self.pool_type == "max" else x.mean(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's feature map, `N x num_features x h x w`."""
        return self.blocks(x)

    def complexity(self, input_size: Sequence[int]) -> dict[str, Any]:
        """Parameters and FLOPs per block for one slice of `input_size` (H, W), for
        `covidzoo models show tiny2d`."""
        if len(input_size) != 2:
            raise BadInputError(f"tiny2d: input size is H,W, got {tuple(input_size)}")
        return _complexity(self.channels, self.in_chans, self.num_classes, input_size)


def tiny3d(**kwargs: Any) -> Tiny3D:
    """Tiny 3D CNN: four strided conv blocks (example plugin)."""
    return Tiny3D(**kwargs)


def tiny2d(**kwargs: Any) -> Tiny2D:
    """Tiny 2D CNN on slices: three strided conv blocks (example plugin)."""
    return Tiny2D(**kwargs)


class FlipMean(nn.Module):
    """Wrap a 3D backbone: the logits of a scan are `(1 - weight) * f(x) + weight * f(mirror)`,
    where the mirror flips left and right (the last axis). `weight=0.5`, the default, is the
    mean; `weight=0` is the backbone alone (one pass). Set it with
    `covidzoo train BACKBONE --aggregator flip-mean --aggregator-arg weight=0.25`."""

    def __init__(self, backbone: nn.Module, weight: float = 0.5) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                0.0 <= weight <= 1.0):
            raise BadInputError(f"flip-mean: weight must be a number in [0, 1], got {weight!r}")
        self.backbone = backbone
        self.weight = float(weight)
        self.num_classes = getattr(backbone, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise BadInputError(f"flip-mean takes scans B x C x D x H x W, got {tuple(x.shape)}")
        logits = self.backbone(x)
        if self.weight == 0.0:
            return logits
        mirrored = self.backbone(x.flip(-1))
        if self.weight == 0.5:
            return (logits + mirrored) / 2
        return (1.0 - self.weight) * logits + self.weight * mirrored

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
