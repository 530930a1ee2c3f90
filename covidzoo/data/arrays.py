"""Read `.npy` / `.npz` files holding one `D x H x W` volume."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .volume import Volume

ARRAY_SUFFIXES = frozenset({".npy", ".npz"})


def read_array(path: str | os.PathLike[str]) -> Volume:
    """Read a `D x H x W` array; an `.npz` holds it as `volume` (or as its only array) and may
    hold `spacing` (3 numbers). A uint8 array is taken as already windowed, anything else as HU.
    """
    path = Path(path)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            names = [k for k in arrays if k != "spacing"]
            if "volume" in arrays:
                array = arrays["volume"]
            elif len(names) == 1:
                array = arrays[names[0]]
            else:
                raise BadInputError(
                    f"{path}: .npz holds {len(names)} arrays; name the volume 'volume'"
                )
            if "spacing" in arrays:
                values = np.asarray(arrays["spacing"], dtype=float).ravel()
                if values.size != 3:
                    raise BadInputError(f"{path}: 'spacing' must hold 3 numbers")
                spacing = (float(values[0]), float(values[1]), float(values[2]))
        else:
            array = np.load(path, allow_pickle=False)
    except BadInputError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise BadInputError(f"{path}: not a readable numpy file ({exc})") from exc
    if array.ndim != 3:
        raise BadInputError(f"{path}: expected a D x H x W array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
        raise BadInputError(f"{path}: expected a real numeric array, got {array.dtype}")
    intensity = "uint8" if array.dtype == np.uint8 else "hu"
    return Volume(
        array.astype(np.float32), spacing, str(path), "array", [], None, intensity
    )
