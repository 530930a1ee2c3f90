"""`covidzoo calibrate MODEL --data VAL`: fit a temperature (Guo et al. 2017) on labelled
validation scans and store it with the model, so that `predict` and `evaluate` give calibrated
probabilities.

Temperature scaling divides the logits by one number T fitted to minimise the log loss of the
validation scans: T > 1 softens an over-confident model. It never changes which class is most
probable, so a multi-class model's predictions stay the same; for two classes the stored
decision threshold is moved with the probabilities (`t' = sigmoid(logit(t) / T)`), so every
scan keeps its label. A checkpoint stores T in its spec (`temperature`), applied to its logits;
an ensemble file stores it as `temperature`, applied to the fused probability.

The temperature was fitted on the scans it was fitted on: their calibration figures after it
are optimistic. `evaluate` says so when it scores a model on the data and split it was
calibrated on, and the record of the fit (`calibration`: data, split, scans, figures before and
after) travels with the model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError
from .fileio import atomic_write_text

PathLike = str | os.PathLike[str]


@dataclass
class CalibrationReport:
    """What `calibrate` fitted and wrote, with the calibration figures before and after."""

    model: Path
    out: Path
    kind: str
    data: str
    split: str
    scans: int
    temperature: float
    threshold_before: float | None
    threshold_after: float | None
    before: dict[str, float]
    after: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        from .stats import T_MAX, T_MIN

        note = (f"fitted on these {self.scans} scans of {self.split}: the figures after are "
                "in-sample (optimistic); evaluate on other labelled scans")
        if self.temperature <= T_MIN * 1.001 or self.temperature >= T_MAX * 0.999:
            note += (f"; the temperature is at the edge of its search range ({T_MIN:g} to "
                     f"{T_MAX:g}): these scans barely constrain it")
        return {
            "model": str(self.model), "out": str(self.out), "kind": self.kind,
            "data": self.data, "split": self.split, "scans": self.scans,
            "temperature": self.temperature,
            "threshold": {"before": self.threshold_before, "after": self.threshold_after},
            "before": self.before, "after": self.after,
            "note": note,
        }


def calibration_figures(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ECE (equal-width and equal-mass bins), Brier score and log loss of probabilities."""
    from .stats import brier_score, expected_calibration_error

    p = np.clip(probs, 1e-12, 1 - 1e-12)
    if p.ndim == 1:
        nll = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    else:
        nll = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    return {
        "ece": float(expected_calibration_error(labels, probs, strategy="uniform")),
        "ece_equal_mass": float(expected_calibration_error(labels, probs, strategy="quantile")),
        "brier": float(brier_score(labels, probs)),
        "log_loss": float(nll),
    }


def moved_threshold(threshold: float | None, temperature: float) -> float | None:
    """A two-class decision threshold on probabilities after dividing the logits by T: the
    same scans stay on each side."""
    if threshold is None:
        return None
    t = min(max(threshold, 1e-12), 1 - 1e-12)
    return float(1 / (1 + math.exp(-math.log(t / (1 - t)) / temperature)))


