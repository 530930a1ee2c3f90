"""Read a folder of 8-bit slice images (the COV19-CT-DB layout: `0.jpg, 1.jpg, ...`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .volume import Volume

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


def slice_files(folder: Path) -> tuple[list[Path], int]:
    """The image files of `folder` named by an integer, in numeric order (2 before 10), and
    how many other image files were skipped for a non-numeric name."""
    numbered: list[tuple[int, Path]] = []
    skipped = 0
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem.isdigit():
            numbered.append((int(p.stem), p))
        else:
            skipped += 1
    return [p for _, p in sorted(numbered)], skipped


def _load(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInputError(f"{path}: not a readable image ({exc})") from exc


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((shape[1], shape[0]), Image.BILINEAR))


def read_slices(path: str | os.PathLike[str], workers: int | None = None) -> Volume:
    """Read a folder of integer-named JPG/PNG slices into a `Volume` of 8-bit values.

    Non-numeric names are skipped (and counted in a warning); slices whose size differs from the
    first slice's are resized to it, since exporters sometimes crop a few slices differently.
    The spacing is unknown in this format and reported as 1.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder of slice images")
    files, skipped = slice_files(folder)
    if not files:
        raise BadInputError(f"{folder}: no slice images named by a number (0.jpg, 1.jpg, ...)")
    n = workers or min(8, (os.cpu_count() or 1) * 2)
    if n > 1 and len(files) > 1:
        with ThreadPoolExecutor(n) as pool:
            images = list(pool.map(_load, files))
    else:
        images = [_load(p) for p in files]
    warnings = [f"{skipped} image(s) with a non-numeric name skipped"] if skipped else []
    shape = images[0].shape
    odd = [i for i, image in enumerate(images) if image.shape != shape]
    if odd:
        warnings.append(
            f"{len(odd)} slice(s) resized to {shape[0]}x{shape[1]}, e.g. {files[odd[0]].name}"
        )
        for i in odd:
            images[i] = _resize(images[i], shape)
    array = np.stack(images).astype(np.float32)
    return Volume(array, (1.0, 1.0, 1.0), str(folder), "slices", warnings, None, "uint8")
