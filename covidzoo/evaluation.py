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
from .values import parse_probability

PathLike = str | os.PathLike[str]



# The most confident errors whose explanation maps the report shows.
EXPLAINED_ERRORS = 3

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


def decision_threshold(predictor: Predictor) -> Threshold | None:
    """How a scan's label is decided: at `stored_threshold` for two classes; None for three or
    more, whose label is the most probable class."""
    return stored_threshold(predictor) if len(predictor.classes) == 2 else None


THRESHOLD_RULES = ("checkpoint", "youden")


def threshold_choice(choice: str) -> str | float:
    """`--threshold` checked before any work: a rule name, or a number within [0, 1]."""
    if choice in THRESHOLD_RULES:
        return choice
    try:
        float(choice)
    except ValueError:
        raise BadInputError(f"--threshold: '{choice}' is not checkpoint, youden or a number"
                            ) from None
    return parse_probability("--threshold", choice)


def resolve_threshold(
    choice: str, predictor: Predictor, labels: NDArray[np.int64], probs: NDArray[np.float64]
) -> Threshold:
    """`--threshold checkpoint|youden|FLOAT`.

    `checkpoint` (the default) is the one chosen on validation data; `youden` is the Youden point
    of the data being evaluated, the best cut-off for exactly that data, so the metrics at it
    are optimistic and labelled so.
    """
    from .metrics import youden_threshold

    value = threshold_choice(choice)
    if value == "checkpoint":
        return stored_threshold(predictor)
    if value == "youden":
        return Threshold(youden_threshold(labels, probs), "youden",
                         "Youden point of the evaluated data: optimistic")
    return Threshold(value, "option", "given on the command line")


# --- evaluate ----------------------------------------------------------------------------------


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 3) if seconds > 0 else None


def _label_name(value: int) -> str:
    from .metrics import CLASS_NAMES

    return CLASS_NAMES[int(value)]


