"""The on-disk cache of preprocessed scans, and the training `Dataset` that reads it.

Decoding a CT scan costs about a CPU-second; a GPU trains on hundreds of volumes a second. So
every scan is preprocessed once into its own `.npy` file (uint8 `D x H x W`, memory-mappable)
and `index.json` lists them with the `PreprocessConfig` that made them, and each volume's shape,
dtype, size and sha256. A scan is redone only when its source changed (file count, bytes, newest
mtime), the config did, or its volume no longer matches its checksum. Every file is written to
a temporary name and renamed into place, so an interrupted run leaves no half-written volume or
index behind; readers verify what they read, so a file damaged later is refused, never used.
A `prepare` deletes only files the index records as its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import BadInputError, one_line
from ..fileio import atomic_write_bytes, exclusive_lock
from ..progress import progress_bar
from ..values import BINARY_CLASSES, check_classes
from .layouts import ScanRecord
from .paths import prepared_dir
from .preprocess import PreprocessConfig, prepare_scan
from .readers import read_scan

INDEX_NAME = "index.json"
INDEX_FORMAT = 2  # 2: each entry records its volume's dtype, bytes and sha256; "owned" files
VOLUMES = "volumes"
VOLUME_DTYPE = np.dtype(np.uint8).str
SPLIT_NAMES = ("train", "val", "test")
AGAIN = "run `covidzoo data prepare` again"
# Names this module gives the files it writes: `volumes/<24 hex digits>.npy`, and the temporary
# files `atomic_write` makes beside a volume or the index (`.<name>.<random>.tmp`). Nothing else
# in a cache folder is ever deleted: it may be a user's own file, or another data set's cache.
_VOLUME_FILE = re.compile(rf"{VOLUMES}/[0-9a-f]{{24}}\.npy")
_OWN_TEMP = re.compile(r"\.([0-9a-f]{24}\.npy|index\.json)\.[A-Za-z0-9_]+\.tmp")


@dataclass
class PrepareResult:
    """What `prepare_cache` did: scans built (`done`), already up to date (`skipped`), and
    `failed` as `(source, reason)` pairs. `repaired` lists the scans of `done` whose cached
    volume no longer matched its recorded checksum (truncated, zeroed, swapped) and was rebuilt.
    """

    cache_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
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
            "repaired": len(self.repaired),
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


def save_volume(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write `array` as `.npy` atomically (temporary file, then rename); return what the index
    records to verify it later: shape, dtype, bytes and sha256 of the file."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return {"shape": list(array.shape), "dtype": array.dtype.str, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def write_index(cache_dir: Path, cfg: PreprocessConfig, entries: Sequence[dict[str, Any]],
                owned: Iterable[str] = (), data_set: str | None = None,
                classes: Sequence[str] = BINARY_CLASSES) -> None:
    """The index: config, entries, `owned`, every volume file this cache wrote and has not
    deleted yet (the only files a later `prepare` may delete), `data`, the data folder or
    manifest the scans came from when known, and `classes`, the class names by label."""
    files = sorted({e["file"] for e in entries} | set(owned))
    data = {"format": INDEX_FORMAT, "config": cfg.to_dict(), "data": data_set,
            "classes": list(classes), "entries": list(entries), "owned": files}
    atomic_write_bytes(cache_dir / INDEX_NAME, json.dumps(data, indent=1).encode())


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadInputError(f"{path}: unreadable cache index ({one_line(exc)}); {AGAIN}") from exc


def read_index(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The cache's index, `{"format", "config", "entries": [...], "owned": [...]}`, every part
    checked: a label other than 0, 1 or none, a `file` other than the volume this module names
    for the entry's source (nothing outside `volumes/`), a shape other than the config's size,
    a missing key... is a `BadInputError` naming the index."""
    path = Path(cache_dir) / INDEX_NAME
    try:
        data = _load_json(path)
    except FileNotFoundError as exc:
        raise BadInputError(f"{cache_dir}: not a covidzoo cache (no {INDEX_NAME})") from exc
    if not isinstance(data, dict) or "format" not in data:
        raise BadInputError(f"{path}: not a covidzoo cache index")
    if data["format"] != INDEX_FORMAT:
        raise BadInputError(
            f"{path}: cache format {data['format']!r}, expected {INDEX_FORMAT}; {AGAIN}")
    try:
        _check_index(data)
    except (KeyError, TypeError, ValueError) as exc:  # BadInputError is a ValueError
        reason = (one_line(exc, with_type=False) if isinstance(exc, BadInputError)
                  else f"missing key {exc}" if isinstance(exc, KeyError)
                  else f"malformed ({one_line(exc, with_type=False)})")
        raise BadInputError(f"{path}: {reason}; {AGAIN}") from exc
    return data


