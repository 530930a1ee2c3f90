"""Layers shared by the built-in backbones.

Convolution and BatchNorm stay separate named submodules (`conv`, `bn`) so that BatchNorm can be
folded into the convolution for inference later, and every module works on channels-last
tensors: nothing reshapes or copies activations on the way.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNormAct3d(nn.Module):
    """Conv3d (no bias, "same" padding) -> BatchNorm3d -> ReLU (in place) or nothing."""

    # For covidzoo.models.folding: `bn` is applied right after `conv` in forward.
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm3d(out_chs)
        # In place is safe: the input of the ReLU is the fresh output of the BatchNorm.
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite3d(nn.Module):
    """Squeeze-excitation (Hu et al.): channel gates from the globally pooled activations."""

    def __init__(self, chs: int, rd_chs: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(chs, rd_chs, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv3d(rd_chs, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3, 4), keepdim=True))))
        return x * gate.sigmoid()


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability `drop_prob`, rescale
    the kept ones so the expectation is unchanged. The identity outside training."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """`drop_path` as a module, for residual branches."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