def _describe_preprocess(members: Sequence[Any]) -> str:
    """The members' preprocessing in the `--preprocess` spelling, with the size: one line per
    distinct config."""
    from .data.preprocess import describe

    lines = {f"{'x'.join(map(str, m.preprocess.size))}: {describe(m.preprocess)}"
             for m in members}
    return "; ".join(sorted(lines))


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
    probs: NDArray[np.float64]  # covid probability per scan; n x K for three or more classes
    threshold: Threshold | None  # None for three or more classes: the most probable one wins
    metrics: dict[str, Any]
    unlabelled: int
    inference_s: float
    total_s: float
    notes: list[str] = field(default_factory=list)
    subgroups: dict[str, Any] | None = None  # `subgroup_report` with --by

    @property
    def classes(self) -> tuple[str, ...]:
        return self.predictor.classes

    def save_roc(self, path: PathLike) -> Path | None:
        """The ROC curve as a PNG: the scan counts, the AUC, the operating point of the
        threshold and, when the metrics were bootstrapped, the pointwise confidence band and AUC
        interval of the same resamples (same `n_boot`, seed and level). None (and a note) when
        the AUC is undefined on these scans."""
        from .plots import Curve, save_roc_png

        if self.threshold is None:  # one one-vs-rest curve per class that has one
            curves = [Curve.from_scores(name, self.labels == k, self.probs[:, k])
                      for k, name in enumerate(self.classes)
                      if self.metrics["per_class"][name]["auc"] is not None]
            if not curves:
                self.notes.append("no ROC plot: no class has both its scans and others")
                return None
            return save_roc_png(path, curves, title=f"{self.model.name} on {self.split}, "
                                                    "one class against the rest")
        if self.metrics["auc"] is None:
            self.notes.append(f"no ROC plot: {self.metrics['undefined']['auc']}")
            return None
        name = self.model.name
        boot = self.metrics.get("bootstrap") or {}
        curve = Curve.from_scores(name, self.labels, self.probs, True,
                                  n_boot=boot.get("n_boot", 0), seed=boot.get("seed", 0),
                                  level=boot.get("level", 0.95))
        sens, spec = self.metrics["sensitivity"] or 0.0, self.metrics["specificity"] or 0.0
        chosen = self.threshold
        return save_roc_png(path, [curve], operating_point=(1 - spec, sens),
                            title=f"{name} on {self.split}",
                            operating_label=f"threshold {chosen.value:.3g} ({chosen.source}): "
                                            f"sensitivity {sens:.2f}, specificity {spec:.2f}")

    def save_reliability(self, path: PathLike) -> Path:
        """The reliability diagram of these predictions (binary: the covid probability;
        classes: the top class's) as a PNG, with the ECE and Brier score."""
        from .plots import save_reliability_png
        from .stats import reliability_curve

        curve = reliability_curve(self.labels, self.probs)
        cal = self.metrics["calibration"]
        what = "covid" if self.threshold is not None else "top class"
        return save_reliability_png(
            path, curve["confidence"], curve["observed"], curve["count"],
            title=f"{self.model.name} on {self.split}: reliability ({what})",
            notes=[f"n = {len(self.labels)} scans; ECE {cal['ece']:.3f} (equal-width bins), "
                   f"{cal['ece_equal_mass']:.3f} (equal-mass); Brier {cal['brier']:.3f}"])

    def scan_rows(self, thumbnails: int = 24) -> list[dict[str, Any]]:
        """One row per scan for the report: path, label, probability (or each class's),
        prediction, and a thumbnail of the scan as the model saw it for the first
        `thumbnails` rows; the most confident errors first, then the other errors, then the
        rest, each by confidence."""
        from .metrics import predict_labels

        names = self.classes
        if self.threshold is None:
            predicted = self.probs.argmax(axis=1)
            confidence = self.probs.max(axis=1)
        else:
            predicted = predict_labels(self.probs, self.threshold.value)
            confidence = np.where(predicted == 1, self.probs, 1 - self.probs)
        wrong = predicted != self.labels
        order = np.lexsort((-confidence, ~wrong))
        rows = []
        for rank, k in enumerate(order):
            row: dict[str, Any] = {"path": self.data.sources[self.rows[k]],
                                   "label": names[self.labels[k]],
                                   "predicted": names[predicted[k]], "correct": not wrong[k],
                                   "thumbnail_png": None}
            if self.threshold is None:
                row["probabilities"] = {n: float(v) for n, v in zip(names, self.probs[k],
                                                                     strict=True)}
            else:
                row["probability"] = float(self.probs[k])
            if rank < thumbnails:
                row["thumbnail_png"] = self._thumbnail(int(self.rows[k]))
            rows.append(row)
        return rows

    def _thumbnail(self, row: int) -> bytes | None:
        from .report import thumbnail_png

        digest = self.predictor.members[0].preprocess.digest()
        dataset = self.data.datasets[digest]
        volume, _ = dataset[self.data.rows[digest][row]]
        return thumbnail_png(volume[0].numpy())

    def save_report(self, path: PathLike) -> Path:
        """Everything as one self-contained HTML file (`covidzoo.report`): configuration,
        metrics, ROC and reliability plots, confusion matrix, subgroups, per-scan table."""
        import tempfile

        from .report import evaluation_report

        images: dict[str, bytes | None] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, save in (("roc", self.save_roc), ("reliability", self.save_reliability)):
                target = Path(tmp) / f"{name}.png"
                images[name] = target.read_bytes() if save(target) is not None else None
        scans = self.scan_rows()
        report = evaluation_report(self.to_dict(), roc_png=images["roc"],
                                   reliability_png=images["reliability"], scans=scans,
                                   explain_pngs=self._error_maps(scans))
        report.write(path)
        return Path(path)

    def _error_maps(self, scans: Sequence[dict[str, Any]], count: int = EXPLAINED_ERRORS
                    ) -> dict[str, bytes]:
        """Grad-CAM pictures (`covidzoo.explain`) of the most confident errors, by scan path;
        none (and a note) when the model has no layer to explain."""
        import io

        from .data.readers import read_scan
        from .explain import EnsembleExplainer, Explainer, explanation_png

        errors = [row["path"] for row in scans if not row["correct"]][:count]
        if not errors:
            return {}
        try:
            explainer: Any = (EnsembleExplainer(self.predictor) if self.predictor.kind ==
                              "ensemble" else Explainer(self.predictor.members[0]))
        except BadInputError as exc:
            self.notes.append(f"no explanation maps in the report: {exc}")
            return {}
        pictures = {}
        for path in errors:
            volume = read_scan(path)
            found = explainer.explain(volume)
            image = explanation_png(volume, found, window=explainer.member.preprocess.window,
                                    lines=[f"{Path(path).name}: Grad-CAM of "
                                           f"'{found.explained}'"],
                                    threshold=(explainer.threshold
                                               if len(self.classes) == 2 else None))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            pictures[path] = buffer.getvalue()
        return pictures

    def save_predictions(self, path: PathLike) -> None:
        """path,label,probability,predicted per scan, as CSV; for three or more classes,
        path,label,predicted and one probability column per class (`p_NAME`)."""
        from .metrics import predict_labels

        if self.threshold is None:
            names = self.classes
            _write_csv(path, ["path", "label", "predicted", *(f"p_{n}" for n in names)], [
                (self.data.sources[i], names[y], names[int(np.argmax(p))],
                 *(repr(float(v)) for v in p))
                for i, y, p in zip(self.rows, self.labels, self.probs, strict=True)
            ])
            return

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
            "classes": list(self.classes),
            "preprocess": _describe_preprocess(members),
            "threshold": None if self.threshold is None else self.threshold.to_dict(),
            "metrics": self.metrics,
            "subgroups": self.subgroups,
            "tta": self.predictor.members[0].tta or "none",
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
    workers: int | None = None, progress: bool = False, cache: PathLike | None = None,
    preprocess: dict[str, Any] | None = None, tta: str | None = None, by: str | None = None,
) -> EvalReport:
    """Metrics of a checkpoint or ensemble file on the labelled scans of `split`, with its
    calibration (ECE, Brier) in `metrics["calibration"]`.

    The threshold (`resolve_threshold`) is by default the one stored with the model, chosen on
    validation data; `"youden"` takes the Youden point of the evaluated scans (optimistic).
    `cache`, a cache made by `covidzoo data prepare`, replaces `data`/`manifest` when it was
    prepared as the model's checkpoint records (`load_eval_data`). `preprocess` (steps as
    `--preprocess` gives them) overrides what the checkpoints record, with a note in the report.
    `tta` scores each scan as the mean over test-time views (`transforms.tta_views`). `by`, a
    column of `manifest` (site, sex, scanner), adds every metric per group (`subgroups`).
    """
    from .calibration import calibrated_on, calibration_figures
    from .metrics import binary_report
    from .multiclass_metrics import multiclass_report

    if by is not None and manifest is None:
        raise BadInputError(f"--by {by}: groups are a column of a --manifest")

    start = time.perf_counter()
    threshold_choice(threshold)  # a bad --threshold fails before models and data are loaded
    model = Path(model)
    target = resolve_device(device)
    workers = resolve_workers(workers, target)
    predictor = load_predictor(model, target, precision)
    predictor.set_tta(tta)
    overridden = predictor.override_preprocess(preprocess)
    groups = None
    if by is not None:
        from .data.layouts import manifest_column

        groups = manifest_column(manifest, by)  # type: ignore[arg-type]
    run_split = _run_split_of(model) if predictor.kind == "checkpoint" else None
    scans = load_eval_data(predictor.members, data, manifest, [split], workers, progress,
                           cache=cache, run_split=run_split)
    rows = scans.indices(split)
    unlabelled = len(scans.indices(split, labelled=False)) - len(rows)
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {scans.source}; "
                            "`covidzoo predict` scores unlabelled scans")
    probs_by_member, inference_s = member_probs(predictor.members, scans, rows, batch_size,
                                                workers, progress)
    probs, labels = predictor.fuse(probs_by_member), scans.labels[rows]
    if len(predictor.classes) > 2:
        if threshold != "checkpoint":
            raise BadInputError(f"--threshold {threshold}: a model of {len(predictor.classes)} "
                                "classes calls each scan its most probable class")
        chosen, metrics = None, multiclass_report(labels, probs, predictor.classes,
                                                  n_boot=bootstrap, seed=seed)
    else:
        chosen = resolve_threshold(threshold, predictor, labels, probs)
        metrics = binary_report(labels, probs, chosen.value, n_boot=bootstrap, seed=seed)
    metrics["calibration"] = calibration_figures(labels, probs)
    notes = overridden + ([] if unlabelled == 0
                          else [f"{unlabelled} unlabelled scan(s) left out"])
    fitted_here = calibrated_on(predictor, scans.source, split)
    if fitted_here:
        notes.append(fitted_here)
    if tta not in (None, "none"):
        notes.append(f"--tta {tta}: each scan's probability is the mean over its views")
    subgroups = None
    if groups is not None:
        subgroups = subgroup_report(
            [groups.get(scans.sources[i], "(none)") for i in rows], labels, probs,
            predictor.classes, None if chosen is None else chosen.value, by,
            n_boot=bootstrap or SUBGROUP_BOOTSTRAP, seed=seed)
    if scans.run_split_used and split in ("train", "val"):
        notes.append(f"the {split} split is the one the run used "
                     f"({model.parent / 'split.csv'}) where it lists these data's scans")
    return EvalReport(model, predictor, scans, split, rows, labels, probs, chosen, metrics,
                      unlabelled, inference_s, time.perf_counter() - start, notes, subgroups)


