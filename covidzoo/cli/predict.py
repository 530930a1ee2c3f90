"""The `predict` command: probabilities and labels of raw scans under a checkpoint or ensemble,
printed for a few scans, or written resumably to `--out` for a whole archive (alone or under
torchrun, see `covidzoo.archive`).

Nothing heavy is imported at module level: `covidzoo --help` lists it without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..errors import BadInputError
from ..values import format_apart
from .evaluate import _report_failed
from .options import (
    parse_preprocess,
    preprocess_option,
    print_json,
    print_table,
    runtime_options,
    tta_option,
    workers_option,
)

OUT_FORMATS = ("csv", "parquet")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("scans", nargs=-1, type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path),
              help="CSV manifest listing the scans (a path column; label and split optional), "
                   "instead of SCAN...")
@click.option("--out", type=click.Path(path_type=Path),
              help="Write scan,probability,label,threshold,model_hash per scan to this file, "
                   "resumably: a rerun skips the scans already in it (shared by every torchrun "
                   "process; unreadable scans go to NAME.errors.csv beside it).")
@click.option("--format", "out_format", type=click.Choice(OUT_FORMATS), default=None,
              help="File format of --out (parquet needs pyarrow).  [default: csv]")
@click.option("--replace", is_flag=True,
              help="Replace the predictions of another model in --out (default: refuse).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path),
              help="Also write scan,probability,label,threshold to this CSV.")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch",
              show_default=True,
              help="onnx: MODEL is a file from `covidzoo export --format onnx`, run with "
                   "onnxruntime (scans are still read by covidzoo).")
@workers_option
@tta_option
@preprocess_option
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(model: Path, scans: tuple[Path, ...], manifest: Path | None, out: Path | None,
            out_format: str | None, replace: bool, csv_path: Path | None, workers: int | None,
            backend: str, tta: str, preprocess: tuple[str, ...], device: str | None,
            precision: str, batch_size: int, as_json: bool) -> None:
    """Probability and label (covid / non-covid) of each raw SCAN under a checkpoint or
    ensemble file MODEL.

    A SCAN is a DICOM series folder, a folder of JPG/PNG slices or a .npy/.npz volume; each
    model preprocesses it with the configuration recorded in its checkpoint. For an archive,
    list the scans in a --manifest and write them to --out; under `torchrun --nproc-per-node G
    -m covidzoo predict ...` every process predicts its share and the first merges them.
    """
    paths = _scan_paths(scans, manifest)
    steps = parse_preprocess(preprocess)
    if steps and (out is not None or backend != "torch"):
        raise BadInputError("--preprocess: not with --out or --backend onnx, which feed each "
                            "model scans preprocessed as its checkpoint records")
    if tta != "none" and (out is not None or backend != "torch"):
        raise BadInputError("--tta: not with --out or --backend onnx (one view per scan)")
    if out is None:
        _check_without_out(out_format, replace)
        _predict_table(model, paths, csv_path, device, precision, batch_size, as_json, backend,
                       steps, tta)
        return
    if backend != "torch":
        raise BadInputError("--backend onnx: not with --out (archive prediction runs PyTorch)")
    if csv_path is not None:
        raise BadInputError("--csv: with --out, the predictions go to --out (--format csv)")
    _predict_archive(model, paths, out, out_format or "csv", replace, workers, device,
                     precision, batch_size, as_json)


def _scan_paths(scans: tuple[Path, ...], manifest: Path | None) -> list[Any]:
    """SCAN... or the scans of --manifest, in manifest order (one or the other)."""
    if manifest is None:
        if not scans:
            raise BadInputError("give SCAN... or --manifest CSV")
        return list(scans)
    if scans:
        raise BadInputError("--manifest: give either SCAN... or --manifest, not both")
    from ..archive import manifest_scans

    return manifest_scans(manifest)


def _check_without_out(out_format: str | None, replace: bool) -> None:
    if out_format is not None:
        raise BadInputError("--format: it is the format of --out; give --out too")
    if replace:
        raise BadInputError("--replace: it replaces predictions in --out; give --out too")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BadInputError("under torchrun, give --out: the processes write their shares there")


def _predict_table(model: Path, scans: list[Any], csv_path: Path | None, device: str | None,
                   precision: str, batch_size: int, as_json: bool, backend: str = "torch",
                   steps: dict[str, Any] | None = None, tta: str = "none") -> None:
    if backend == "onnx":
        from ..export import predict_onnx

        report = predict_onnx(model, scans, device=device, precision=precision,
                              batch_size=batch_size, progress=not as_json)
    else:
        from ..evaluation import predict as run_prediction

        report = run_prediction(model, scans, device=device, precision=precision,
                                batch_size=batch_size, progress=not as_json, preprocess=steps,
                                tta=tta)
    if csv_path is not None:
        report.save_csv(csv_path)
    if as_json:
        print_json(report.to_dict())
        return
    _report_failed(report.failed)
    for note in getattr(report, "notes", ()):
        click.echo(f"note: {note}", err=True)
    chosen = report.threshold
    if chosen is None:  # three or more classes: the most probable one, every class's figure
        names = report.predictor.classes
        print_table(None, ["scan", "label", *names],
                    [(p.scan, p.label, *(f"{p.probabilities[n]:.4f}" for n in names))
                     for p in report.predictions])
        return
    if chosen.source == "default":
        click.echo(f"note: {chosen.note}", err=True)
    rows = []
    for p in report.predictions:  # as many digits as tell each probability from the threshold
        probability, threshold = format_apart(p.probability, chosen.value)
        rows.append((p.scan, probability, p.label, threshold))
    print_table(None, ["scan", "probability", "label", "threshold"], rows)


def _predict_archive(model: Path, scans: list[Any], out: Path, out_format: str, replace: bool,
                     workers: int | None, device: str | None, precision: str, batch_size: int,
                     as_json: bool) -> None:
    from ..archive import predict_archive

    report = predict_archive(model, scans, out, fmt=out_format, replace=replace, device=device,
                             precision=precision, batch_size=batch_size, workers=workers,
                             progress=not as_json)
    if report is None:  # not rank 0: rank 0 reports for every process
        return
    if as_json:
        print_json(report.to_dict())
        return
    if report.threshold is not None and report.threshold.source == "default":
        click.echo(f"note: {report.threshold.note}", err=True)
    if report.failed:
        click.echo(f"covidzoo: {report.failed} scan(s) failed; reasons in {report.errors}",
                   err=True)
    summary = report.to_dict()
    click.echo(f"{report.scans} scans: {report.already_done} already in {out}, "
               f"{report.predicted} predicted now by {report.world} process(es) "
               f"({summary['scans_per_s'] or 0:.1f} scans/s), {report.failed} failed")
    click.echo(f"wrote {out} ({report.rows} rows, model {report.model_hash})")


__all__ = ["predict"]
