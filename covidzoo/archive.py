"""Prediction over a whole archive: `covidzoo predict MODEL --manifest CSV --out FILE`, alone or
as one of torchrun's processes on one or several machines, resumable.

How a job runs:

- Rank 0 reads what earlier runs left (`--out` and the per-rank part files next to it) and
  decides which scans are still to predict; every rank gets that decision, so all agree on the
  work without reading the files themselves.
- The scans still to predict, in manifest order, are dealt out: rank r takes r, r+W, r+2W, ...
  Each rank reads and preprocesses its scans with its own DataLoader workers (each scan read
  once, preprocessed once per distinct member config, as `inference.predict_paths` does) and
  appends every batch's rows to its own part file, flushed, so a killed job loses only the scans
  in flight. A scan that fails to read goes to the rank's errors part with its one-line reason.
- Each rank writes a done file when its share is predicted; when all are there, rank 0 merges
  `--out` and the parts into one file in manifest order (written atomically), lists the failed
  scans in `NAME.errors.csv` beside it, and deletes the part and done files.

Each row records the model's content hash (`model_hash`): a rerun skips the scans already
predicted by the same model, and an `--out` holding another model's predictions is refused
unless `replace` is asked for. Failed scans are tried again by the next run.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError, one_line
from .evaluation import Prediction, Threshold, decision_threshold, scan_predictions
from .fileio import atomic_write, atomic_write_text, digest_file
from .inference import Predictor, config_groups, load_predictor
from .runtime import (
    Dist,
    broadcast,
    resolve_device,
    resolve_workers,
    setup_distributed,
    shutdown_distributed,
)

PathLike = str | os.PathLike[str]

FORMATS = ("csv", "parquet")
# The columns of a binary model's --out; a model of three or more classes has
# `prediction_columns(classes)`.
COLUMNS = ("scan", "probability", "label", "threshold", "model_hash")
CLASS_PREFIX = "p_"
ERROR_COLUMNS = ("scan", "reason", "model_hash")
# Unreadable scans of `--out NAME.EXT` go to `NAME.errors.csv` beside it: per --out, so that two
# jobs writing to one folder never share (or clean up) each other's errors.
ERRORS_SUFFIX = ".errors.csv"
# Hex digits of the SHA-256 kept per row: enough to tell models apart, short for 10^6 rows.
HASH_DIGITS = 16
# Test-only: a rank SIGKILLs itself once it has written this many scans (a job killed halfway).
KILL_AFTER_ENV = "COVIDZOO_TEST_KILL_AFTER"
# What each rank counts and reports in its done file.
PROFILE_KEYS = ("read_s", "preprocess_s", "model_s", "predicted", "failed")

Row = dict[str, str]


# --- the model's identity and the scans --------------------------------------------------------


def model_hash(predictor: Predictor) -> str:
    """The content hash of a checkpoint, or of an ensemble file and all its members' files: what
    each row records, so a rerun can tell which model made it."""
    digest = hashlib.sha256()
    digest_file(digest, predictor.path)
    if predictor.kind == "ensemble":
        for member in predictor.members:
            digest_file(digest, member.path)
    return digest.hexdigest()[:HASH_DIGITS]


def manifest_scans(manifest: PathLike) -> list[str]:
    """The scans a manifest lists (the `path` column, read as train and evaluate read it, the
    label optional), in manifest order."""
    from .data.layouts import read_manifest

    return [str(record.path) for record in read_manifest(manifest, label_required=False)]


def prediction_columns(classes: Sequence[str]) -> tuple[str, ...]:
    """The columns of --out for a model of `classes`: `COLUMNS` for two; for three or more,
    the scan, its most probable class (`label`) and that class's probability, every class's
    probability (`p_CLASS`, in class order) and the model hash."""
    if len(classes) <= 2:
        return COLUMNS
    return ("scan", "label", "probability", *(CLASS_PREFIX + c for c in classes), "model_hash")


def _is_predictions_header(columns: Sequence[str]) -> bool:
    """Whether `columns` are those of some model's --out (binary or of classes): another
    model's file, which --replace may replace, rather than a file predict never wrote."""
    columns = list(columns)
    classes = [c[len(CLASS_PREFIX):] for c in columns[3:-1] if c.startswith(CLASS_PREFIX)]
    return columns in (list(COLUMNS), list(prediction_columns(classes)))