# Resamples of each group's intervals when --by is given without --bootstrap.
SUBGROUP_BOOTSTRAP = 1000


def subgroup_report(groups: Sequence[str], labels: NDArray[np.int64], probs: NDArray[np.float64],
                    classes: Sequence[str], threshold: float | None, by: str, *, n_boot: int,
                    seed: int) -> dict[str, Any]:
    """Every metric per group (binary: at the model's `threshold`; multi-class: the most
    probable class), each with bootstrap intervals and its counts; the worst group (lowest AUC,
    or macro AUC), and the mean of the groups' macro F1 (the 2025 COV19D fairness track's
    score). A group with one class only has no AUC: said under its `undefined`."""
    from .metrics import binary_report
    from .multiclass_metrics import multiclass_report

    names = np.asarray(groups)
    table: dict[str, Any] = {}
    for name in sorted(set(groups)):
        at = np.flatnonzero(names == name)
        if len(classes) > 2:
            table[name] = multiclass_report(labels[at], probs[at], classes, n_boot=n_boot,
                                            seed=seed)
        else:
            table[name] = binary_report(labels[at], probs[at], threshold, n_boot=n_boot,
                                        seed=seed)
    key = "auc" if len(classes) == 2 else "macro_auc"
    scored = {n: r[key] for n, r in table.items() if r.get(key) is not None}
    worst = min(scored, key=scored.__getitem__) if scored else None
    return {
        "by": by,
        "groups": table,
        "counts": {n: r["n"] for n, r in table.items()},
        "worst": None if worst is None else {"group": worst, "metric": key,
                                             "value": scored[worst]},
        "mean_group_macro_f1": float(np.mean([r["macro_f1"] for r in table.values()])),
    }


