"""Dataset layouts: class folders (the COV19-CT-DB layout) or a CSV manifest -> `ScanRecord`s."""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from .listing import list_folder

SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
CLASSES = {"covid": 1, "non-covid": 0, "non_covid": 0, "noncovid": 0}
LABELS = {
    "1": 1, "covid": 1, "positive": 1, "true": 1,
    "0": 0, "non-covid": 0, "non_covid": 0, "noncovid": 0, "negative": 0, "false": 0,
}


@dataclass(frozen=True)
class ScanRecord:
    """One scan of a dataset: where it is, its label (1 = covid, 0 = non-covid, None = unknown)
    and its split ("train", "val" or "test")."""

    path: Path
    label: int | None
    split: str


def _children(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-cased name (layouts match names case-insensitively)."""
    return {p.name.lower(): p for p in list_folder(folder) if p.is_dir()}


def _scans(folder: Path) -> list[Path]:
    """The scans of a class folder: each sub-folder, and each file a reader claims as a scan
    (`.npy`/`.npz`, `.nii`/`.nii.gz`, a plugin's format), in the folder's order."""
    from .readers import scan_files

    listed = list_folder(folder)
    files = set(scan_files([p for p in listed if p.is_file()]))
    return [p for p in listed if p.is_dir() or p in files]


def _class_records(folder: Path, split: str) -> list[ScanRecord]:
    records = []
    for name, sub in _children(folder).items():
        if name in CLASSES:
            records += [ScanRecord(p, CLASSES[name], split) for p in _scans(sub)]
    return records


def _from_folders(root: Path) -> list[ScanRecord]:
    if not root.is_dir():
        raise BadInputError(f"{root}: no such folder")
    children = _children(root)
    splits = {SPLITS[n]: p for n, p in children.items() if n in SPLITS}
    if splits:
        records: list[ScanRecord] = []
        for split, folder in sorted(splits.items()):
            if split == "test" and not set(_children(folder)) & set(CLASSES):
                records += [ScanRecord(p, None, "test") for p in _scans(folder)]
            else:
                records += _class_records(folder, split)
    else:
        records = _class_records(root, "train")
    if not records:
        raise BadInputError(
            f"{root}: no scans found; expected {{train,val}}/{{covid,non-covid}}/SCAN, "
            "{covid,non-covid}/SCAN or test/SCAN"
        )
    return records


def _label(value: str, where: str) -> int | None:
    text = value.strip().lower()
    if text == "":
        return None
    if text not in LABELS:
        raise BadInputError(f"{where}: unknown label '{value}'; use 1/0 or covid/non-covid")
    return LABELS[text]


def _read_csv(manifest: Path) -> tuple[list[str], list[dict[str | None, Any]]]:
    """The header and rows of a UTF-8 CSV (a byte-order mark, as Excel writes, is fine)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip().lower() for c in reader.fieldnames or []]
            return header, list(reader)
    except OSError as exc:
        raise BadInputError(f"{manifest}: cannot read manifest ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{manifest}: not UTF-8 text (byte {exc.start}); save the "
                            "manifest as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise BadInputError(f"{manifest}: not a readable CSV ({exc})") from exc


def _from_manifest(manifest: Path, label_required: bool = True) -> list[ScanRecord]:
    header, rows = _read_csv(manifest)
    required = ("path", "label") if label_required else ("path",)
    missing = [c for c in required if c not in header]
    if missing:
        raise BadInputError(f"{manifest}: missing column(s) {', '.join(missing)}")
    base = manifest.parent
    records = []
    for line, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "") for k, v in row.items() if k is not None}
        where = f"{manifest}:{line}"
        if not row["path"].strip():
            raise BadInputError(f"{where}: empty path")
        if "\0" in row["path"]:
            raise BadInputError(f"{where}: a NUL character in the path")
        split = row.get("split", "").strip().lower() or "train"
        if split not in SPLITS:
            raise BadInputError(f"{where}: unknown split '{split}'; use train, val or test")
        records.append(
            ScanRecord(base / row["path"].strip(), _label(row.get("label", ""), where),
                       SPLITS[split])
        )
    if not records:
        raise BadInputError(f"{manifest}: manifest lists no scans")
    return records


def read_manifest(
    manifest: str | os.PathLike[str], label_required: bool = True
) -> list[ScanRecord]:
    """The scans of a CSV manifest (`path,label[,split]`, paths relative to its folder) in the
    manifest's own order; `label_required=False` (predict) makes the label column optional."""
    return _from_manifest(Path(manifest), label_required)


def stratified_split(
    records: list[ScanRecord], val_split: float, seed: int = 0
) -> list[ScanRecord]:
    """Move a seeded, per-class fraction `val_split` of the train records to "val"."""
    if not 0.0 < val_split < 1.0:
        raise BadInputError(f"val split must be in (0, 1), got {val_split}")
    rng = random.Random(seed)
    out = [r for r in records if r.split != "train"]
    for label in sorted({r.label for r in records if r.split == "train"}, key=str):
        group = [r for r in records if r.split == "train" and r.label == label]
        rng.shuffle(group)
        k = round(len(group) * val_split) if len(group) > 1 else 0
        out += [ScanRecord(r.path, r.label, "val") for r in group[:k]]
        out += group[k:]
    return sorted(out, key=lambda r: (r.split, str(r.path)))


def find_scans(
    root: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    val_split: float | None = None,
    seed: int = 0,
) -> list[ScanRecord]:
    """The scans of a dataset, from class folders under `root` or from a CSV `manifest`.

    Folders: `ROOT/{train,val}/{covid,non-covid}/SCAN`, `ROOT/{covid,non-covid}/SCAN` (all
    "train"), and an unlabeled `ROOT/test/SCAN`; names match case-insensitively. A SCAN is a
    folder (DICOM series, slice images) or a file a reader claims (`.npy`/`.npz`,
    `.nii`/`.nii.gz`, a plugin reader's format). Manifest:
    columns `path,label[,split]`, paths relative to the manifest's folder. `val_split` moves a
    stratified, seeded fraction of "train" to "val", for data that comes without a val split.
    """
    if (root is None) == (manifest is None):
        raise BadInputError("give either a data folder or a manifest, not both or neither")
    records = _from_manifest(Path(manifest)) if manifest is not None else _from_folders(Path(root))
    if val_split is not None:
        if any(r.split == "val" for r in records):
            raise BadInputError("the data already has a val split; drop --val-split")
        records = stratified_split(records, val_split, seed)
    return sorted(records, key=lambda r: (r.split, str(r.path)))
