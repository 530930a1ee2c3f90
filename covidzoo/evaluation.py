"""The use cases behind `evaluate`, `ensemble` and `predict`: load, score, choose a threshold,
report. The commands parse options, call these and render what they return; a notebook calls
them directly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import BadInputError
from .inference import (
    EvalData,
    Member,
    Predictor,
    check_members,
    is_ensemble_file,
    load_eval_data,
    load_member,
    load_predictor,
    member_probs,
    predict_paths,
    write_ensemble_file,
)
from .runtime import resolve_device, resolve_workers

PathLike = str | os.PathLike[str]



@dataclass(frozen=True)
class Threshold:
    """A decision threshold and where it came from (`source`: "checkpoint", "ensemble file",
    "default", "youden" or "option"), with a note for people when it deserves one."""

    value: float
    source: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "note": self.note}


def stored_threshold(predictor: Predictor) -> Threshold:
    """The threshold chosen on validation data and stored with the model, else 0.5 (said so)."""
    if predictor.threshold is None:
        return Threshold(0.5, "default", f"{predictor.path.name} stores no threshold: 0.5 used")
    source = "ensemble file" if predictor.kind == "ensemble" else "checkpoint"
    return Threshold(predictor.threshold, source, "chosen on validation data")


def resolve_threshold(
    choice: str, predictor: Predictor, labels: NDArray[np.int64], probs: NDArray[np.float64]
) -> Threshold:
    """`--threshold checkpoint|youden|FLOAT`.

    `checkpoint` (the default) is the one chosen on validation data; `youden` is the Youden point
    of the data being evaluated, the best cut-off for exactly that data, so the metrics at it
    are optimistic and labelled so.
    """
    from .metrics import youden_threshold

    if choice == "checkpoint":
        return stored_threshold(predictor)
    if choice == "youden":
        return Threshold(youden_threshold(labels, probs), "youden",
                         "Youden point of the evaluated data: optimistic")
    try:
        value = float(choice)
    except ValueError as exc:
        raise BadInputError(
            f"--threshold must be checkpoint, youden or a number, got '{choice}'"
        ) from exc
    if not 0.0 <= value <= 1.0:
        raise BadInputError(f"--threshold must be within [0, 1], got {value}")
    return Threshold(value, "option", "given on the command line")




# --- evaluate ----------------------------------------------------------------------------------


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 3) if seconds > 0 else None


def _label_name(value: int) -> str:
    from .metrics import CLASS_NAMES

    return CLASS_NAMES[int(value)]


def _write_csv(path: PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    import csv
    import io

    from .fileio import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


@dataclass
class EvalReport:
    """What `evaluate` found: the metrics of one checkpoint or ensemble file on one split, the
    threshold and where it came from, and the scores behind them (for plots and CSVs)."""

    model: Path
    predictor: Predictor
    data: EvalData
    split: str
    rows: NDArray[np.int64]
    labels: NDArray[np.int64]
    probs: NDArray[np.float64]
    threshold: Threshold
    metrics: dict[str, Any]
    unlabelled: int
    inference_s: float
    total_s: float
    notes: list[str] = field(default_factory=list)

    def save_roc(self, path: PathLike) -> Path | None:
        """The ROC curve as a PNG, with the operating point; None (and a note) when the AUC is
        undefined on these scans."""
        from .plots import Curve, save_roc_png

        if self.metrics["auc"] is None:
            self.notes.append(f"no ROC plot: {self.metrics['undefined']['auc']}")
            return None
        name = self.model.name
        fpr = 1 - (self.metrics["specificity"] or 0.0)
        return save_roc_png(path, [Curve.from_scores(name, self.labels, self.probs, True)],
                            operating_point=(fpr, self.metrics["sensitivity"] or 0.0),
                            title=f"{name} on {self.split}: AUC {self.metrics['auc']:.3f}")

    def save_predictions(self, path: PathLike) -> None:
        """path,label,probability,predicted per scan, as CSV."""
        from .metrics import predict_labels

        predicted = predict_labels(self.probs, self.threshold.value)
        _write_csv(path, ["path", "label", "probability", "predicted"], [
            (self.data.sources[i], _label_name(y), repr(float(p)), _label_name(c))
            for i, y, p, c in zip(self.rows, self.labels, self.probs, predicted, strict=True)
        ])

    def to_dict(self) -> dict[str, Any]:
        members = self.predictor.members
        n = len(self.rows)
        return {
            "model": str(self.model),
            "kind": self.predictor.kind,
            "members": [str(m.path) for m in members],
            "data": self.data.source,
            "split": self.split,
            "threshold": self.threshold.to_dict(),
            "metrics": self.metrics,
            "failed": [{"source": s, "reason": r} for s, r in self.data.failed],
            "unlabelled": self.unlabelled,
            "device": str(members[0].device),
            "precision": [m.precision.name for m in members],
            "timing": {
                "scans": n,
                "inference_s": round(self.inference_s, 4),
                "total_s": round(self.total_s, 4),
                "inference_volumes_per_s": _rate(n, self.inference_s),
                "total_volumes_per_s": _rate(n, self.total_s),
            },
            "notes": self.notes,
        }


def evaluate(
    model: PathLike, *, data: PathLike | None = None, manifest: PathLike | None = None,
    split: str = "val", threshold: str = "checkpoint", bootstrap: int = 0, seed: int = 0,
    device: str | None = None, precision: str = "auto", batch_size: int = 8,
    workers: int | None = None, progress: bool = False,
) -> EvalReport:
    """Metrics of a checkpoint or ensemble file on the labelled scans of `split`.

    The threshold (`resolve_threshold`) is by default the one stored with the model, chosen on
    validation data; `"youden"` takes the Youden point of the evaluated scans (optimistic).
    """
    from .metrics import binary_report

    start = time.perf_counter()
    model = Path(model)
    target = resolve_device(device)
    workers = resolve_workers(workers, target)
    predictor = load_predictor(model, target, precision)
    scans = load_eval_data(predictor.members, data, manifest, [split], workers, progress)
    rows = scans.indices(split)
    unlabelled = len(scans.indices(split, labelled=False)) - len(rows)
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {scans.source}; "
                            "`covidzoo predict` scores unlabelled scans")
    probs_by_member, inference_s = member_probs(predictor.members, scans, rows, batch_size,
                                                workers)
    probs, labels = predictor.fuse(probs_by_member), scans.labels[rows]
    chosen = resolve_threshold(threshold, predictor, labels, probs)
    metrics = binary_report(labels, probs, chosen.value, n_boot=bootstrap, seed=seed)
    notes = [] if unlabelled == 0 else [f"{unlabelled} unlabelled scan(s) left out"]
    return EvalReport(model, predictor, scans, split, rows, labels, probs, chosen, metrics,
                      unlabelled, inference_s, time.perf_counter() - start, notes)


# --- ensemble ----------------------------------------------------------------------------------


@dataclass
class EnsembleReport:
    """A fitted ensemble: the ensembler and its Youden threshold (both fit on `fit_split`),
    and the metrics of every member and of the fusion on `split`."""

    method: str
    checkpoints: list[Path]
    members: list[Member]
    ensembler: Any
    threshold: float
    data: EvalData
    fit_split: str
    split: str
    labels: NDArray[np.int64]
    probs: NDArray[np.float64]  # n_scans x n_members, on `split`
    fused: NDArray[np.float64]
    member_reports: list[dict[str, Any]]
    fusion: dict[str, Any]
    optimistic: bool
    notes: list[str] = field(default_factory=list)

    def save(self, path: PathLike) -> Path:
        """The ensemble file that `predict` and `evaluate` read."""
        return write_ensemble_file(path, self.checkpoints, self.ensembler, self.threshold)

    def save_roc(self, path: PathLike) -> Path | None:
        """Members' ROC curves in grey, the fusion's in red; None (and a note) when the
        fusion's AUC is undefined on these scans."""
        from .plots import Curve, save_roc_png

        if self.fusion["auc"] is None:
            self.notes.append(f"no ROC plot: {self.fusion['undefined']['auc']}")
            return None
        curves = [Curve.from_scores(p.name, self.labels, self.probs[:, k])
                  for k, p in enumerate(self.checkpoints)]
        curves.append(Curve.from_scores(f"{self.method} fusion", self.labels, self.fused,
                                        highlight=True))
        point = (1 - (self.fusion["specificity"] or 0.0), self.fusion["sensitivity"] or 0.0)
        return save_roc_png(path, curves, operating_point=point,
                            title=f"{self.method} fusion on {self.split}: AUC "
                                  f"{self.fusion['auc']:.3f}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "data": self.data.source,
            "fit_split": self.fit_split,
            "split": self.split,
            "optimistic": self.optimistic,
            "threshold": self.threshold,
            "ensembler": self.ensembler.to_dict(),
            "members": [{"path": str(p), **r}
                        for p, r in zip(self.checkpoints, self.member_reports, strict=True)],
            "fusion": self.fusion,
            "failed": [{"source": s, "reason": r} for s, r in self.data.failed],
            "notes": self.notes,
        }


