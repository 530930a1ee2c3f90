"""`covidzoo cv BACKBONE [train options] --folds K [--repeats R]`: stratified, patient-grouped
K-fold cross-validation (`covidzoo.cv`), with every option of `train` but the ones that decide
splits or resume a single run (the study makes the folds and continues itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..values import format_number
from . import options as opt
from .train import build_config
from .train import train as train_command

# Train options a study decides itself: the folds are its splits; a rerun continues it.
NOT_FOR_CV = ("resume", "split_file", "val_split")


def _run(backbone: str | None, recipe: str | None, config_file: Path | None,
         model_arg: tuple[str, ...], aggregator_arg: tuple[str, ...],
         optimizer_arg: tuple[str, ...], size: str | None, preprocess: tuple[str, ...],
         compile_: bool, as_json: bool, folds: int, repeats: int, report: Path | None,
         **options: Any) -> None:
    """Cross-validate BACKBONE: K stratified folds that keep each patient (a manifest's
    patient/group column) on one side, one run per fold in OUT/fold-R-K, then oof.csv (every
    scan's out-of-fold prediction), cv.json (each fold's metrics, their mean and std, the pooled
    out-of-fold metrics and threshold) and ensemble.json (the mean of the fold models, for
    `evaluate` and `predict`). Run the same command again to continue a stopped study.
    """
    from ..cv import cross_validate
    from ..train import default_out

    cfg = build_config(backbone, recipe, config_file, model_arg, aggregator_arg, optimizer_arg,
                       size, preprocess, compile_, options)
    if cfg.out is None:
        from dataclasses import replace

        cfg = replace(cfg, out=default_out(f"cv-{cfg.backbone}"))
    result = cross_validate(cfg, folds, repeats, quiet=as_json)
    if result.get("reported_by_rank_0"):  # another torchrun process: the first reports
        return
    if report is not None and "fold_metrics" in result:
        from ..report import cv_report

        cv_report(result).write(report)
        result["report"] = str(report)
    if as_json:
        opt.print_json(result)
    elif not result["interrupted"] and "fold_metrics" in result:
        _print(result)
    if result["interrupted"]:
        from . import INTERRUPTED

        raise click.exceptions.Exit(INTERRUPTED)


def _fmt(value: Any) -> str:
    return "undefined" if value is None else format_number(value)


def _print(result: dict[str, Any]) -> None:
    binary = len(result["classes"]) == 2
    keys = ["auc", "f1", "macro_f1"] if binary else ["auc", "macro_f1", "accuracy"]
    names = {"auc": "AUC" if binary else "macro AUC", "f1": "F1", "macro_f1": "macro F1",
             "accuracy": "accuracy"}
    rows = [(f"{r['repeat']}-{r['fold']}", r["n_val"], r["best_epoch"],
             *(_fmt(r.get(k)) for k in keys)) for r in result["fold_metrics"]]
    spread = result["mean_std"]
    rows.append(("mean ± std", "", "", *(
        f"{format_number(spread[k]['mean'])} ± {format_number(spread[k]['std'])}"
        if k in spread else "undefined" for k in keys)))
    for pooled in result["pooled_oof"]:
        rows.append((f"pooled out-of-fold (repeat {pooled['repeat']})", pooled["n"], "",
                     *(_fmt(pooled.get(k)) for k in keys)))
    opt.print_table(f"{result['backbone']}: {result['folds']}-fold cross-validation"
                    + (f", {result['repeats']} repeats" if result["repeats"] > 1 else "")
                    + f" ({', '.join(result['classes'])})",
                    ["fold", "val scans", "best epoch", *(names[k] for k in keys)], rows)
    if result["threshold"] is not None:
        click.echo(f"threshold {format_number(result['threshold']['value'])} "
                   f"({result['threshold']['note']})")
    click.echo(f"wrote {result['oof']} and {result['ensemble']}")
    for note in result["notes"]:
        click.echo(f"note: {note}")


cv = opt.BackboneCommand(
    "cv",
    params=[p for p in train_command.params if p.name not in NOT_FOR_CV] + [
        click.Option(["--folds"], type=click.IntRange(min=2), default=5, show_default=True,
                     help="Folds (K)."),
        click.Option(["--repeats"], type=click.IntRange(min=1), default=1, show_default=True,
                     help="Repetitions of the K folds, each shuffled anew (seed + repeat)."),
        click.Option(["--report"], type=click.Path(path_type=Path),
                     help="Write the study as one self-contained HTML file."),
    ],
    callback=_run,
    help=_run.__doc__,
    short_help="Stratified, patient-grouped K-fold cross-validation of a backbone.",
)

__all__ = ["cv"]
