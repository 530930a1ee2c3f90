"""3D RegNet: the RegNet of Radosavovic et al. with 3D convolutions, for whole CT volumes.

stem (3x3x3 conv, stride 2) -> stages of residual bottleneck blocks (the first of each stage
has stride 2) -> global average pool -> dropout -> linear. A block is 1x1x1 conv -> 3x3x3 group
conv (carrying the stride) -> optional squeeze-excitation -> 1x1x1 conv, BatchNorm after each
conv, ReLU after the first two and after the residual addition.

The configuration (`RegNet3DCfg`, the named configs, the design space and the analytic
complexity) lives in the torch-free `covidzoo.models.regnet3d_cfg` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import ConvNormAct3d, DropPath, SqueezeExcite3d
from .regnet3d_cfg import (
    REGNET3D_CFGS,
    RegNet3DCfg,
    StageSpec,
    adjust_block_compatibility,
    complexity,
    generate_regnet,
    make_cfg,
    resolve,
    resolve_cfg,
    se_channels,
)


class RegNet3DAdjustmentWarning(UserWarning):
    """A stage's widths or group width were changed to make them compatible."""


class Bottleneck3d(nn.Module):
    """RegNet's residual bottleneck block (the X block, or Y with squeeze-excitation)."""

    def __init__(
        self,
        in_chs: int,
        stage: StageSpec,
        stride: int,
        se_chs: int,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        mid, out = stage.bottleneck_width, stage.width
        self.conv1 = ConvNormAct3d(in_chs, mid, 1)
        self.conv2 = ConvNormAct3d(mid, mid, 3, stride=stride, groups=stage.groups)
        self.se = SqueezeExcite3d(mid, se_chs) if se_chs else nn.Identity()
        self.conv3 = ConvNormAct3d(mid, out, 1, act=False)
        if in_chs != out or stride != 1:
            self.downsample: nn.Module = ConvNormAct3d(in_chs, out, 1, stride=stride, act=False)
        else:
            self.downsample = nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Start as the identity (plus shortcut): the last BatchNorm's scale is zero."""
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        # The sum is a fresh tensor, so the final ReLU may work in place.
        return self.act(self.drop_path(x) + shortcut)


class RegNet3D(nn.Module):
    """3D RegNet backbone with timm's model API.

    Build it from a `RegNet3DCfg` (or its fields as keywords). Widths and group widths that are
    not compatible are adjusted as pycls does; each adjustment is announced with a
    `RegNet3DAdjustmentWarning` and kept in `adjustments`. `cfg` is the resolved configuration
    (explicit per-stage values) that rebuilds this exact network.
    """

    def __init__(self, cfg: RegNet3DCfg | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = RegNet3DCfg(**kwargs) if cfg is None else cfg
        resolved, stages, self.adjustments = resolve(cfg)
        for message in self.adjustments:
            warnings.warn(message, RegNet3DAdjustmentWarning, stacklevel=2)
        self.cfg = resolved
        self.num_classes = resolved.num_classes
        self.drop_rate = resolved.drop_rate
        self.grad_checkpointing = False

        self.stem = ConvNormAct3d(resolved.in_chans, resolved.stem_width, 3, stride=2)
        total_blocks = sum(resolved.depths)
        block_index = 0
        in_chs = resolved.stem_width
        body = OrderedDict()
        for i, stage in enumerate(stages, 1):
            blocks = []
            for j in range(stage.depth):
                rate = resolved.drop_path_rate * block_index / max(total_blocks - 1, 1)
                blocks.append(
                    Bottleneck3d(
                        in_chs,
                        stage,
                        stride=2 if j == 0 else 1,
                        se_chs=se_channels(in_chs, resolved.se_ratio),
                        drop_path_rate=rate,
                    )
                )
                in_chs = stage.width
                block_index += 1
            body[f"s{i}"] = nn.Sequential(*blocks)
        self.stages = nn.Sequential(body)
        self.num_features = in_chs
        self.head = nn.Linear(in_chs, self.num_classes) if self.num_classes else nn.Identity()
        self._init_weights(resolved.zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                # He init on the fan-out divided by the groups, as timm's RegNet does (pycls
                # uses the whole fan-out, groups ignored).
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (fan_out // m.groups)))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck3d):
                    m.zero_init_last()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, more time.

        BatchNorm running statistics are updated again during the recomputation.
        """
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for `num_classes` (0: no head, pooled features)."""
        self.num_classes = num_classes
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes)
        device = next(self.parameters()).device
        if num_classes:
            self.head = nn.Linear(self.num_features, num_classes, device=device)
            nn.init.normal_(self.head.weight, 0.0, 0.01)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, `B x num_features x D' x H' x W'`."""
        x = self.stem(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for stage in self.stages:
                for block in stage:
                    x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify; `pre_logits=True` stops before the linear layer."""
        x = x.mean((2, 3, 4))
        x = F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def complexity(self, input_size: Sequence[int]) -> dict[str, Any]:
        """Parameters and FLOPs, total and per stage, for one volume of `input_size` (D, H, W).

        Analytic, from the configuration; FLOPs count a multiply-add as 2, like
        `torch.utils.flop_counter` (see `covidzoo.models.regnet3d_cfg`).
        """
        return complexity(self.cfg, input_size)


def _create(name: str, **kwargs: Any) -> RegNet3D:
    return RegNet3D(make_cfg(name, **kwargs))


def regnet3d(**kwargs: Any) -> RegNet3D:
    """3D RegNet, depths 2,6,12,4, widths 48,128,256,512, group width 8 (paper, Table 1)."""
    return _create("regnet3d", **kwargs)


def regnet3d_shallow(**kwargs: Any) -> RegNet3D:
    """3D RegNet, depths 1,3,7,4, widths 48,128,256,512, group width 8 (paper, Table 1)."""
    return _create("regnet3d_shallow", **kwargs)


def regnet3d_w64(**kwargs: Any) -> RegNet3D:
    """3D RegNet, depths 2,6,12,4, widths 64,128,256,512, group width 8 (paper, Table 1)."""
    return _create("regnet3d_w64", **kwargs)


__all__ = [
    "REGNET3D_CFGS",
    "Bottleneck3d",
    "RegNet3D",
    "RegNet3DAdjustmentWarning",
    "RegNet3DCfg",
    "StageSpec",
    "adjust_block_compatibility",
    "generate_regnet",
    "make_cfg",
    "regnet3d",
    "regnet3d_shallow",
    "regnet3d_w64",
    "resolve",
    "resolve_cfg",
]