def _check_index(data: dict[str, Any]) -> None:
    if not isinstance(data["config"], dict):
        raise BadInputError("config is not an object")
    cfg = PreprocessConfig.from_dict(data["config"])
    classes = check_classes(data.setdefault("classes", list(BINARY_CLASSES)))
    if not isinstance(data["entries"], list) or not isinstance(data["owned"], list):
        raise BadInputError("entries and owned must be lists")
    if not isinstance(data.get("data"), str | None):
        raise BadInputError("data must be a path or null")
    seen: set[str] = set()
    for number, entry in enumerate(data["entries"]):
        try:
            _check_entry(entry, cfg, len(classes))
        except BadInputError as exc:
            raise BadInputError(f"entry {number}: {exc}") from exc
        except KeyError as exc:
            raise BadInputError(f"entry {number}: missing key {exc}") from exc
        if entry["source"] in seen:
            raise BadInputError(f"entry {number}: {entry['source']} listed twice")
        seen.add(entry["source"])
    bad = [f for f in data["owned"] if not (isinstance(f, str) and _VOLUME_FILE.fullmatch(f))]
    if bad:
        raise BadInputError(f"owned file {bad[0]!r} is not a volume of this cache")


def _check_entry(entry: Any, cfg: PreprocessConfig, n_classes: int = 2) -> None:
    if not isinstance(entry, dict):
        raise BadInputError("not an object")
    source, file = entry["source"], entry["file"]
    if not isinstance(source, str) or file != volume_file(source):
        raise BadInputError(f"file {file!r} is not the volume of source {source!r}")
    label = entry["label"]
    if label is not None and (type(label) is not int or not 0 <= label < n_classes):
        raise BadInputError(f"label {label!r}; labels are 0 to {n_classes - 1} or null")
    if entry["split"] not in SPLIT_NAMES:
        raise BadInputError(f"split {entry['split']!r}; splits are {', '.join(SPLIT_NAMES)}")
    if entry["shape"] != list(cfg.size) or entry["dtype"] != VOLUME_DTYPE:
        raise BadInputError(f"a {entry['shape']} {entry['dtype']} volume in a cache of "
                            f"{list(cfg.size)} {VOLUME_DTYPE}")
    digest, size = entry["sha256"], entry["bytes"]
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
            and type(size) is int and size > 0):
        raise BadInputError("sha256 or bytes malformed")
    fingerprint = entry["fingerprint"]
    if not (isinstance(fingerprint, dict)
            and all(type(fingerprint.get(k)) is int for k in ("files", "bytes", "mtime_ns"))):
        raise BadInputError("fingerprint malformed")
    if not (isinstance(entry["warnings"], list) and all(isinstance(w, str)
                                                        for w in entry["warnings"])):
        raise BadInputError("warnings must be a list of strings")
    geometry = entry.get("geometry")  # absent from entries written before it was recorded
    if geometry is not None and not _is_geometry(geometry, cfg.size[0]):
        raise BadInputError("geometry malformed")


def _is_geometry(geometry: Any, depth: int) -> bool:
    """A `preprocess.Geometry.to_dict()`: a box of 3 ranges, one source slice per slice."""
    if not isinstance(geometry, dict):
        return False
    box, slices = geometry.get("box"), geometry.get("source_slices")
    return (isinstance(box, list) and len(box) == 3
            and all(isinstance(b, list) and len(b) == 2 and all(type(v) is int for v in b)
                    for b in box)
            and isinstance(slices, list) and len(slices) == depth
            and all(type(v) is int for v in slices)
            and isinstance(geometry.get("lungs"), dict | None))