def _is_number_column(column: str) -> bool:
    return column in ("probability", "threshold") or column.startswith(CLASS_PREFIX)


def _distinct(scans: Sequence[PathLike]) -> list[str]:
    """Scans keyed by path: one listed twice is predicted once, at its first place."""
    return list(dict.fromkeys(str(s) for s in scans))


# --- where the rows go -------------------------------------------------------------------------


def part_path(target: Path, rank: int) -> Path:
    """The part file rank `rank` appends `target`'s rows to (--out or its errors file)."""
    return target.with_name(f"{target.name}.rank{rank}.part")


def part_paths(target: Path) -> list[Path]:
    """Every part file of `target` on disk, whichever number of ranks wrote them."""
    pattern = f"{glob.escape(target.name)}.rank*.part"
    return sorted(target.parent.glob(pattern))


def errors_path(out: Path) -> Path:
    """Where the scans that failed to read are listed, with their reasons."""
    return out.with_name(out.stem + ERRORS_SUFFIX)


def check_format(fmt: str) -> None:
    """`--format`: csv, or parquet where pyarrow is installed."""
    if fmt not in FORMATS:
        raise BadInputError(f"--format {fmt}: choose {' or '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise BadInputError("--format parquet: install pyarrow (pip install pyarrow)") from exc


def _complete_lines(path: Path) -> bytes:
    """The bytes of `path` up to its last newline: a row cut short by a kill is not a row."""
    data = path.read_bytes()
    return data[:data.rfind(b"\n") + 1]


def _read_csv_rows(path: Path, columns: Sequence[str] | None, complete_only: bool) -> list[Row]:
    """The whole rows of a CSV of `columns` (None: of any model's predictions, whose rows the
    callers then keep or drop by `model_hash`)."""
    data = _complete_lines(path) if complete_only else path.read_bytes()
    text = data.decode("utf-8", errors="replace" if complete_only else "strict")
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames
    if fields is not None and not (_is_predictions_header(fields) if columns is None
                                   else list(fields) == list(columns)):
        raise BadInputError(f"{path}: not a predictions file of covidzoo predict (columns "
                            f"{','.join(reader.fieldnames)}); give another --out")
    return [row for row in reader if None not in row and None not in row.values()]


def _read_parquet_rows(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors name no common class
        raise BadInputError(f"{path}: not a Parquet file ({one_line(exc)})") from exc
    if not _is_predictions_header(table.column_names):
        raise BadInputError(f"{path}: not a predictions file of covidzoo predict (columns "
                            f"{','.join(table.column_names)}); give another --out")
    return [{k: repr(v) if isinstance(v, float) else str(v) for k, v in row.items()}
            for row in table.to_pylist()]


def read_predictions(out: Path, fmt: str) -> list[Row]:
    """The rows of an existing --out, of whichever model (none when there is none yet)."""
    if not out.exists():
        return []
    if fmt == "parquet":
        return _read_parquet_rows(out)
    try:
        return _read_csv_rows(out, None, complete_only=False)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{out}: not a CSV predictions file ({exc.reason})") from exc


def _read_parts(target: Path, columns: Sequence[str] | None) -> list[Row]:
    rows: list[Row] = []
    for path in part_paths(target):
        rows += _read_csv_rows(path, columns, complete_only=True)
    return rows


def _write_predictions(out: Path, rows: Sequence[Row], fmt: str,
                       columns: Sequence[str]) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            c: pa.array([float(r[c]) for r in rows], pa.float64()) if _is_number_column(c)
            else pa.array([r[c] for r in rows], pa.string())
            for c in columns})
        atomic_write(out, lambda tmp: pq.write_table(table, tmp))
        return
    atomic_write_text(out, _csv_text(columns, rows))


