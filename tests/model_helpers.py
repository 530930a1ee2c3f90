"""Tiny random checkpoints for the inference and evaluation tests, and the reference route to
their probabilities (the unfolded model on each raw scan, one at a time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import covidzoo
from covidzoo.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from covidzoo.data import PreprocessConfig, load_scan
from covidzoo.transforms import to_model_input

TINY = {"depths": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "stem_width": 8, "group_widths": 8,
        "zero_init_last": False}



def make_checkpoint(path: Path, size, seed: int, threshold=None, backbone="regnet3d",
                    aggregator="volume", model_args=None) -> Path:
    """A random model whose BatchNorm statistics are not the identity (so folding matters)."""
    model_args = dict(TINY if model_args is None else model_args)
    torch.manual_seed(seed)
    model = covidzoo.create_model(backbone, aggregator=aggregator, **model_args)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, *size) * 2 + 0.5)
    spec = ModelSpec(backbone, model_args, aggregator, {},
                     PreprocessConfig(size=size).to_dict(), threshold)
    return save_checkpoint(path, model.eval(), spec)


def hand_probs(checkpoint: Path, scans) -> np.ndarray:
    """The unfolded model on each raw scan, one at a time: the reference every route must match."""
    model, spec = load_checkpoint(checkpoint)
    model.eval()
    cfg = PreprocessConfig.from_dict(spec.preprocess)
    out = []
    with torch.no_grad():
        for scan in scans:
            x = to_model_input(torch.from_numpy(load_scan(scan, cfg))[None, None])
            out.append(float(torch.sigmoid(model(x)).reshape(-1)[0]))
    return np.asarray(out)
