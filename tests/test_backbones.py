"""Smoke test for every registered backbone, built-in or from an installed plugin.

Each backbone builds with default and custom `num_classes`, runs forward and backward on a tiny
input, and gives finite outputs. A new backbone is covered without writing a test.
"""

from __future__ import annotations

import pytest

import covidzoo

BACKBONES = covidzoo.list_models(kind="backbone")


def tiny_input(spatial_dims: int, in_chans: int = 1):
    import torch

    shape = (2, in_chans, 16, 32, 32) if spatial_dims == 3 else (2, in_chans, 64, 64)
    return torch.randn(*shape)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_backbone_forward_backward(name, num_classes):
    import torch

    comp = covidzoo.get_component(name)
    model = covidzoo.create_model(name, num_classes=num_classes)
    x = tiny_input(comp.metadata["spatial_dims"])
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_metadata(name):
    meta = covidzoo.get_component(name).metadata
    assert meta["spatial_dims"] in (2, 3)
    assert len(meta["input_size"]) == meta["spatial_dims"]