def _run_split_of(model: Path) -> list[Any] | None:
    """The `split.csv` beside a checkpoint in its run folder, None when there is none."""
    from .data.layouts import read_split_csv

    path = model.parent / "split.csv"
    return read_split_csv(path) if path.is_file() else None


# --- ensemble ----------------------------------------------------------------------------------


# The figures of `ensemble`: scored by an ensembler that never saw the scan, the same
# cross-fitted over folds of the fit split, or in-sample (fit and scored on the same scans).
ESTIMATES = ("held-out", "cross-fitted", "in-sample")
DEFAULT_FOLDS = 5
# The split on which `covidzoo train` chooses each run's best epoch and stored threshold.
SELECTION_SPLIT = "val"


def member_names(paths: Sequence[PathLike]) -> list[str]:
    """What reports call ensemble members: each checkpoint's run folder (the parent folder of
    `best.safetensors`). Where two folders share a name, enough of the folders above are
    added to tell them apart (`x/run`, `y/run`); two files of one folder get their stems
    (`run/best`, `run/last`); the same file twice gets `#2`."""
    from collections import Counter, defaultdict

    folders = [Path(p).resolve().parent for p in paths]
    depth = [1] * len(folders)

    def name(i: int) -> str:
        return "/".join(folders[i].parts[-depth[i]:])

    grown = True
    while grown:
        grown = False
        groups: dict[str, list[int]] = defaultdict(list)
        for i in range(len(folders)):
            groups[name(i)].append(i)
        for group in groups.values():
            if len({folders[i] for i in group}) > 1:
                for i in group:
                    if depth[i] < len(folders[i].parts):
                        depth[i] += 1
                        grown = True
    names = [name(i) for i in range(len(folders))]
    stems = [Path(p).stem for p in paths]
    stems_of: dict[str, set[str]] = defaultdict(set)
    for n, stem in zip(names, stems, strict=True):
        stems_of[n].add(stem)
    names = [f"{n}/{stem}" if len(stems_of[n]) > 1 else n
             for n, stem in zip(names, stems, strict=True)]
    seen: Counter[str] = Counter()
    unique = []
    for n in names:
        seen[n] += 1
        unique.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return unique


def default_ensemble_split(data: PathLike | None, manifest: PathLike | None,
                           fit_split: str) -> str:
    """The split `ensemble` reports on when none is given: "test" when the data has labelled
    test scans and the fit split is another one (held out), else the fit split itself
    (cross-fitted)."""
    from .data.sources import data_source

    if fit_split in ("test", "all"):
        return fit_split
    records = data_source(data, manifest).records()
    return ("test" if any(r.split == "test" and r.label is not None for r in records)
            else fit_split)


def report_at(labels: NDArray[np.int64], probs: NDArray[np.float64],
              thresholds: NDArray[np.float64]) -> dict[str, Any]:
    """`binary_report` with one threshold per scan (cross-fitting gives each fold its own).

    With a single threshold it is `binary_report` itself. Otherwise the threshold metrics come
    from each scan's own decision (`prob >= its threshold`), the AUC from the probabilities;
    `threshold` is None and `thresholds` lists the distinct ones.
    """
    from .metrics import binary_report, roc_auc

    distinct = np.unique(thresholds)
    if len(distinct) == 1:
        return binary_report(labels, probs, float(distinct[0]))
    report = binary_report(labels, (probs >= thresholds).astype(np.float64), 0.5)
    report.update(auc=roc_auc(labels, probs), threshold=None, thresholds=distinct.tolist())
    return report


