"""BatchNorm folding for inference: `conv -> bn` becomes one conv with adjusted weights.

In eval mode a BatchNorm is an affine map per channel, so folding it into the convolution that
feeds it is exact (up to float rounding) and removes a memory-bound pass over every activation.

Which convolution feeds which BatchNorm is declared, not guessed: a module lists its pairs in a
`conv_bn_pairs` attribute (covidzoo's `ConvNormAct3d` does), known timm blocks are listed in
`KNOWN_PAIRS`, and in an `nn.Sequential` a BatchNorm right after a conv is folded. A declared
name may be a dotted path from the declaring module (`("block.conv", "block.bn")`), for a block
whose forward computes `bn(conv(x))` across its own submodules.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm
# Only plain BatchNorms fold: a subclass may do more in its forward (timm's BatchNormAct2d applies
# an activation and dropout after normalising), which a folded convolution would drop.
_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Class name -> (conv attribute, bn attribute) pairs used as bn(conv(x)) in its forward. Names
# may be dotted paths to submodules, as in `conv_bn_pairs`.
KNOWN_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "timm.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "timm.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "timm.models.resnet.ResNet": (("conv1", "bn1"),),
}


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BN) for m in model.modules())


def _pairs_of(module: nn.Module) -> tuple[tuple[str, str], ...]:
    declared = getattr(module, "conv_bn_pairs", None)
    if declared is not None:
        return tuple(declared)
    cls = type(module)
    return KNOWN_PAIRS.get(f"{cls.__module__}.{cls.__qualname__}", ())


def _parent(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module that holds the submodule at dotted `path` below `module`, and its name."""
    parent_path, _, name = path.rpartition(".")
    return (module.get_submodule(parent_path) if parent_path else module), name


def _fold_into(module: nn.Module, conv_path: str, bn_path: str) -> None:
    """Fold the BatchNorm at `bn_path` into the conv at `conv_path` (attribute names or dotted
    paths below `module`); anything but a conv and a BatchNorm with running stats is left."""
    (conv_parent, conv_name), (bn_parent, bn_name) = _parent(module, conv_path), _parent(
        module, bn_path)
    conv, bn = getattr(conv_parent, conv_name), getattr(bn_parent, bn_name)
    if isinstance(conv, _CONV) and type(bn) in _PLAIN_BN and bn.track_running_stats:
        setattr(conv_parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(bn_parent, bn_name, nn.Identity())


def _fold(module: nn.Module) -> None:
    for conv_name, bn_name in _pairs_of(module):
        _fold_into(module, conv_name, bn_name)
    if isinstance(module, nn.Sequential):
        names = [name for name, _ in module.named_children()]
        for first, second in zip(names, names[1:], strict=False):
            _fold_into(module, first, second)
    for child in module.children():
        _fold(child)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every declared `conv -> bn` pair folded.

    The original model is left untouched; the copy is for inference only (its folded
    convolutions no longer match the training-time parametrisation).
    """
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        _fold(model)
    return model


@torch.no_grad()
def max_fold_error(model: nn.Module, folded: nn.Module, example: torch.Tensor) -> float:
    """Largest absolute output difference between `model` and its folded copy on `example`."""
    model.eval()
    return float((model(example) - folded(example)).abs().max())