def calibrate(model: PathLike, *, data: PathLike | None = None, manifest: PathLike | None = None,
              cache: PathLike | None = None, split: str = "val", out: PathLike | None = None,
              in_place: bool = False, device: str | None = None, precision: str = "auto",
              batch_size: int = 8, workers: int | None = None,
              progress: bool = False) -> CalibrationReport:
    """Fit the temperature of `model` (a checkpoint or an ensemble file) on the labelled scans
    of `split` and write the calibrated model to `out` (a new file), or over `model` with
    `in_place` (atomically). A temperature already stored is refitted from the raw
    probabilities."""
    from .inference import load_eval_data, load_predictor, member_probs
    from .runtime import resolve_device, resolve_workers
    from .stats import apply_temperature, fit_temperature

    model = Path(model)
    target = _target(model, out, in_place)
    device_ = resolve_device(device)
    workers = resolve_workers(workers, device_)
    predictor = load_predictor(model, device_, precision)
    predictor.without_calibration()
    scans = load_eval_data(predictor.members, data, manifest, [split], workers, progress,
                           cache=cache)
    rows = scans.indices(split)
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {scans.source} to "
                            "calibrate on")
    labels = scans.labels[rows]
    if len(set(labels.tolist())) < 2:
        raise BadInputError(f"split '{split}' of {scans.source} holds one class only: a "
                            "temperature fitted on it would only learn that class's frequency")
    probs = predictor.fuse(member_probs(predictor.members, scans, rows, batch_size, workers,
                                        progress)[0])
    temperature = float(fit_temperature(labels, probs))
    before = calibration_figures(labels, probs)
    after = calibration_figures(labels, apply_temperature(probs, temperature))
    record = {"data": scans.source, "split": split, "scans": int(len(rows)),
              "temperature": temperature, "before": before, "after": after}
    threshold_after = (moved_threshold(predictor.threshold, temperature)
                       if len(predictor.classes) == 2 else None)
    if predictor.kind == "checkpoint":
        _write_checkpoint(model, target, temperature, threshold_after, record)
    else:
        _write_ensemble(model, target, temperature, threshold_after, record)
    return CalibrationReport(model, target, predictor.kind, scans.source, split, int(len(rows)),
                             temperature, predictor.threshold, threshold_after, before, after)


def _target(model: Path, out: PathLike | None, in_place: bool) -> Path:
    """Where the calibrated model goes: `--out`, or `model` itself with `--in-place`; never a
    run folder's link (rewriting it would replace the link by a file, and the run's saved
    generation would no longer be what its checksums say)."""
    if (out is None) == (not in_place):
        raise BadInputError("give --out FILE for a calibrated copy, or --in-place to rewrite "
                            "the model itself (one of the two)")
    if in_place:
        if model.is_symlink():
            raise BadInputError(f"--in-place: {model} is a run folder's link into its saved "
                                "generation; write a calibrated copy with --out")
        return model
    target = Path(out)  # type: ignore[arg-type]
    if target.exists() and target.resolve() == model.resolve():
        raise BadInputError(f"--out {target} is the model itself; use --in-place for that")
    if model.suffix.lower() == ".json" and target.suffix.lower() != ".json":
        raise BadInputError(f"--out {target}: an ensemble file is written as .json")
    if model.suffix.lower() != ".json" and target.suffix.lower() != ".safetensors":
        raise BadInputError(f"--out {target}: a checkpoint is written as .safetensors")
    return target


def _write_checkpoint(model: Path, target: Path, temperature: float,
                      threshold: float | None, record: dict[str, Any]) -> None:
    from .checkpoint import load_checkpoint, save_checkpoint

    net, spec = load_checkpoint(model)
    calibrated = replace(spec, temperature=temperature, threshold=threshold,
                         extra={**spec.extra, "calibration": record})
    save_checkpoint(target, net, calibrated)


def _write_ensemble(model: Path, target: Path, temperature: float,
                    threshold: float | None, record: dict[str, Any]) -> None:
    """The ensemble file with its temperature and moved threshold; member paths, relative to
    the file's folder, are rewritten for the new folder."""
    data = json.loads(model.read_text(encoding="utf-8"))
    folder, new_folder = model.resolve().parent, target.resolve().parent
    if folder != new_folder:
        members = []
        for member in data["members"]:
            absolute = (folder / member).resolve()
            try:
                members.append(os.path.relpath(absolute, new_folder))
            except ValueError:  # another drive: no relative path exists
                members.append(str(absolute))
        data["members"] = members
    data.update(temperature=temperature, threshold=threshold, calibration=record)
    atomic_write_text(target, json.dumps(data, indent=2))


def calibrated_on(predictor: Any, source: str, split: str) -> str | None:
    """A note when `predictor` was calibrated on scans being evaluated (the same data, and the
    same split or all of them)."""
    records = [predictor.calibration] + [m.spec.extra.get("calibration")
                                         for m in predictor.members]
    for record in records:
        if not isinstance(record, dict) or record.get("data") != source:
            continue
        if split in (record.get("split"), "all"):
            return (f"the temperature was fitted on {record.get('split')} of these data: "
                    "calibration figures on those scans are optimistic")
    return None


__all__ = ["CalibrationReport", "calibrate", "calibration_figures", "moved_threshold"]
