"""Metrics of a study with three or more classes (COVID-19 / CAP / normal, severity grades).

The binary metrics (`covidzoo.metrics`) score a covid probability at a threshold; here a scan's
prediction is its most probable class (ties: the lowest class index, as numpy's `argmax`), and:

- per class, one-vs-rest: AUC (the class's probability against all other scans), F1,
  sensitivity (recall), specificity, precision and support;
- macro averages (the mean over classes, each class counting the same: the Res-Dense paper's
  macro F1, the COV19D challenges' score) and micro averages (every scan counting the same:
  micro AUC pools every class's one-vs-rest decisions; micro F1 equals the accuracy);
- the confusion matrix, rows the true class, columns the predicted one.

scikit-learn computes each figure (`roc_auc_score`, `f1_score`, `confusion_matrix`); the tests
check them against it to 1e-9. A class without scans (or present in every scan) has no
one-vs-rest AUC: `None`, with the reason under `undefined`, and the macro AUC averages the
classes that have one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import BadInputError


def check_multiclass(labels: ArrayLike, probs: ArrayLike, n_classes: int | None = None
                     ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """`labels` (class indices, 1-D) and `probs` (`n x K`, rows of class probabilities), after
    checking them; bad input raises `BadInputError`."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2:
        raise BadInputError(f"labels must be 1-D and probabilities n x K, got {y.shape} and "
                            f"{p.shape}")
    k = p.shape[1] if n_classes is None else n_classes
    if len(y) != len(p) or p.shape[1] != k:
        raise BadInputError(f"{len(y)} labels but {p.shape[0]} x {p.shape[1]} probabilities "
                            f"for {k} classes")
    if len(y) == 0:
        raise BadInputError("no scans to evaluate: labels and probabilities are empty")
    if not (np.issubdtype(y.dtype, np.integer) and ((y >= 0) & (y < k)).all()):
        raise BadInputError(f"labels must be class indices 0 to {k - 1}, got {np.unique(y)}")
    if not np.isfinite(p).all():
        raise BadInputError("probabilities must be finite (found NaN or infinity)")
    return y.astype(np.int64), p


def predicted(probs: ArrayLike) -> NDArray[np.int64]:
    """The most probable class of each row."""
    return np.asarray(probs).argmax(axis=1).astype(np.int64)


def _ovr_auc(y: NDArray[np.int64], p: NDArray[np.float64], k: int) -> float | None:
    from sklearn.metrics import roc_auc_score

    positive = y == k
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, p[:, k]))


def macro_ovr_auc(labels: ArrayLike, probs: ArrayLike, n_classes: int | None = None
                  ) -> float | None:
    """The mean one-vs-rest AUC over the classes that have one (None when none has)."""
    y, p = check_multiclass(labels, probs, n_classes)
    aucs = [a for k in range(p.shape[1]) if (a := _ovr_auc(y, p, k)) is not None]
    return float(np.mean(aucs)) if aucs else None


def macro_f1_argmax(labels: ArrayLike, probs: ArrayLike, n_classes: int | None = None) -> float:
    """The macro F1 of the most probable class (scikit-learn's `f1_score(average="macro")`
    over every class, a class never present nor predicted counting 0)."""
    from sklearn.metrics import f1_score

    y, p = check_multiclass(labels, probs, n_classes)
    return float(f1_score(y, predicted(p), labels=list(range(p.shape[1])), average="macro",
                          zero_division=0))


def _bootstrap(y: NDArray[np.int64], p: NDArray[np.float64], n_boot: int, seed: int,
               level: float = 0.95) -> dict[str, Any]:
    """Percentile intervals of the macro AUC and macro F1 over `n_boot` resamples of scans;
    a resample lacking a class is skipped for the AUC."""
    rng = np.random.default_rng(seed)
    aucs, f1s = [], []
    for _ in range(n_boot):
        rows = rng.integers(0, len(y), len(y))
        f1s.append(macro_f1_argmax(y[rows], p[rows], p.shape[1]))
        if len(np.unique(y[rows])) == p.shape[1]:
            aucs.append(macro_ovr_auc(y[rows], p[rows], p.shape[1]))
    tail = (1 - level) / 2 * 100

    def interval(values: list[float]) -> list[float] | None:
        return None if not values else [float(v) for v in
                                         np.percentile(values, (tail, 100 - tail))]

    return {"macro_auc": interval(aucs), "macro_f1": interval(f1s), "level": level,
            "n_boot": n_boot, "seed": seed, "skipped_auc": n_boot - len(aucs)}


def multiclass_report(labels: ArrayLike, probs: ArrayLike, classes: Sequence[str],
                      n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """Every multi-class metric in one JSON-ready dict (what `evaluate` prints and writes).

    Keys: `n`, `classes`, `support` (scans per class), `per_class` (`{name: {auc, f1,
    sensitivity, specificity, precision, support}}`), `macro_auc`, `micro_auc`, `macro_f1`,
    `micro_f1`, `accuracy`, `confusion_matrix` (rows true, columns predicted, in class order),
    `undefined` (each metric the data cannot define, with the reason); with `n_boot > 0`,
    `bootstrap` holds percentile intervals of the macro AUC and macro F1.
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    y, p = check_multiclass(labels, probs, len(classes))
    k = len(classes)
    guess = predicted(p)
    cm = confusion_matrix(y, guess, labels=list(range(k)))
    f1 = f1_score(y, guess, labels=list(range(k)), average=None, zero_division=0)
    per_class: dict[str, dict[str, Any]] = {}
    undefined: dict[str, str] = {}
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        fn, fp = int(cm[i].sum()) - tp, int(cm[:, i].sum()) - tp
        tn = len(y) - tp - fn - fp
        auc = _ovr_auc(y, p, i)
        if auc is None:
            undefined[f"per_class.{name}.auc"] = (
                f"undefined: {'no' if tp + fn == 0 else 'only'} {name} scans in the data")
        per_class[name] = {
            "auc": auc,
            "f1": float(f1[i]),
            "sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "precision": tp / (tp + fp) if tp + fp else None,
            "support": tp + fn,
        }
    aucs = [c["auc"] for c in per_class.values() if c["auc"] is not None]
    present = np.unique(y)
    micro_auc = None
    if len(present) > 1:
        onehot = np.eye(k, dtype=np.int64)[y]
        micro_auc = float(roc_auc_score(onehot, p, average="micro"))
    report: dict[str, Any] = {
        "n": len(y),
        "classes": list(classes),
        "support": {name: per_class[name]["support"] for name in classes},
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "micro_auc": micro_auc,
        "macro_f1": float(np.mean(f1)),
        "micro_f1": float(f1_score(y, guess, labels=list(range(k)), average="micro",
                                   zero_division=0)),
        "accuracy": float((guess == y).mean()),
        "confusion_matrix": cm.astype(int).tolist(),
        "undefined": undefined,
    }
    if n_boot:
        report["bootstrap"] = _bootstrap(y, p, n_boot, seed)
    return report


__all__ = ["check_multiclass", "macro_f1_argmax", "macro_ovr_auc", "multiclass_report",
           "predicted"]
