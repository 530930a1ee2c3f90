"""The on-disk cache of preprocessed scans, and the training `Dataset` that reads it.

Decoding a CT scan costs about a CPU-second; a GPU trains on hundreds of volumes a second. So
every scan is preprocessed once into its own `.npy` file (uint8 `D x H x W`, memory-mappable)
and `index.json` lists them with the `PreprocessConfig` that made them. A scan is redone only
when its source changed (file count, bytes, newest mtime) or the config did. Every file is
written to a temporary name and renamed into place, so an interrupted run leaves no half-written
volume or index behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import BadInputError, one_line
from ..fileio import atomic_write, atomic_write_bytes
from ..progress import progress_bar
from .layouts import ScanRecord
from .paths import prepared_dir
from .preprocess import PreprocessConfig, preprocess
from .readers import read_scan

INDEX_NAME = "index.json"
INDEX_FORMAT = 1
VOLUMES = "volumes"


@dataclass
class PrepareResult:
    """What `prepare_cache` did: scans built (`done`), already up to date (`skipped`), and
    `failed` as `(source, reason)` pairs."""

    cache_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0

    @property
    def scans_per_s(self) -> float:
        """Scans built per second of wall time (0 when nothing was built)."""
        return len(self.done) / self.seconds if self.done and self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.cache_dir),
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": [{"source": s, "reason": r} for s, r in self.failed],
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "scans_per_s": round(self.scans_per_s, 3),
        }


def source_fingerprint(path: Path) -> dict[str, int]:
    """File count, total bytes and newest mtime of a scan (its files, for a folder): what tells
    that a scan changed without reading it."""
    is_dir = path.is_dir()
    stats = [e.stat() for e in os.scandir(path) if e.is_file()] if is_dir else [path.stat()]
    return {
        "files": len(stats),
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


def save_volume(path: Path, array: np.ndarray) -> None:
    """Write `array` as `.npy` atomically (temporary file, then rename)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a path
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def write_index(cache_dir: Path, cfg: PreprocessConfig, entries: Sequence[dict[str, Any]]) -> None:
    data = {"format": INDEX_FORMAT, "config": cfg.to_dict(), "entries": list(entries)}
    text = json.dumps(data, indent=1).encode()
    atomic_write_bytes(cache_dir / INDEX_NAME, text)


