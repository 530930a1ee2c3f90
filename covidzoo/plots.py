"""ROC plots as PNG files, drawn with Pillow (matplotlib is not a dependency of covidzoo).

The picture follows Figure 1 of the 3D RegNet paper and what a paper's figure needs to stand on
its own: the number of scans of each class, each curve in its own colour-blind-safe colour
(Okabe and Ito) with its AUC in the legend, best first, the highlighted curve (the fusion, or
the single evaluated model) thick and black on top, a bootstrap confidence band and AUC
interval when they were computed, the chance diagonal dashed, and the operating point (the
threshold in use) ringed on the highlighted curve.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .errors import BadInputError
from .fileio import atomic_write

if TYPE_CHECKING:
    from .metrics import RocBand

HIGHLIGHT = (0, 0, 0)
# Okabe-Ito, black left out (the highlight's): blue, vermillion, bluish green, reddish purple,
# orange, sky blue, yellow. Members beyond seven repeat the colours, dashed.
PALETTE = (
    (0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0),
    (86, 180, 233), (240, 228, 66),
)
BAND = (150, 150, 150)  # the confidence band, drawn translucent
BAND_ALPHA = 90
GREY = (130, 130, 130)
GRID = (228, 228, 228)
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


def default_font(size: int) -> Any:
    """PIL's default font at `size` pixels (a scalable font since Pillow 10.1 with FreeType);
    the small fixed bitmap font on an older Pillow. Nothing to install, nothing to find."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 takes no size
        return ImageFont.load_default()


@dataclass(frozen=True)
class Curve:
    """One ROC curve to draw: its points, its legend label and its AUC.

    `highlight` draws it thick and black on top (the fusion, or the single evaluated model);
    others get a colour each. `n_covid` and `n_non_covid` (the scans behind the curve) are
    printed under the title; `band` (a `metrics.RocBand`) is drawn as a translucent band around
    the highlighted curve, its AUC interval in the legend.
    """

    fpr: Sequence[float]
    tpr: Sequence[float]
    label: str
    auc: float | None = None
    highlight: bool = False
    n_covid: int | None = None
    n_non_covid: int | None = None
    band: RocBand | None = None

    @classmethod
    def from_scores(
        cls, label: str, labels: ArrayLike, probs: ArrayLike, highlight: bool = False,
        n_boot: int = 0, seed: int = 0, level: float = 0.95,
    ) -> Curve:
        """The ROC curve of `probs` against `labels` (both classes needed); with `n_boot`, its
        pointwise bootstrap band (`metrics.bootstrap_roc_band`, the resamples of
        `bootstrap_ci` for the same `seed`)."""
        from .metrics import bootstrap_roc_band, check_binary, roc_auc, roc_curve

        y, p = check_binary(labels, probs)
        fpr, tpr, _ = roc_curve(y, p)
        band = bootstrap_roc_band(y, p, n_boot, seed, level) if n_boot else None
        n_covid = int(y.sum())
        return cls(fpr.tolist(), tpr.tolist(), label, roc_auc(y, p), highlight, n_covid,
                   len(y) - n_covid, band)


def _check(curve: Curve) -> None:
    fpr, tpr = np.asarray(curve.fpr, float), np.asarray(curve.tpr, float)
    if fpr.shape != tpr.shape or fpr.ndim != 1 or len(fpr) < 2:
        raise BadInputError(f"ROC curve '{curve.label}' needs as many FPR as TPR values, >= 2")
    if not (np.isfinite(fpr).all() and np.isfinite(tpr).all()):
        raise BadInputError(f"ROC curve '{curve.label}' has non-finite points")