def fit_ensemble(
    checkpoints: Sequence[PathLike], *, method: str = "mean", data: PathLike | None = None,
    manifest: PathLike | None = None, fit_split: str = "val", split: str = "val",
    device: str | None = None, precision: str = "auto", batch_size: int = 8,
    workers: int | None = None, progress: bool = False,
) -> EnsembleReport:
    """Fit the ensembler `method` and its Youden threshold on `fit_split`; score the members
    (each at its own Youden point of `fit_split`) and the fusion on `split`. When the two splits
    overlap, the fusion's metrics are optimistic and a note says so."""
    from .ensemble import create_ensembler
    from .metrics import binary_report, youden_threshold

    paths = [Path(p) for p in checkpoints]
    for path in paths:
        if is_ensemble_file(path):
            raise BadInputError(f"{path}: an ensemble file; ensemble members must be checkpoints")
    ensembler = create_ensembler(method)  # an unknown method fails before any work
    target = resolve_device(device)
    workers = resolve_workers(workers, target)
    members = [load_member(p, target, precision) for p in paths]
    check_members(members)
    scans = load_eval_data(members, data, manifest, [fit_split, split], workers, progress)
    fit_rows, rows = scans.indices(fit_split), scans.indices(split)
    fit_labels, labels = scans.labels[fit_rows], scans.labels[rows]
    if len(set(fit_labels.tolist())) < 2:
        held = "no labelled scans" if not len(fit_rows) else "one class only"
        raise BadInputError(f"the fit split '{fit_split}' of {scans.source} holds {held}; the "
                            "ensembler and its Youden threshold need both classes")
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {scans.source}")
    fit_probs, _ = member_probs(members, scans, fit_rows, batch_size, workers)
    same_rows = np.array_equal(fit_rows, rows)
    probs = fit_probs if same_rows else member_probs(members, scans, rows, batch_size,
                                                     workers)[0]
    ensembler.fit(fit_probs, fit_labels)
    threshold = youden_threshold(fit_labels, ensembler.predict(fit_probs))
    fused = ensembler.predict(probs)
    member_reports = [binary_report(labels, probs[:, k], youden_threshold(fit_labels,
                                                                          fit_probs[:, k]))
                      for k in range(len(members))]
    optimistic = bool(set(fit_rows.tolist()) & set(rows.tolist()))
    notes = [f"the evaluated split '{split}' overlaps the fit split '{fit_split}': the "
             "fusion's metrics are optimistic"] if optimistic else []
    return EnsembleReport(method, paths, members, ensembler, float(threshold), scans, fit_split,
                          split, labels, probs, fused, member_reports,
                          binary_report(labels, fused, threshold), optimistic, notes)


