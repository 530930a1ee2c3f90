"""The `evaluate` and `ensemble` commands: parse the options, call the use case in
`covidzoo.evaluation`, render its report.

Nothing heavy is imported at module level: `covidzoo --help` lists these commands without
importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..values import format_number
from .options import (
    cache_option,
    data_options,
    parse_preprocess,
    preprocess_option,
    print_json,
    print_table,
    runtime_options,
    seed_option,
    tta_option,
)

# The splits a command can evaluate or fit on; "all" is every scan.
SPLITS = ("train", "val", "test", "all")
# Bootstrap resamples: 1,000-10,000 are the usual; a million is already hours of metrics.
MAX_BOOTSTRAP = 1_000_000


def _fmt(value: Any) -> str:
    if value is None:
        return "undefined"
    return format_number(value) if isinstance(value, float) else str(value)


def _report_failed(failed: Sequence[tuple[str, str]]) -> None:
    """Scans that could not be read: one line each on stderr (the others were processed)."""
    if failed:
        click.echo(f"covidzoo: {len(failed)} scan(s) failed and were skipped:", err=True)
        for _, reason in failed:
            click.echo(f"  {reason}", err=True)


# --- evaluate ----------------------------------------------------------------------------------


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@data_options
@cache_option
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Scans to evaluate.")
@click.option("--threshold", default="checkpoint", show_default=True,
              help="checkpoint (chosen on validation data), youden (of the evaluated data: "
                   "optimistic) or a number.")
@click.option("--bootstrap", default=0, show_default=True,
              type=click.IntRange(0, MAX_BOOTSTRAP),
              help="Bootstrap resamples for 95% CIs of AUC and macro F1 (0: none).")
@seed_option("Seed of --bootstrap.")
@click.option("--roc", type=click.Path(path_type=Path), help="Write the ROC curve to this PNG.")
@click.option("--predictions", type=click.Path(path_type=Path),
              help="Write path,label,probability,predicted per scan to this CSV.")
@click.option("--reliability", type=click.Path(path_type=Path),
              help="Write the reliability diagram (calibration) to this PNG.")
@click.option("--by", metavar="COLUMN",
              help="Every metric per group of this --manifest column (site, sex, scanner...).")
@click.option("--report", type=click.Path(path_type=Path),
              help="Write one self-contained HTML report of everything to this file.")
@tta_option
@preprocess_option
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(model: Path, data_root: Path | None, manifest: Path | None, workers: int | None,
             cache: Path | None, split: str, threshold: str, bootstrap: int, seed: int,
             roc: Path | None, predictions: Path | None, reliability: Path | None,
             by: str | None, report: Path | None, tta: str, preprocess: tuple[str, ...],
             device: str | None, precision: str, batch_size: int, as_json: bool) -> None:
    """Metrics of a checkpoint or ensemble file MODEL on labelled scans.

    The threshold is the one stored with the model, chosen on validation data; --threshold
    youden uses the Youden point of the evaluated data instead (optimistic: labelled so).
    Scans are preprocessed as each model's checkpoint records; --preprocess overrides steps of
    it (a note says so: the model then sees inputs unlike those it learned from).
    """
    from ..evaluation import evaluate as run_evaluation

    html = report
    report = run_evaluation(
        model, data=data_root, manifest=manifest, split=split, threshold=threshold,
        bootstrap=bootstrap, seed=seed, device=device, precision=precision,
        batch_size=batch_size, workers=workers, progress=not as_json, cache=cache,
        preprocess=parse_preprocess(preprocess), tta=tta, by=by)
    roc = None if roc is None else report.save_roc(roc)
    if predictions is not None:
        report.save_predictions(predictions)
    reliability = None if reliability is None else report.save_reliability(reliability)
    if html is not None:
        report.save_report(html)
    result = report.to_dict()
    result["roc"] = None if roc is None else str(roc)
    result["predictions"] = None if predictions is None else str(predictions)
    result["reliability"] = None if reliability is None else str(reliability)
    result["report"] = None if html is None else str(html)
    if as_json:
        print_json(result)
        return
    _report_failed(report.data.failed)
    title = f"{model.name} on {report.data.source} ({split})"
    if report.threshold is None:
        _print_multiclass(title, report.metrics)
    else:
        _print_report(title, report.metrics, report.threshold)
    cal = report.metrics["calibration"]
    click.echo(f"calibration: ECE {_fmt(cal['ece'])} (equal-mass bins "
               f"{_fmt(cal['ece_equal_mass'])}), Brier {_fmt(cal['brier'])}, log loss "
               f"{_fmt(cal['log_loss'])}")
    if report.subgroups is not None:
        _print_subgroups(report.subgroups)
    timing = result["timing"]
    click.echo(f"{timing['scans']} scans: {timing['inference_volumes_per_s'] or 0:.1f} "
               f"volumes/s inference, {timing['total_volumes_per_s'] or 0:.1f} volumes/s in all")
    for note in report.notes + [f"{k}: {v}" for k, v in report.metrics["undefined"].items()]:
        click.echo(f"note: {note}")


def _print_report(title: str, report: dict[str, Any], chosen: Any) -> None:
    cm = report["confusion_matrix"]
    rows = [
        ("threshold", f"{format_number(chosen.value)} ({chosen.source}: {chosen.note})"),
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
            text = ("undefined" if ci is None
                    else f"[{format_number(ci[0])}, {format_number(ci[1])}]")
            rows.append((f"{name} {boot['level']:.0%} CI", f"{text} ({boot['n_boot']} resamples)"))
    print_table(title, ["metric", "value"], rows)


def _print_subgroups(subgroups: dict[str, Any]) -> None:
    """Each group's counts, AUC and F1 with their bootstrap intervals; the worst group."""
    def ci(metrics: dict[str, Any], key: str) -> str:
        interval = (metrics.get("bootstrap") or {}).get(key)
        return "" if not interval else f" [{_fmt(interval[0])}, {_fmt(interval[1])}]"

    rows = []
    for name, m in subgroups["groups"].items():
        auc_key = "auc" if "auc" in m else "macro_auc"
        rows.append((name, m["n"], _fmt(m[auc_key]) + ci(m, auc_key),
                     _fmt(m["macro_f1"]) + ci(m, "macro_f1")))
    print_table(f"by {subgroups['by']} (95% bootstrap intervals)",
                [subgroups["by"], "scans", "AUC", "macro F1"], rows)
    worst = subgroups["worst"]
    if worst is not None:
        click.echo(f"worst group: {worst['group']} ({worst['metric']} {_fmt(worst['value'])})")
    click.echo(f"mean of the groups' macro F1: {_fmt(subgroups['mean_group_macro_f1'])}")


