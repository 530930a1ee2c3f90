"""The use case behind `covidzoo compare`: two or more models scored on the same labelled scans,
each model's AUC with its confidence interval, and each pair's paired tests.

Binary models: the ROC AUC with DeLong's 95% interval; per pair, DeLong's test of the AUC
difference (the two curves are correlated: the same scans), McNemar's test of correctness at
each model's stored threshold and, with `bootstrap`, the paired bootstrap of the difference.
Models of K classes: the macro one-vs-rest AUC with a bootstrap interval, McNemar on the most
probable class, the paired bootstrap of the macro AUC difference; DeLong's test is of one ROC
curve's AUC and does not apply to a mean of K of them. The statistics are `covidzoo.stats`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import BadInputError

PathLike = str | os.PathLike[str]
# The level of every interval `compare` reports.
LEVEL = 0.95


@dataclass
class CompareReport:
    """What `compare` found: the models, the scans they were all scored on, each model's
    figures (`model_reports`) and each pair's tests (`pairs`), as `to_dict` lays them out.

    `probs[k]` holds model k's covid probabilities (`n`) or class probabilities (`n x K`) of
    the scans `rows` of `data`, whose labels are `labels`.
    """

    paths: list[Path]
    names: list[str]
    predictors: list[Any]
    data: Any  # EvalData
    split: str
    rows: NDArray[np.int64]
    labels: NDArray[np.int64]
    probs: list[NDArray[np.float64]]
    model_reports: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    bootstrap: dict[str, Any] | None
    inference_s: float
    total_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.predictors[0].classes)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `covidzoo compare --json` (docs/evaluation.md, "Comparing
        models")."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {
            "task": "binary" if self.binary else "multiclass",
            "auc": "roc_auc" if self.binary else "macro_ovr_auc",
            "data": self.data.source,
            "split": self.split,
            "classes": list(self.classes),
            "n": len(self.rows),
            "support": {name: int(c) for name, c in zip(self.classes, counts, strict=True)},
            "level": LEVEL,
            "bootstrap": self.bootstrap,
            "models": self.model_reports,
            "pairs": self.pairs,
            "failed": [{"source": s, "reason": r} for s, r in self.data.failed],
            "timing": {"inference_s": round(self.inference_s, 4),
                       "total_s": round(self.total_s, 4)},
            "notes": self.notes,
        }


def _check_paths(models: Sequence[PathLike]) -> list[Path]:
    paths = [Path(m) for m in models]
    if len(paths) < 2:
        raise BadInputError(f"compare needs at least two models, got {len(paths)}")
    for path in paths:
        if not path.is_file():
            raise BadInputError(f"{path}: no such checkpoint or ensemble file")
    return paths


def _check_classes(names: Sequence[str], predictors: Sequence[Any]) -> None:
    if len({tuple(p.classes) for p in predictors}) > 1:
        listed = "; ".join(f"{name}: {', '.join(p.classes)}"
                           for name, p in zip(names, predictors, strict=True))
        raise BadInputError(f"the models have different classes ({listed}); compare models "
                            "of one set of classes")


def _binary_figures(names: list[str], predictors: list[Any], labels: NDArray[np.int64],
                    probs: list[NDArray[np.float64]], n_boot: int, seed: int
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each model's AUC (DeLong interval), threshold and accuracy; each pair's DeLong test,
    McNemar at the models' own thresholds and, with `n_boot`, the paired bootstrap."""
    from .evaluation import stored_threshold
    from .metrics import predict_labels
    from .stats import (
        bootstrap_auc_ci,
        delong_auc_variance,
        delong_ci,
        delong_test,
        mcnemar,
        paired_bootstrap_auc_difference,
    )

    thresholds = [stored_threshold(p) for p in predictors]
    correct = [predict_labels(p, t.value) == labels
               for p, t in zip(probs, thresholds, strict=True)]
    models = []
    for k, predictor in enumerate(predictors):
        auc, variance = delong_auc_variance(labels, probs[k])
        boot = (bootstrap_auc_ci(labels, probs[k], n_boot, seed, LEVEL).ci if n_boot else None)
        models.append({
            "name": names[k], "path": str(predictor.path), "kind": predictor.kind,
            "members": [str(m.path) for m in predictor.members],
            "auc": auc, "auc_variance": variance,
            "delong_ci": list(delong_ci(labels, probs[k], LEVEL)),
            "bootstrap_ci": None if boot is None else list(boot),
            "threshold": thresholds[k].to_dict(),
            "accuracy": float(correct[k].mean()),
        })
    pairs = []
    for i, j in combinations(range(len(predictors)), 2):
        test = delong_test(labels, probs[i], probs[j], LEVEL)
        pairs.append({
            "a": names[i], "b": names[j], "auc_a": test.auc_a, "auc_b": test.auc_b,
            "difference": test.difference, "delong": test.to_dict(),
            "mcnemar": mcnemar(correct[i], correct[j]).to_dict(),
            "bootstrap": (paired_bootstrap_auc_difference(labels, probs[i], probs[j], n_boot,
                                                          seed, LEVEL).to_dict()
                          if n_boot else None),
        })
    return models, pairs


