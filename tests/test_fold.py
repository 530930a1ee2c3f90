from __future__ import annotations

import pytest
import torch
from torch import nn

import covidzoo
from covidzoo.models.folding import count_batchnorms, fold_batchnorm, max_fold_error


def trained_stats(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Run a few train-mode passes so BatchNorm running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x * 3 + 1)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "aggregator", "shape", "kwargs", "left"),
    [
        ("regnet3d", "volume", (2, 1, 16, 32, 32), {"depths": [1, 1, 1, 1],
                                                   "zero_init_last": False}, 0),
        ("tiny3d", "flip-mean", (2, 1, 16, 32, 32), {}, 0),
        # densenet's BatchNorms come before their convs (pre-activation), and its stem's
        # norm0 is timm's BatchNormAct2d (a ReLU inside): they stay.
        ("resdense2d", "slice-mean", (1, 1, 3, 64, 64), {"backbones": "resnet18,densenet121"},
         121),
    ],
)
def test_folding_is_exact_and_removes_the_batchnorms(name, aggregator, shape, kwargs, left):
    x = torch.randn(*shape)
    model = trained_stats(covidzoo.create_model(name, aggregator=aggregator, **kwargs), x)
    before = count_batchnorms(model)
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == left < before
    assert count_batchnorms(model) == before  # the original is untouched
    assert max_fold_error(model, folded, x) < 1e-5


def test_sequential_pairs_fold_and_other_orders_do_not():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    folded = fold_batchnorm(trained_stats(model, torch.randn(2, 1, 8, 8)))
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[3], nn.BatchNorm2d)
    assert max_fold_error(model, folded, torch.randn(2, 1, 8, 8)) < 1e-5


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(4)


class Outer(nn.Module):
    """Declares the pair of a submodule by dotted paths: `Inner` declares nothing itself."""

    conv_bn_pairs = (("block.conv", "block.bn"), ("stem", "norms.0"))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, 2, 3, padding=1)
        self.norms = nn.ModuleList([nn.BatchNorm3d(2)])
        self.block = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norms[0](self.stem(x)))
        return self.block.bn(self.block.conv(x))


def test_dotted_pairs_fold_nested_modules():
    x = torch.randn(2, 1, 6, 8, 8)
    model = trained_stats(Outer(), x)
    folded = fold_batchnorm(model)
    assert isinstance(folded.block.bn, nn.Identity) and isinstance(folded.norms[0], nn.Identity)
    assert count_batchnorms(folded) == 0 and count_batchnorms(model) == 2
    assert max_fold_error(model, folded, x) < 1e-5


def test_a_dotted_pair_that_names_no_module_is_an_error():
    model = Outer()
    model.conv_bn_pairs = (("block.conv", "block.norm"),)
    with pytest.raises(AttributeError, match="norm"):
        fold_batchnorm(model)


def test_a_batchnorm_with_an_activation_inside_is_not_folded():
    """timm's BatchNormAct2d normalises, then applies a ReLU: folding it into the conv before it
    would drop the ReLU (densenet121's stem, conv0 -> norm0)."""
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(1, 4, 3), BatchNormAct2d(4))
    x = torch.randn(2, 1, 8, 8)
    folded = fold_batchnorm(trained_stats(model, x))
    assert isinstance(folded[1], BatchNormAct2d)
    assert max_fold_error(model, folded, x) == 0