def _print_multiclass(title: str, report: dict[str, Any]) -> None:
    """Per-class one-vs-rest figures, the macro and micro averages, the confusion matrix."""
    names = report["classes"]
    rows = [(name, c["support"], _fmt(c["auc"]), _fmt(c["f1"]), _fmt(c["sensitivity"]),
             _fmt(c["specificity"]), _fmt(c["precision"]))
            for name, c in report["per_class"].items()]
    rows.append(("macro", report["n"], _fmt(report["macro_auc"]), _fmt(report["macro_f1"]),
                 "", "", ""))
    rows.append(("micro", report["n"], _fmt(report["micro_auc"]), _fmt(report["micro_f1"]),
                 "", "", ""))
    print_table(f"{title}: the most probable class of each scan",
                ["class", "scans", "AUC (one vs rest)", "F1", "sensitivity", "specificity",
                 "precision"], rows)
    click.echo(f"accuracy {_fmt(report['accuracy'])}")
    boot = report.get("bootstrap")
    if boot:
        for key, name in (("macro_auc", "macro AUC"), ("macro_f1", "macro F1")):
            ci = boot[key]
            text = "undefined" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"
            click.echo(f"{name} {boot['level']:.0%} CI {text} ({boot['n_boot']} resamples)")
    print_table("confusion matrix (rows: true class, columns: predicted)",
                ["", *names], [(name, *row) for name, row in
                               zip(names, report["confusion_matrix"], strict=True)])


# --- ensemble ----------------------------------------------------------------------------------


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@data_options
@click.option("--method", default="mean", show_default=True,
              help="A registered ensembler: mean, weighted, rank, stacking, or a plugin's.")
@click.option("--fit-split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Scans the ensembler and its Youden threshold are fit on.")
@click.option("--split", type=click.Choice(SPLITS), default=None, show_default="test if the "
              "data has labelled test scans, else the fit split (cross-fitted)",
              help="Scans the members and the fusion are scored on.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2),
              help="Stratified folds for cross-fitting where scored scans are in the fit split.")