def _multiclass_figures(names: list[str], predictors: list[Any], labels: NDArray[np.int64],
                        probs: list[NDArray[np.float64]], n_boot: int, seed: int
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each model's macro one-vs-rest AUC (bootstrap interval) and accuracy of the most probable
    class; each pair's McNemar on it and, with `n_boot`, the paired bootstrap of the macro AUC
    difference."""
    from .multiclass_metrics import macro_ovr_auc, predicted
    from .stats import bootstrap_auc_ci, mcnemar, paired_bootstrap_auc_difference

    correct = [predicted(p) == labels for p in probs]
    models = []
    for k, predictor in enumerate(predictors):
        boot = bootstrap_auc_ci(labels, probs[k], n_boot, seed, LEVEL).ci if n_boot else None
        models.append({
            "name": names[k], "path": str(predictor.path), "kind": predictor.kind,
            "members": [str(m.path) for m in predictor.members],
            "auc": macro_ovr_auc(labels, probs[k], len(predictor.classes)),
            "auc_variance": None, "delong_ci": None,
            "bootstrap_ci": None if boot is None else list(boot),
            "threshold": None, "accuracy": float(correct[k].mean()),
        })
    pairs = []
    for i, j in combinations(range(len(predictors)), 2):
        auc_a, auc_b = models[i]["auc"], models[j]["auc"]
        pairs.append({
            "a": names[i], "b": names[j], "auc_a": auc_a, "auc_b": auc_b,
            "difference": auc_a - auc_b, "delong": None,
            "mcnemar": mcnemar(correct[i], correct[j]).to_dict(),
            "bootstrap": (paired_bootstrap_auc_difference(labels, probs[i], probs[j], n_boot,
                                                          seed, LEVEL).to_dict()
                          if n_boot else None),
        })
    return models, pairs


def _notes(binary: bool, n_models: int, n_boot: int, split: str) -> list[str]:
    """What a reader of the comparison must know about its figures."""
    notes = []
    if binary:
        notes.append("McNemar compares correctness at each model's own stored threshold "
                     "(0.5 where a model stores none)")
    else:
        notes.append("DeLong's test does not apply to the macro one-vs-rest AUC (a mean of "
                     "one-vs-rest AUCs): the AUC differences are tested by the paired "
                     "bootstrap" + ("" if n_boot else ", which --bootstrap N turns on"))
    n_pairs = n_models * (n_models - 1) // 2
    if n_pairs > 1:
        notes.append(f"{n_pairs} pairs: the p-values are not adjusted for multiple comparisons "
                     f"(Bonferroni: multiply each by {n_pairs})")
    if split in ("val", "all"):
        notes.append(f"the '{split}' split may hold the scans on which training chose the "
                     "models' epochs and thresholds; a labelled test split none of them saw "
                     "gives unbiased figures")
    return notes


def compare(
    models: Sequence[PathLike], *, data: PathLike | None = None,
    manifest: PathLike | None = None, cache: PathLike | None = None, split: str = "val",
    bootstrap: int = 0, seed: int = 0, device: str | None = None, precision: str = "auto",
    batch_size: int = 8, workers: int | None = None, progress: bool = False,
) -> CompareReport:
    """Score every model (checkpoint or ensemble file) on the same labelled scans of `split`
    and compare them, each pair once (A-B, A-C, ..., in the order given).

    All models' members are prepared and scored together (`load_eval_data`, `member_probs`),
    then each model fuses its own members (`Predictor.fuse`): a scan that failed under any
    model's preprocessing is left out for all and listed in `data.failed`. The scans are the
    data's own `split`, the same for every model (a run's `split.csv` is not used, as it is in
    `evaluate`: the models may come from runs that split differently). `bootstrap` resamples
    (seed `seed`) add bootstrap intervals and paired bootstrap tests; every bootstrap figure
    uses the same resamples.
    """
    from .evaluation import member_names
    from .inference import load_eval_data, load_predictor, member_probs
    from .runtime import resolve_device, resolve_workers

    start = time.perf_counter()
    paths = _check_paths(models)
    names = member_names(paths)
    target = resolve_device(device)
    workers = resolve_workers(workers, target)
    predictors = [load_predictor(p, target, precision) for p in paths]
    _check_classes(names, predictors)
    members = [m for p in predictors for m in p.members]
    scans = load_eval_data(members, data, manifest, [split], workers, progress, cache=cache)
    rows = scans.indices(split)
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {scans.source}; compare "
                            "needs labelled scans")
    labels = scans.labels[rows]
    if len(np.unique(labels)) < 2:
        raise BadInputError(f"the labelled scans of split '{split}' of {scans.source} are of "
                            "one class only: AUCs need two")
    by_member, inference_s = member_probs(members, scans, rows, batch_size, workers, progress)
    probs, offset = [], 0
    for predictor in predictors:
        width = len(predictor.members)
        probs.append(predictor.fuse(by_member[:, offset:offset + width]))
        offset += width
    binary = len(predictors[0].classes) == 2
    figures = _binary_figures if binary else _multiclass_figures
    model_reports, pairs = figures(names, predictors, labels, probs, bootstrap, seed)
    notes = _notes(binary, len(paths), bootstrap, split)
    unlabelled = len(scans.indices(split, labelled=False)) - len(rows)
    if unlabelled:
        notes.append(f"{unlabelled} unlabelled scan(s) left out")
    return CompareReport(
        paths=paths, names=names, predictors=predictors, data=scans, split=split, rows=rows,
        labels=labels, probs=probs, model_reports=model_reports, pairs=pairs,
        bootstrap=({"n_boot": bootstrap, "seed": seed, "level": LEVEL} if bootstrap else None),
        inference_s=inference_s, total_s=time.perf_counter() - start, notes=notes)


__all__ = ["LEVEL", "CompareReport", "compare"]
