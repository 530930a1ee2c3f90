"""Binary metrics of COVID-19 detection: ROC, the Youden threshold, F1, macro F1, bootstrap CIs.

Conventions used everywhere in covidzoo:

- labels: 1 = covid (the positive class), 0 = non-covid;
- a scan is predicted covid when its probability is `>= threshold`, which is also how
  scikit-learn's `roc_curve` thresholds read, so a threshold taken from the ROC curve means the
  same thing here;
- macro F1 is the mean of the F1 of both classes: the metric of the MIA-COV19D challenge.

scikit-learn computes every metric that it has; this module adds the conventions, input checks,
the Youden rule, a vectorised bootstrap and one JSON-ready report. Metrics that data cannot
define (AUC and sensitivity without covid scans, specificity without non-covid scans) are
`None` with a reason instead of an exception or a warning, so an evaluation on a one-class
subset still reports what it can.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import BadInputError
from .values import BINARY_CLASSES

CLASS_NAMES = BINARY_CLASSES  # label 0, label 1

# Rows of the bootstrap processed at once: bounds memory to ~16 MB per array.
_BOOTSTRAP_CELLS = 2_000_000
# Youden J values this close to the maximum are ties.
_J_TIE = 1e-12


class RocCurve(NamedTuple):
    """False and true positive rates at each threshold, highest threshold first.

    `thresholds[0]` is `+inf` (scikit-learn's convention): the point (0, 0) where no scan is
    called covid.
    """

    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    thresholds: NDArray[np.float64]


def check_binary(labels: ArrayLike, probs: ArrayLike) -> tuple[NDArray[np.int64], NDArray]:
    """`labels` and `probs` as 1-D arrays, after checking them; bad input raises `BadInputError`.

    Labels must be 0 or 1; scores must be finite and as many as the labels.
    """
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise BadInputError(f"labels and probabilities must be 1-D, got {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise BadInputError(f"{len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        raise BadInputError("no scans to evaluate: labels and probabilities are empty")
    if not np.isin(y, (0, 1)).all():
        raise BadInputError(f"labels must be 0 (non-covid) or 1 (covid), got {np.unique(y)}")
    if not np.isfinite(p).all():
        raise BadInputError("probabilities must be finite (found NaN or infinity)")
    return y.astype(np.int64), p


def _one_class_reason(y: NDArray[np.int64]) -> str | None:
    n_pos = int(y.sum())
    if n_pos == 0:
        return "undefined: no covid scans in the data (one class only)"
    if n_pos == len(y):
        return "undefined: no non-covid scans in the data (one class only)"
    return None


def roc_auc(labels: ArrayLike, probs: ArrayLike) -> float | None:
    """Area under the ROC curve (scikit-learn's `roc_auc_score`); `None` with one class only."""
    from sklearn.metrics import roc_auc_score

    y, p = check_binary(labels, probs)
    if _one_class_reason(y):
        return None
    return float(roc_auc_score(y, p))


def roc_curve(labels: ArrayLike, probs: ArrayLike) -> RocCurve:
    """The full ROC curve, every distinct score a threshold (no intermediate point dropped).

    Data with one class only has no ROC curve: `BadInputError`.
    """
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, p = check_binary(labels, probs)
    reason = _one_class_reason(y)
    if reason:
        raise BadInputError(f"ROC curve {reason}")
    fpr, tpr, thresholds = sk_roc_curve(y, p, drop_intermediate=False)
    return RocCurve(fpr, tpr, thresholds)


def youden_threshold(labels: ArrayLike, probs: ArrayLike) -> float:
    """The threshold that maximises Youden's J = TPR - FPR (sensitivity + specificity - 1).

    This is the "optimal cut-off point" of the 3D RegNet paper. Choose it on validation data:
    on the data being evaluated it is optimistic.

    - Only finite thresholds compete: scikit-learn's first threshold, `+inf`, calls no scan
      covid and is skipped, so the result is always one of the given scores.
    - Ties go to the highest threshold (the first maximum along the curve), which favours
      specificity: among equally good cut-offs, call fewer scans covid. J values within 1e-12
      of the maximum tie, so that rounding (1 - 1/3 against 2/3) does not pick the winner.

    Data with one class only has no Youden point: `BadInputError`.
    """
    fpr, tpr, thresholds = roc_curve(labels, probs)
    j = tpr[1:] - fpr[1:]
    best = int(np.argmax(j >= j.max() - _J_TIE))
    return float(thresholds[1 + best])


def predict_labels(probs: ArrayLike, threshold: float) -> NDArray[np.int64]:
    """1 (covid) where `probs >= threshold`, else 0."""
    if not np.isfinite(threshold):
        raise BadInputError(f"threshold must be a finite number, got {threshold}")
    return (np.asarray(probs, dtype=np.float64) >= threshold).astype(np.int64)


def confusion_matrix(labels: ArrayLike, probs: ArrayLike, threshold: float) -> NDArray[np.int64]:
    """scikit-learn's 2 x 2 confusion matrix: rows true class, columns predicted class.

    `[[tn, fp], [fn, tp]]`, class 0 (non-covid) first, even when a class is absent.
    """
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    y, p = check_binary(labels, probs)
    return sk_confusion_matrix(y, predict_labels(p, threshold), labels=[0, 1])


def f1_per_class(labels: ArrayLike, probs: ArrayLike, threshold: float) -> dict[str, float]:
    """F1 of each class at `threshold`, keyed by class name (`"non-covid"`, `"covid"`).

    A class that is neither present nor predicted has F1 0 (scikit-learn's `zero_division=0`),
    as the challenge scorer counts it; `binary_report` notes when that happens.
    """
    from sklearn.metrics import f1_score

    y, p = check_binary(labels, probs)
    scores = f1_score(y, predict_labels(p, threshold), labels=[0, 1], average=None,
                      zero_division=0.0)
    return {name: float(s) for name, s in zip(CLASS_NAMES, scores, strict=True)}


def f1_covid(labels: ArrayLike, probs: ArrayLike, threshold: float) -> float:
    """F1 of the covid class at `threshold`: the 3D RegNet paper's F1."""
    return f1_per_class(labels, probs, threshold)["covid"]


def macro_f1(labels: ArrayLike, probs: ArrayLike, threshold: float) -> float:
    """Mean F1 of both classes at `threshold`: the MIA-COV19D challenge metric."""
    return float(np.mean(list(f1_per_class(labels, probs, threshold).values())))


def accuracy(labels: ArrayLike, probs: ArrayLike, threshold: float) -> float:
    """Fraction of scans classified correctly at `threshold`."""
    y, p = check_binary(labels, probs)
    return float(np.mean(predict_labels(p, threshold) == y))


def sensitivity(labels: ArrayLike, probs: ArrayLike, threshold: float) -> float | None:
    """Recall of the covid class, TP / (TP + FN); `None` without covid scans."""
    (_, _), (fn, tp) = confusion_matrix(labels, probs, threshold)
    return float(tp / (tp + fn)) if tp + fn else None


def specificity(labels: ArrayLike, probs: ArrayLike, threshold: float) -> float | None:
    """Recall of the non-covid class, TN / (TN + FP); `None` without non-covid scans."""
    (tn, fp), (_, _) = confusion_matrix(labels, probs, threshold)
    return float(tn / (tn + fp)) if tn + fp else None


def _auc_rows(y: NDArray[np.int64], p: NDArray[np.float64]) -> NDArray[np.float64]:
    """ROC AUC of each row, by the Mann-Whitney U statistic with midranks (ties count 1/2).

    Equal to `roc_auc_score` row by row; rows must hold both classes.
    """
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    u = (ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _macro_f1_rows(
    y: NDArray[np.int64], p: NDArray[np.float64], threshold: float
) -> NDArray[np.float64]:
    """Macro F1 of each row at `threshold`, F1 = 2TP / (2TP + FP + FN), 0 when undefined."""
    pred = p >= threshold
    pos = y == 1
    tp = (pred & pos).sum(axis=1)
    tn = (~pred & ~pos).sum(axis=1)
    fp = (pred & ~pos).sum(axis=1)
    fn = (~pred & pos).sum(axis=1)
    errors = fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_pos = np.where(tp + errors > 0, 2 * tp / (2 * tp + errors), 0.0)
        f1_neg = np.where(tn + errors > 0, 2 * tn / (2 * tn + errors), 0.0)
    return (f1_pos + f1_neg) / 2


def _check_bootstrap(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise BadInputError(f"the number of bootstrap resamples must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise BadInputError(f"the confidence level must be between 0 and 1, got {level}")


def _resamples(
    y: NDArray[np.int64], p: NDArray[np.float64], n_boot: int, seed: int
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float64], int]]:
    """The bootstrap resamples of `bootstrap_ci`, in chunks: `(labels, scores, skipped)` with a
    row per resample that holds both classes; `skipped` counts the one-class rows left out.

    The indices come from `numpy.random.default_rng(seed)`, so every function that resamples
    through here sees the same resamples for the same seed.
    """
    n = len(y)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        yb, pb = y[idx], p[idx]
        n_pos = yb.sum(axis=1)
        both = (n_pos > 0) & (n_pos < n)
        yield yb[both], pb[both], int((~both).sum())


def bootstrap_ci(
    labels: ArrayLike,
    probs: ArrayLike,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap confidence intervals of ROC AUC and macro F1.

    Scans are resampled with replacement `n_boot` times with `numpy.random.default_rng(seed)`
    (the indices of all resamples drawn as one `n_boot x n` array). The threshold stays fixed:
    the intervals describe the sampling error of the evaluated data, not of the threshold's
    choice. Resamples that hold one class only have no AUC and are skipped for both metrics;
    `skipped` counts them. Returns `{"n_boot", "seed", "level", "skipped", "auc": [low, high],
    "macro_f1": [low, high]}`, with `None` intervals when every resample was skipped.
    """
    y, p = check_binary(labels, probs)
    _check_bootstrap(n_boot, level)
    predict_labels(p, threshold)  # checks the threshold
    aucs: list[NDArray[np.float64]] = []
    f1s: list[NDArray[np.float64]] = []
    skipped = 0
    for yb, pb, n_skipped in _resamples(y, p, n_boot, seed):
        skipped += n_skipped
        aucs.append(_auc_rows(yb, pb))
        f1s.append(_macro_f1_rows(yb, pb, threshold))
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(values: list[NDArray[np.float64]]) -> list[float] | None:
        kept = np.concatenate(values)
        return [float(v) for v in np.percentile(kept, q)] if len(kept) else None

    return {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "level": float(level),
        "skipped": skipped,
        "auc": interval(aucs),
        "macro_f1": interval(f1s),
    }


class RocBand(NamedTuple):
    """A pointwise bootstrap confidence band of the ROC curve: the `level` interval of the TPR
    at each FPR of the grid `fpr`, over the resamples of `bootstrap_ci` (same seed, same
    resamples), and the interval of the AUC over the same resamples."""

    fpr: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    auc: tuple[float, float] | None
    level: float
    n_boot: int
    seed: int
    skipped: int


def _roc_rows(
    y: NDArray[np.int64], p: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """FPR and TPR of each row's ROC curve, `(0, 0)` first, one point per score (tied scores
    share the point at the end of their run, so the curve runs straight through a tie)."""
    order = np.argsort(-p, axis=1, kind="stable")
    ys, ps = np.take_along_axis(y, order, axis=1), np.take_along_axis(p, order, axis=1)
    n = y.shape[1]
    positions = np.arange(n)
    run_end = np.ones(ps.shape, dtype=bool)
    run_end[:, :-1] = ps[:, :-1] != ps[:, 1:]
    ends = np.minimum.accumulate(np.where(run_end, positions, n)[:, ::-1], axis=1)[:, ::-1]
    tps = np.take_along_axis(np.cumsum(ys, axis=1), ends, axis=1)
    fps = ends + 1 - tps
    zero = np.zeros((len(y), 1))
    tpr = np.hstack([zero, tps / tps[:, -1:]])
    fpr = np.hstack([zero, fps / fps[:, -1:]])
    return fpr, tpr


def bootstrap_roc_band(
    labels: ArrayLike,
    probs: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    points: int = 101,
) -> RocBand:
    """Pointwise percentile band of the ROC curve over `n_boot` bootstrap resamples.

    Each resample's curve (linear between its points, as `roc_curve` draws it) gives a TPR at
    each of `points` evenly spaced FPRs; the band is the `level` interval of those TPRs at each
    FPR. The resamples are those of `bootstrap_ci` with the same `seed`, so the band and the
    reported AUC interval describe the same resampled data; the AUC interval is recomputed here
    from the resampled curves and equals `bootstrap_ci`'s. One-class resamples are skipped and
    counted; when all are, the band is the curve's full range, 0 to 1, and `auc` is None.
    """
    y, p = check_binary(labels, probs)
    _check_bootstrap(n_boot, level)
    reason = _one_class_reason(y)
    if reason:
        raise BadInputError(f"ROC band {reason}")
    grid = np.linspace(0.0, 1.0, points)
    tprs: list[NDArray[np.float64]] = []
    aucs: list[NDArray[np.float64]] = []
    skipped = 0
    for yb, pb, n_skipped in _resamples(y, p, n_boot, seed):
        skipped += n_skipped
        fpr, tpr = _roc_rows(yb, pb)
        aucs.append(((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(axis=1))
        tprs.extend(np.interp(grid, f, t) for f, t in zip(fpr, tpr, strict=True))
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    if not tprs:
        return RocBand(grid, np.zeros(points), np.ones(points), None, float(level),
                       int(n_boot), int(seed), skipped)
    low, high = np.percentile(np.array(tprs), q, axis=0)
    auc_low, auc_high = np.percentile(np.concatenate(aucs), q)
    return RocBand(grid, low, high, (float(auc_low), float(auc_high)), float(level),
                   int(n_boot), int(seed), skipped)


def binary_report(
    labels: ArrayLike,
    probs: ArrayLike,
    threshold: float,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric at `threshold` in one JSON-ready dict (what `evaluate` and `train` print).

    Keys: `n`, `n_covid`, `n_non_covid`, `threshold`, `auc`, `f1` (covid class),
    `f1_per_class` (`{"non-covid", "covid"}`), `macro_f1`, `accuracy`, `sensitivity`,
    `specificity`, `confusion_matrix` (`{"tn", "fp", "fn", "tp"}`) and `undefined`, which maps
    each metric the data cannot define (its value is `None`, or 0 for an F1) to the reason.
    With `n_boot > 0`, `bootstrap` holds `bootstrap_ci(..., n_boot, seed)`.
    """
    y, p = check_binary(labels, probs)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, p, threshold).ravel())
    f1s = f1_per_class(y, p, threshold)
    undefined: dict[str, str] = {}
    reason = _one_class_reason(y)
    if reason:
        undefined["auc"] = reason
    if tp + fn == 0:
        undefined["sensitivity"] = "undefined: no covid scans in the data"
    if tn + fp == 0:
        undefined["specificity"] = "undefined: no non-covid scans in the data"
    for name, present, called in (("non-covid", tn + fp, tn + fn), ("covid", tp + fn, tp + fp)):
        if present == 0 and called == 0:
            undefined[f"f1_per_class.{name}"] = (
                f"undefined: no {name} scans and none predicted; counted as 0"
            )
    report: dict[str, Any] = {
        "n": len(y),
        "n_covid": tp + fn,
        "n_non_covid": tn + fp,
        "threshold": float(threshold),
        "auc": roc_auc(y, p),
        "f1": f1s["covid"],
        "f1_per_class": f1s,
        "macro_f1": float(np.mean(list(f1s.values()))),
        "accuracy": (tp + tn) / len(y),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "undefined": undefined,
    }
    if n_boot:
        report["bootstrap"] = bootstrap_ci(y, p, threshold, n_boot=n_boot, seed=seed)
    return report


__all__ = [
    "CLASS_NAMES",
    "RocBand",
    "RocCurve",
    "accuracy",
    "binary_report",
    "bootstrap_ci",
    "bootstrap_roc_band",
    "check_binary",
    "confusion_matrix",
    "f1_covid",
    "f1_per_class",
    "macro_f1",
    "predict_labels",
    "roc_auc",
    "roc_curve",
    "sensitivity",
    "specificity",
    "youden_threshold",
]