def _dashed(draw: Any, points: list[tuple[float, float]], fill: tuple[int, int, int],
            width: int, dash: float, gap: float) -> None:
    """A dashed polyline: `dash` pixels drawn, `gap` left out, along the line's length."""
    pts = np.asarray(points, float)
    lengths = np.hypot(*np.diff(pts, axis=0).T)
    where = np.concatenate([[0.0], np.cumsum(lengths)])
    for start in np.arange(0.0, where[-1], dash + gap):
        stops = np.linspace(start, min(start + dash, where[-1]), 8)
        xs = np.interp(stops, where, pts[:, 0])
        ys = np.interp(stops, where, pts[:, 1])
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=fill, width=width)


def _auc_text(curve: Curve) -> str:
    text = "AUC n/a" if curve.auc is None else f"AUC {curve.auc:.3f}"
    if curve.band is not None and curve.band.auc is not None:
        low, high = curve.band.auc
        text += f" ({curve.band.level:.0%} CI {low:.3f}-{high:.3f})"
    return text


def save_roc_png(
    path: str | os.PathLike[str],
    curves: Sequence[Curve],
    operating_point: tuple[float, float] | None = None,
    title: str | None = None,
    size: int = 640,
    operating_label: str = "operating point",
    notes: Sequence[str] = (),
) -> Path:
    """Draw `curves` into a `size x size` PNG at `path`, written atomically; returns the path.

    `operating_point` is `(fpr, tpr)` of the threshold in use, ringed and listed in the legend
    as `operating_label`. The title defaults to "ROC curve"; under it come the scan counts of
    the highlighted curve (when known) and `notes`, one line each. The legend lists the
    highlighted curve, then the others by AUC, best first. The file is written to a temporary
    file in the same folder and renamed, so a reader never sees half a PNG.
    """
    from PIL import Image, ImageDraw

    if not curves:
        raise BadInputError("no ROC curve to plot")
    if size < 200:
        raise BadInputError(f"ROC plot size must be at least 200 pixels, got {size}")
    for curve in curves:
        _check(curve)

    k = size / 640
    fonts = {name: default_font(max(8, round(px * k)))
             for name, px in (("title", 18), ("text", 14), ("small", 12))}
    image = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(image)
    main = next((c for c in curves if c.highlight), curves[0])
    members = [c for c in curves if c is not main]

    header = [title or "ROC curve"]
    if main.n_covid is not None and main.n_non_covid is not None:
        header.append(f"n = {main.n_covid + main.n_non_covid} scans: {main.n_covid} covid, "
                      f"{main.n_non_covid} non-covid")
    header += list(notes)
    y = 8 * k
    for i, line in enumerate(header):
        font = fonts["title"] if i == 0 else fonts["small"]
        draw.text((size / 2, y), line, fill=BLACK if i == 0 else GREY, font=font, anchor="ma")
        y += (26 if i == 0 else 17) * k

    # a square plot area below the header, room for the axis titles and tick labels
    left, bottom = 78 * k, size - 52 * k
    side = min(size - 20 * k - left, bottom - (y + 8 * k))
    top, right = bottom - side, left + side
    left += (size - 20 * k - right) / 2
    right = left + side

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * side, bottom - tpr * side

    _unit_grid(draw, (left, top, right, bottom), fonts["small"], k, x_labels=True)
    draw.text(((left + right) / 2, size - 6 * k), "False positive rate (1 - specificity)",
              fill=BLACK, font=fonts["text"], anchor="md")
    ytitle = "True positive rate (sensitivity)"
    box = draw.textbbox((0, 0), ytitle, font=fonts["text"])
    label = Image.new("RGB", (box[2] + 4, box[3] + 4), WHITE)
    ImageDraw.Draw(label).text((2, 2), ytitle, fill=BLACK, font=fonts["text"])
    label = label.rotate(90, expand=True)
    image.paste(label, (round(8 * k), round((top + bottom - label.height) / 2)))

    width = max(2, round(2 * k))
    band = main.band
    if band is not None:
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        outline = [xy(f, t) for f, t in zip(band.fpr, band.high, strict=True)]
        outline += [xy(f, t) for f, t in zip(band.fpr[::-1], band.low[::-1], strict=True)]
        ImageDraw.Draw(overlay).polygon(outline, fill=(*BAND, BAND_ALPHA))
        image.paste(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))
        draw = ImageDraw.Draw(image)
    _dashed(draw, [xy(0, 0), xy(1, 1)], GREY, 1, 6 * k, 5 * k)
    draw.rectangle([left, top, right, bottom], outline=BLACK)

    ranked = sorted(members, key=lambda c: -np.inf if c.auc is None else -c.auc)
    best = ranked[0] if len(ranked) > 1 else None  # drawn a little thicker
    styles = {id(c): (PALETTE[i % len(PALETTE)], i >= len(PALETTE)) for i, c in
              enumerate(members)}
    for curve in [*reversed(ranked), main]:  # the best member last of the members, main on top
        points = [xy(f, t) for f, t in zip(curve.fpr, curve.tpr, strict=True)]
        if curve is main:
            draw.line(points, fill=HIGHLIGHT, width=2 * width, joint="curve")
            continue
        color, dashed = styles[id(curve)]
        line_width = round(1.5 * width) if curve is best else width
        if dashed:
            _dashed(draw, points, color, line_width, 9 * k, 5 * k)
        else:
            draw.line(points, fill=color, width=line_width, joint="curve")
    if operating_point is not None:
        x, yy = xy(*operating_point)
        r = 6 * k
        draw.ellipse([x - r, yy - r, x + r, yy + r], outline=HIGHLIGHT, width=width, fill=WHITE)

    # the legend, lower right inside the plot: what the eye compares first, best first
    entries: list[tuple[str, str, tuple[int, int, int], bool]] = [
        ("main", f"{main.label}: {_auc_text(main)}", HIGHLIGHT, False)]
    if band is not None:
        entries.append(("band", f"{band.level:.0%} pointwise bootstrap band "
                                f"({band.n_boot} resamples)", BAND, False))
    for curve in ranked:
        mark = " (best member)" if curve is best else ""
        entries.append(("line", f"{curve.label}: {_auc_text(curve)}{mark}", *styles[id(curve)]))
    if operating_point is not None:
        entries.append(("point", operating_label, HIGHLIGHT, False))
    row, swatch, pad = 19 * k, 26 * k, 7 * k
    text_w = max(draw.textlength(e[1], font=fonts["small"]) for e in entries)
    box_w = min(pad * 3 + swatch + text_w, side - 2 * pad)
    box_h = pad * 2 + row * len(entries)
    x0, y0 = right - pad - box_w, bottom - pad - box_h
    draw.rectangle([x0, y0, x0 + box_w, y0 + box_h], fill=WHITE, outline=GREY)
    for i, (kind, text, color, dashed) in enumerate(entries):
        cy = y0 + pad + row * (i + 0.5)
        sx0, sx1 = x0 + pad, x0 + pad + swatch
        if kind == "band":
            tint = tuple(round(255 + (c - 255) * BAND_ALPHA / 255) for c in BAND)
            draw.rectangle([sx0, cy - 5 * k, sx1, cy + 5 * k], fill=tint)
        elif kind == "point":
            r = 5 * k
            mid = (sx0 + sx1) / 2
            draw.ellipse([mid - r, cy - r, mid + r, cy + r], outline=color, width=width)
        elif dashed:
            _dashed(draw, [(sx0, cy), (sx1, cy)], color, width, 7 * k, 4 * k)
        else:
            draw.line([(sx0, cy), (sx1, cy)], fill=color,
                      width=2 * width if kind == "main" else width)
        draw.text((sx1 + pad, cy), text, fill=BLACK, font=fonts["small"], anchor="lm")

    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _unit_grid(draw: Any, box: tuple[float, float, float, float], font: Any, k: float,
               x_labels: bool) -> None:
    """The grid of a [0, 1] x [0, 1] plot in `box` (left, top, right, bottom), every 0.2, with
    the y axis's labels and, when `x_labels`, the x axis's."""
    left, top, right, bottom = box
    for tick in np.linspace(0, 1, 6):
        x, y = left + tick * (right - left), bottom - tick * (bottom - top)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(left, y), (right, y)], fill=GRID)
        if x_labels:
            draw.text((x, bottom + 5 * k), f"{tick:.1f}", fill=BLACK, font=font, anchor="ma")
        draw.text((left - 6 * k, y), f"{tick:.1f}", fill=BLACK, font=font, anchor="rm")


