"""Where labelled scans come from: a data folder, a CSV manifest, a prepared cache, or (none of
them given) the built-in demo data. `train`, `evaluate`, `ensemble` and `predict` all decide it
here, and the training data sets and their scan size come from here too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInputError
from ..values import BINARY_CLASSES

if TYPE_CHECKING:
    from .cache import CachedScans
    from .layouts import ScanRecord

# What the demo trains on: small enough for a 2-core CPU in a few minutes.
DEMO_SIZE: tuple[int, int, int] = (32, 64, 64)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class DataSource:
    """One data source; at most one of `root`, `manifest`, `cache` is set (none: the demo)."""

    root: Path | None = None
    manifest: Path | None = None
    cache: Path | None = None

    @property
    def is_demo(self) -> bool:
        return self.root is None and self.manifest is None and self.cache is None

    @property
    def name(self) -> str:
        """What reports call it: "demo", or the resolved path of the folder, manifest or cache."""
        if self.is_demo:
            return "demo"
        if self.cache is not None:
            return str(self.cache)
        return str(Path(self.root or self.manifest).resolve())  # type: ignore[arg-type]

    def scan_root(self) -> Path | None:
        """The folder the scans are found under (the demo data is generated on first use)."""
        if self.is_demo:
            from .synthetic import demo_data

            return demo_data()
        return self.root

    def records(self, val_split: float | None = None, seed: int = 0) -> list[ScanRecord]:
        """The scans of a folder, manifest or the demo, with their labels and splits."""
        return self.labelled(val_split, seed)[0]

    def labelled(self, val_split: float | None = None, seed: int = 0
                 ) -> tuple[list[ScanRecord], tuple[str, ...]]:
        """`records` and the class names by label (`layouts.find_labelled`)."""
        from .layouts import find_labelled

        if self.cache is not None:
            raise BadInputError(f"{self.cache}: a prepared cache lists no raw scans")
        return find_labelled(root=self.scan_root(), manifest=self.manifest, val_split=val_split,
                             seed=seed)

    def cache_key(self) -> Path:
        """The path a cache made from this source is keyed by (see `cache_dir_for`)."""
        return Path(self.scan_root() or self.manifest).resolve()  # type: ignore[arg-type]


def data_source(data: PathLike | None = None, manifest: PathLike | None = None,
                cache: PathLike | None = None) -> DataSource:
    """`--data ROOT`, `--manifest CSV` or `--cache DIR` (at most one), else the demo data."""
    given = [flag for flag, value in (("--data", data), ("--manifest", manifest),
                                      ("--cache", cache)) if value is not None]
    if len(given) > 1:
        raise BadInputError(f"give one of {', '.join(given)}, not several")
    return DataSource(*(None if v is None else Path(v) for v in (data, manifest, cache)))


def scan_size(backbone: str, source: DataSource,
              size: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """The scan size of a run: a cache's own (a `size` that differs is bad input: the cache's
    scans are what the run trains on), else `size` when given, the demo's (`DEMO_SIZE`), or the
    backbone's default (`covidzoo.factory.default_scan_size`)."""
    if source.cache is not None:
        from .cache import read_index

        cached = tuple(read_index(source.cache)["config"]["size"])
        if size is not None and tuple(size) != cached:
            raise BadInputError(
                f"--size {'x'.join(map(str, size))} differs from the scans of --cache "
                f"{source.cache} ({'x'.join(map(str, cached))}); leave --size out, or prepare "
                "a cache of that size"
            )
        return cached  # type: ignore[return-value]
    if size is not None:
        return tuple(size)  # type: ignore[return-value]
    if source.is_demo:
        return DEMO_SIZE
    from ..factory import default_scan_size

    return default_scan_size(backbone)


