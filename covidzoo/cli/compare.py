"""The `compare` command: parse the options, call `covidzoo.compare.compare`, render its report
as rich tables (or `--json`). Nothing heavy is imported at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..values import format_number
from .evaluate import MAX_BOOTSTRAP, SPLITS, _report_failed
from .options import (
    cache_option,
    data_options,
    print_json,
    print_table,
    runtime_options,
    seed_option,
)


def _num(value: float | None) -> str:
    return "n/a" if value is None else format_number(value)


def _p(value: float | None) -> str:
    """A p-value for people: 4 significant digits, or "< 0.0001"."""
    if value is None:
        return "n/a"
    return "< 0.0001" if value < 1e-4 else format_number(value)


def _interval(ci: list[float] | None) -> str:
    return "n/a" if ci is None else f"[{format_number(ci[0])}, {format_number(ci[1])}]"


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@data_options
@cache_option
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Scans every model is scored on (a test split none was tuned on is best).")
@click.option("--bootstrap", default=0, show_default=True,
              type=click.IntRange(0, MAX_BOOTSTRAP),
              help="Bootstrap resamples for AUC intervals and paired bootstrap tests (0: none; "
                   "needed for the AUC intervals of multi-class models).")
@seed_option("Seed of --bootstrap.")
@click.option("--report", type=click.Path(path_type=Path),
              help="Write the comparison as one self-contained HTML file.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def compare(models: tuple[Path, ...], data_root: Path | None, manifest: Path | None,
            workers: int | None, cache: Path | None, split: str, bootstrap: int, seed: int,
            report: Path | None, device: str | None, precision: str, batch_size: int,
            as_json: bool) -> None:
    """Compare two or more checkpoints or ensemble files MODELS on the same labelled scans.

    Binary models: each AUC with its DeLong 95% interval; each pair's DeLong test of the AUC
    difference and McNemar's test of correctness at each model's stored threshold. Models of
    three or more classes: the macro one-vs-rest AUC and McNemar on the most probable class.
    --bootstrap N adds bootstrap intervals and the paired bootstrap test of each AUC
    difference. Scans any model could not read are left out for all, and listed.
    """
    from ..compare import compare as run_compare

    html = report
    report = run_compare(models, data=data_root, manifest=manifest, cache=cache, split=split,
                         bootstrap=bootstrap, seed=seed, device=device, precision=precision,
                         batch_size=batch_size, workers=workers, progress=not as_json)
    result = report.to_dict()
    if html is not None:
        from ..report import compare_report

        compare_report(result).write(html)
        result["report"] = str(html)
    if as_json:
        print_json(result)
        return
    _report_failed(report.data.failed)
    _print_models(result)
    _print_pairs(result)
    for note in result["notes"]:
        click.echo(f"note: {note}")


def _print_models(result: dict[str, Any]) -> None:
    binary = result["task"] == "binary"
    support = ", ".join(f"{n} {name}" for name, n in result["support"].items())
    title = (f"{len(result['models'])} models on {result['data']} ({result['split']}): "
             f"{result['n']} scans ({support})")
    auc = "AUC" if binary else "macro AUC (one vs rest)"
    columns = ["model", auc]
    if binary:
        columns.append("95% CI (DeLong)")
    if result["bootstrap"]:
        columns.append("95% CI (bootstrap)")
    columns += ["threshold", "accuracy"] if binary else ["accuracy (most probable)"]
    rows = []
    for m in result["models"]:
        row = [m["name"], _num(m["auc"])]
        if binary:
            row.append(_interval(m["delong_ci"]))
        if result["bootstrap"]:
            row.append(_interval(m["bootstrap_ci"]))
        if binary:
            row.append(f"{format_number(m['threshold']['value'])} ({m['threshold']['source']})")
        row.append(_num(m["accuracy"]))
        rows.append(row)
    print_table(title, columns, rows)


def _print_pairs(result: dict[str, Any]) -> None:
    """One row per pair and test: the AUC difference with its interval and p, then McNemar's."""
    level = f"{result['level']:.0%}"
    rows = []
    for pair in result["pairs"]:
        name = f"{pair['a']} vs {pair['b']}"
        if pair["delong"] is not None:
            test = pair["delong"]
            rows.append((name, "DeLong", _num(test["difference"]), _interval(test["ci"]),
                         _p(test["p"])))
            name = ""
        if pair["bootstrap"] is not None:
            boot = pair["bootstrap"]
            rows.append((name, f"bootstrap ({boot['n_boot']})", _num(boot["difference"]),
                         _interval(boot["ci"]), _p(boot["p"])))
            name = ""
        test = pair["mcnemar"]
        rows.append((name, f"McNemar ({test['method']})", f"b {test['b']}, c {test['c']}", "",
                     _p(test["p"])))
    print_table("pairs: AUC differences (A - B) and McNemar (b: scans only A got right, c: only "
                "B)", ["pair", "test", "difference", f"{level} CI", "p"], rows)


__all__ = ["compare"]
