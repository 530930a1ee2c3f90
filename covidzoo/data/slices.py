"""Read a folder of 8-bit slice images (the COV19-CT-DB layout: `0.jpg, 1.jpg, ...`)."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .listing import list_folder
from .volume import Volume

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


def slice_files(folder: Path) -> tuple[list[Path], int]:
    """The image files of `folder` named by an integer, in numeric order (2 before 10), and
    how many other image files were skipped for a non-numeric name."""
    numbered: list[tuple[int, Path]] = []
    skipped = 0
    for p in list_folder(folder):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem.isdigit():
            numbered.append((int(p.stem), p))
        else:
            skipped += 1
    return [p for _, p in sorted(numbered)], skipped


# PIL modes that hold 8-bit grey or colour; anything else (16-bit "I;16", 32-bit "I" and "F")
# would be clipped to 0-255 by a conversion to "L", which is not a faithful read.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK",
                              "YCbCr", "LAB", "HSV"})


def _load(path: Path) -> np.ndarray:
    """One slice as 8-bit grey; a 16-bit image, a multi-page file or a decompression bomb
    (PIL's pixel limit) is bad input rather than read wrongly."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in _EIGHT_BIT_MODES:
                raise BadInputError(
                    f"{path}: {image.mode} image; covidzoo reads 8-bit slices only (a lossy "
                    "conversion would clip it): convert the scan to DICOM or a HU .npy"
                )
            pages = getattr(image, "n_frames", 1)
            if pages > 1:
                raise BadInputError(f"{path}: {pages} pages in one image; save one slice per "
                                    "file (0.png, 1.png, ...)")
            return np.asarray(image.convert("L"))
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadInputError(f"{path}: image too large ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
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
    images = _load_all(files, workers or min(8, (os.cpu_count() or 1) * 2))
    notes = [f"{skipped} image(s) with a non-numeric name skipped"] if skipped else []
    shape = images[0].shape
    odd = [i for i, image in enumerate(images) if image.shape != shape]
    if odd:
        notes.append(
            f"{len(odd)} slice(s) resized to {shape[0]}x{shape[1]}, e.g. {files[odd[0]].name}"
        )
        for i in odd:
            images[i] = _resize(images[i], shape)
    return Volume(np.stack(images), (1.0, 1.0, 1.0), str(folder), "slices", notes, None,
                  "uint8", files=[str(p) for p in files])


def _load_all(files: list[Path], workers: int) -> list[np.ndarray]:
    """Every slice, by `workers` threads; PIL's decompression-bomb warning is an error here
    (the filter is process-wide, so it is set around the whole pool, not per thread)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if workers > 1 and len(files) > 1:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(_load, files))
        return [_load(p) for p in files]
