"""covidzoo-example: the torch code, imported only when a component is built."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Tiny3D(nn.Module):
    """Strided 3x3x3 conv + BatchNorm + ReLU blocks, global average pool, linear head."""

    def __init__(
        self, widths: Sequence[int] = (8, 16, 32, 64), in_chans: int = 1, num_classes: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for width in widths:
            layers += [
                nn.Conv3d(prev, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm3d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        self.features = nn.Sequential(*layers)
        self.num_features = prev
        self.num_classes = num_classes
        self.head = nn.Linear(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3, 4))
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def tiny3d(**kwargs) -> Tiny3D:
    """Tiny 3D CNN: four strided conv blocks (example plugin)."""
    return Tiny3D(**kwargs)


class FlipMean(nn.Module):
    """Wrap a 3D backbone: the logit of a scan is the mean over the scan and its mirror."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.backbone(x) + self.backbone(x.flip(-1))) / 2
