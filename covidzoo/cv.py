"""Cross-validation: `covidzoo cv BACKBONE --folds K [--repeats R]`.

The train and val scans of a data set are pooled and cut into K stratified, patient-grouped
folds (`layouts.kfold_splits`; test scans stay test). Each fold trains one run, validated on its
fold, in `OUT/fold-R-K/` (a normal run folder: `--resume` continues it), from a split file
`OUT/folds/fold-R-K.csv` fixed when the study starts. Then:

- `oof.csv`: every scan's out-of-fold prediction, by the model of the fold that held it out;
- `cv.json`: the metrics of each fold, their mean and standard deviation, the pooled
  out-of-fold metrics, and (two classes) the decision threshold chosen on the pooled
  out-of-fold predictions (Youden);
- `ensemble.json`: the mean of the fold models (the 3D RegNet paper fuses 4-7 models), with that
  threshold: an ensemble file `evaluate` and `predict` take directly.

What the figures are: each fold's best epoch was chosen on its own val part, which is the scans
it predicts out of fold, so out-of-fold figures carry that (mild) selection; the threshold is
chosen on all of them, so F1 at it is in-sample. A held-out test split, evaluated with the
ensemble, is the unbiased figure; `cv.json`'s notes say so.

Folds run one after another (under torchrun each fold uses every process); a study stopped at
any point continues with the same command: finished folds are kept (`folds/fold-R-K.done.json`),
the unfinished one resumes. One `cv` at a time holds `OUT`'s lock.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .data.layouts import Fold, ScanRecord, kfold_splits, read_split_csv
from .errors import BadInputError
from .fileio import atomic_write_text, exclusive_lock
from .runtime import is_main_process, shutdown_distributed

FOLDS_DIR = "folds"
# Settings a continued study may change: how it runs, not what it learns (every fold must be
# trained alike). The rest is recorded in folds/study.json and compared on every rerun.
MAY_CHANGE = frozenset({"out", "resume", "split_file", "device", "workers", "precision",
                        "channels_last", "compile"})


def _fix_settings(folder: Path, cfg: Any, folds: int, repeats: int) -> None:
    """Record the study's settings when it starts; on a rerun, refuse other ones, naming the
    flag: finished folds would otherwise sit beside folds trained differently."""
    now = {k: v for k, v in json.loads(json.dumps(cfg.to_dict(), default=list)).items()
           if k not in MAY_CHANGE}
    now.update(folds=folds, repeats=repeats)
    path = folder / "study.json"
    if not path.exists():
        atomic_write_text(path, json.dumps(now, indent=2))
        return
    try:
        then = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: unreadable ({exc}); choose another --out") from None
    differ = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if differ:
        key = differ[0]
        raise BadInputError(
            f"--{key.replace('_', '-')}: this study was started with {key} "
            f"{json.dumps(then.get(key))}, now {json.dumps(now.get(key))}; continue it with its "
            "own settings, or choose another --out")


def _fold_name(fold: Fold) -> str:
    return f"fold-{fold.repeat}-{fold.index}"


def _fix_split(folder: Path, fold: Fold) -> Path:
    """The fold's split file: written when the study starts; on a rerun it must be the same
    split (the same data and seed), else the study would mix two designs."""
    from .data.layouts import write_split_csv

    path = folder / f"{_fold_name(fold)}.csv"
    if path.exists():
        saved = read_split_csv(path)
        if [(str(Path(r.path).absolute()), r.label, r.split) for r in saved] != \
                [(str(Path(r.path).absolute()), r.label, r.split) for r in fold.records]:
            raise BadInputError(f"{path}: this study was started with other folds (other data, "
                                "--folds, --repeats or --seed); choose another --out")
        return path
    return write_split_csv(fold.records, path)


def _await_split(folder: Path, fold: Fold, timeout_s: float = 600.0) -> Path:
    """Under torchrun, the fold's split file as the first process writes it."""
    import time

    path = folder / f"{_fold_name(fold)}.csv"
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise BadInputError(f"{path}: the first process never wrote it")
        time.sleep(0.2)
    time.sleep(0.2)  # written atomically: present means complete
    return _fix_split(folder, fold)


def _state(out: Path, fold: Fold) -> tuple[bool, bool]:
    """`(done, started)` of a fold, read once before any fold trains, so that every torchrun
    process decides alike."""
    done = (out / FOLDS_DIR / f"{_fold_name(fold)}.done.json").exists()
    return done, (out / _fold_name(fold) / "generations").is_dir()