@dataclass
class CrossFit:
    """Out-of-fold scores of the fit split: each scan scored by an ensembler and Youden
    thresholds fit on the other folds."""

    fused: NDArray[np.float64]
    thresholds: NDArray[np.float64]  # the fusion's threshold of each scan's fold
    member_thresholds: NDArray[np.float64]  # n_scans x n_members
    fold_thresholds: list[float]


def cross_fit(method: str, probs: NDArray[np.float64], labels: NDArray[np.int64], folds: int,
              seed: int) -> CrossFit:
    """Cross-fit the ensembler `method` over `folds` stratified folds (shuffled by `seed`)."""
    from sklearn.model_selection import StratifiedKFold

    from .ensemble import create_ensembler
    from .metrics import youden_threshold

    fused, thresholds = np.empty(len(labels)), np.empty(len(labels))
    member_thresholds, fold_thresholds = np.empty_like(probs), []
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fit, held in splitter.split(probs, labels):
        ensembler = create_ensembler(method).fit(probs[fit], labels[fit])
        threshold = youden_threshold(labels[fit], ensembler.predict(probs[fit]))
        fused[held], thresholds[held] = ensembler.predict(probs[held]), threshold
        member_thresholds[held] = [youden_threshold(labels[fit], probs[fit, k])
                                   for k in range(probs.shape[1])]
        fold_thresholds.append(float(threshold))
    return CrossFit(fused, thresholds, member_thresholds, fold_thresholds)


@dataclass
class EnsembleReport:
    """A fitted ensemble and an honest report of it.

    `ensembler` and `threshold` are fit on all of `fit_split` (what `save` writes). The figures
    on `split` (`member_reports`, `fusion`, `fused`) are `estimate`: "held-out" (no evaluated
    scan is in the fit split), "cross-fitted" (evaluated scans of the fit split are scored by
    ensemblers and thresholds fit on the other `folds`; `fold_thresholds`) or "in-sample" (too
    few scans to cross-fit: optimistic). `selection_biased`: the evaluated scans include the
    split on which `covidzoo train` chose the members' epochs and thresholds.
    """

    method: str
    checkpoints: list[Path]
    names: list[str]
    members: list[Member]
    ensembler: Any
    threshold: float | None  # None: classes, each scan's prediction its most probable class
    data: EvalData
    fit_split: str
    split: str
    labels: NDArray[np.int64]
    probs: NDArray[np.float64]  # n_scans x n_members (x classes), on `split`
    fused: NDArray[np.float64]  # n_scans (x classes)
    member_reports: list[dict[str, Any]]
    fusion: dict[str, Any]
    estimate: str
    folds: int | None
    seed: int
    fold_thresholds: list[float]
    selection_biased: bool
    notes: list[str] = field(default_factory=list)

    @property
    def optimistic(self) -> bool:
        """Whether the fusion's figures are in-sample."""
        return self.estimate == "in-sample"

    @property
    def multiclass(self) -> bool:
        """Whether the members score classes (`member_reports` and `fusion` are then
        `multiclass_report`s) rather than covid probabilities (`binary_report`s)."""
        return self.threshold is None

    @property
    def weights(self) -> list[float] | None:
        """The members' weights when the ensembler has any (`weighted`), else None."""
        weights = getattr(self.ensembler, "weights", None)
        return None if weights is None else [float(w) for w in weights]

    def save(self, path: PathLike) -> Path:
        """The ensemble file that `predict` and `evaluate` read."""
        return write_ensemble_file(path, self.checkpoints, self.ensembler, self.threshold)

    def save_roc(self, path: PathLike) -> Path | None:
        """Each member's ROC curve in its own colour, AUC in the legend (best first), the
        fusion's thick and black with its operating point, the scan counts under the title;
        None (and a note) when the fusion's AUC is undefined on these scans."""
        from .plots import Curve, save_roc_png

        if self.multiclass:  # the fusion's one-vs-rest curve of each class that has one
            curves = [Curve.from_scores(name, self.labels == k, self.fused[:, k])
                      for k, name in enumerate(self.fusion["classes"])
                      if self.fusion["per_class"][name]["auc"] is not None]
            if not curves:
                self.notes.append("no ROC plot: no class has both its scans and others")
                return None
            return save_roc_png(path, curves, title=f"{self.method} fusion of "
                                f"{len(self.checkpoints)} models on {self.split}, one class "
                                "against the rest")
        if self.fusion["auc"] is None:
            self.notes.append(f"no ROC plot: {self.fusion['undefined']['auc']}")
            return None
        curves = [Curve.from_scores(name, self.labels, self.probs[:, k])
                  for k, name in enumerate(self.names)]
        curves.append(Curve.from_scores(f"{self.method} fusion ({self.estimate})", self.labels,
                                        self.fused, highlight=True))
        sens, spec = self.fusion["sensitivity"] or 0.0, self.fusion["specificity"] or 0.0
        fit = (f"fit on '{self.fit_split}', the scans shown: the fusion's AUC is optimistic"
               if self.optimistic else f"fit on '{self.fit_split}', {self.estimate}"
               + (f" over {self.folds} folds" if self.estimate == "cross-fitted" else ""))
        return save_roc_png(path, curves, operating_point=(1 - spec, sens),
                            title=f"{self.method} fusion of {len(self.checkpoints)} models on "
                                  f"{self.split}", notes=[fit],
                            operating_label=f"fusion threshold {self._threshold_text()}: "
                                            f"sensitivity {sens:.2f}, specificity {spec:.2f}")

    def _threshold_text(self) -> str:
        threshold = self.fusion["threshold"]
        return "per fold" if threshold is None else f"{threshold:.3g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "data": self.data.source,
            "fit_split": self.fit_split,
            "split": self.split,
            "estimate": self.estimate,
            "in_sample": self.optimistic,
            "folds": self.folds,
            "seed": self.seed,
            "threshold": self.threshold,
            "fold_thresholds": self.fold_thresholds,
            "ensembler": self.ensembler.to_dict(),
            "weights": self.weights,
            "members": [
                {"name": name, "path": str(path),
                 "weight": None if self.weights is None else self.weights[k],
                 "selection_biased": self.selection_biased, **report}
                for k, (name, path, report) in enumerate(
                    zip(self.names, self.checkpoints, self.member_reports, strict=True))
            ],
            "fusion": {**self.fusion, "estimate": self.estimate},
            "failed": [{"source": s, "reason": r} for s, r in self.data.failed],
            "notes": self.notes,
        }


