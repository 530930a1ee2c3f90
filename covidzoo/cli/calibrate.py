"""`covidzoo calibrate MODEL --data VAL (--out FILE | --in-place)`: temperature scaling."""

from __future__ import annotations

from pathlib import Path

import click

from ..values import format_number
from .evaluate import SPLITS
from .options import cache_option, data_options, print_json, print_table, runtime_options


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@data_options
@cache_option
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Labelled scans the temperature is fitted on.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Write the calibrated model here (.safetensors, or .json for an ensemble).")
@click.option("--in-place", is_flag=True,
              help="Rewrite MODEL itself, atomically (not a run folder's link).")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def calibrate(model: Path, data_root: Path | None, manifest: Path | None, workers: int | None,
              cache: Path | None, split: str, out: Path | None, in_place: bool,
              device: str | None, precision: str, batch_size: int, as_json: bool) -> None:
    """Fit a temperature to MODEL's probabilities on labelled validation scans (Guo et al.
    2017) and store it with the model, so that predict and evaluate give calibrated
    probabilities. Labels do not change: the decision threshold moves with the probabilities.
    """
    from ..calibration import calibrate as run_calibration

    report = run_calibration(model, data=data_root, manifest=manifest, cache=cache, split=split,
                             out=out, in_place=in_place, device=device, precision=precision,
                             batch_size=batch_size, workers=workers, progress=not as_json)
    result = report.to_dict()
    if as_json:
        print_json(result)
        return
    rows = [(name, format_number(report.before[key]), format_number(report.after[key]))
            for key, name in (("ece", "ECE (equal-width bins)"),
                              ("ece_equal_mass", "ECE (equal-mass bins)"),
                              ("brier", "Brier score"), ("log_loss", "log loss"))]
    print_table(f"{model.name}: temperature {format_number(report.temperature)}, fitted on "
                f"{report.scans} scans of {report.split}", ["", "before", "after"], rows)
    if report.threshold_before is not None:
        click.echo(f"threshold {format_number(report.threshold_before)} -> "
                   f"{format_number(report.threshold_after)} (every scan keeps its label)")
    click.echo(f"wrote {report.out}")
    click.echo(f"note: {result['note']}")


__all__ = ["calibrate"]