def _csv_text(columns: Sequence[str], rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class PartWriter:
    """Appends rows to one rank's part file, flushed per batch. A row cut short by an earlier
    kill is cut off first, so the file only ever holds whole rows."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self._fh: Any = None
        self._writer: Any = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                # Another model's part of other columns (left by a killed run, here because
                # --replace was given: see `make_plan`) would mix two headers' rows: its rows
                # are dropped at the merge anyway, so the file starts afresh.
                with self.path.open("rb") as fh:
                    header = fh.readline().decode(errors="replace").rstrip("\r\n")
                whole = (len(_complete_lines(self.path))
                         if header == ",".join(self.columns) else 0)
                with self.path.open("r+b") as fh:
                    fh.truncate(whole)
            self._fh = self.path.open("a", newline="", encoding="utf-8")
        except OSError as exc:
            raise BadInputError(f"{self.path}: cannot write ({exc.strerror})") from exc
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, lineterminator="\n")
        if self._fh.tell() == 0:
            self._writer.writeheader()

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if self._fh is None:  # a rank with nothing to write leaves no file behind
            self._open()
        self._writer.writerows(rows)
        self._fh.flush()


# --- the plan: what earlier runs did -----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Rank 0's reading of earlier runs, sent to every rank: `done[i]` says whether scan `i`
    was already predicted by this model; `error` is the one line that stops every rank."""

    done: np.ndarray
    error: str | None = None


def _other_models(rows: Sequence[Row], model: str) -> list[str]:
    return sorted({r["model_hash"] for r in rows if r["model_hash"] != model})


def make_plan(scans: Sequence[str], out: Path, fmt: str, model: str, replace: bool) -> Plan:
    """Which scans earlier runs predicted with this model (in --out or the part files); another
    model's predictions there are refused unless `replace`. Failed scans are tried again: the
    errors parts of earlier runs are dropped."""
    done = np.zeros(len(scans), dtype=bool)
    try:
        rows = read_predictions(out, fmt) + _read_parts(out, None)
    except BadInputError as exc:
        return Plan(done, str(exc))
    others = _other_models(rows, model)
    if others and not replace:
        return Plan(done, f"{out}: holds predictions of another model ({', '.join(others)}; "
                          f"this one is {model}): give another --out, or --replace to replace "
                          "them")
    predicted = {r["scan"] for r in rows if r["model_hash"] == model}
    done[:] = [scan in predicted for scan in scans]
    for stale in part_paths(errors_path(out)) + done_paths(out):
        stale.unlink()
    return Plan(done)


def share_plan(dist: Dist, plan: Plan | None) -> Plan:
    """Rank 0's plan on every rank (sent packed: one bit per scan)."""
    if dist.world == 1:
        assert plan is not None
        return plan
    packed = None if plan is None else (np.packbits(plan.done).tobytes(), len(plan.done),
                                        plan.error)
    bits, n, error = broadcast(dist, packed)
    done = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=n).astype(bool)
    return Plan(done, error)


def my_scans(scans: Sequence[str], done: np.ndarray, dist: Dist) -> list[str]:
    """This rank's share of the scans still to predict: r, r+W, ... in manifest order."""
    todo = [scan for scan, finished in zip(scans, done, strict=True) if not finished]
    return todo[dist.rank::dist.world]


# --- reading and predicting one rank's share ---------------------------------------------------


@dataclass
class ReadBatch:
    """What a loader worker hands over: the scans read, their preprocessed volumes per config
    digest, the scans that failed with their reasons, and the seconds spent."""

    scans: list[str]
    volumes: dict[str, Any]
    failed: list[tuple[str, str]]
    read_s: float = 0.0
    preprocess_s: float = 0.0

    def pin_memory(self) -> ReadBatch:
        """Called by the DataLoader's pinning thread on CUDA: page-locked volumes are copied to
        the GPU while the host goes on (`Member.probs` copies with `non_blocking`)."""
        self.volumes = {d: v.pin_memory() for d, v in self.volumes.items()}
        return self