def read_index(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The cache's index: `{"format", "config", "entries": [...]}`."""
    path = Path(cache_dir) / INDEX_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BadInputError(f"{cache_dir}: not a covidzoo cache (no {INDEX_NAME})") from exc
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: unreadable cache index ({exc})") from exc
    if data.get("format") != INDEX_FORMAT:
        raise BadInputError(f"{path}: cache format {data.get('format')}, expected {INDEX_FORMAT}")
    return data


def _volume_name(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24] + ".npy"


def _build(source: str, cfg_dict: dict[str, Any], target: str) -> tuple[list[int], list[str]]:
    """Read, preprocess and store one scan (in a worker process when workers > 0)."""
    volume = read_scan(source)
    array = preprocess(volume, PreprocessConfig.from_dict(cfg_dict))
    save_volume(Path(target), array)
    return list(array.shape), volume.warnings


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe


def prepare_cache(
    records: Iterable[ScanRecord],
    out_dir: str | os.PathLike[str],
    cfg: PreprocessConfig | None = None,
    workers: int = 1,
    strict: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Preprocess every record into `out_dir`, skipping scans already there and up to date.

    A scan that fails is listed in `PrepareResult.failed` with its reason and skipped; with
    `strict` the first failure raises `BadInputError`. The cache mirrors `records`: volumes of
    scans no longer listed are removed. `workers` processes build the scans (0: this process).
    """
    cfg = cfg or PreprocessConfig()
    if workers < 0:
        raise BadInputError(f"--workers must be at least 0, got {workers}")
    out = Path(out_dir)
    volumes = out / VOLUMES
    volumes.mkdir(parents=True, exist_ok=True)
    try:
        index = read_index(out)
    except BadInputError:
        index = {"config": None, "entries": []}
    old = {e["source"]: e for e in index["entries"]}
    same_config = index["config"] == cfg.to_dict()
    result = PrepareResult(out, workers=workers)
    entries: dict[str, dict[str, Any]] = {}
    todo: list[tuple[ScanRecord, str, dict[str, int]]] = []
    for record in records:
        source = str(Path(record.path).resolve())
        try:
            fingerprint = source_fingerprint(Path(source))
        except OSError as exc:
            result.failed.append((str(record.path), f"{record.path}: {exc.strerror}"))
            if strict:
                raise BadInputError(result.failed[-1][1]) from exc
            continue
        entry = old.get(source)
        if (same_config and entry is not None and entry["fingerprint"] == fingerprint
                and (out / entry["file"]).exists()):
            entries[source] = {**entry, "label": record.label, "split": record.split}
            result.skipped.append(source)
        else:
            todo.append((record, source, fingerprint))

    start = time.perf_counter()
    flushed = start

    def finish(record: ScanRecord, source: str, fingerprint: dict[str, int],
               outcome: tuple[list[int], list[str]] | BaseException) -> None:
        nonlocal flushed
        if isinstance(outcome, BaseException):
            result.failed.append((source, one_line(outcome)))
            if strict:
                write_index(out, cfg, list(entries.values()))
                raise BadInputError(one_line(outcome)) from outcome
            return
        shape, warnings = outcome
        entries[source] = {
            "source": source, "file": f"{VOLUMES}/{_volume_name(source)}",
            "label": record.label, "split": record.split, "fingerprint": fingerprint,
            "shape": shape, "warnings": warnings,
        }
        result.done.append(source)
        if time.perf_counter() - flushed > 2.0:  # a killed run keeps what it finished
            write_index(out, cfg, list(entries.values()))
            flushed = time.perf_counter()

    with progress_bar(len(todo), "preparing", enabled=progress, rate_unit="scans") as advance:
        if workers == 0 or len(todo) <= 1:
            for record, source, fingerprint in todo:
                try:
                    target = str(volumes / _volume_name(source))
                    outcome: Any = _build(source, cfg.to_dict(), target)
                except Exception as exc:
                    outcome = exc
                finish(record, source, fingerprint, outcome)
                advance()
        else:
            _run_pool(todo, cfg, volumes, workers, finish, advance)
    result.seconds = time.perf_counter() - start
    write_index(out, cfg, sorted(entries.values(), key=lambda e: (e["split"], e["source"])))
    keep = {Path(e["file"]).name for e in entries.values()}
    for stale in volumes.iterdir():  # volumes of scans no longer listed, and killed runs' temps
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return result


def _run_pool(todo: list[tuple[ScanRecord, str, dict[str, int]]], cfg: PreprocessConfig,
              volumes: Path, workers: int, finish: Callable[..., None],
              advance: Callable[[], None]) -> None:
    import multiprocessing

    # spawn, not fork: a forked child of a process that already ran torch can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        pending = {
            pool.submit(_build, source, cfg.to_dict(), str(volumes / _volume_name(source))):
            (record, source, fingerprint)
            for record, source, fingerprint in todo
        }
        try:
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    record, source, fingerprint = pending.pop(future)
                    error = future.exception()
                    finish(record, source, fingerprint, error or future.result())
                    advance()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


class CachedScans(Dataset):
    """The scans of a prepared cache as `(uint8 tensor 1 x D x H x W, label)` pairs.

    `split` keeps one split ("train", "val", "test"). Unlabeled scans have label -1. Volumes are
    opened with `numpy.load(mmap_mode="r")`, so a worker reads only the volume it returns.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], split: str | None = None) -> None:
        self.root = Path(cache_dir)
        index = read_index(self.root)
        self.config = PreprocessConfig.from_dict(index["config"])
        self.entries = [e for e in index["entries"] if split is None or e["split"] == split]
        if split is not None and not self.entries:
            raise BadInputError(f"{cache_dir}: no scans in split '{split}'")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        entry = self.entries[i]
        array = np.load(self.root / entry["file"], mmap_mode="r")
        label = entry["label"]
        return torch.from_numpy(np.array(array))[None], -1 if label is None else int(label)

    @property
    def labels(self) -> list[int]:
        """Every scan's label (-1 when unknown), without reading any volume."""
        return [-1 if e["label"] is None else int(e["label"]) for e in self.entries]

    @property
    def sources(self) -> list[str]:
        """Every scan's source path, in dataset order."""
        return [e["source"] for e in self.entries]


def cache_dir_for(source: str | os.PathLike[str], cfg: PreprocessConfig) -> Path:
    """The cache folder that `train`, `evaluate` and `ensemble` use for a data source.

    One folder per (source, preprocessing) pair under the user cache directory: a cache mirrors
    the records it was prepared from, so two data sets or two configs must not share one.
    """
    return prepared_dir(source, cfg.to_dict())