def _run_fold(cfg: Any, fold: Fold, out: Path, split: Path, quiet: bool,
              state: tuple[bool, bool]) -> dict[str, Any]:
    """Train the fold's run (resuming it when a previous attempt left one); its summary."""
    from .train import train

    done = out / FOLDS_DIR / f"{_fold_name(fold)}.done.json"
    if state[0]:
        return json.loads(done.read_text())
    run = out / _fold_name(fold)
    summary = train(replace(cfg, out=str(run), split_file=str(split), resume=state[1],
                            val_split=None), quiet=quiet, keep_distributed=True)
    if not summary["interrupted"] and is_main_process():
        atomic_write_text(done, json.dumps(summary, indent=2, default=str))
    return summary


def _fold_probs(checkpoint: Path, source: Any, records: list[ScanRecord], batch_size: int
                ) -> tuple[list[ScanRecord], np.ndarray]:
    """The fold model's probabilities of its val scans, read from the cache its run trained on
    (prepared with the model's own preprocessing): the scans the cache holds, and their rows."""
    import torch

    from .data import CachedScans, PreprocessConfig, cache_dir_for
    from .inference import load_member

    member = load_member(checkpoint, "cpu" if not torch.cuda.is_available() else "cuda")
    cache = cache_dir_for(source.cache_key(), PreprocessConfig.from_dict(member.spec.preprocess))
    val = [r for r in records if r.split == "val"]
    data = CachedScans(cache, records=val)
    kept = {s for s in data.sources}
    val = [r for r in val if str(Path(r.path).resolve()) in kept]
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    chunks = [member.probs(batch).double().cpu().numpy() for batch, _ in loader]
    return val, np.concatenate(chunks) if chunks else np.empty((0,))


def _metrics(labels: np.ndarray, probs: np.ndarray, classes: tuple[str, ...],
             threshold: float | None) -> dict[str, Any]:
    """AUC and F1 figures of one set of predictions: binary at `threshold`, multi-class of the
    most probable class (the full reports are `binary_report` / `multiclass_report`)."""
    if len(classes) > 2:
        from .multiclass_metrics import multiclass_report

        report = multiclass_report(labels, probs, classes)
        return {"auc": report["macro_auc"], "macro_f1": report["macro_f1"],
                "accuracy": report["accuracy"],
                "per_class_auc": {n: c["auc"] for n, c in report["per_class"].items()},
                "per_class_f1": {n: c["f1"] for n, c in report["per_class"].items()}}
    from .metrics import binary_report

    report = binary_report(labels, probs, threshold if threshold is not None else 0.5)
    return {"auc": report["auc"], "f1": report["f1"], "macro_f1": report["macro_f1"],
            "accuracy": report["accuracy"], "sensitivity": report["sensitivity"],
            "specificity": report["specificity"]}


def _mean_std(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Mean and sample standard deviation of each key over the folds that define it."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[key] = {"mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        "folds": len(values)}
    return out