@seed_option("Seed of the cross-fitting folds.")
@click.option("--save", type=click.Path(path_type=Path),
              help="Write the fitted ensemble to this JSON file (for predict and evaluate).")
@click.option("--roc", type=click.Path(path_type=Path),
              help="Write the ROC curves (members in colour, fusion black) to this PNG.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ensemble(checkpoints: tuple[Path, ...], data_root: Path | None, manifest: Path | None,
             workers: int | None, method: str, fit_split: str, split: str | None, folds: int,
             seed: int, save: Path | None, roc: Path | None, device: str | None,
             precision: str, batch_size: int, as_json: bool) -> None:
    """Fuse the covid probabilities of CHECKPOINTS and compare the fusion with each member.

    Models of three or more classes are fused by the mean of their class probabilities
    (--method mean), which fits nothing: the figures are per-class and macro/micro averages.

    The ensembler is fit on --fit-split and the threshold is the Youden point of the fused
    probabilities there (what --save writes); members get their own Youden points there. The
    figures are held out (scored on another split, by default the labelled test split) or,
    for scored scans of the fit split, cross-fitted over --folds; never in-sample unless a
    class has a single scan, and then labelled so. Members are named by their run folders.
    """
    from ..evaluation import fit_ensemble

    report = fit_ensemble(
        checkpoints, method=method, data=data_root, manifest=manifest, fit_split=fit_split,
        split=split, folds=folds, seed=seed, device=device, precision=precision,
        batch_size=batch_size, workers=workers, progress=not as_json)
    if save is not None:
        report.save(save)
    roc = None if roc is None else report.save_roc(roc)
    if as_json:
        result = report.to_dict()
        notes = result.pop("notes")
        print_json({**result, "saved": None if save is None else str(save),
                    "roc": None if roc is None else str(roc), "notes": notes})
        return
    _report_failed(report.data.failed)
    print_table(_ensemble_title(report), _ensemble_header(report), _ensemble_rows(report))
    if report.multiclass:
        _print_multiclass(f"{report.method} fusion on {report.split}", report.fusion)
    if save is not None:
        click.echo(f"saved {save}")
    for note in report.notes + [f"{k}: {v}" for k, v in report.fusion["undefined"].items()]:
        click.echo(f"note: {note}")


def _ensemble_title(report: Any) -> str:
    how = {"held-out": "held out",
           "cross-fitted": f"cross-fitted over {report.folds} folds",
           "in-sample": "IN-SAMPLE, optimistic"}[report.estimate]
    return (f"{len(report.members)} members on {report.data.source} ({report.split}); fit on "
            f"{report.fit_split}; {how}")


def _ensemble_header(report: Any) -> list[str]:
    weight = [] if report.weights is None else ["weight"]
    if report.multiclass:
        return ["model", *weight, "macro AUC", "micro AUC", "macro F1", "accuracy"]
    return ["model", *weight, "AUC", "F1", "macro F1", "threshold"]


def _ensemble_rows(report: Any) -> list[tuple[str, ...]]:
    """One row per member (`*`: selection-biased, see the notes) and one for the fusion."""
    def threshold(r: dict[str, Any]) -> str:
        return "per fold" if r["threshold"] is None else _fmt(r["threshold"])

    def metrics(r: dict[str, Any]) -> tuple[str, ...]:
        if report.multiclass:
            return (_fmt(r["macro_auc"]), _fmt(r["micro_auc"]), _fmt(r["macro_f1"]),
                    _fmt(r["accuracy"]))
        return _fmt(r["auc"]), _fmt(r["f1"]), _fmt(r["macro_f1"]), threshold(r)

    mark = " *" if report.selection_biased else ""
    weights = report.weights
    rows = [(name + mark, *([] if weights is None else [f"{weights[k]:.3f}"]), *metrics(r))
            for k, (name, r) in enumerate(zip(report.names, report.member_reports,
                                              strict=True))]
    total = [] if weights is None else [""]
    rows.append((f"{report.method} fusion ({report.estimate}){mark}", *total,
                 *metrics(report.fusion)))
    return rows


__all__ = ["ensemble", "evaluate"]