@dataclass
class TrainingData:
    """The train and val data sets of a run, with the preprocessing that made them, the class
    names by label, and the split the run uses (None for a prepared `--cache`, whose index
    holds it)."""

    train: CachedScans
    val: CachedScans
    preprocess: dict[str, Any]
    source: str
    classes: tuple[str, ...] = BINARY_CLASSES
    records: list[ScanRecord] | None = None

    def check(self, batch_size: int) -> None:
        """Refuse data a run cannot train on, naming the source."""
        n_train = len(self.train)
        if n_train == 0:
            raise BadInputError(f"no training scans found in {self.source}")
        if len(self.val) == 0:
            raise BadInputError(
                f"no validation scans in {self.source}; give a val split or --val-split"
            )
        present = set(self.train.labels) - {-1}
        if len(present) < 2:
            raise BadInputError(f"the training scans of {self.source} hold one class only")
        absent = [c for i, c in enumerate(self.classes) if i not in present]
        if absent:
            raise BadInputError(f"the training scans of {self.source} hold no scan of class "
                                f"{', '.join(absent)}")
        if batch_size > n_train:
            raise BadInputError(
                f"--batch-size {batch_size} is larger than the {n_train} training scans"
            )


def training_data(source: DataSource, size: tuple[int, int, int], *,
                  val_split: float | None = None, seed: int = 0, workers: int = 0,
                  quiet: bool = False, prepare: bool = True,
                  steps: dict[str, Any] | None = None,
                  split: list[ScanRecord] | None = None) -> TrainingData:
    """Train and validation data sets from the source's cache, preparing it first when
    `prepare` (in a distributed run only rank 0 prepares; the others open what it made).

    `steps` are the preprocessing steps besides the size (`PreprocessConfig` keywords); a
    prepared cache (`--cache`) must have been prepared with them. `split` (a run's saved
    `split.csv`, a cross-validation fold) decides which scans train and which validate,
    instead of the data's own splits and `val_split`."""
    from .cache import CachedScans, cache_dir_for, prepare_cache
    from .preprocess import PreprocessConfig, describe

    preprocess = PreprocessConfig(size=size, **(steps or {}))
    if source.cache is not None:
        train = CachedScans(source.cache, split="train")
        if steps and train.config != preprocess:
            raise BadInputError(
                f"--preprocess {describe(preprocess)} differs from the scans of --cache "
                f"{source.cache} ({describe(train.config)}); leave --preprocess out, or "
                "prepare a cache with it")
        return TrainingData(train, CachedScans(source.cache, split="val"),
                            train.config.to_dict(), source.name, train.classes)
    cache_dir = cache_dir_for(source.cache_key(), preprocess)
    records, classes = source.labelled(val_split=None if split else val_split, seed=seed)
    if split is not None:
        records = _checked_split(split, records, source)
    if prepare:
        result = prepare_cache(records, cache_dir, preprocess, workers=workers,
                               progress=not quiet, data_set=source.cache_key(),
                               classes=classes)
        if result.failed and not result.done and not result.skipped:
            raise BadInputError(f"every scan of {source.name} failed to read "
                                f"({len(result.failed)}); first: {result.failed[0][1]}")
        if result.failed and not quiet:
            print(f"covidzoo: {len(result.failed)} scan(s) failed to read and were skipped",
                  file=sys.stderr)
    train = CachedScans(cache_dir, split="train", records=records)
    val = CachedScans(cache_dir, split="val", records=records)
    return TrainingData(train, val, preprocess.to_dict(), source.name, classes, records)


def _checked_split(split: list[ScanRecord], records: list[ScanRecord],
                   source: DataSource) -> list[ScanRecord]:
    """A saved split must list the data's own scans with their own labels: the data may not
    have changed under it."""
    own = {str(Path(r.path).resolve()): r.label for r in records}
    for record in split:
        where = str(Path(record.path).resolve())
        if where not in own:
            raise BadInputError(f"the run's split lists {record.path}, which {source.name} no "
                                "longer holds; start a new run (another --out)")
        if own[where] != record.label:
            raise BadInputError(f"the run's split gives {record.path} label {record.label}, "
                                f"{source.name} now {own[where]}; start a new run")
    return split
