"""The `explain` command: Grad-CAM maps of raw scans under one checkpoint (`covidzoo.explain`).

Nothing heavy is imported at module level: `covidzoo --help` lists it without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from .evaluate import _report_failed
from .options import device_option, print_json, print_table, threads_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("scans", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Folder for NAME.png, NAME.npy (and NAME.nii.gz for a NIfTI scan) per scan.")
@click.option("--class", "class_name", metavar="NAME",
              help="Explain this class's score.  [default: covid for a binary checkpoint, the "
                   "predicted class for a multi-class one]")
@device_option
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def explain(model: Path, scans: tuple[Path, ...], out: Path, class_name: str | None,
            device: str | None, as_json: bool) -> None:
    """Where in each SCAN the checkpoint MODEL finds the evidence for its score: Grad-CAM on
    the backbone's last feature map, mapped back to the scan's own voxel grid.

    Per scan NAME, --out gets NAME.png (three cuts through the map's peak, the map blended
    over the scan, the probability; a slice model's slice probabilities beside them),
    NAME.npy (the map, float32 in [0, 1], the scan's shape) and, for a NIfTI scan,
    NAME.nii.gz (the map in the scan's own geometry, to overlay in any viewer). A slice
    model also reports each slice's probability at the scan's own slice numbers.

    MODEL is one checkpoint; for an ensemble file, explain its members one at a time.
    """
    from ..explain import explain as run_explain
    from ..explain import top_slices

    report = run_explain(model, list(scans), out, device=device, class_name=class_name,
                         progress=not as_json)
    if as_json:
        print_json(report.to_dict())
        return
    _report_failed(report.failed)
    rows = []
    for e in report.explanations:
        peak = "none (map is 0)" if e.peak is None else ",".join(map(str, e.peak))
        top = "" if e.slices is None else " ".join(map(str, top_slices(e.slices)))
        rows.append((e.scan, e.explained, f"{e.probability:.4f}", e.label, peak, top))
    print_table(f"Grad-CAM of {model.name} ({report.backbone})",
                ["scan", "class", "probability", "label", "peak z,y,x", "top slices"], rows)
    nifti = any("nifti" in e.files for e in report.explanations)
    click.echo(f"wrote NAME.png, NAME.npy{' (NAME.nii.gz for NIfTI scans)' if nifti else ''} "
               f"per scan to {out}")


__all__ = ["explain"]
