"""ROC plots: a valid PNG of the asked size, red fusion over grey members, atomic write."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidzoo.errors import BadInputError
from covidzoo.plots import RED, Curve, save_roc_png


def count(image: Image.Image, color: tuple[int, int, int]) -> int:
    return int((np.asarray(image.convert("RGB")) == color).all(axis=-1).sum())


def test_roc_png_has_members_fusion_and_operating_point(tmp_path):
    labels = np.arange(40) % 2
    rng = np.random.default_rng(0)
    members = [
        Curve.from_scores(f"model {i}", labels, labels + rng.normal(0, 0.8, 40)) for i in range(3)
    ]
    fused = Curve.from_scores("fusion", labels, labels + rng.normal(0, 0.4, 40), highlight=True)
    path = save_roc_png(tmp_path / "out" / "roc.png", [*members, fused],
                        operating_point=(0.2, 0.8), size=320)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (320, 320)
    assert count(image, RED) > 300  # the thick red fused curve
    assert count(image, (150, 150, 150)) > 300  # grey member curves and the diagonal
    assert [p.name for p in path.parent.iterdir()] == ["roc.png"]  # no temporary file left


def test_single_curve_with_given_points(tmp_path):
    path = save_roc_png(tmp_path / "roc.png", [Curve([0, 0, 1], [0, 1, 1], "perfect", 1.0, True)],
                        title="perfect model")
    assert Image.open(path).size == (640, 640)
    # the red curve runs up the left axis: red pixels in the left column of the plot area
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert (pixels[100:500, 70:85] == RED).all(axis=-1).any()


def test_bad_curves_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no ROC curve"):
        save_roc_png(tmp_path / "roc.png", [])
    with pytest.raises(BadInputError, match="as many FPR as TPR"):
        save_roc_png(tmp_path / "roc.png", [Curve([0, 1], [0], "bad")])
    assert not (tmp_path / "roc.png").exists()
