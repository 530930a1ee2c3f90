"""The data layer: readers, dataset layouts, preprocessing, the on-disk cache, demo data.

Names are imported on first use, so `import covidzoo.data` imports numpy but not torch (only
`CachedScans`, `prepare_cache` and a resizing `preprocess` need it).
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported now: the function `preprocess` must shadow the submodule of the same name, which
# the import system would otherwise set as this package's attribute on first import.
from .preprocess import PreprocessConfig as PreprocessConfig
from .preprocess import load_scan as load_scan
from .preprocess import preprocess as preprocess

_EXPORTS = {
    "Volume": "volume",
    "read_dicom": "dicom",
    "read_slices": "slices",
    "read_array": "arrays",
    "read_scan": "readers",
    "scan_format": "readers",
    "ScanRecord": "layouts",
    "find_scans": "layouts",
    "stratified_split": "layouts",
    "Fold": "layouts",
    "kfold_splits": "layouts",
    "read_split_csv": "layouts",
    "write_split_csv": "layouts",
    "Geometry": "preprocess",
    "prepare_scan": "preprocess",
    "lung_mask": "lungs",
    "CachedScans": "cache",
    "PrepareResult": "cache",
    "prepare_cache": "cache",
    "read_index": "cache",
    "cache_dir_for": "cache",
    "synthesize": "synthetic",
    "demo_data": "synthetic",
    "cache_root": "paths",
    "DEMO_SHAPE": "synthetic",
    "DEMO_SIZE": "sources",
    "DataSource": "sources",
    "data_source": "sources",
    "scan_size": "sources",
    "TrainingData": "sources",
    "training_data": "sources",
}

__all__ = sorted([*_EXPORTS, "PreprocessConfig", "load_scan", "preprocess"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'covidzoo.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
