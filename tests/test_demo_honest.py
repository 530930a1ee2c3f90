"""The demo's label lives in its lesions, not in global statistics: one patient rendered with
covid findings and with non-covid ones differs only there, by the same density, and a model
trained on demo data ranks the covid rendering higher.

The speed of the whole demo, its trivial baselines and the main command's AUC on a fresh seed
are measured by `benchmarks/bench_demo_cpu.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from covidzoo import hookimpl, plugins
from covidzoo.data.synthetic import phantom
from covidzoo.evaluation import predict
from covidzoo.train import TrainConfig, train

SHAPE = (32, 64, 64)  # rendered at the demo's training size: nothing to resize
PAIRS = 24


def pair(k: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Patient `k` (anatomy and scanner) rendered with covid findings and with non-covid ones."""
    covid, other = (phantom(np.random.default_rng([2, k]), shape, covid=c,
                            anatomy=np.random.default_rng([3, k])) for c in (True, False))
    return covid, other


def test_one_patient_with_either_findings_differs_only_in_the_lungs_by_equal_density():
    """What tells the classes apart is not how much the findings add: between two renderings
    of one patient the mean HU and the ground-glass voxel count barely move, while between
    patients they move a lot."""
    shape = (24, 64, 64)
    means, glass = [], []
    for k in range(8):
        covid, other = pair(k, shape)
        assert (np.abs(covid - other) > 1).mean() < 0.15  # the same noise: only findings move
        means.append([covid.mean(), other.mean()])
        glass.append([((v > -700) & (v < -150)).sum() for v in (covid, other)])
    means, glass = np.asarray(means), np.asarray(glass, dtype=np.float64)
    assert np.abs(means[:, 0] - means[:, 1]).max() < 0.05 * means[:, 0].std()
    assert np.abs(glass[:, 0] - glass[:, 1]).mean() < 0.2 * glass[:, 0].std()


class MaxPoolNet(nn.Module):
    """Three conv blocks and a global max pool: "is this pattern anywhere?". regnet3d's global
    average pool needs 6 to 9 epochs of the full demo (minutes) before it finds the lesions'
    shape; this finds it in two or three epochs of a smaller set, so the test can afford it."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans

        def block(i: int, o: int, stride: int) -> list[nn.Module]:
            return [nn.Conv3d(i, o, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm3d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(in_chans, 16, 2), *block(16, 32, 1),
                                      nn.MaxPool3d(2), *block(32, 64, 1))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3, 4)))


class MaxPoolNetPlugin:
    @hookimpl
    def register_backbones(self, register):
        register("maxpool3d-test", MaxPoolNet, spatial_dims=3, input_size=SHAPE)


@contextmanager
def maxpool_net_registered() -> Iterator[None]:
    pm = plugins.get_plugin_manager()
    pm.register(MaxPoolNetPlugin(), name="maxpool3d-test")
    try:
        yield
    finally:
        pm.unregister(name="maxpool3d-test")


def _write(root: Path, seed: int, n: int, split: str) -> None:
    for i in range(n):
        covid = i % 2 == 0
        folder = root / split / ("covid" if covid else "non-covid")
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"scan_{i:04d}.npy",
                phantom(np.random.default_rng([seed, i]), SHAPE, covid=covid))


@pytest.mark.slow
def test_a_demo_trained_model_ranks_the_covid_rendering_of_one_patient_higher(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    _write(data, seed=0, n=128, split="train")
    _write(data, seed=1, n=32, split="val")
    scans = []
    for k in range(PAIRS):
        for name, volume in zip(("covid", "other"), pair(k), strict=True):
            scans.append(tmp_path / f"pair{k:02d}-{name}.npy")
            np.save(scans[-1], volume)
    with maxpool_net_registered():
        summary = train(TrainConfig(backbone="maxpool3d-test", data=str(data), size=SHAPE,
                                    epochs=6, lr=3e-3, device="cpu", out=str(tmp_path / "run")),
                        quiet=True)
        probs = [p.probability for p in predict(Path(summary["out"]) / "best.safetensors",
                                                scans, device="cpu").predictions]
    covid, other = np.asarray(probs[0::2]), np.asarray(probs[1::2])
    assert summary["best_val_auc"] >= 0.85, summary
    assert np.mean(covid > other) >= 0.9, list(zip(covid.round(3), other.round(3), strict=True))