def fit_ensemble(
    checkpoints: Sequence[PathLike], *, method: str = "mean", data: PathLike | None = None,
    manifest: PathLike | None = None, fit_split: str = "val", split: str | None = None,
    folds: int = DEFAULT_FOLDS, seed: int = 0, device: str | None = None,
    precision: str = "auto", batch_size: int = 8, workers: int | None = None,
    progress: bool = False,
) -> EnsembleReport:
    """Fit the ensembler `method` and its Youden threshold on all of `fit_split` (what `save`
    writes), and report the members and the fusion on `split` without grading the ensembler
    on what it was fit on.

    `split` None (the default) is `default_ensemble_split`: the labelled test split when there
    is one, else the fit split. Evaluated scans outside the fit split are scored by the
    ensembler at its threshold (held out). Evaluated scans inside it are cross-fitted: the fit
    split is cut into `folds` stratified folds (shuffled by `seed`) and each scan is scored by
    an ensembler and a threshold fit on the other folds; so is each member's threshold. With
    fewer than two scans of a class in the fit split, they are in-sample, and labelled so.
    """
    from .ensemble import create_ensembler
    from .metrics import youden_threshold

    paths = [Path(p) for p in checkpoints]
    for path in paths:
        if is_ensemble_file(path):
            raise BadInputError(f"{path}: an ensemble file; ensemble members must be checkpoints")
    if folds < 2:
        raise BadInputError(f"--folds must be at least 2, got {folds}")
    ensembler = create_ensembler(method)  # an unknown method fails before any work
    target = resolve_device(device)
    workers = resolve_workers(workers, target)
    members = [load_member(p, target, precision) for p in paths]
    check_members(members)
    split = split or default_ensemble_split(data, manifest, fit_split)
    if not members[0].binary:
        return _class_mean_ensemble(paths, members, ensembler, data, manifest, fit_split, split,
                                    seed, batch_size, workers, progress)
    scans = load_eval_data(members, data, manifest, [fit_split, split], workers, progress)
    fit_rows, rows = scans.indices(fit_split), scans.indices(split)
    fit_labels, labels = scans.labels[fit_rows], scans.labels[rows]
    if len(set(fit_labels.tolist())) < 2:
        held = "no labelled scans" if not len(fit_rows) else "one class only"
        raise BadInputError(f"the fit split '{fit_split}' of {scans.source} holds {held}; the "
                            "ensembler and its Youden threshold need both classes")
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {scans.source}")
    every = np.union1d(fit_rows, rows)  # each scan scored once
    every_probs, _ = member_probs(members, scans, every, batch_size, workers)
    fit_probs = every_probs[np.searchsorted(every, fit_rows)]
    probs = every_probs[np.searchsorted(every, rows)]
    ensembler.fit(fit_probs, fit_labels)
    threshold = float(youden_threshold(fit_labels, ensembler.predict(fit_probs)))
    fused, thresholds = ensembler.predict(probs), np.full(len(rows), threshold)
    member_thresholds = np.tile([youden_threshold(fit_labels, fit_probs[:, k])
                                 for k in range(len(members))], (len(rows), 1))
    inside = np.isin(rows, fit_rows)
    estimate, n_folds, fold_thresholds = "held-out", None, []
    if inside.any():
        n_folds = min(folds, int(np.bincount(fit_labels, minlength=2).min()))
        if n_folds >= 2:
            crossed = cross_fit(method, fit_probs, fit_labels, n_folds, seed)
            at = np.searchsorted(fit_rows, rows[inside])
            fused[inside], thresholds[inside] = crossed.fused[at], crossed.thresholds[at]
            member_thresholds[inside] = crossed.member_thresholds[at]
            estimate, fold_thresholds = "cross-fitted", crossed.fold_thresholds
        else:
            estimate, n_folds = "in-sample", None
    selection_biased = any(scans.splits[r] == SELECTION_SPLIT for r in rows)
    return EnsembleReport(
        method=method, checkpoints=paths, names=member_names(paths), members=members,
        ensembler=ensembler, threshold=threshold, data=scans, fit_split=fit_split, split=split,
        labels=labels, probs=probs, fused=fused,
        member_reports=[report_at(labels, probs[:, k], member_thresholds[:, k])
                        for k in range(len(members))],
        fusion=report_at(labels, fused, thresholds), estimate=estimate, folds=n_folds,
        seed=seed, fold_thresholds=fold_thresholds, selection_biased=selection_biased,
        notes=_ensemble_notes(estimate, fit_split, split, n_folds, seed, bool(inside.all()),
                              selection_biased),
    )