def _write_oof(path: Path, rows: list[tuple[ScanRecord, int, int, np.ndarray]],
               classes: tuple[str, ...]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    binary = len(classes) == 2
    writer.writerow(["path", "label", "class", "group", "repeat", "fold",
                     *(["probability"] if binary else [f"p_{n}" for n in classes])])
    for record, repeat, index, p in rows:
        values = [repr(float(p))] if binary else [repr(float(v)) for v in p]
        writer.writerow([str(record.path), record.label, classes[record.label],
                         record.group or "", repeat, index, *values])
    atomic_write_text(path, buffer.getvalue())


def cross_validate(cfg: Any, folds: int, repeats: int = 1, quiet: bool = False
                   ) -> dict[str, Any]:
    """Run the study of `cfg` (a `TrainConfig` whose `out` is the study's folder) over
    `folds` x `repeats` folds; its summary (what `cv.json` holds)."""
    from .ensemble import create_ensembler
    from .inference import write_ensemble_file
    from .metrics import youden_threshold

    if cfg.out is None:
        raise BadInputError("--out: cv needs the study's folder")
    if cfg.cache is not None:
        raise BadInputError("--cache: cv reads the scans' patients and splits from --data or "
                            "--manifest")
    if cfg.resume or cfg.split_file or cfg.val_split:
        flag = "--resume" if cfg.resume else "--split-file" if cfg.split_file else "--val-split"
        raise BadInputError(f"{flag}: cv makes the folds itself and continues a stopped study "
                            "by itself (run the same command again)")
    cfg.check()
    out = Path(cfg.out)
    records, classes = cfg.source.labelled()
    plan = kfold_splits(records, folds, repeats, cfg.seed)
    main = is_main_process()
    folder = out / FOLDS_DIR
    if main:
        out.mkdir(parents=True, exist_ok=True)
    # The first torchrun process holds the study's lock and writes its files; the others read.
    with exclusive_lock(out, "a cross-validation study") if main else contextlib.nullcontext():
        if main:
            folder.mkdir(exist_ok=True)
            splits = [_fix_split(folder, fold) for fold in plan]
            _fix_settings(folder, cfg, folds, repeats)
        else:
            splits = [_await_split(folder, fold) for fold in plan]
        states = [_state(out, fold) for fold in plan]
        summaries = []
        for fold, split, state in zip(plan, splits, states, strict=True):
            summary = _run_fold(cfg, fold, out, split, quiet, state)
            summaries.append(summary)
            if summary["interrupted"]:
                shutdown_distributed(together=False)
                return {"out": str(out), "interrupted": True, "folds_done": len(summaries) - 1}
        if not main:
            shutdown_distributed(together=True)  # waits for the first process's conclusion
            return {"out": str(out), "interrupted": False, "reported_by_rank_0": True}
        try:
            return _conclude(cfg, out, plan, summaries, classes, create_ensembler,
                             write_ensemble_file, youden_threshold)
        finally:
            shutdown_distributed(together=True)


def _conclude(cfg: Any, out: Path, plan: list[Fold], summaries: list[dict[str, Any]],
              classes: tuple[str, ...], create_ensembler: Any, write_ensemble_file: Any,
              youden_threshold: Any) -> dict[str, Any]:
    """Out-of-fold predictions, the metrics, the threshold and the ensemble of the folds."""
    source = cfg.source
    binary = len(classes) == 2
    oof: list[tuple[ScanRecord, int, int, np.ndarray]] = []
    checkpoints = []
    for fold in plan:
        checkpoint = out / _fold_name(fold) / "best.safetensors"
        checkpoints.append(checkpoint)
        scans, probs = _fold_probs(checkpoint, source, list(fold.records), cfg.batch_size)
        oof += [(r, fold.repeat, fold.index, p) for r, p in zip(scans, probs, strict=True)]
    labels = np.array([r.label for r, *_ in oof], dtype=np.int64)
    probs = np.array([p for *_, p in oof])
    threshold = float(youden_threshold(labels, probs)) if binary else None
    repeats = sorted({fold.repeat for fold in plan})
    fold_rows = []
    for fold, summary in zip(plan, summaries, strict=True):
        mine = [i for i, (_, r, k, _) in enumerate(oof) if (r, k) == (fold.repeat, fold.index)]
        row = {"repeat": fold.repeat, "fold": fold.index, "n_val": len(mine),
               "best_epoch": summary.get("best_epoch"), "run": str(out / _fold_name(fold))}
        if len(set(labels[mine].tolist())) > 1:
            row.update(_metrics(labels[mine], probs[mine], classes, threshold))
        fold_rows.append(row)
    pooled = []
    for repeat in repeats:  # each repeat predicts every scan once
        mine = [i for i, (_, r, _, _) in enumerate(oof) if r == repeat]
        pooled.append({"repeat": repeat, "n": len(mine),
                       **_metrics(labels[mine], probs[mine], classes, threshold)})
    keys = ["auc", "f1", "macro_f1", "accuracy", "sensitivity", "specificity"]
    _write_oof(out / "oof.csv", oof, classes)
    ensembler = create_ensembler("mean")
    ensembler.n_models = len(checkpoints)
    ensemble = write_ensemble_file(out / "ensemble.json", checkpoints, ensembler, threshold)
    result = {
        "out": str(out),
        "interrupted": False,
        "backbone": cfg.backbone,
        "classes": list(classes),
        "folds": len({f.index for f in plan}),
        "repeats": len(repeats),
        "fold_metrics": fold_rows,
        "mean_std": _mean_std(fold_rows, keys),
        "pooled_oof": pooled,
        "threshold": None if threshold is None else {
            "value": threshold, "source": "out-of-fold",
            "note": "Youden point of the pooled out-of-fold predictions of the fold models"},
        "oof": str(out / "oof.csv"),
        "ensemble": str(ensemble),
        "notes": [
            "each fold chose its best epoch on its own val part, the scans it predicts out of "
            "fold: out-of-fold figures carry that selection (mildly optimistic)",
            *(["F1, sensitivity and specificity are at the out-of-fold threshold, chosen on "
               "these same predictions (in-sample)"] if binary else []),
            "evaluate ensemble.json on a labelled test split for unbiased figures",
        ],
    }
    atomic_write_text(out / "cv.json", json.dumps(result, indent=2, default=_json_default))
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


__all__ = ["cross_validate"]