def save_reliability_png(path: str | os.PathLike[str], confidence: Sequence[float],
                         observed: Sequence[float], counts: Sequence[int], title: str,
                         notes: Sequence[str] = (), size: int = 640) -> Path:
    """A reliability diagram (DeGroot & Fienberg 1983): per bin of predicted probability, the
    mean prediction against how often the scans were positive (or, for classes, how often the
    top class was right), each bin a dot sized by its scans, on the diagonal of perfect
    calibration; a histogram of the bins' scans below. Written atomically."""
    from PIL import Image, ImageDraw

    if size < 200:
        raise BadInputError(f"reliability plot size must be at least 200 pixels, got {size}")
    k = size / 640
    fonts = {name: default_font(max(8, round(px * k)))
             for name, px in (("title", 18), ("text", 14), ("small", 12))}
    image = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(image)
    y = 8 * k
    for i, line in enumerate([title, *notes]):
        draw.text((size / 2, y), line, fill=BLACK if i == 0 else GREY,
                  font=fonts["title"] if i == 0 else fonts["small"], anchor="ma")
        y += (26 if i == 0 else 17) * k
    left, right = 78 * k, size - 24 * k
    hist_h = 70 * k
    bottom = size - 52 * k - hist_h - 10 * k
    side = min(right - left, bottom - (y + 8 * k))
    top = bottom - side
    right = left + side

    def xy(conf: float, obs: float) -> tuple[float, float]:
        return left + conf * side, bottom - obs * side

    _unit_grid(draw, (left, top, right, bottom), fonts["small"], k, x_labels=False)
    _dashed(draw, [xy(0, 0), xy(1, 1)], GREY, 1, 6 * k, 5 * k)
    draw.rectangle([left, top, right, bottom], outline=BLACK)
    draw.text((left + 4 * k, top + 4 * k), "observed frequency", fill=BLACK, font=fonts["text"])
    total = max(sum(counts), 1)
    points = [(c, o, n) for c, o, n in zip(confidence, observed, counts, strict=True) if n]
    if len(points) > 1:
        draw.line([xy(c, o) for c, o, _ in points], fill=HIGHLIGHT, width=max(2, round(2 * k)))
    for c, o, n in points:
        x, yy = xy(c, o)
        r = (3 + 9 * math.sqrt(n / total)) * k
        draw.ellipse([x - r, yy - r, x + r, yy + r], fill=HIGHLIGHT, outline=WHITE)
    # the histogram of scans per bin, under the plot on the same x axis
    h_top, h_bottom = bottom + 10 * k, bottom + 10 * k + hist_h
    draw.rectangle([left, h_top, right, h_bottom], outline=GREY)
    peak = max((n for *_, n in points), default=1)
    for c, _, n in points:
        x = left + c * side
        draw.rectangle([x - 3 * k, h_bottom - n / peak * (hist_h - 4 * k), x + 3 * k, h_bottom],
                       fill=GREY)
    for tick in np.linspace(0, 1, 6):
        draw.text((left + tick * side, h_bottom + 5 * k), f"{tick:.1f}", fill=BLACK,
                  font=fonts["small"], anchor="ma")
    draw.text(((left + right) / 2, size - 6 * k), "predicted probability (mean per bin)",
              fill=BLACK, font=fonts["text"], anchor="md")
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


__all__ = ["Curve", "default_font", "save_reliability_png", "save_roc_png"]
