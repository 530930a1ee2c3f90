"""Read `.npy` / `.npz` files holding one `D x H x W` volume.

An `.npy` header is checked against the file's size before anything is allocated (a header may
claim 10^15 elements), and the values are then read from disk a few slices at a time
(`NpyFile`), so a 2000-slice scan never sits in memory whole. No file is ever unpickled.
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import BadInputError
from .volume import Volume

ARRAY_SUFFIXES = frozenset({".npy", ".npz"})

# What a mangled header or zip can raise while numpy or zipfile parses it.
_PARSE_ERRORS = (ValueError, TypeError, OSError, EOFError, SyntaxError, RecursionError,
                 MemoryError, NotImplementedError, RuntimeError, KeyError, struct.error,
                 zipfile.BadZipFile, zlib.error, tokenize.TokenError)


def _header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype of the `.npy` whose magic starts at `fp`."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except _PARSE_ERRORS as exc:
        raise BadInputError(f"{where}: not a readable numpy file ({exc})") from exc
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _check_header(shape: tuple[int, ...], dtype: np.dtype[Any], data_bytes: int,
                  where: str) -> None:
    """Refuse what is not a real-valued `D x H x W` array of exactly `data_bytes` bytes."""
    if len(shape) != 3:
        raise BadInputError(f"{where}: expected a D x H x W array, got shape {shape}")
    if min(shape) < 1:
        raise BadInputError(f"{where}: empty array of shape {shape}")
    if not (np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)):
        raise BadInputError(f"{where}: expected a real numeric array, got {dtype}")
    needed = math.prod(shape) * dtype.itemsize
    if needed != data_bytes:
        raise BadInputError(
            f"{where}: header says {'x'.join(map(str, shape))} {dtype} ({needed} bytes) but the "
            f"file holds {data_bytes} bytes of data; truncated or corrupt"
        )


class NpyFile:
    """The values of a C-order `.npy`, read from disk a few slices at a time."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any],
                 offset: int) -> None:
        self.path, self.shape, self.dtype, self.offset = path, shape, dtype, offset
        self.ndim = len(shape)

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise ValueError("NpyFile reads contiguous slices only")
        per_slice = math.prod(self.shape[1:])
        count = max(stop - start, 0) * per_slice
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * per_slice * self.dtype.itemsize)
                data = np.fromfile(f, dtype=self.dtype, count=count)
        except OSError as exc:
            raise BadInputError(f"{self.path}: cannot read ({exc.strerror})") from exc
        if data.size != count:
            raise BadInputError(f"{self.path}: file ended early (changed while read?)")
        return data.reshape(-1, *self.shape[1:])


def _read_npy(path: Path) -> np.ndarray | NpyFile:
    with open(path, "rb") as f:
        shape, fortran, dtype = _header(f, str(path))
        offset = f.tell()
    _check_header(shape, dtype, path.stat().st_size - offset, str(path))
    if fortran:  # slices are not contiguous on disk: read through a memory map instead
        return np.load(path, mmap_mode="r", allow_pickle=False)
    return NpyFile(path, shape, dtype, offset)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
                 volume: bool) -> np.ndarray:
    """One array of an `.npz`, its header checked against its stored size before reading."""
    with archive.open(info) as f:
        shape, _, dtype = _header(f, where)
        data_bytes = info.file_size - f.tell()
    if volume:
        _check_header(shape, dtype, data_bytes, where)
    elif math.prod(shape) * dtype.itemsize != data_bytes or math.prod(shape) > 16:
        raise BadInputError(f"{where}: not a small array of numbers")
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_npz(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    spacing = (1.0, 1.0, 1.0)
    with zipfile.ZipFile(path) as archive:
        members = {i.filename.removesuffix(".npy"): i for i in archive.infolist()
                   if i.filename.endswith(".npy")}
        names = [k for k in members if k != "spacing"]
        if "volume" in members:
            name = "volume"
        elif len(names) == 1:
            name = names[0]
        else:
            raise BadInputError(f"{path}: .npz holds {len(names)} arrays; name the volume 'volume'")
        array = _read_member(archive, members[name], f"{path}[{name}]", volume=True)
        if "spacing" in members:
            values = _read_member(archive, members["spacing"], f"{path}[spacing]", volume=False)
            spacing = _spacing(values, path)
    return array, spacing


def _spacing(values: np.ndarray, path: Path) -> tuple[float, float, float]:
    try:
        numbers = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        numbers = np.zeros(0)
    if numbers.size != 3 or not (np.isfinite(numbers).all() and (numbers > 0).all()):
        raise BadInputError(f"{path}: 'spacing' must hold 3 positive numbers (mm)")
    return float(numbers[0]), float(numbers[1]), float(numbers[2])


def read_array(path: str | os.PathLike[str]) -> Volume:
    """Read a `D x H x W` array; an `.npz` holds it as `volume` (or as its only array) and may
    hold `spacing` (3 positive numbers). A uint8 array is taken as already windowed, anything
    else as HU. An `.npy` is read lazily: its values are checked (finite, within
    `volume.HU_RANGE`) as they are read.
    """
    path = Path(path)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    try:
        if path.suffix.lower() == ".npz":
            values: np.ndarray | NpyFile
            values, spacing = _read_npz(path)
        else:
            values = _read_npy(path)
    except BadInputError:
        raise
    except _PARSE_ERRORS as exc:
        raise BadInputError(f"{path}: not a readable numpy file ({exc})") from exc
    intensity = "uint8" if values.dtype == np.uint8 else "hu"
    return Volume(values, spacing, str(path), "array", [], None, intensity)