class ScanReads:
    """A map-style dataset of raw scans: each scan read once and preprocessed once per config;
    a scan that fails is returned with its one-line reason instead."""

    def __init__(self, scans: Sequence[str], configs: dict[str, Any]) -> None:
        self.scans = list(scans)
        self.configs = configs

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, index: int) -> tuple[str, dict[str, np.ndarray] | None, str, float,
                                               float]:
        from .data.preprocess import preprocess
        from .data.readers import read_scan

        scan = self.scans[index]
        start = time.perf_counter()
        read = start
        try:
            volume = read_scan(scan)
            read = time.perf_counter()
            arrays = {d: preprocess(volume, cfg) for d, cfg in self.configs.items()}
        except Exception as exc:  # one bad scan must not stop the others
            end = time.perf_counter()
            return scan, None, one_line(exc), read - start, end - read
        return scan, arrays, "", read - start, time.perf_counter() - read


def collate_reads(items: Sequence[tuple[Any, ...]]) -> ReadBatch:
    """One `ReadBatch` of dataset items (runs in the loader worker: stacking is done there)."""
    import torch

    batch = ReadBatch([], {}, [])
    stacks: dict[str, list[np.ndarray]] = {}
    for scan, arrays, reason, read_s, preprocess_s in items:
        batch.read_s += read_s
        batch.preprocess_s += preprocess_s
        if arrays is None:
            batch.failed.append((scan, reason))
            continue
        batch.scans.append(scan)
        for digest, array in arrays.items():
            stacks.setdefault(digest, []).append(array)
    batch.volumes = {d: torch.from_numpy(np.stack(a))[:, None] for d, a in stacks.items()}
    return batch


def read_batches(scans: Sequence[str], predictor: Predictor, batch_size: int,
                 workers: int) -> Iterator[ReadBatch]:
    from torch.utils.data import DataLoader

    device = predictor.members[0].device
    loader = DataLoader(ScanReads(scans, config_groups(predictor.members)),
                        batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_reads, pin_memory=device.type == "cuda")
    yield from loader


def batch_predictions(predictor: Predictor, batch: ReadBatch,
                      threshold: Threshold | None) -> list[Prediction]:
    """The prediction of each scan read in `batch` (members as `predict_paths` runs them, the
    label as `covidzoo predict` gives it)."""
    columns = [member.probs(batch.volumes[member.preprocess.digest()]).double().cpu().numpy()
               for member in predictor.members]
    member_probs = np.stack(columns, axis=1)
    return scan_predictions(batch.scans, predictor.fuse(member_probs), member_probs,
                            predictor.classes, threshold)


def prediction_rows(predictions: Sequence[Prediction], threshold: Threshold | None,
                    model: str) -> list[Row]:
    """The rows of `prediction_columns`: binary, the covid probability, its label and
    `threshold`; classes (`threshold` None), the most probable class, its probability and
    every class's."""
    if threshold is not None:
        return [{"scan": p.scan, "probability": repr(p.probability), "label": p.label,
                 "threshold": repr(float(threshold.value)), "model_hash": model}
                for p in predictions]
    return [{"scan": p.scan, "label": p.label, "probability": repr(p.probability),
             **{CLASS_PREFIX + c: repr(v) for c, v in (p.probabilities or {}).items()},
             "model_hash": model}
            for p in predictions]


def _kill_after() -> int | None:
    value = os.environ.get(KILL_AFTER_ENV, "").strip()
    return int(value) if value.isdigit() else None