def _class_mean_ensemble(paths: list[Path], members: list[Member], ensembler: Any,
                         data: PathLike | None, manifest: PathLike | None, fit_split: str,
                         split: str, seed: int, batch_size: int, workers: int,
                         progress: bool) -> EnsembleReport:
    """The multi-class ensemble: the mean of the members' class probabilities, the fusion of
    the 3D RegNet paper and the only one defined for classes. It has no parameters and no
    threshold (a scan's prediction is its most probable class), so nothing is fit on
    `fit_split` and every figure on `split` is held out from the fusion."""
    from .multiclass_metrics import multiclass_report

    classes = members[0].classes
    if ensembler.method != "mean":
        raise BadInputError(f"--method {ensembler.method}: with {len(classes)} classes the "
                            "ensemble averages the members' class probabilities (--method "
                            "mean); the other ensemblers fuse covid probabilities")
    scans = load_eval_data(members, data, manifest, [split], workers, progress)
    rows = scans.indices(split)
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {scans.source}")
    labels = scans.labels[rows]
    probs, _ = member_probs(members, scans, rows, batch_size, workers)  # n x members x K
    fused = probs.mean(axis=1)
    ensembler.n_models = len(members)  # the mean's whole fitted state, as `cv` saves it
    selection_biased = any(scans.splits[r] == SELECTION_SPLIT for r in rows)
    notes = [f"{len(classes)} classes: the fusion is the mean of the members' class "
             "probabilities, with no fitted parameters and no threshold (each scan's prediction "
             f"is its most probable class), so --fit-split '{fit_split}' is unused and --folds "
             "do not apply"]
    notes += _ensemble_notes("held-out", fit_split, split, None, seed, False, selection_biased)
    return EnsembleReport(
        method=ensembler.method, checkpoints=paths, names=member_names(paths), members=members,
        ensembler=ensembler, threshold=None, data=scans, fit_split=fit_split, split=split,
        labels=labels, probs=probs, fused=fused,
        member_reports=[multiclass_report(labels, probs[:, k], classes)
                        for k in range(len(members))],
        fusion=multiclass_report(labels, fused, classes), estimate="held-out", folds=None,
        seed=seed, fold_thresholds=[], selection_biased=selection_biased, notes=notes)


