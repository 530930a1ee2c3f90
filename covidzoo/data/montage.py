"""A look at a scan that reads on its own: axial, coronal and sagittal cuts side by side, each
named and with its orientation marks, on one physical scale, with the window and the voxel
spacing in a caption (Pillow only; PIL's default font, so it works on a bare machine).

Orientation follows the readers' order: slices run inferior to superior, rows anterior to
posterior, columns from the patient's right to left (DICOM slices sorted along the slice normal
of an axial series). Slice images and arrays record no orientation and often no spacing: the
caption then says "assumed".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..plots import default_font
from .volume import Volume

PANEL_SIZE = 320  # pixels given to the longest physical extent of the scan
LUNG_HU = -500.0  # darker than this and enclosed by the body: lung (or airway)
LUNG_GREY = 128  # the same for 8-bit slices, whose window is unknown: darker than mid-grey
TICK = (240, 228, 66)  # Okabe-Ito yellow: where the other two cuts lie
OUTLINE = (0, 158, 115)  # Okabe-Ito bluish green: the lung mask's outline
OUTLINE_PX = 2  # its width on the sheet, inside the mask
TEXT = (235, 235, 235)
NOTE = (170, 170, 170)
MARGIN = 24  # around each panel: orientation letters and ticks
GAP = 20  # between panels

# Formats whose files record the patient's orientation, which their readers apply.
ORIENTED = ("dicom", "nifti", "itk")


@dataclass(frozen=True)
class _Cut:
    """One panel: its name, where it cuts, its pixels as shown and its orientation marks."""

    view: str
    where: str
    pixels: np.ndarray  # uint8, rows top to bottom as shown
    height_mm: float
    width_mm: float
    marks: tuple[str, str, str, str]  # top, bottom, left, right
    ticks_x: float  # another cut, as a fraction of the width (ticks above and below)
    ticks_y: float  # the third cut, as a fraction of the height (ticks left and right)
    mask: np.ndarray | None = None  # the lung mask's cut, as `pixels` (bool), or none


def lung_cuts(values: np.ndarray, dark: float) -> tuple[int, int, int] | None:
    """The slice, row and column with the most lung: voxels darker than `dark` that the body
    encloses in their axial slice (the air around the body touches the slice's edge). None when
    there is hardly any."""
    from scipy import ndimage

    steps = [max(1, s // 128) for s in values.shape]  # a coarse grid is enough to choose cuts
    small = values[::steps[0], ::steps[1], ::steps[2]] < dark
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # connected within a slice only
    labels, _ = ndimage.label(small, structure)
    edges = np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                            labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    lung = small & ~np.isin(labels, np.unique(edges))
    if lung.sum() < max(8, lung.size // 2000):
        return None
    k, j, i = (int(np.argmax(lung.sum(axis=axes))) * step
               for axes, step in (((1, 2), steps[0]), ((0, 2), steps[1]), ((0, 1), steps[2])))
    return k, j, i


def _mask_cuts(mask: np.ndarray) -> tuple[int, int, int] | None:
    """The slice, row and column with the largest area of `mask`; None when it holds no voxel
    or every voxel (it says nothing about where the lungs are)."""
    if not mask.any() or mask.all():
        return None
    k, j, i = (int(np.argmax(mask.sum(axis=axes))) for axes in ((1, 2), (0, 2), (0, 1)))
    return k, j, i


def _outlined(panel: Any, mask: np.ndarray) -> Any:
    """`panel` (an RGB image) with the outline of `mask` painted over it, drawn at the panel's
    resolution: the mask resized with NEAREST, less its erosion."""
    from PIL import Image
    from scipy import ndimage

    shown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        panel.size, Image.NEAREST)) > 0
    edge = shown & ~ndimage.binary_erosion(shown, iterations=OUTLINE_PX)
    pixels = np.array(panel)
    pixels[edge] = OUTLINE
    return Image.fromarray(pixels)


def _spacing_note(volume: Volume) -> str | None:
    """Why the spacing is assumed, or None when the source gave it."""
    if volume.kind == "slices":
        return "assumed: slice images carry no spacing"
    if volume.kind == "array":
        path = Path(volume.source)
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    if "spacing" in data.files:
                        return None
        except (OSError, ValueError):
            pass
        return "assumed: the array file gave none"
    if any("no PixelSpacing" in w for w in volume.warnings):
        return "in-plane assumed: no PixelSpacing"
    if any("ordered by" in w for w in volume.warnings):
        return "slice spacing not measured: no slice positions"
    return None


def _cuts(volume: Volume, grey: np.ndarray,
          mask: np.ndarray | None = None) -> tuple[list[_Cut], str]:
    d, h, w = grey.shape
    dz, dy, dx = volume.spacing
    dark = LUNG_GREY if volume.intensity == "uint8" else LUNG_HU
    found = None if mask is None else _mask_cuts(mask)
    if found is not None:
        k, j, i = found
        how = "cuts through the most lung of the lung mask"
    else:
        found = lung_cuts(volume.array, dark)
        if found is None:
            k, j, i = d // 2, h // 2, w // 4
            how = "no lung found: mid-slice, mid-row, sagittal at a quarter of the width"
        else:
            k, j, i = found
            how = "cuts through the most lung (dark voxels enclosed by the body)"
        if mask is not None:
            how = ("lung mask empty" if not mask.any() else "lung mask is the whole scan") \
                + "; " + how
    side = "right" if i < w / 2 else "left"
    masks = [None] * 3 if mask is None else [
        mask[k], np.flipud(mask[:, j, :]), np.flipud(mask[:, :, i])]
    cuts = [
        _Cut("axial", f"slice {k + 1} of {d}", grey[k], h * dy, w * dx,
             ("A", "P", "R", "L"), (i + 0.5) / w, (j + 0.5) / h, masks[0]),
        _Cut("coronal", f"row {j + 1} of {h}", np.flipud(grey[:, j, :]), d * dz, w * dx,
             ("S", "I", "R", "L"), (i + 0.5) / w, 1 - (k + 0.5) / d, masks[1]),
        _Cut("sagittal", f"column {i + 1} of {w}, {side} side", np.flipud(grey[:, :, i]),
             d * dz, h * dy, ("S", "I", "A", "P"), (j + 0.5) / h, 1 - (k + 0.5) / d, masks[2]),
    ]
    return cuts, how


def _scale_bar_mm(px_per_mm: float) -> int:
    fits = [mm for mm in (10, 20, 50, 100, 200, 500) if mm * px_per_mm <= 0.4 * PANEL_SIZE]
    return fits[-1] if fits else 10


def _number(value: float) -> str:
    return f"{value:g}"


def montage(volume: Volume, window: tuple[float, float] = (-600.0, 1500.0),
            mask: np.ndarray | None = None) -> object:
    """An RGB `PIL.Image` of three labelled cuts of `volume`, on one physical scale.

    The cuts pass through the most lung (for HU volumes, voxels below -500 HU that the body
    encloses; for 8-bit slices, below mid-grey), else through the middle, the sagittal one at a
    quarter of the width so that it misses the spine. HU volumes are shown through `window`
    (level, width); 8-bit volumes as stored. Yellow ticks mark where the other two cuts lie.

    `mask`, a lung mask of the volume's shape (`lungs.lung_mask`), decides the cuts instead:
    the slice, row and column with the largest area of it (unless it is empty or the whole
    scan), and each panel shows its outline in bluish green, as the caption says.
    """
    from PIL import Image, ImageDraw

    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != volume.shape:
            raise BadInputError(f"lung mask of shape {mask.shape} for a volume of shape "
                                f"{volume.shape}")
    if volume.intensity == "uint8":
        grey = np.clip(volume.array, 0, 255).astype(np.uint8)
        window_text = "window: none, 8-bit slices shown as stored (their exporter windowed them)"
    else:
        level, width = window
        unit = np.clip((volume.array - (level - width / 2)) / width, 0.0, 1.0)
        grey = (unit * 255 + 0.5).astype(np.uint8)
        window_text = f"window: level {_number(level)} HU, width {_number(width)} HU"
    cuts, how = _cuts(volume, grey, mask)
    px_per_mm = PANEL_SIZE / max(max(c.height_mm, c.width_mm) for c in cuts)

    spacing_note = _spacing_note(volume)
    dz, dy, dx = volume.spacing
    spacing = " x ".join(f"{s:.3g}" for s in (dz, dy, dx))
    d, h, w = volume.shape
    orientation = ("slices inferior to superior, rows anterior to posterior, columns patient "
                   "right to left")
    lines = [
        (f"{Path(volume.source).name}: {volume.kind}, {d} x {h} x {w} voxels (D x H x W), "
         f"spacing {spacing} mm" + (f" ({spacing_note})" if spacing_note else ""), TEXT),
        (window_text, TEXT),
        ("orientation: " + orientation
         + ("" if volume.kind in ORIENTED else " (assumed: the format records none)"), NOTE),
        (f"{how}; yellow ticks: where the other two cuts lie"
         + ("; bluish green: the lung mask's outline" if mask is not None else ""), NOTE),
    ]
    title_font, label_font, note_font = default_font(17), default_font(15), default_font(13)
    header = 46
    panels_h = max(max(1, round(c.height_mm * px_per_mm)) for c in cuts) + 2 * MARGIN
    widths = [max(1, round(c.width_mm * px_per_mm)) + 2 * MARGIN for c in cuts]
    text_w = max(note_font.getlength(line) for line, _ in lines)
    width_px = round(max(sum(widths) + GAP * (len(cuts) + 1), text_w + 2 * GAP))
    height_px = header + panels_h + 10 + 18 * (len(lines) + 1) + 10
    sheet = Image.new("RGB", (width_px, height_px), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)

    def text(xy: tuple[float, float], value: str, font: object, fill: tuple[int, int, int],
             anchor: str = "la") -> None:
        draw.text(xy, value, font=font, fill=fill, anchor=anchor)

    x = GAP
    for cut, cell_w in zip(cuts, widths, strict=True):
        w_px, h_px = cell_w - 2 * MARGIN, max(1, round(cut.height_mm * px_per_mm))
        left, top = x + MARGIN, header + MARGIN
        image = Image.fromarray(np.ascontiguousarray(cut.pixels)).resize((w_px, h_px),
                                                                        Image.BILINEAR)
        panel = image.convert("RGB")
        if cut.mask is not None:
            panel = _outlined(panel, cut.mask)
        sheet.paste(panel, (left, top))
        text((x + cell_w / 2, 4), cut.view, title_font, TEXT, "ma")
        text((x + cell_w / 2, 25), cut.where, note_font, NOTE, "ma")
        top_mark, bottom_mark, left_mark, right_mark = cut.marks
        text((left + w_px / 2, top - 9), top_mark, label_font, TEXT, "md")
        text((left + w_px / 2, top + h_px + 9), bottom_mark, label_font, TEXT, "ma")
        text((left - 9, top + h_px / 2), left_mark, label_font, TEXT, "rm")
        text((left + w_px + 9, top + h_px / 2), right_mark, label_font, TEXT, "lm")
        tx, ty = left + cut.ticks_x * w_px, top + cut.ticks_y * h_px
        for y0, y1 in ((top - 6, top - 1), (top + h_px + 1, top + h_px + 6)):
            draw.line([(tx, y0), (tx, y1)], fill=TICK, width=2)
        for x0, x1 in ((left - 6, left - 1), (left + w_px + 1, left + w_px + 6)):
            draw.line([(x0, ty), (x1, ty)], fill=TICK, width=2)
        x += cell_w + GAP

    y = header + panels_h + 10
    for line, fill in lines:
        text((GAP, y), line, note_font, fill)
        y += 18
    bar_mm = _scale_bar_mm(px_per_mm)
    bar_px = bar_mm * px_per_mm
    draw.line([(GAP, y + 8), (GAP + bar_px, y + 8)], fill=TEXT, width=3)
    for end in (GAP, GAP + bar_px):
        draw.line([(end, y + 3), (end, y + 13)], fill=TEXT, width=2)
    text((GAP + bar_px + 8, y + 8), f"{bar_mm} mm" + (" (at the assumed spacing)"
                                                      if spacing_note else ""), note_font,
         TEXT, "lm")
    return sheet