# --- predict -----------------------------------------------------------------------------------


@dataclass
class Prediction:
    """The fused probability and label of one scan, with each member's probability."""

    scan: str
    probability: float
    label: str
    member_probabilities: list[float]


@dataclass
class PredictReport:
    """Predictions of a checkpoint or ensemble file for raw scans, at its stored threshold."""

    model: Path
    predictor: Predictor
    threshold: Threshold
    predictions: list[Prediction]
    failed: list[tuple[str, str]]

    def save_csv(self, path: PathLike) -> None:
        """scan,probability,label,threshold per scan."""
        _write_csv(path, ["scan", "probability", "label", "threshold"],
                   [(p.scan, repr(p.probability), p.label, repr(self.threshold.value))
                    for p in self.predictions])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "kind": self.predictor.kind,
            "members": [str(m.path) for m in self.predictor.members],
            "threshold": self.threshold.to_dict(),
            "predictions": [
                {"scan": p.scan, "probability": p.probability, "label": p.label,
                 "threshold": self.threshold.value,
                 "member_probabilities": p.member_probabilities}
                for p in self.predictions
            ],
            "failed": [{"source": s, "reason": r} for s, r in self.failed],
        }


def predict(model: PathLike, scans: Sequence[PathLike], *, device: str | None = None,
            precision: str = "auto", batch_size: int = 4) -> PredictReport:
    """Probability and label (at the stored threshold) of each raw scan; scans that cannot be
    read are listed in `failed`, and when every scan fails that is bad input."""
    model = Path(model)
    predictor = load_predictor(model, resolve_device(device), precision)
    found = predict_paths(predictor, scans, batch_size)
    if not found.paths:
        raise BadInputError(f"every scan failed ({len(found.failed)}); first: "
                            f"{found.failed[0][1]}")
    chosen = stored_threshold(predictor)
    probs = predictor.fuse(found.probs)
    predictions = [
        Prediction(path, float(p), "covid" if p >= chosen.value else "non-covid", m.tolist())
        for path, p, m in zip(found.paths, probs, found.probs, strict=True)
    ]
    return PredictReport(model, predictor, chosen, predictions, found.failed)