def predict_share(predictor: Predictor, scans: Sequence[str], out: Path, dist: Dist,
                  threshold: Threshold | None, model: str, batch_size: int, workers: int,
                  progress: bool) -> dict[str, float]:
    """Predict this rank's scans, appending each batch's rows to its part files; returns the
    rank's profile (`PROFILE_KEYS`)."""
    from .progress import progress_bar

    profile = dict.fromkeys(PROFILE_KEYS, 0.0)
    kill_after = _kill_after()
    with (PartWriter(part_path(out, dist.rank), prediction_columns(predictor.classes))
          as rows_out,
          PartWriter(part_path(errors_path(out), dist.rank), ERROR_COLUMNS) as errors_out,
          progress_bar(len(scans), "predicting", enabled=progress and dist.main,
                       rate_unit="scans") as advance):
        for batch in read_batches(scans, predictor, batch_size, workers):
            start = time.perf_counter()
            predictions = batch_predictions(predictor, batch, threshold) if batch.scans else []
            profile["model_s"] += time.perf_counter() - start
            rows_out.write(prediction_rows(predictions, threshold, model))
            errors_out.write([{"scan": s, "reason": r, "model_hash": model}
                              for s, r in batch.failed])
            for key in ("read_s", "preprocess_s"):
                profile[key] += getattr(batch, key)
            profile["predicted"] += len(batch.scans)
            profile["failed"] += len(batch.failed)
            advance(len(batch.scans) + len(batch.failed))
            if kill_after is not None and profile["predicted"] >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    return profile


# --- merging -----------------------------------------------------------------------------------


def merge(scans: Sequence[str], out: Path, fmt: str, model: str,
          columns: Sequence[str]) -> tuple[int, int]:
    """Write --out from its earlier rows and every part file, in manifest order (scans --out
    held that this manifest does not list keep their place after them), and the errors file
    from the errors parts; then delete the parts. Another model's rows (only there with
    `replace`) are dropped. Returns (rows written, failed scans)."""
    earlier = [r for r in read_predictions(out, fmt) if r["model_hash"] == model]
    new = [r for r in _read_parts(out, None) if r["model_hash"] == model]
    by_scan = {r["scan"]: r for r in earlier + new}
    listed = set(scans)
    rows = [by_scan[s] for s in scans if s in by_scan]
    rows += [r for r in earlier if r["scan"] not in listed]
    _write_predictions(out, rows, fmt, columns)
    failed = {r["scan"]: r for r in _read_parts(errors_path(out), ERROR_COLUMNS)
              if r["scan"] not in by_scan}
    _write_errors(errors_path(out), [failed[s] for s in scans if s in failed])
    for part in part_paths(out) + part_paths(errors_path(out)) + done_paths(out):
        part.unlink()
    return len(rows), len(failed)


def _write_errors(path: Path, rows: Sequence[Row]) -> None:
    """The errors file when scans failed; one an earlier run of predict left (its header is
    ours) is removed when none did."""
    if rows:
        atomic_write_text(path, _csv_text(ERROR_COLUMNS, rows))
    elif path.is_file() and path.read_text(errors="replace").startswith(
            ",".join(ERROR_COLUMNS) + "\n"):
        path.unlink()


# --- the use case ------------------------------------------------------------------------------


@dataclass
class ArchiveReport:
    """What one `predict --out` run did, summed over its ranks."""

    model: Path
    model_hash: str
    out: Path
    format: str
    threshold: Threshold | None  # None: classes, each scan's label its most probable one
    scans: int
    already_done: int
    rows: int
    failed: int
    world: int
    workers: int
    seconds: float
    profile: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> Path | None:
        return errors_path(self.out) if self.failed else None

    @property
    def predicted(self) -> int:
        return int(self.profile.get("predicted", 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model), "model_hash": self.model_hash, "out": str(self.out),
            "format": self.format,
            "threshold": None if self.threshold is None else self.threshold.to_dict(),
            "scans": self.scans,
            "already_done": self.already_done, "predicted": self.predicted,
            "failed": self.failed, "rows": self.rows,
            "errors": None if self.errors is None else str(self.errors),
            "processes": self.world, "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "scans_per_s": round(self.predicted / self.seconds, 3) if self.seconds > 0 else None,
            "profile": {k: round(self.profile.get(k, 0.0), 3)
                        for k in ("read_s", "preprocess_s", "model_s")},
        }


