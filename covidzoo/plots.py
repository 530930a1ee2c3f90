"""ROC plots as PNG files, drawn with Pillow (matplotlib is not a dependency of covidzoo).

The picture follows Figure 1 of the 3D RegNet paper: the members' curves in grey, the fused
curve in red on top, the chance diagonal dashed, the AUC of each curve in the legend and the
operating point (the threshold in use) marked on the highlighted curve.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .errors import BadInputError
from .fileio import atomic_write

GREY = (150, 150, 150)
RED = (214, 39, 40)
BLACK = (0, 0, 0)
GRID = (228, 228, 228)
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Curve:
    """One ROC curve to draw: its points, its legend label and its AUC.

    `highlight` draws it in red and thicker (the fusion, or the single evaluated model); others
    are grey.
    """

    fpr: Sequence[float]
    tpr: Sequence[float]
    label: str
    auc: float | None = None
    highlight: bool = False

    @classmethod
    def from_scores(
        cls, label: str, labels: ArrayLike, probs: ArrayLike, highlight: bool = False
    ) -> Curve:
        """The ROC curve of `probs` against `labels` (both classes needed)."""
        from .metrics import roc_auc, roc_curve

        fpr, tpr, _ = roc_curve(labels, probs)
        return cls(fpr.tolist(), tpr.tolist(), label, roc_auc(labels, probs), highlight)


def save_roc_png(
    path: str | os.PathLike[str],
    curves: Sequence[Curve],
    operating_point: tuple[float, float] | None = None,
    title: str | None = None,
    size: int = 640,
) -> Path:
    """Draw `curves` into a `size x size` PNG at `path`, written atomically; returns the path.

    `operating_point` is `(fpr, tpr)` of the threshold in use, marked with a ring. The title
    defaults to the AUC of the highlighted curve. The file is written to a temporary file in
    the same folder and renamed, so a reader never sees half a PNG.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not curves:
        raise BadInputError("no ROC curve to plot")
    if size < 200:
        raise BadInputError(f"ROC plot size must be at least 200 pixels, got {size}")
    for curve in curves:
        fpr, tpr = np.asarray(curve.fpr, float), np.asarray(curve.tpr, float)
        if fpr.shape != tpr.shape or fpr.ndim != 1 or len(fpr) < 2:
            raise BadInputError(f"ROC curve '{curve.label}' needs as many FPR as TPR values, >= 2")
        if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
            raise BadInputError(f"ROC curve '{curve.label}' has non-finite points")

    font = ImageFont.load_default()
    image = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(image)
    left, top = int(size * 0.12), int(size * 0.09)
    right, bottom = size - int(size * 0.04), size - int(size * 0.1)

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * (right - left), bottom - tpr * (bottom - top)

    for tick in np.linspace(0, 1, 6):
        x, y = xy(tick, tick)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((x, bottom + 4), f"{tick:.1f}", fill=BLACK, font=font, anchor="mt")
        draw.text((left - 4, y), f"{tick:.1f}", fill=BLACK, font=font, anchor="rm")
    for a in np.linspace(0, 1, 41)[::2]:  # the chance diagonal, dashed
        draw.line([xy(a, a), xy(a + 0.025, a + 0.025)], fill=GREY, width=1)
    draw.rectangle([left, top, right, bottom], outline=BLACK)
    draw.text(((left + right) / 2, size - 4), "false positive rate (1 - specificity)",
              fill=BLACK, font=font, anchor="md")
    draw.text((4, top - 16), "true positive rate (sensitivity)", fill=BLACK, font=font)

    width = max(2, size // 200)
    ordered = sorted(curves, key=lambda c: c.highlight)  # highlighted curves on top
    for curve in ordered:
        points = [xy(f, t) for f, t in zip(curve.fpr, curve.tpr, strict=True)]
        color, line_width = (RED, 2 * width) if curve.highlight else (GREY, width)
        draw.line(points, fill=color, width=line_width, joint="curve")
    if operating_point is not None:
        x, y = xy(*operating_point)
        r = 3 * width
        draw.ellipse([x - r, y - r, x + r, y + r], outline=BLACK, width=width)

    legend_y = bottom - 8
    for curve in reversed(ordered):
        auc = "n/a" if curve.auc is None else f"{curve.auc:.3f}"
        color = RED if curve.highlight else GREY
        legend_y -= 14
        draw.line([(right - 200, legend_y), (right - 180, legend_y)], fill=color, width=3)
        draw.text((right - 174, legend_y), f"{curve.label} (AUC {auc})", fill=BLACK, font=font,
                  anchor="lm")

    if title is None:
        main = next((c for c in curves if c.highlight), curves[0])
        title = f"ROC, AUC {main.auc:.3f}" if main.auc is not None else "ROC"
    draw.text((size / 2, 6), title, fill=BLACK, font=font, anchor="mt")

    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


__all__ = ["Curve", "save_roc_png"]
