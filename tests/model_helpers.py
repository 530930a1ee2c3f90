"""Tiny random checkpoints for the inference and evaluation tests, and the reference route to
their probabilities (the unfolded model on each raw scan, one at a time)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import covidzoo
from covidzoo import hookimpl, plugins
from covidzoo.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from covidzoo.data import PreprocessConfig, load_scan, synthesize
from covidzoo.transforms import to_model_input

TINY = {"depths": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "stem_width": 8, "group_widths": 8,
        "zero_init_last": False}



def make_checkpoint(path: Path, size, seed: int, threshold=None, backbone="regnet3d",
                    aggregator="volume", model_args=None, classes=None) -> Path:
    """A random model whose BatchNorm statistics are not the identity (so folding matters);
    binary, or of `classes` (three or more names)."""
    model_args = dict(TINY if model_args is None else model_args)
    if classes is not None:
        model_args["num_classes"] = len(classes)
    torch.manual_seed(seed)
    model = covidzoo.create_model(backbone, aggregator=aggregator, **model_args)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, *size) * 2 + 0.5)
    spec = ModelSpec(backbone, model_args, aggregator, {},
                     PreprocessConfig(size=size).to_dict(), threshold)
    if classes is not None:
        spec.classes = list(classes)
    return save_checkpoint(path, model.eval(), spec)


def hand_probs(checkpoint: Path, scans) -> np.ndarray:
    """The unfolded model on each raw scan, one at a time: the reference every route must match
    (the covid probability per scan, or each scan's row of class probabilities)."""
    model, spec = load_checkpoint(checkpoint)
    model.eval()
    cfg = PreprocessConfig.from_dict(spec.preprocess)
    out = []
    with torch.no_grad():
        for scan in scans:
            x = to_model_input(torch.from_numpy(load_scan(scan, cfg))[None, None])
            logits = model(x).reshape(-1)
            out.append(float(torch.sigmoid(logits)[0]) if len(logits) == 1
                       else torch.softmax(logits, 0).double().numpy())
    return np.asarray(out)


class Tiny2D(nn.Module):
    """A 2D slice backbone small enough for the tests: conv, BatchNorm, ReLU, pool, linear."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.in_chans, self.num_classes = in_chans, num_classes
        self.features = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU())
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Tiny2DPlugin:
    """Registers Tiny2D as `tiny2d-test`."""

    @hookimpl
    def register_backbones(self, register):
        register("tiny2d-test", Tiny2D, spatial_dims=2, input_size=(32, 32))


@contextmanager
def tiny2d_registered() -> Iterator[None]:
    pm = plugins.get_plugin_manager()
    pm.register(Tiny2DPlugin(), name="tiny2d-test")
    try:
        yield
    finally:
        pm.unregister(name="tiny2d-test")


def inference_env(root: Path) -> Iterator[SimpleNamespace]:
    """Synthetic data and three tiny checkpoints under `root`, with a private cache: `a` (3D,
    8 slices, threshold 0.42), `b` (3D, 16 slices, no threshold), `c2d` (a 2D slice model)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COVIDZOO_CACHE", str(root / "cache"))
        data = synthesize(root / "data", n=12, seed=3, fmt="jpg", shape=(12, 40, 40),
                          val_fraction=0.5)
        a = make_checkpoint(root / "a.safetensors", (8, 32, 32), seed=0, threshold=0.42)
        b = make_checkpoint(root / "b.safetensors", (16, 32, 32), seed=1)
        with tiny2d_registered():
            c2d = make_checkpoint(root / "c2d.safetensors", (6, 24, 24), seed=2,
                                  backbone="tiny2d-test", aggregator="slice-mean", model_args={})
        plugins.reset()
        yield SimpleNamespace(root=root, data=data, a=a, b=b, c2d=c2d)
