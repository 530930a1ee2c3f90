"""A quick look at a scan: axial, coronal and sagittal mid-slices side by side (Pillow only)."""

from __future__ import annotations

import numpy as np

from .volume import Volume

PANEL_HEIGHT = 256


def montage(volume: Volume, window: tuple[float, float] = (-600.0, 1500.0)) -> object:
    """A grey `PIL.Image` of the three mid-slices, each scaled to its physical aspect ratio.

    HU volumes are shown through `window` (level, width); 8-bit volumes as they are. Coronal
    and sagittal panels put the last slice on top, so a feet-to-head series stands upright.
    """
    from PIL import Image

    if volume.intensity == "uint8":
        grey = np.clip(volume.array, 0, 255).astype(np.uint8)
    else:
        level, width = window
        unit = np.clip((volume.array - (level - width / 2)) / width, 0.0, 1.0)
        grey = (unit * 255 + 0.5).astype(np.uint8)
    d, h, w = grey.shape
    dz, dy, dx = volume.spacing
    panels = [
        (grey[d // 2], h * dy, w * dx),
        (np.flipud(grey[:, h // 2, :]), d * dz, w * dx),
        (np.flipud(grey[:, :, w // 2]), d * dz, h * dy),
    ]
    images = []
    for array, height_mm, width_mm in panels:
        width_px = max(1, round(PANEL_HEIGHT * width_mm / max(height_mm, 1e-6)))
        image = Image.fromarray(np.ascontiguousarray(array))
        images.append(image.resize((width_px, PANEL_HEIGHT), Image.BILINEAR))
    gap = 4
    sheet = Image.new("L", (sum(i.width for i in images) + gap * 2, PANEL_HEIGHT), 0)
    x = 0
    for image in images:
        sheet.paste(image, (x, 0))
        x += image.width + gap
    return sheet
