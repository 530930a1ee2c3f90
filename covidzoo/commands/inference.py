"""The `evaluate`, `ensemble` and `predict` commands (the machinery is in `covidzoo.inference`).

Nothing heavy is imported at module level: `covidzoo --help` lists these commands without
importing torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import BadInputError
from ._common import print_json, print_table

SPLITS = ("train", "val", "test", "all")


def data_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--data / --manifest / --workers: where labelled scans come from (the demo data when
    neither is given, as in `train`)."""
    for option in reversed([
        click.option("--data", "data_root", type=click.Path(path_type=Path),
                     help="Data folder ({train,val,test}/{covid,non-covid}/SCAN). "
                          "Default: the demo data."),
        click.option("--manifest", type=click.Path(path_type=Path),
                     help="CSV manifest (path,label[,split]) instead of --data."),
        click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Processes preprocessing scans and loading batches."),
    ]):
        command = option(command)
    return command


def runtime_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--device / --precision / --batch-size: how the models run."""
    for option in reversed([
        click.option("--device", help="cpu, cuda or cuda:N. Default: cuda when available."),
        click.option("--precision", default="auto", show_default=True,
                     type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                     help="Autocast mode; auto is the fastest measured for the model."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Scans per forward pass."),
    ]):
        command = option(command)
    return command


def _fmt(value: Any) -> str:
    if value is None:
        return "undefined"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _report_failed(failed: Sequence[tuple[str, str]]) -> None:
    """Scans that could not be read: one line each on stderr (the others were processed)."""
    if failed:
        click.echo(f"covidzoo: {len(failed)} scan(s) failed and were skipped:", err=True)
        for _, reason in failed:
            click.echo(f"  {reason}", err=True)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    import csv
    import io

    from ..fileio import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _label_name(value: int) -> str:
    from ..metrics import CLASS_NAMES

    return CLASS_NAMES[int(value)]


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 3) if seconds > 0 else None


# --- evaluate ----------------------------------------------------------------------------------


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@data_options
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Scans to evaluate.")
@click.option("--threshold", default="checkpoint", show_default=True,
              help="checkpoint (chosen on validation data), youden (of the evaluated data: "
                   "optimistic) or a number.")
@click.option("--bootstrap", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bootstrap resamples for 95% CIs of AUC and macro F1 (0: none).")
@click.option("--seed", default=0, show_default=True, help="Seed of --bootstrap.")
@click.option("--roc", type=click.Path(path_type=Path), help="Write the ROC curve to this PNG.")
@click.option("--predictions", type=click.Path(path_type=Path),
              help="Write path,label,probability,predicted per scan to this CSV.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(model: Path, data_root: Path | None, manifest: Path | None, workers: int,
             split: str, threshold: str, bootstrap: int, seed: int, roc: Path | None,
             predictions: Path | None, device: str | None, precision: str, batch_size: int,
             as_json: bool) -> None:
    """Metrics of a checkpoint or ensemble file MODEL on labelled scans.

    The threshold is the one stored with the model, chosen on validation data; --threshold
    youden uses the Youden point of the evaluated data instead (optimistic: labelled so).
    """
    from .. import inference
    from ..amp import resolve_device
    from ..metrics import binary_report, predict_labels

    start = time.perf_counter()
    predictor = inference.load_predictor(model, resolve_device(device), precision)
    data = inference.load_eval_data(predictor.members, data_root, manifest, [split], workers,
                                    progress=not as_json)
    rows = data.indices(split)
    unlabelled = len(data.indices(split, labelled=False)) - len(rows)
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {data.source}; "
                            "`covidzoo predict` scores unlabelled scans")
    member_probs, inference_s = inference.member_probs(predictor.members, data, rows,
                                                       batch_size, workers)
    probs, labels = predictor.fuse(member_probs), data.labels[rows]
    chosen = inference.resolve_threshold(threshold, predictor, labels, probs)
    report = binary_report(labels, probs, chosen.value, n_boot=bootstrap, seed=seed)
    notes = [] if unlabelled == 0 else [f"{unlabelled} unlabelled scan(s) left out"]
    if roc is not None:
        if report["auc"] is None:
            notes.append(f"no ROC plot: {report['undefined']['auc']}")
            roc = None
        else:
            from ..plots import Curve, save_roc_png

            fpr = 1 - (report["specificity"] or 0.0)
            save_roc_png(roc, [Curve.from_scores(model.name, labels, probs, highlight=True)],
                         operating_point=(fpr, report["sensitivity"] or 0.0),
                         title=f"{model.name} on {split}: AUC {report['auc']:.3f}")
    if predictions is not None:
        predicted = predict_labels(probs, chosen.value)
        _write_csv(predictions, ["path", "label", "probability", "predicted"], [
            (data.sources[i], _label_name(y), repr(float(p)), _label_name(c))
            for i, y, p, c in zip(rows, labels, probs, predicted, strict=True)
        ])
    total_s = time.perf_counter() - start
    result = {
        "model": str(model),
        "kind": predictor.kind,
        "members": [str(m.path) for m in predictor.members],
        "data": data.source,
        "split": split,
        "threshold": chosen.to_dict(),
        "metrics": report,
        "failed": [{"source": s, "reason": r} for s, r in data.failed],
        "unlabelled": unlabelled,
        "device": str(predictor.members[0].device),
        "precision": [m.precision.name for m in predictor.members],
        "timing": {
            "scans": len(rows),
            "inference_s": round(inference_s, 4),
            "total_s": round(total_s, 4),
            "inference_volumes_per_s": _rate(len(rows), inference_s),
            "total_volumes_per_s": _rate(len(rows), total_s),
        },
        "roc": None if roc is None else str(roc),
        "predictions": None if predictions is None else str(predictions),
        "notes": notes,
    }
    if as_json:
        print_json(result)
        return
    _report_failed(data.failed)
    _print_report(f"{model.name} on {data.source} ({split})", report, chosen)
    timing = result["timing"]
    click.echo(f"{timing['scans']} scans: {timing['inference_volumes_per_s'] or 0:.1f} "
               f"volumes/s inference, {timing['total_volumes_per_s'] or 0:.1f} volumes/s in all")
    for note in notes + [f"{k}: {v}" for k, v in report["undefined"].items()]:
        click.echo(f"note: {note}")


def _print_report(title: str, report: dict[str, Any], chosen: Any) -> None:
    cm = report["confusion_matrix"]
    rows = [
        ("threshold", f"{chosen.value:.4f} ({chosen.source}: {chosen.note})"),
        ("scans", f"{report['n']} ({report['n_covid']} covid, {report['n_non_covid']} non-covid)"),
        ("AUC", _fmt(report["auc"])),
        ("F1 (covid)", _fmt(report["f1"])),
        ("F1 (non-covid)", _fmt(report["f1_per_class"]["non-covid"])),
        ("macro F1", _fmt(report["macro_f1"])),
        ("accuracy", _fmt(report["accuracy"])),
        ("sensitivity", _fmt(report["sensitivity"])),
        ("specificity", _fmt(report["specificity"])),
        ("confusion (tn fp fn tp)", f"{cm['tn']} {cm['fp']} {cm['fn']} {cm['tp']}"),
    ]
    boot = report.get("bootstrap")
    if boot:
        for key, name in (("auc", "AUC"), ("macro_f1", "macro F1")):
            ci = boot[key]
            text = "undefined" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
            rows.append((f"{name} {boot['level']:.0%} CI", f"{text} ({boot['n_boot']} resamples)"))
    print_table(title, ["metric", "value"], rows)


# --- ensemble ----------------------------------------------------------------------------------


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@data_options
@click.option("--method", default="mean", show_default=True,
              help="A registered ensembler: mean, weighted, rank, stacking, or a plugin's.")
@click.option("--fit-split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Scans the ensembler and its Youden threshold are fit on.")
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Scans the members and the fusion are scored on.")
@click.option("--save", type=click.Path(path_type=Path),
              help="Write the fitted ensemble to this JSON file (for predict and evaluate).")
@click.option("--roc", type=click.Path(path_type=Path),
              help="Write the ROC curves (members grey, fusion red) to this PNG.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ensemble(checkpoints: tuple[Path, ...], data_root: Path | None, manifest: Path | None,
             workers: int, method: str, fit_split: str, split: str, save: Path | None,
             roc: Path | None, device: str | None, precision: str, batch_size: int,
             as_json: bool) -> None:
    """Fuse the covid probabilities of CHECKPOINTS and compare the fusion with each member.

    The ensembler is fit on --fit-split and the threshold is the Youden point of the fused
    probabilities there; members are scored at their own Youden points of the same split.
    """
    import numpy as np

    from .. import inference
    from ..amp import resolve_device
    from ..ensemble import create_ensembler
    from ..metrics import binary_report, youden_threshold

    for path in checkpoints:
        if inference.is_ensemble_file(path):
            raise BadInputError(f"{path}: an ensemble file; ensemble members must be checkpoints")
    ensembler = create_ensembler(method)  # an unknown method fails before any work
    target = resolve_device(device)
    members = [inference.load_member(p, target, precision) for p in checkpoints]
    inference.check_members(members)
    data = inference.load_eval_data(members, data_root, manifest, [fit_split, split], workers,
                                    progress=not as_json)
    fit_rows, rows = data.indices(fit_split), data.indices(split)
    fit_labels, labels = data.labels[fit_rows], data.labels[rows]
    if len(set(fit_labels.tolist())) < 2:
        held = "no labelled scans" if not len(fit_rows) else "one class only"
        raise BadInputError(f"the fit split '{fit_split}' of {data.source} holds {held}; the "
                            "ensembler and its Youden threshold need both classes")
    if not len(rows):
        raise BadInputError(f"no labelled scans in split '{split}' of {data.source}")
    fit_probs, _ = inference.member_probs(members, data, fit_rows, batch_size, workers)
    if np.array_equal(fit_rows, rows):
        probs = fit_probs
    else:
        probs, _ = inference.member_probs(members, data, rows, batch_size, workers)
    ensembler.fit(fit_probs, fit_labels)
    threshold = youden_threshold(fit_labels, ensembler.predict(fit_probs))
    fused = ensembler.predict(probs)
    optimistic = bool(set(fit_rows.tolist()) & set(rows.tolist()))
    reports = []
    for k, member in enumerate(members):
        t = youden_threshold(fit_labels, fit_probs[:, k])
        reports.append((str(member.path), binary_report(labels, probs[:, k], t)))
    fusion = binary_report(labels, fused, threshold)
    notes = []
    if optimistic:
        notes.append(f"the evaluated split '{split}' overlaps the fit split '{fit_split}': "
                     "the fusion's metrics are optimistic")
    if save is not None:
        inference.write_ensemble_file(save, checkpoints, ensembler, threshold)
    if roc is not None:
        if fusion["auc"] is None:
            notes.append(f"no ROC plot: {fusion['undefined']['auc']}")
            roc = None
        else:
            from ..plots import Curve, save_roc_png

            curves = [Curve.from_scores(Path(p).name, labels, probs[:, k])
                      for k, (p, _) in enumerate(reports)]
            curves.append(Curve.from_scores(f"{method} fusion", labels, fused, highlight=True))
            save_roc_png(roc, curves,
                         operating_point=(1 - (fusion["specificity"] or 0.0),
                                          fusion["sensitivity"] or 0.0),
                         title=f"{method} fusion on {split}: AUC {fusion['auc']:.3f}")
    if as_json:
        print_json({
            "method": method,
            "data": data.source,
            "fit_split": fit_split,
            "split": split,
            "optimistic": optimistic,
            "threshold": threshold,
            "ensembler": ensembler.to_dict(),
            "members": [{"path": p, **r} for p, r in reports],
            "fusion": fusion,
            "failed": [{"source": s, "reason": r} for s, r in data.failed],
            "saved": None if save is None else str(save),
            "roc": None if roc is None else str(roc),
            "notes": notes,
        })
        return
    _report_failed(data.failed)
    table = [(Path(p).name, _fmt(r["auc"]), _fmt(r["f1"]), _fmt(r["macro_f1"]),
              _fmt(r["threshold"])) for p, r in reports]
    table.append((f"{method} fusion", _fmt(fusion["auc"]), _fmt(fusion["f1"]),
                  _fmt(fusion["macro_f1"]), _fmt(threshold)))
    print_table(f"{len(members)} members on {data.source} ({split}); fit on {fit_split}",
                ["model", "AUC", "F1", "macro F1", "threshold"], table)
    if save is not None:
        click.echo(f"saved {save}")
    for note in notes + [f"{k}: {v}" for k, v in fusion["undefined"].items()]:
        click.echo(f"note: {note}")


# --- predict -----------------------------------------------------------------------------------


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("scans", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(path_type=Path),
              help="Also write scan,probability,label,threshold to this CSV.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(model: Path, scans: tuple[Path, ...], csv_path: Path | None, device: str | None,
            precision: str, batch_size: int, as_json: bool) -> None:
    """Probability and label (covid / non-covid) of each raw SCAN under a checkpoint or
    ensemble file MODEL.

    A SCAN is a DICOM series folder, a folder of JPG/PNG slices or a .npy/.npz volume; each
    model preprocesses it with the configuration recorded in its checkpoint.
    """
    from .. import inference
    from ..amp import resolve_device

    predictor = inference.load_predictor(model, resolve_device(device), precision)
    found = inference.predict_paths(predictor, scans, batch_size)
    if not found.paths:
        raise BadInputError(f"every scan failed ({len(found.failed)}); first: "
                            f"{found.failed[0][1]}")
    chosen = inference.stored_threshold(predictor)
    probs = predictor.fuse(found.probs)
    rows = [(path, float(p), "covid" if p >= chosen.value else "non-covid")
            for path, p in zip(found.paths, probs, strict=True)]
    if csv_path is not None:
        _write_csv(csv_path, ["scan", "probability", "label", "threshold"],
                   [(s, repr(p), label, repr(chosen.value)) for s, p, label in rows])
    if as_json:
        print_json({
            "model": str(model),
            "kind": predictor.kind,
            "members": [str(m.path) for m in predictor.members],
            "threshold": chosen.to_dict(),
            "predictions": [
                {"scan": s, "probability": p, "label": label, "threshold": chosen.value,
                 "member_probabilities": member.tolist()}
                for (s, p, label), member in zip(rows, found.probs, strict=True)
            ],
            "failed": [{"source": s, "reason": r} for s, r in found.failed],
        })
        return
    _report_failed(found.failed)
    if chosen.source == "default":
        click.echo(f"note: {chosen.note}", err=True)
    print_table(None, ["scan", "probability", "label", "threshold"],
                [(s, f"{p:.4f}", label, f"{chosen.value:.4f}") for s, p, label in rows])


__all__ = ["ensemble", "evaluate", "predict"]