def done_path(out: Path, rank: int) -> Path:
    """The file rank `rank` writes when its share is predicted: its profile, as JSON."""
    return out.with_name(f"{out.name}.rank{rank}.done")


def done_paths(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{glob.escape(out.name)}.rank*.done"))


def report_done(out: Path, dist: Dist, profile: dict[str, float]) -> None:
    atomic_write_text(done_path(out, dist.rank), json.dumps(profile) + "\n")


def wait_for_ranks(out: Path, dist: Dist, poll_s: float = 1.0) -> dict[str, float]:
    """Rank 0 waits for every rank's done file, then returns their profiles summed.

    Files, not a collective: shares take unequal times (a slower machine, costlier scans), and a
    rank done early would otherwise wait in a collective that times out (NCCL's default is 10
    minutes) while the others still predict. A rank that dies makes torchrun stop this one.
    """
    paths = [done_path(out, rank) for rank in range(dist.world)]
    while not all(path.exists() for path in paths):
        time.sleep(poll_s)
    totals = dict.fromkeys(PROFILE_KEYS, 0.0)
    for path in paths:
        profile = json.loads(path.read_text())
        for key in PROFILE_KEYS:
            totals[key] += float(profile[key])
    return totals


def predict_archive(model: PathLike, scans: Sequence[PathLike], out: PathLike, *,
                    fmt: str = "csv", replace: bool = False, device: str | None = None,
                    precision: str = "auto", batch_size: int = 8, workers: int | None = None,
                    progress: bool = False) -> ArchiveReport | None:
    """Predict `scans` (in manifest order) into `out`, as one of torchrun's processes or alone.

    Returns the report on rank 0 and None on the other ranks (rank 0 writes the merged file).
    """
    started = time.perf_counter()
    check_format(fmt)
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    model, out, scans = Path(model), Path(out), _distinct(scans)
    if not scans:
        raise BadInputError("no scans to predict")
    if out.is_dir():
        raise BadInputError(f"--out {out}: a folder; give a file name")
    dist, torch_device = setup_distributed(resolve_device(device))
    try:
        return _run(model, scans, out, fmt, replace, dist, torch_device, precision,
                    batch_size, resolve_workers(workers, torch_device), progress, started)
    finally:  # no rank waits for another at the end (see `wait_for_ranks`)
        shutdown_distributed(together=False)


def _run(model: Path, scans: list[str], out: Path, fmt: str, replace: bool, dist: Dist,
         device: Any, precision: str, batch_size: int, workers: int, progress: bool,
         started: float) -> ArchiveReport | None:
    predictor = load_predictor(model, device, precision)
    digest = model_hash(predictor)
    plan = share_plan(dist, make_plan(scans, out, fmt, digest, replace) if dist.main else None)
    if plan.error is not None:
        raise BadInputError(plan.error)
    threshold = decision_threshold(predictor)
    mine = my_scans(scans, plan.done, dist)
    profile = predict_share(predictor, mine, out, dist, threshold, digest, batch_size, workers,
                            progress)
    report_done(out, dist, profile)
    if not dist.main:
        return None
    profile = wait_for_ranks(out, dist)
    rows, failed = merge(scans, out, fmt, digest, prediction_columns(predictor.classes))
    return ArchiveReport(model, digest, out, fmt, threshold, len(scans), int(plan.done.sum()),
                         rows, failed, dist.world, workers, time.perf_counter() - started,
                         profile)


__all__ = ["COLUMNS", "ERRORS_SUFFIX", "FORMATS", "ArchiveReport", "check_format",
           "manifest_scans", "model_hash", "predict_archive", "prediction_columns"]