def load_volume(root: Path, entry: dict[str, Any]) -> np.ndarray:
    """The cached volume of a checked index entry, verified against the checksum, size, shape
    and dtype recorded when it was written: a truncated, zeroed or swapped file is a
    `BadInputError` naming it that tells the user to prepare the cache again."""
    path = root / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{path}: cached volume unreadable ({exc.strerror}); {AGAIN}"
                            ) from exc
    if len(data) != entry["bytes"]:
        raise BadInputError(f"{path}: cached volume has {len(data)} bytes, the index says "
                            f"{entry['bytes']} (truncated?); {AGAIN}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise BadInputError(f"{path}: cached volume does not match its checksum (changed or "
                            f"corrupt); {AGAIN}")
    array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
        raise BadInputError(f"{path}: cached volume is {array.shape} {array.dtype}, the index "
                            f"says {entry['shape']} {entry['dtype']}; {AGAIN}")
    return array if array.flags.writeable else array.copy()


def _intact(root: Path, entry: dict[str, Any]) -> bool:
    try:
        load_volume(root, entry)
    except BadInputError:
        return False
    return True


def _volume_name(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24] + ".npy"


def volume_file(source: str) -> str:
    """The index's `file` of a source's volume, relative to the cache folder: the only name
    `read_index` accepts for it."""
    return f"{VOLUMES}/{_volume_name(source)}"


def _build(source: str, cfg_dict: dict[str, Any], target: str
           ) -> tuple[dict[str, Any], list[str]]:
    """Read, preprocess and store one scan (in a worker process when workers > 0): the lung
    mask and resampling run here, not in training. The entry records where the stored volume
    came from in the scan (`preprocess.Geometry`)."""
    volume = read_scan(source)
    array, geometry = prepare_scan(volume, PreprocessConfig.from_dict(cfg_dict))
    return {**save_volume(Path(target), array), "geometry": geometry.to_dict()}, volume.warnings


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe


@dataclass
class _Previous:
    """What a cache folder held before this `prepare`: reusable entries (a valid index of the
    same config) and the volume files it recorded as its own."""

    entries: dict[str, dict[str, Any]]
    owned: set[str]
    data_set: str | None = None


def _previous(out: Path, cfg: PreprocessConfig) -> _Previous:
    """The folder's index as far as it can be trusted. A valid one gives reusable entries; a
    covidzoo index that fails its checks (an older format, an edited entry) gives only the
    volume files it names in the shape this module writes them, which are rebuilt; a file
    named `index.json` that is not a covidzoo index is refused, since writing over it would
    destroy someone else's file."""
    path = out / INDEX_NAME
    try:
        data = read_index(out)
    except BadInputError:
        if not path.exists():
            return _Previous({}, set())
        try:
            data = _load_json(path)
        except BadInputError:
            raise BadInputError(
                f"{path}: unreadable, so perhaps not a covidzoo cache index, and not overwritten; "
                "choose another cache folder, or delete it if it is a damaged covidzoo index"
            ) from None
        if not isinstance(data, dict) or "format" not in data:
            raise BadInputError(f"{path}: exists and is not a covidzoo cache index; choose "
                                "another cache folder") from None
        lists = [data[k] if isinstance(data.get(k), list) else [] for k in ("entries", "owned")]
        named = [e.get("file") if isinstance(e, dict) else None for e in lists[0]] + lists[1]
        data_set = data.get("data") if isinstance(data.get("data"), str) else None
        return _Previous({}, {f for f in named if isinstance(f, str)
                              and _VOLUME_FILE.fullmatch(f)}, data_set)
    owned = {e["file"] for e in data["entries"]} | set(data["owned"])
    reusable = {e["source"]: e for e in data["entries"]} if data["config"] == cfg.to_dict() else {}
    return _Previous(reusable, owned, data.get("data"))


@contextmanager
def _cache_lock(folder: Path, wait: bool, notify: bool) -> Iterator[None]:
    """Hold the cache folder's lock: refuse at once when another process holds it, or (`wait`)
    wait for it, as `train` and `evaluate` do for the caches they make themselves."""
    with ExitStack() as stack:
        waiting = False
        while True:
            try:
                stack.enter_context(exclusive_lock(folder, "data prepare"))
                break
            except BadInputError:
                if not wait:
                    raise
                if notify and not waiting:
                    print(f"covidzoo: waiting for another process preparing {folder}",
                          file=sys.stderr)
                waiting = True
                time.sleep(0.2)
            except OSError as exc:
                raise BadInputError(f"{folder}: cannot write the cache ({exc.strerror})"
                                    ) from exc
        yield


def prepare_cache(
    records: Iterable[ScanRecord],
    out_dir: str | os.PathLike[str],
    cfg: PreprocessConfig | None = None,
    workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    wait_if_busy: bool = True,
    data_set: str | os.PathLike[str] | None = None,
    classes: Sequence[str] = BINARY_CLASSES,
) -> PrepareResult:
    """Preprocess every record into `out_dir`, skipping scans already there, up to date and
    intact (their file matches the checksum recorded when it was written).

    A scan that fails is listed in `PrepareResult.failed` with its reason and skipped; with
    `strict` the first failure raises `BadInputError`. The cache mirrors `records`: volumes of
    scans no longer listed are removed, but only files this cache recorded as its own; nothing
    else in `out_dir` is touched. `workers` processes build the scans (0: this process).

    One `prepare` at a time per folder (its `.covidzoo.lock`): another one holding it makes
    this one wait (`wait_if_busy`, the default: the caches `train` and `evaluate` make for
    themselves) or raise `BadInputError` (`covidzoo data prepare`).

    `data_set` (the data folder or manifest, when known) is recorded in the index; preparing
    another data set into a folder that holds one's cache is refused, not a deletion of it.
    `classes` (the class names by label) are recorded too.
    """
    cfg = cfg or PreprocessConfig()
    if workers < 0:
        raise BadInputError(f"--workers must be at least 0, got {workers}")
    out = Path(out_dir)
    data = None if data_set is None else str(Path(data_set).resolve())
    with _cache_lock(out, wait_if_busy, progress):
        return _prepare(list(records), out, cfg, workers, strict, progress, data,
                        tuple(classes))


def _prepare(records: list[ScanRecord], out: Path, cfg: PreprocessConfig, workers: int,
             strict: bool, progress: bool, data: str | None,
             classes: tuple[str, ...]) -> PrepareResult:
    volumes = out / VOLUMES
    try:
        volumes.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{volumes}: cannot create the folder ({exc.strerror})") from exc
    previous = _previous(out, cfg)
    if None not in (data, previous.data_set) and data != previous.data_set:
        raise BadInputError(f"{out}: holds the cache of another data set ({previous.data_set}); "
                            "choose another cache folder")
    data = data or previous.data_set
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
        entry = previous.entries.get(source)
        if entry is not None and entry["fingerprint"] == fingerprint:
            if _intact(out, entry):
                entries[source] = {**entry, "label": record.label, "split": record.split}
                result.skipped.append(source)
                continue
            result.repaired.append(source)
        todo.append((record, source, fingerprint))
    owned = previous.owned | {volume_file(s) for _, s, _ in todo}

    start = time.perf_counter()
    flushed = start

    def finish(record: ScanRecord, source: str, fingerprint: dict[str, int],
               outcome: tuple[dict[str, Any], list[str]] | BaseException) -> None:
        nonlocal flushed
        if isinstance(outcome, BaseException):
            result.failed.append((source, one_line(outcome)))
            if source in result.repaired:
                result.repaired.remove(source)
            if strict:
                write_index(out, cfg, list(entries.values()), owned, data, classes)
                raise BadInputError(one_line(outcome)) from outcome
            return
        stored, warnings = outcome
        entries[source] = {
            "source": source, "file": volume_file(source),
            "label": record.label, "split": record.split, "fingerprint": fingerprint,
            **stored, "warnings": warnings,
        }
        result.done.append(source)
        if time.perf_counter() - flushed > 2.0:  # a killed run keeps what it finished
            write_index(out, cfg, list(entries.values()), owned, data, classes)
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
    final = sorted(entries.values(), key=lambda e: (e["split"], e["source"]))
    keep = {e["file"] for e in final}
    write_index(out, cfg, final, owned, data, classes)  # still owning what is deleted next
    _remove_own(out, owned - keep)
    write_index(out, cfg, final, (), data, classes)
    return result


def _remove_own(out: Path, stale: set[str]) -> None:
    """Delete volumes this cache wrote and no longer lists, and the temporary files of killed
    runs (by the names `atomic_write` gives them); nothing else."""
    for name in stale:
        (out / name).unlink(missing_ok=True)
    for folder in (out, out / VOLUMES):
        for path in folder.iterdir():
            if _OWN_TEMP.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)


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

    `split` keeps one split ("train", "val", "test"). `records` (the scans of a run's own
    split, e.g. a cross-validation fold) selects the cached scans they name, in their order,
    with their labels and splits instead of the index's; a record the cache lacks (it failed to
    read) is left out. Unlabeled scans have label -1; `classes` are the class names by label.
    The index is checked when the data set is made (`read_index`), and every volume file must
    exist with its recorded size; each volume read is verified against its recorded checksum,
    shape and dtype (`load_volume`). What fails is a `BadInputError` naming the file.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], split: str | None = None,
                 records: Sequence[ScanRecord] | None = None) -> None:
        self.root = Path(cache_dir)
        index = read_index(self.root)
        self.config = PreprocessConfig.from_dict(index["config"])
        self.classes: tuple[str, ...] = tuple(index["classes"])
        entries = index["entries"]
        if records is not None:  # these scans, with the records' labels and splits, in order
            by_source = {e["source"]: e for e in entries}
            entries = [{**by_source[s], "label": r.label, "split": r.split}
                       for r in records if (s := str(Path(r.path).resolve())) in by_source]
        self.entries = [e for e in entries if split is None or e["split"] == split]
        if split is not None and not self.entries:
            raise BadInputError(f"{cache_dir}: no scans in split '{split}'")
        for entry in self.entries:
            _check_size(self.root, entry)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        entry = self.entries[i]
        array = load_volume(self.root, entry)
        label = entry["label"]
        return torch.from_numpy(array)[None], -1 if label is None else int(label)

    @property
    def labels(self) -> list[int]:
        """Every scan's label (-1 when unknown), without reading any volume."""
        return [-1 if e["label"] is None else int(e["label"]) for e in self.entries]

    @property
    def sources(self) -> list[str]:
        """Every scan's source path, in dataset order."""
        return [e["source"] for e in self.entries]

    @property
    def geometry(self) -> list[dict[str, Any] | None]:
        """Every scan's `preprocess.Geometry` as recorded (None in caches written before it
        was): the source box and, per stored slice, the scan's own slice number."""
        return [e.get("geometry") for e in self.entries]


def _check_size(root: Path, entry: dict[str, Any]) -> None:
    path = root / entry["file"]
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadInputError(f"{path}: cached volume missing ({exc.strerror}); {AGAIN}") from exc
    if size != entry["bytes"]:
        raise BadInputError(f"{path}: cached volume has {size} bytes, the index says "
                            f"{entry['bytes']} (truncated?); {AGAIN}")


def cache_dir_for(source: str | os.PathLike[str], cfg: PreprocessConfig) -> Path:
    """The cache folder that `train`, `evaluate` and `ensemble` use for a data source.

    One folder per (source, preprocessing) pair under the user cache directory: a cache mirrors
    the records it was prepared from, so two data sets or two configs must not share one.
    """
    return prepared_dir(source, cfg.to_dict())
