"""`covidzoo data synth|prepare|inspect`: demo data, the preprocessing cache, scan inspection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import BadInputError
from ..factory import DEFAULT_SCAN_SIZE
from .options import (
    parse_preprocess,
    parse_size,
    preprocess_option,
    print_json,
    print_table,
    threads_option,
    workers_option,
)


@click.group("data")
def data() -> None:
    """Demo data, the preprocessing cache, and scan inspection."""


@data.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--n", "n", default=64, show_default=True, help="Number of scans (balanced).")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same data.")
@click.option("--format", "fmt", default="jpg", show_default=True, help="dicom or jpg.")
@click.option("--shape", default="40,128,128", show_default=True, help="Native D,H,W per scan.")
@click.option("--classes", default=2, show_default=True, type=click.IntRange(2, 3),
              help="3 adds a third class, pneumonia (lobar consolidation).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def synth(out: Path, n: int, seed: int, fmt: str, shape: str, classes: int,
          as_json: bool) -> None:
    """Write synthetic chest CT scans to OUT in the COV19-CT-DB layout.

    OUT/{train,val}/{covid,non-covid}/SCAN, as DICOM series or JPG-slice folders; covid scans
    carry ground-glass opacities in the lung periphery. With --classes 3, also
    OUT/{train,val}/pneumonia/SCAN.
    """
    from ..data.layouts import find_labelled
    from ..data.synthetic import synthesize

    path = synthesize(out, n=n, seed=seed, fmt=fmt, shape=parse_size("--shape", shape),
                      classes=classes)
    records, names = find_labelled(path)
    summary = {
        "path": str(path),
        "format": fmt,
        "scans": len(records),
        "classes": list(names),
        "covid": sum(names[r.label] == "covid" for r in records),
        "val": sum(r.split == "val" for r in records),
    }
    if as_json:
        print_json(summary)
    else:
        click.echo(
            f"Wrote {summary['scans']} {fmt} scans ({summary['covid']} covid, "
            f"{summary['val']} in val) to {path}"
        )


@data.command("prepare")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Cache folder.")
@click.option("--size", help="Output D,H,W.  [default: "
              f"{','.join(map(str, DEFAULT_SCAN_SIZE))}]")
@preprocess_option
@click.option("--val-split", type=float, help="Move this stratified fraction of train to val.")
@click.option("--seed", default=0, show_default=True, help="Seed of --val-split.")
@workers_option
@threads_option
@click.option("--strict", is_flag=True, help="Stop at the first scan that fails.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def prepare(root: Path, out: Path, size: str | None, preprocess: tuple[str, ...],
            val_split: float | None, seed: int, workers: int | None, strict: bool,
            no_progress: bool, as_json: bool) -> None:
    """Preprocess every scan of ROOT once into the cache OUT (re-runs skip finished scans).

    ROOT is a data folder ({train,val}/{covid,non-covid}/SCAN) or a CSV manifest
    (path,label[,split]). Scans that fail are listed with their reason and skipped. The lung
    mask and resampling of --preprocess run in the --workers processes.
    """
    from ..data.cache import prepare_cache
    from ..data.layouts import find_scans
    from ..data.preprocess import PreprocessConfig
    from ..runtime import resolve_workers

    workers = resolve_workers(workers, "cpu")  # preprocessing runs on the CPU
    cfg = PreprocessConfig(
        size=DEFAULT_SCAN_SIZE if size is None else parse_size("--size", size),  # type: ignore
        **parse_preprocess(preprocess))
    is_manifest = root.suffix.lower() == ".csv"
    records = find_scans(
        root=None if is_manifest else root, manifest=root if is_manifest else None,
        val_split=val_split, seed=seed,
    )
    result = prepare_cache(records, out, cfg, workers=workers, strict=strict,
                           progress=not no_progress and not as_json, wait_if_busy=False,
                           data_set=root)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(
            f"{len(result.done)} built, {len(result.skipped)} up to date, "
            f"{len(result.failed)} failed in {result.seconds:.1f} s "
            f"({result.scans_per_s:.2f} scans/s, {workers} worker(s)) -> {out}"
        )
        if result.failed:
            print_table("Failed scans", ["scan", "reason"], result.failed)
    if result.failed and not result.done and not result.skipped:  # the data is bad, not the job
        raise BadInputError(f"every scan failed to read ({len(result.failed)}); first: "
                            f"{result.failed[0][1]}")


@data.command("inspect")
@click.argument("scan", type=click.Path(path_type=Path))
@click.option("--series", help="SeriesInstanceUID to read when a folder holds several.")
@click.option("--png", type=click.Path(path_type=Path),
              help="Write labelled axial, coronal and sagittal cuts, with the lung mask's "
                   "outline, to this PNG.")
@preprocess_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(scan: Path, series: str | None, png: Path | None, preprocess: tuple[str, ...],
            as_json: bool) -> None:
    """Describe one scan: format, series, shape, spacing, value range, ordering warnings,
    spacing irregularities (gaps, duplicate positions, varying thickness), its lungs (volume,
    fraction of the scan) and the slices `slices=lungs` keeps (by --preprocess's lung_area).
    """
    from ..data.geometry_checks import spacing_irregularities
    from ..data.lungs import lung_facts
    from ..data.preprocess import PreprocessConfig, coarse_lung_mask, prepare_scan
    from ..data.readers import read_scan

    steps = {k: v for k, v in parse_preprocess(preprocess).items()}
    cfg = PreprocessConfig(size=(1, 1, 1), **{**steps, "slices": "lungs", "crop": "none"})
    volume = read_scan(scan, series=series)
    summary = volume.summary()
    summary["spacing_irregularities"] = spacing_irregularities(volume)
    mask, step = coarse_lung_mask(volume)
    if step > 1:  # back to the scan's grid, for the outline and the facts
        mask = mask.repeat(step, axis=1).repeat(step, axis=2)[:, :volume.shape[1],
                                                              :volume.shape[2]]
    found = not mask.all()
    facts = lung_facts(mask, volume.spacing) if found else {}
    kept = prepare_scan(volume, cfg)[1].box[0] if found else (0, volume.shape[0])
    summary["lungs"] = {
        "found": found,
        "lung_volume_ml": facts.get("lung_volume_ml"),
        "lung_fraction": facts.get("lung_fraction"),
        "slices_with_lung": ([facts["lung_slices"][0], facts["lung_slices"][-1] + 1]
                             if found else None),
        "slices_kept": list(kept),
        "lung_area": cfg.lung_area,
        "spacing_assumed": volume.kind in ("slices",),
    }
    # The lung search may have warned since `summary()`: its warnings, then the new ones.
    summary["warnings"] += [w for w in volume.warnings if w not in summary["warnings"]]
    if png is not None:
        from ..data.montage import montage
        from ..fileio import atomic_write

        image = montage(volume, mask=mask if found else None)
        atomic_write(png, lambda tmp: image.save(tmp, format="PNG"))  # type: ignore[attr-defined]
        summary["png"] = str(png)
    if as_json:
        print_json(summary)
        return
    rows = [(k, v) for k, v in summary.items()
            if k not in ("warnings", "lungs", "spacing_irregularities")]
    lungs = summary["lungs"]
    rows.append(("lungs", "none found: the scan would be kept whole" if not found else
                 (f"{lungs['lung_volume_ml']:.0f} ml, " if lungs["lung_volume_ml"] else "")
                 + f"{lungs['lung_fraction']:.1%} of the scan, in slices "
                   f"{lungs['slices_with_lung'][0]}-{lungs['slices_with_lung'][1] - 1}"))
    rows.append(("slices=lungs keeps", f"{kept[0]}-{kept[1] - 1} "
                 f"(lung area >= {cfg.lung_area:g} of the largest slice's)"))
    rows.append(("spacing irregularities", _irregularities(summary["spacing_irregularities"])))
    rows += [("warning", w) for w in summary["warnings"]]
    print_table(None, ["field", "value"], rows)


def _irregularities(facts: dict[str, Any]) -> str:
    """One line of `geometry_checks.spacing_irregularities`."""
    if not facts["positions_known"]:
        return "not measurable: the format records no slice positions"
    parts = [f"{len(facts['gaps'])} gap(s)", f"{len(facts['duplicate_positions'])} duplicate "
             "position(s)", "varying thickness" if facts["varying_thickness"]
             else "even thickness"]
    return ", ".join(parts)