def _ensemble_notes(estimate: str, fit_split: str, split: str, folds: int | None, seed: int,
                    all_inside: bool, selection_biased: bool) -> list[str]:
    """What a reader of the ensemble report must know about where its figures come from."""
    notes = []
    outside = "" if all_inside else f"; the scans of '{split}' outside '{fit_split}' are held out"
    if estimate == "cross-fitted":
        notes.append(f"the evaluated scans include the fit split '{fit_split}': their figures "
                     f"are cross-fitted over {folds} stratified folds (seed {seed}), each scan "
                     "scored by an ensembler and thresholds fit on the other folds; the saved "
                     f"ensemble is fit on all of '{fit_split}'{outside}")
    elif estimate == "in-sample":
        notes.append(f"IN-SAMPLE: the evaluated scans include the fit split '{fit_split}', which "
                     "has too few scans of a class to cross-fit: the fusion's figures and the "
                     f"members' thresholds are fit on the scans they are scored on (optimistic)"
                     f"{outside}")
    if selection_biased:
        notes.append(f"selection-biased (*): the evaluated scans include '{SELECTION_SPLIT}', on "
                     "which covidzoo train chose each member's best epoch and stored threshold, "
                     "so the members' figures there are optimistic, and the fusion's with them; "
                     "a labelled test split gives unbiased figures")
    return notes


# --- predict -----------------------------------------------------------------------------------


@dataclass
class Prediction:
    """The fused probability and label of one scan, with each member's probability. For three
    or more classes, `probability` is the predicted class's and `probabilities` holds every
    class's (members' rows in `member_probabilities`)."""

    scan: str
    probability: float
    label: str
    member_probabilities: list[Any]
    probabilities: dict[str, float] | None = None


@dataclass
class PredictReport:
    """Predictions of a checkpoint or ensemble file for raw scans, at its stored threshold."""

    model: Path
    predictor: Predictor
    threshold: Threshold | None  # None for three or more classes: the most probable one
    predictions: list[Prediction]
    failed: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)

    def save_csv(self, path: PathLike) -> None:
        """scan,probability,label,threshold per scan; for three or more classes
        scan,label,probability and one column per class (`p_NAME`)."""
        if self.threshold is None:
            names = self.predictor.classes
            _write_csv(path, ["scan", "label", "probability", *(f"p_{n}" for n in names)],
                       [(p.scan, p.label, repr(p.probability),
                         *(repr(p.probabilities[n]) for n in names))  # type: ignore[index]
                        for p in self.predictions])
            return
        _write_csv(path, ["scan", "probability", "label", "threshold"],
                   [(p.scan, repr(p.probability), p.label, repr(self.threshold.value))
                    for p in self.predictions])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "kind": self.predictor.kind,
            "members": [str(m.path) for m in self.predictor.members],
            "classes": list(self.predictor.classes),
            "threshold": None if self.threshold is None else self.threshold.to_dict(),
            "predictions": [
                {"scan": p.scan, "probability": p.probability, "label": p.label,
                 "threshold": None if self.threshold is None else self.threshold.value,
                 **({} if p.probabilities is None else {"probabilities": p.probabilities}),
                 "member_probabilities": p.member_probabilities}
                for p in self.predictions
            ],
            "failed": [{"source": s, "reason": r} for s, r in self.failed],
            "notes": list(self.notes),
        }


def predict(model: PathLike, scans: Sequence[PathLike], *, device: str | None = None,
            precision: str = "auto", batch_size: int = 4, progress: bool = False,
            preprocess: dict[str, Any] | None = None, tta: str | None = None) -> PredictReport:
    """Probability and label (at the stored threshold) of each raw scan; scans that cannot be
    read are listed in `failed`, and when every scan fails that is bad input. `preprocess`
    overrides the checkpoints' preprocessing (noted in `notes`)."""
    model = Path(model)
    predictor = load_predictor(model, resolve_device(device), precision)
    predictor.set_tta(tta)
    notes = predictor.override_preprocess(preprocess)
    found = predict_paths(predictor, scans, batch_size, progress)
    if not found.paths:
        raise BadInputError(f"every scan failed ({len(found.failed)}); first: "
                            f"{found.failed[0][1]}")
    probs = predictor.fuse(found.probs)
    chosen = decision_threshold(predictor)
    predictions = scan_predictions(found.paths, probs, found.probs, predictor.classes, chosen)
    return PredictReport(model, predictor, chosen, predictions, found.failed, notes)


def scan_predictions(paths: Sequence[str], probs: NDArray[np.float64],
                     member_probs: NDArray[np.float64], classes: Sequence[str],
                     threshold: Threshold | None) -> list[Prediction]:
    """Each scan's `Prediction` from the fused and the members' probabilities: two classes,
    the covid probability and its label at `threshold`; three or more (`threshold` None), the
    most probable class, its probability and every class's."""
    if threshold is None:
        return [Prediction(path, float(p.max()), classes[int(p.argmax())], m.tolist(),
                           {n: float(v) for n, v in zip(classes, p, strict=True)})
                for path, p, m in zip(paths, probs, member_probs, strict=True)]
    return [Prediction(path, float(p), "covid" if p >= threshold.value else "non-covid",
                       m.tolist())
            for path, p, m in zip(paths, probs, member_probs, strict=True)]
