"""Smoke test for every registered backbone, built-in or from an installed plugin.

Each backbone builds with default and custom `num_classes`, runs forward and backward on a tiny
input, and gives finite outputs. A new backbone is covered without writing a test.
"""

from __future__ import annotations

import pytest

import covidzoo

BACKBONES = covidzoo.list_models(kind="backbone")


def tiny_input(meta, in_chans: int = 1):
    """A batch of 2 at 16x32x32 (3D) or 64x64 (2D), grown to the backbone's `min_input_size`."""
    import torch

    size = (16, 32, 32) if meta["spatial_dims"] == 3 else (64, 64)
    size = tuple(max(s, m) for s, m in zip(size, meta.get("min_input_size", size), strict=True))
    return torch.randn(2, in_chans, *size)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_backbone_forward_backward(name, num_classes):
    import torch

    comp = covidzoo.get_component(name)
    model = covidzoo.create_model(name, num_classes=num_classes)
    x = tiny_input(comp.metadata)
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
    assert len(meta.get("min_input_size", meta["input_size"])) == meta["spatial_dims"]
